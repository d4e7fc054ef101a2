"""The live stream HTTP API of a store node.

``GET /store/_stream?q=&regex&topic=`` streams this node's newly written
records that match, as it writes them (``oklog.stream.hub``; a ``window``
is checked and otherwise ignored: de-duplication is the fan-out's).
``GET /store/stream?q=&regex&topic=&window=`` streams the whole cluster's:
every live store's share, merged and de-duplicated within ``window``
(``oklog.stream.fanout``).  Both answer 200 at once and then send record
lines ``ULID SP TOPIC SP PAYLOAD`` and notice lines starting with ``#``
(``oklog.stream.wire``: heartbeats, drop reports) until the client leaves.
Bad parameters are a 400 with the reason; beyond ``MAX_CLIENTS`` open
streams of a kind, a 503.  ``HEAD`` checks the parameters only.

Response bodies only read a queue (``_Drain``): a client that stops
reading holds its own queue and nothing else, and a client that goes away
is noticed by the HTTP layer (``http.disconnect``), which closes the body
and with it the subscription.
"""

from __future__ import annotations

from typing import Callable

import trio

from .. import metrics
from ..http import Request, Response, Router, text
from ..stream.fanout import StreamService
from ..stream.hub import Hub
from ..stream.params import StreamQuery, parse_stream
from ..stream.queue import DropQueue
from ..stream.wire import HEARTBEAT, HEARTBEAT_LINE

__all__ = ["MAX_CLIENTS", "stream_router"]

#: Open streams of each kind (cluster clients; subscriptions to this store)
#: beyond which new ones are refused with a 503.
MAX_CLIENTS = 256


def stream_headers(sq: StreamQuery) -> dict[str, str]:
    q = sq.query
    headers = {
        "X-Oklog-Q": q.q.decode("latin-1"),  # control bytes are escaped by oklog.http
        "X-Oklog-Regex": "true" if q.regex else "false",
        "X-Oklog-Window": f"{sq.window:g}s",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if q.topic is not None:
        headers["X-Oklog-Topic"] = q.topic.decode("ascii")
    return headers


class _Drain:
    """A stream's response body: what the queue hands out, with a heartbeat
    after ``heartbeat`` seconds of silence, until the queue is closed or the
    client leaves.  ``aclose`` (the HTTP layer always calls it, even on a
    body never started) releases the stream exactly once."""

    def __init__(self, queue: DropQueue, endpoint: str, on_close: Callable[[], None],
                 heartbeat: float) -> None:
        self.queue = queue
        self.sent = metrics.stream_records.labels(endpoint)
        self.on_close: Callable[[], None] | None = on_close
        self.heartbeat = heartbeat
        self.started = False

    def __aiter__(self) -> "_Drain":
        return self

    async def __anext__(self) -> bytes:
        if self.on_close is None:
            raise StopAsyncIteration
        if not self.started:
            self.started = True
            return HEARTBEAT_LINE  # the headers go out now: the stream is open
        with trio.move_on_after(self.heartbeat):
            chunk = await self.queue.get()
            if not chunk:  # closed: the node is shutting down
                await self.aclose()
                raise StopAsyncIteration
            if not chunk.startswith(b"#"):
                self.sent.inc(chunk.count(b"\n"))
            return chunk
        return HEARTBEAT_LINE

    async def aclose(self) -> None:
        close, self.on_close = self.on_close, None
        if close is not None:
            close()


def stream_router(hub: Hub, service: StreamService, *, max_clients: int = MAX_CLIENTS,
                  heartbeat: float = HEARTBEAT) -> Router:
    router = Router()
    open_streams = {"stream": 0, "_stream": 0}

    def admit(endpoint: str) -> Callable[[], None] | None:
        """Count one more open stream; its release, or None when full."""
        if open_streams[endpoint] >= max_clients:
            return None
        open_streams[endpoint] += 1
        metrics.stream_clients.labels(endpoint).inc()
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                open_streams[endpoint] -= 1
                metrics.stream_clients.labels(endpoint).dec()

        return release

    def too_many(endpoint: str) -> Response:
        return text(503, f"too many open streams on this node ({max_clients} on /store/{endpoint})")

    async def local_stream(request: Request) -> Response:
        sq = parse_stream(request.raw_query)
        headers = stream_headers(sq)
        if request.method == "HEAD":
            return Response(200, b"", headers)
        release = admit("_stream")
        if release is None:
            return too_many("_stream")
        sub = hub.add(sq.query.matcher)

        def close() -> None:
            hub.remove(sub)
            release()

        return Response(200, _Drain(sub.queue, "_stream", close, heartbeat), headers)

    async def cluster_stream(request: Request) -> Response:
        sq = parse_stream(request.raw_query)
        headers = stream_headers(sq)
        if request.method == "HEAD":
            return Response(200, b"", headers)
        if not service.running:
            return text(503, "this node is starting or stopping")
        release = admit("stream")
        if release is None:
            return too_many("stream")
        client = service.open(sq)

        def close() -> None:
            client.close()
            release()

        return Response(200, _Drain(client.queue, "stream", close, heartbeat), headers)

    router.add("GET|HEAD", "/store/_stream", local_stream)
    router.add("GET|HEAD", "/store/stream", cluster_stream)
    return router

