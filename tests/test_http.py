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


def test_a_declared_length_is_sent_and_a_body_that_breaks_it_aborts():
    """A streamed body with a known length goes out with ``Content-Length``;
    one that turns out shorter or longer never ends normally (the
    connection breaks, so the client knows the answer is incomplete)."""

    def handler(parts: list[bytes], length: int):
        async def body() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        async def handle(request: Request) -> Response:
            return Response(200, body(), length=length)

        return handle

    router = Router()
    router.add("GET", "/exact", handler([b"abc", b"de"], 5))
    router.add("GET", "/short", handler([b"abc"], 5))
    router.add("GET", "/long", handler([b"abc", b"def"], 5))
    sent: dict[str, list[dict[str, Any]]] = {}
    for path in ("/exact", "/short", "/long"):
        client = Client()
        trio.run(router, scope(path), client.receive, client.send)
        assert (b"content-length", b"5") in client.sent[0]["headers"]
        sent[path] = client.sent
    assert b"".join(m.get("body", b"") for m in sent["/exact"][1:]) == b"abcde"
    assert sent["/exact"][-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    for path in ("/short", "/long"):
        assert [m["body"] for m in sent[path][1:]] == [b"abc"]  # no end, no byte too many
        assert sent[path][-1]["more_body"] is True


def test_a_body_that_goes_on_or_fails_after_its_declared_length_never_looks_whole():
    """The chunk that completes a declared length waits for the body's end:
    sent at once, a client holding every byte it was told to expect could
    not tell that the body went on, or failed, after it."""

    async def full_then_more() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cde"
        yield b"f"

    async def full_then_error() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cde"
        raise OSError("a segment broke after the declared bytes")

    router = Router()
    for path, body in (("/more", full_then_more), ("/error", full_then_error)):
        async def handle(request: Request, body: Any = body) -> Response:
            return Response(200, body(), length=5)

        router.add("GET", path, handle)
    for path in ("/more", "/error"):
        client = Client()
        trio.run(router, scope(path), client.receive, client.send)
        assert client.body == b"ab", path  # short of the 5 declared: the client sees a cut
        assert client.sent[-1]["more_body"] is True, path  # and no end (the connection breaks)


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


def test_middleware_wraps_every_request_outermost_first():
    seen: list[str] = []

    def tag(name: str):  # type: ignore[no-untyped-def]
        def wrap(next_handler):  # type: ignore[no-untyped-def]
            async def handle(request: Request) -> Response:
                seen.append(f"{name}>")
                response = await next_handler(request)
                seen.append(f"<{name}:{response.status}")
                response.headers[f"X-{name}"] = "1"
                return response

            return handle

        return wrap

    async def ok(request: Request) -> Response:
        seen.append("handler")
        return Response(200, b"ok")

    router = Router()
    router.add("GET", "/ok", ok)
    router.use(tag("outer"))
    router.use(tag("inner"))
    client = Client()
    trio.run(router, scope("/ok"), client.receive, client.send)
    assert seen == ["outer>", "inner>", "handler", "<inner:200", "<outer:200"]
    assert (b"x-outer", b"1") in client.sent[0]["headers"]
    seen.clear()
    client = Client()
    trio.run(router, scope("/missing"), client.receive, client.send)  # unknown paths too
    assert seen == ["outer>", "inner>", "<inner:404", "<outer:404"]


def test_request_metrics_count_by_route_and_status():
    from prometheus_client import REGISTRY

    from oklog.http import request_metrics

    async def ok(request: Request) -> Response:
        return Response(204, b"")

    router = Router()
    router.add("GET", "/counted", ok)
    router.use(request_metrics(router))

    def count(route: str, status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        return REGISTRY.get_sample_value("oklog_http_requests_total", labels) or 0.0

    before, other = count("/counted", "204"), count("other", "404")
    for path in ("/counted", "/counted", "/no/such/path"):
        trio.run(router, scope(path), Client().receive, Client().send)
    assert count("/counted", "204") == before + 2
    assert count("other", "404") == other + 1  # unknown paths share one label


def test_params_first_wins_and_a_body_cut_short_is_a_client_error():
    from oklog.errors import ClientGone

    async def echo(request: Request) -> Response:
        async for _ in request.stream():
            pass
        return Response(200, request.params["id"].encode())

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    router = Router()
    router.add("POST", "/echo", echo)
    client = Client()
    s = scope("/echo", "POST") | {"query_string": b"id=first&id=second"}
    trio.run(router, s, client.receive, client.send)
    assert client.status == 200 and client.body == b"first"
    client = Client()
    trio.run(router, s, gone, client.send)
    assert client.status == ClientGone.status_hint and client.body == b"client disconnected\n"


def test_an_ingest_segment_read_half_way_cannot_be_committed(tmp_path):
    from oklog.errors import SegmentNotRead
    from oklog.ingest import api as ingest_api
    from oklog.ingest.log import IngestLog

    async def main() -> None:
        log = IngestLog(tmp_path)
        log.open()
        log.write(b"x" * (3 * ingest_api.READ_CHUNK))
        await log.flush()
        seg = log.next()
        assert seg is not None
        router = ingest_api.ingest_router(log, dict)
        s = scope("/ingest/read") | {"query_string": f"id={seg}".encode()}
        client = Client()  # the store goes away after the first chunk
        first_chunk = trio.Event()

        async def send(message: dict[str, Any]) -> None:
            await client.send(message)
            if message.get("body"):
                first_chunk.set()
                await trio.sleep(1)  # the disconnect wins

        async def receive() -> dict[str, Any]:
            if not client._requested:
                return await client.receive()
            await first_chunk.wait()
            return {"type": "http.disconnect"}

        await router(s, receive, send)
        assert 0 < len(client.body) < 3 * ingest_api.READ_CHUNK
        try:
            log.commit(seg)
        except SegmentNotRead:
            pass
        else:
            raise AssertionError("a half-read segment was committed")
        client = Client()  # a whole read makes it committable
        await router(s, client.receive, client.send)
        assert len(client.body) == 3 * ingest_api.READ_CHUNK
        log.commit(seg)
        log.close()

    trio.run(main)


def test_a_stream_that_fails_midway_breaks_the_connection_instead_of_ending_cleanly():
    async def failing() -> AsyncIterator[bytes]:
        yield b"first part\n"
        raise OSError(5, "Input/output error")

    async def handler(request: Request) -> Response:
        return Response(200, failing())

    router = Router()
    router.add("GET", "/q", handler)
    client = Client()
    # The app ends without the final body message (and without raising, so no
    # traceback is logged): hypercorn then breaks the connection
    # (tests/test_apiserver.py and tests/test_limits_node.py see it on real sockets).
    trio.run(router, scope("/q"), client.receive, client.send)
    assert client.body == b"first part\n"
    assert not any(m.get("more_body") is False for m in client.sent[1:])  # never "complete"


def test_a_client_that_leaves_before_sending_its_whole_body_ends_a_stream_cleanly():
    """A streamed answer to a request whose body was never read: the client
    leaving mid-body is a disconnect like any other, not a failed stream."""

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x\n"
            await trio.sleep(0.01)

    async def handler(request: Request) -> Response:
        return Response(200, endless())  # the request body is left unread

    messages = iter([{"type": "http.request", "body": b"part", "more_body": True},
                     {"type": "http.disconnect"}])

    class HalfBody(Client):
        async def receive(self) -> dict[str, Any]:
            await trio.sleep(0.05)
            return next(messages)

    router = Router()
    router.add("POST", "/tail", handler)
    client = HalfBody()

    async def main() -> None:
        with trio.fail_after(5):
            await router(scope("/tail", "POST"), client.receive, client.send)

    trio.run(main)
    assert client.status == 200 and client.body.startswith(b"x\n")
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
