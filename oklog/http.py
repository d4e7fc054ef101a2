"""A tiny raw-ASGI layer: requests, responses, routing, error mapping.

Why not a framework: Starlette's StreamingResponse never closes the
connection under hypercorn's trio worker (FACTS.md), and we need little.
Streaming bodies are sent from a raw loop that also watches ``receive()``
for ``http.disconnect`` (``send`` to a gone client does not raise under
hypercorn-trio), and the final ``more_body=False`` goes out outside any
cancel scope.

This is the API edge: ``OklogError`` subclasses become their
``status_hint`` with a one-line text reason; anything else is logged with
its traceback and answered with a bare 500.

Middleware is the seam for what every request goes through (metrics and
timing, and the bearer-token check of ``oklog.auth``): a ``Middleware`` takes the next
``Handler`` and returns a handler, and ``Router.use`` stacks them around
routing and error mapping, so a middleware sees every request -- unknown
paths included -- and every final status.
"""

from __future__ import annotations

import logging
import math
import re
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl

import trio

from . import metrics
from .errors import BodyLengthError, ClientGone, OklogError, RequestTimeout

log = logging.getLogger("oklog.http")

Body = bytes | AsyncIterator[bytes]


@dataclass
class Request:
    method: str
    path: str
    raw_query: bytes
    headers: dict[str, str]
    _receive: Callable[[], Awaitable[dict[str, Any]]]
    _body_done: bool = False
    client: str = ""  # "host:port" of the peer, for logs
    body_timeout: float = math.inf  # longest wait for the next piece of the body

    @property
    def params(self) -> dict[str, str]:
        """Query parameters for simple ones such as ``id`` (a repeated name:
        the first wins, as in ``oklog.query.params``)."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.raw_query.decode("latin-1"), keep_blank_values=True):
            out.setdefault(key, value)
        return out

    async def stream(self) -> AsyncIterator[bytes]:
        """The request body chunk by chunk, never held whole."""
        while not self._body_done:
            with trio.move_on_after(self.body_timeout) as waited:
                msg = await self._receive()
            if waited.cancelled_caught:
                raise RequestTimeout(f"no request body bytes for {self.body_timeout:g}s (-api.idle-timeout)")
            if msg["type"] == "http.disconnect":
                raise ClientGone("client disconnected")
            self._body_done = not msg.get("more_body", False)
            chunk = msg.get("body", b"")
            if chunk:
                yield chunk

    async def wait_disconnect(self) -> None:
        """Return once the client has gone away (an unread body is drained
        first).  Run it beside long work whose answer nobody may wait for."""
        try:
            async for _ in self.stream():
                pass
        except (ClientGone, RequestTimeout):  # a client that stalls its body is as good as gone
            return
        while (await self._receive())["type"] != "http.disconnect":
            pass


@dataclass
class Response:
    status: int = 200
    body: Body = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain; charset=utf-8"
    #: A streamed body's length when known before it is sent: it goes out
    #: as ``Content-Length`` rather than chunked (no framing copy of every
    #: chunk, and a client can tell a cut-short answer); a body that turns
    #: out longer or shorter breaks the connection instead of ending.
    length: int | None = None


def text(status: int, message: str) -> Response:
    return Response(status, (message.rstrip("\n") + "\n").encode())


def json_response(data: Any, status: int = 200) -> Response:
    import json

    return Response(status, json.dumps(data, indent=2).encode() + b"\n", content_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Handler], Handler]


class Router:
    """Exact-path routing; ``GET`` routes answer ``HEAD`` too unless told."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Handler] = {}
        self._paths: set[str] = set()
        self._middleware: list[Middleware] = []
        self._app: Handler = self._dispatch
        self.body_timeout = math.inf  # for every request's body (oklog.node: -api.idle-timeout)

    def add(self, methods: str, path: str, handler: Handler) -> None:
        for method in methods.split("|"):
            self._routes[(method, path)] = handler
        self._paths.add(path)

    def mount(self, other: "Router") -> None:
        self._routes.update(other._routes)
        self._paths |= other._paths

    def use(self, middleware: Middleware) -> None:
        """Wrap every request; the first middleware added is the outermost."""
        self._middleware.append(middleware)
        app: Handler = self._dispatch
        for mw in reversed(self._middleware):
            app = mw(app)
        self._app = app

    def route_of(self, path: str) -> str:
        """``path`` if it is a route here, else ``"other"`` (a bounded label)."""
        return path if path in self._paths else "other"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(
            method=scope["method"],
            path=scope["path"],
            raw_query=scope.get("query_string", b""),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            _receive=receive,
            client=_client(scope),
            body_timeout=self.body_timeout,
        )
        response = await self._app(request)
        await _send(response, request, send)

    async def _dispatch(self, request: Request) -> Response:
        handler = self._routes.get((request.method, request.path))
        if handler is None and request.method == "HEAD":
            handler = self._routes.get(("GET", request.path))
        if handler is None:
            if request.path in self._paths:
                return text(405, f"method {request.method} not allowed on {request.path}")
            return text(404, f"no such endpoint: {request.path}")
        try:
            return await handler(request)
        except OklogError as exc:
            if exc.status_hint >= 500:
                log.warning("event=request_failed path=%s error=%r", request.path, exc)
            return text(exc.status_hint, _one_line(str(exc)))
        except Exception:
            log.exception("event=internal_error path=%s", request.path)
            return text(500, "internal error (see the node's log)")


