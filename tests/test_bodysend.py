"""Big response bodies reach the client whole through the real hypercorn,
with hypercorn's h11 join skipped for them (oklog.bodysend)."""

from __future__ import annotations

import socket
from typing import AsyncIterator

import httpx
import trio

from oklog import bodysend
from oklog.http import Request, Response, Router
from oklog.node import serve_api

BIG = bodysend.BIG
PIECES = [bytes([65 + i % 26]) * size
          for i, size in enumerate([10, BIG, 3 * BIG + 7, 1, BIG - 1, 1 << 20, 0, 5])]


def _router() -> Router:
    async def streamed(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for piece in PIECES:
                yield piece

        return Response(200, body())

    async def whole(request: Request) -> Response:
        return Response(200, b"z" * (2 * BIG + 3))  # Content-Length framing

    router = Router()
    router.add("GET", "/streamed", streamed)
    router.add("GET", "/whole", whole)
    return router


def test_big_bodies_arrive_whole_and_the_connection_stays_usable():
    assert bodysend.install()  # this hypercorn has the shape the patch knows
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_api, _router(), [sock], stop)
            with trio.fail_after(30):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    # one keep-alive connection: the framing of each answer must be exact
                    for path in ("/streamed", "/whole", "/streamed", "/streamed"):
                        r = await client.get(path)
                        assert r.status_code == 200
                        if path == "/whole":
                            assert r.content == b"z" * (2 * BIG + 3)
                        else:
                            assert r.headers["transfer-encoding"] == "chunked"
                            assert r.content == b"".join(PIECES)
                    async with client.stream("HEAD", "/streamed") as r:
                        assert r.status_code == 200 and await r.aread() == b""
            stop.set()

    trio.run(main)
