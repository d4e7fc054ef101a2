"""The raw-ASGI layer: disconnects end streams, errors become one-line statuses."""

from __future__ import annotations

from typing import Any, AsyncIterator

import trio

from oklog.errors import BadQuery, UnknownSegment
from oklog.http import Request, Response, Router


class Client:
    """Drives one request through the ASGI app and records what it sent."""

    def __init__(self, disconnect_after: float | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.disconnect_after = disconnect_after
        self._requested = False

    async def receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if self.disconnect_after is None:
            await trio.sleep_forever()
        await trio.sleep(self.disconnect_after)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await trio.lowlevel.checkpoint()

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def scope(path: str, method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}


def test_a_disconnect_ends_an_endless_stream():
    closed = trio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 100
        finally:
            closed.set()

    async def handler(request: Request) -> Response:
        return Response(200, endless())

    router = Router()
    router.add("GET", "/tail", handler)
    client = Client(disconnect_after=0.05)

    async def main() -> None:
        with trio.fail_after(5):  # without the disconnect watcher this never ends
            await router(scope("/tail"), client.receive, client.send)
        assert closed.is_set()
        assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}

    trio.run(main)


def test_errors_are_one_line_statuses():
    async def bad(request: Request) -> Response:
        raise BadQuery('invalid "from": nope\nsecond line')

    async def unknown(request: Request) -> Response:
        raise UnknownSegment("no pending segment 'x'")

    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internals")

    router = Router()
    router.add("GET", "/bad", bad)
    router.add("GET", "/unknown", unknown)
    router.add("GET", "/broken", broken)

    def call(path: str, method: str = "GET") -> Client:
        client = Client()
        trio.run(router, scope(path, method), client.receive, client.send)
        return client

    c = call("/bad")
    assert c.status == 400 and c.body == b'invalid "from": nope second line\n'
    assert call("/unknown").status == 404
    c = call("/broken")
    assert c.status == 500 and b"secret" not in c.body and b"Traceback" not in c.body
    assert call("/nowhere").status == 404
    assert call("/bad", "POST").status == 405
    head = call("/bad", "HEAD")
    assert head.status == 400 and head.body == b""


def test_header_values_are_always_legal():
    from oklog.http import header_value

    assert header_value("plain text") == b"plain text"
    assert header_value("a\r\nX-Evil: 1\x00") == b"a%0D%0AX-Evil: 1%00"
    assert header_value("caf\xe9") == b"caf\xe9"  # latin-1 is legal obs-text
    assert header_value("snow\u2603") == b"snow%E2%98%83"
