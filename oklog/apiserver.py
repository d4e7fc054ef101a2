"""The HTTP API server: hypercorn's HTTP/1.1 protocol behind our own accept
loop, so the node can bound what strangers hold open.

Why not ``hypercorn.trio.serve``: it accepts every connection and keeps it
as long as the client likes, so a few hundred idle or half-sent requests
(slowloris) could use up the node's file descriptors and starve real
queries.  Here each accepted connection is admitted or refused by a
``ConnectionLimit`` (``-api.max-connections``) before hypercorn sees it:

- admitted: served by hypercorn's ``TCPServer`` (TLS handshake bounded by
  ``TLS_HANDSHAKE_TIMEOUT``); hypercorn's idle timer
  (``keep_alive_timeout`` = ``-api.idle-timeout``) runs from the moment a
  connection opens or its last response ends until a *complete* request
  head has arrived, so it bounds both idle keep-alive connections and
  request heads sent slowly or only in part; its request-head size limit
  (``h11_max_incomplete_size``, 16 KiB) answers bigger heads with 431;
- refused (the limit reached): a plain-HTTP client gets ``503`` with
  ``Retry-After`` and a one-line reason, then the connection is closed; a
  TLS client is closed before the handshake (a refusal in clear text would
  not be understood, and a handshake costs what the limit protects).
  Each refusal is counted (``oklog_http_refused_connections``); the log
  says so at most every ``LOG_EVERY`` seconds.

Streamed response bodies (queries, live streams) are not subject to a read
timeout: only the client's silence *before* a request is bounded (a stalled
request *body* is ``oklog.http``'s 408; the per-query deadline is
``oklog.query.limits``).  No ASGI lifespan events are sent: ``oklog.http``'s
router has nothing to do on them.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import Any

import hypercorn.config
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from . import metrics

__all__ = ["ConnectionLimit", "serve_api"]

log = logging.getLogger("oklog.http.server")

TLS_HANDSHAKE_TIMEOUT = 10.0
GRACEFUL_TIMEOUT = 3.0  # requests in flight at shutdown get this long
REFUSAL_TIMEOUT = 1.0  # to write the 503, and again to let the client read it
LOG_EVERY = 10.0
BACKLOG = 1024  # capped by the kernel (net.core.somaxconn)
# accept() failing for want of resources: wait and go on (as trio.serve_listeners does)
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class ConnectionLimit:
    """How many API connections are open, and whether one more may be (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def admit(self) -> bool:
        if self.limit and self.open >= self.limit:
            return False
        self.open += 1
        metrics.http_connections.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        metrics.http_connections.set(self.open)


class _TCPServer(TCPServer):
    """hypercorn's connection, minus one flaw: once the client has closed
    its side, hypercorn still waits out the idle timer before it lets go of
    the connection (and its file descriptor), so clients that open and
    close would count against the limit for ``-api.idle-timeout`` each."""

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


class _HypercornConfig(hypercorn.config.Config):
    """hypercorn's config with an SSL context made by ``oklog.tls`` (checked
    at start-up, HTTP/1.1 only) instead of one it builds from file names."""

    tls: ssl.SSLContext | None = None

    @property
    def ssl_enabled(self) -> bool:
        return self.tls is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.tls


def refusal(limit: int) -> bytes:
    """The whole answer to a connection over ``limit``: 503, one line."""
    reason = (f"too many connections to this node's API (limit {limit}, -api.max-connections); "
              f"retry shortly\n").encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(reason)).encode() + b"\r\n"
            b"Retry-After: 1\r\n"
            b"Connection: close\r\n\r\n" + reason)


class _Server:
    def __init__(self, app: Any, tls: ssl.SSLContext | None, max_connections: int,
                 idle_timeout: float) -> None:
        config = _HypercornConfig()
        config.tls = tls
        config.ssl_handshake_timeout = TLS_HANDSHAKE_TIMEOUT
        config.accesslog = None
        config.errorlog = logging.getLogger("oklog.http.server")
        config.graceful_timeout = GRACEFUL_TIMEOUT
        config.keep_alive_timeout = idle_timeout
        config.keep_alive_max_requests = 1_000_000
        self.config = config
        self.app = ASGIWrapper(app)
        self.context = WorkerContext(None)
        self.limit = ConnectionLimit(max_connections)
        self._refused_unlogged = 0
        self._last_log = -LOG_EVERY

    async def accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("event=accept_failed error=%r action=retry_in_100ms", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self.connection, stream)

    async def connection(self, stream: trio.SocketStream) -> None:
        if not self.limit.admit():
            await self.refuse(stream)
            return
        served: Any = stream
        try:
            if self.config.tls is not None:
                served = trio.SSLStream(stream, self.config.tls, server_side=True, https_compatible=True)
            await _TCPServer(self.app, self.config, self.context, ConnectionState({}), served)
        finally:
            # TCPServer leaves a stream whose TLS handshake failed open (as trio.serve_listeners would)
            await trio.aclose_forcefully(served)
            self.limit.release()

    async def refuse(self, stream: trio.SocketStream) -> None:
        metrics.http_refused.labels("max_connections").inc()
        self._refused_unlogged += 1
        now = trio.current_time()
        if now - self._last_log >= LOG_EVERY:
            log.warning("event=api_connections_refused count=%d limit=%d reason=max_connections",
                        self._refused_unlogged, self.limit.limit)
            self._refused_unlogged, self._last_log = 0, now
        try:
            if self.config.tls is None:
                with trio.move_on_after(REFUSAL_TIMEOUT):
                    await stream.send_all(refusal(self.limit.limit))
                    await stream.send_eof()
                # Read (and drop) what the client sent, so closing does not
                # reset the connection before it has read the answer.
                with trio.move_on_after(REFUSAL_TIMEOUT):
                    while await stream.receive_some(65536):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def serve_api(app: Any, socks: list[socket.socket], stop: trio.Event,
                    tls: ssl.SSLContext | None = None, *, max_connections: int = 0,
                    idle_timeout: float = 20.0,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Serve ``app`` on ``socks`` (listening sockets, adopted and closed
    here) until ``stop`` is set; then close idle connections and give
    requests in flight ``GRACEFUL_TIMEOUT``.  ``task_status`` gets the URLs."""
    server = _Server(app, tls, max_connections, idle_timeout)
    scheme = "https" if tls is not None else "http"
    for sock in socks:  # bound by oklog.listen, not yet listening
        sock.listen(BACKLOG)
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in socks]
    binds = [f"{scheme}://{_host_port(l.socket.getsockname())}" for l in listeners]
    for bind in binds:
        log.info("event=api_listening url=%s", bind)
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(server.accept, listener, connections)
                task_status.started(binds)
                await stop.wait()
                acceptors.cancel_scope.cancel()
            for listener in listeners:  # new connections are refused by the kernel now
                await trio.aclose_forcefully(listener)
            await server.context.terminated.set()  # idle connections close now
            connections.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


def _host_port(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