def request_metrics(router: Router) -> Middleware:
    """Count every request and time it to its response headers."""

    def wrap(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            started = time.monotonic()
            response = await next_handler(request)
            route = router.route_of(request.path)
            metrics.http_requests.labels(request.method, route, str(response.status)).inc()
            metrics.http_seconds.labels(route).observe(time.monotonic() - started)
            return response

        return handle

    return wrap


_UNSAFE_IN_HEADER = re.compile(r"[\x00-\x1f\x7f]|[^\x00-\xff]")


def header_value(value: str) -> bytes:
    """A header value that is always legal HTTP: control bytes and characters
    beyond latin-1 are percent-escaped (headers echo user input such as q)."""
    escaped = _UNSAFE_IN_HEADER.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)
    return escaped.encode("latin-1")


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "error"


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send(response: Response, request: Request, send: Any) -> None:
    headers = [(b"content-type", response.content_type.encode())]
    headers += [(k.lower().encode(), header_value(v)) for k, v in response.headers.items()]
    body = response.body
    if isinstance(body, bytes):
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        payload = b"" if request.method == "HEAD" else body
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        return
    if response.length is not None and request.method != "HEAD":
        headers.append((b"content-length", str(response.length).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if request.method != "HEAD":
        try:
            whole = await _stream_body(body, request, send, response.length)
            if not whole and response.length is not None:
                return  # the client left: no end to a body shorter than declared
        except Exception as exc:
            # The headers are gone: the one way left to say "this answer is
            # incomplete" is to break the connection instead of ending the
            # body.  Returning without the final body message does that
            # (hypercorn closes a response left unfinished, as when the app
            # raises), without a traceback in the log for an expected cut.
            if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            log.warning("event=stream_failed path=%s error=%r action=abort_connection",
                        request.path, exc)
            return
    elif hasattr(body, "aclose"):
        await body.aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stream_body(body: AsyncIterator[bytes], request: Request, send: Any,
                       length: int | None = None) -> bool:
    """Send chunks until done or until the client disconnects (then False:
    nothing more to send).  With a declared ``length``, a body that is
    longer or shorter is a ``BodyLengthError``.  The chunk that completes
    the declared length is held back until the body has ended: sent at
    once, a body that then goes on (longer than declared) or fails would
    look whole to the client, who has every byte it was told to expect."""
    gone = False
    last = b""  # the chunk that completes ``length``, not sent yet

    async def watch_disconnect(cancel: trio.CancelScope) -> None:
        nonlocal gone
        await request.wait_disconnect()
        gone = True
        cancel.cancel()

    sent = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_disconnect, nursery.cancel_scope)
        async with aclosing(body) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                if chunk:
                    sent += len(chunk)
                    if length is not None and sent >= length:
                        if sent > length:
                            raise BodyLengthError(f"more than the {length} bytes declared")
                        last = chunk
                        continue
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        nursery.cancel_scope.cancel()
    if gone:
        return False
    if length is not None and sent != length:
        raise BodyLengthError(f"{sent} bytes of the {length} declared")
    if last:
        await send({"type": "http.response.body", "body": last, "more_body": True})
    return True
