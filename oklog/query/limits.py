"""A deadline for every query and a cap on how many run at once
(``-store.query-timeout``, ``-store.max-concurrent-queries``).

Theory of operation: ``QueryLimits.middleware`` wraps the API's routing
(after the token check, so a stranger takes no slot) and acts on the
query endpoints only (``LIMITED``):

- **Cap**: a ``GET`` (or the walker's ``POST /store/repair``) on a
  limited endpoint takes a slot of its pool for as long as it runs -- to
  the end of its streamed body, or until the client leaves.  With every
  slot taken it is answered at once ``503`` with ``Retry-After: 1`` and a
  one-line reason (nothing queues: a queue would only hide the overload
  from the client, who can retry elsewhere), and counted in ``oklog_store_queries_refused_total{endpoint}``.  There are
  two pools of ``-store.max-concurrent-queries`` slots each: ``cluster``
  (``/store/query``, ``/store/histogram``, ``/store/repair``: what users
  and operators ask, each of which scatters to every store) and ``local``
  (``/store/_query``, ``/store/_histogram``: what peers' cluster queries
  ask of this store).  Separate pools mean a node busy with its own
  users' queries still answers its peers' shares, and the reverse, so
  nodes never starve each other.  ``HEAD`` (statistics from block tables,
  no scan) takes no slot; ``/store/stream`` has its own client limit.
- **Deadline**: every request to a limited endpoint (``HEAD`` too) has
  ``-store.query-timeout`` from its arrival.  Past it before the headers,
  the answer is ``503`` (``phase=head``); past it during a streamed body,
  the body is cut by breaking the connection (``oklog.http``'s convention:
  a cleanly ended body would pass for a complete answer), ``phase=body``.
  Both are counted in ``oklog_store_query_timeouts_total`` and logged
  (``event=query_timeout``).  A cluster query's deadline covers its peers:
  cutting it closes their ``/store/_query`` answers, which stops their
  scans, and each peer also holds its own deadline.  A repair step cut at
  its deadline stops where it is (its temporary files go; copies already
  sent stay, which at worst over-replicates) and is answered ``503``;
  ``oklog repair`` reports that step as failed and goes on.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import trio

from .. import metrics
from ..errors import QueryTimeout
from ..http import Handler, Middleware, Request, Response, text

__all__ = ["LIMITED", "QueryLimits"]

log = logging.getLogger("oklog.query")

#: endpoint → its slot pool
LIMITED = {
    "/store/query": "cluster",
    "/store/histogram": "cluster",
    "/store/repair": "cluster",  # a walker's step scatters an id query to every store
    "/store/_query": "local",
    "/store/_histogram": "local",
}


class QueryLimits:
    """``timeout`` seconds per query (0: none); ``max_concurrent`` running
    queries per pool (0: no cap): every request but ``HEAD``."""

    def __init__(self, timeout: float, max_concurrent: int) -> None:
        self.timeout = timeout
        self.max_concurrent = max_concurrent
        self.running = {pool: 0 for pool in set(LIMITED.values())}

    def middleware(self) -> Middleware:
        def wrap(next_handler: Handler) -> Handler:
            async def handle(request: Request) -> Response:
                pool = LIMITED.get(request.path)
                if pool is None:
                    return await next_handler(request)
                return await self._limited(request, pool, next_handler)

            return handle

        return wrap

    async def _limited(self, request: Request, pool: str, next_handler: Handler) -> Response:
        slot = request.method != "HEAD"  # GET; POST on /store/repair
        if slot and self.max_concurrent and self.running[pool] >= self.max_concurrent:
            metrics.queries_refused.labels(request.path).inc()
            log.warning("event=query_refused path=%s running=%d limit=%d client=%s",
                        request.path, self.running[pool], self.max_concurrent, request.client)
            response = text(503, f"too many queries running on this node ({self.max_concurrent}, "
                                 f"-store.max-concurrent-queries); retry shortly")
            response.headers["Retry-After"] = "1"
            return response
        release = self._take(pool) if slot else _nothing
        deadline = trio.current_time() + self.timeout if self.timeout else float("inf")
        try:
            with trio.CancelScope(deadline=deadline) as scope:
                response = await next_handler(request)
        except BaseException:
            release()
            raise
        if scope.cancelled_caught:
            release()
            self._timed_out(request, "head")
            return text(503, f"query exceeded -store.query-timeout ({self.timeout:g}s) "
                             f"before its answer began")
        if isinstance(response.body, bytes):
            release()
            return response
        response.body = _Deadlined(response.body, deadline, release,
                                   lambda: self._timed_out(request, "body"), self.timeout)
        return response

    def _take(self, pool: str) -> Any:
        self.running[pool] += 1
        metrics.queries_running.inc()
        taken = [True]

        def release() -> None:
            if taken:
                taken.clear()
                self.running[pool] -= 1
                metrics.queries_running.dec()

        return release

    def _timed_out(self, request: Request, phase: str) -> None:
        metrics.query_timeouts.labels(request.path, phase).inc()
        log.warning("event=query_timeout path=%s phase=%s timeout=%gs client=%s query=%r",
                    request.path, phase, self.timeout, request.client,
                    request.raw_query[:200].decode("latin-1"))


def _nothing() -> None:
    return None


class _Deadlined:
    """A streamed body cut at ``deadline``: the next chunk past it raises
    ``QueryTimeout`` (the connection is then broken).  ``release`` runs
    once, when the body ends, fails, or is closed unread."""

    def __init__(self, body: AsyncIterator[bytes], deadline: float, release: Any, on_timeout: Any,
                 timeout: float) -> None:
        self._body = body
        self._deadline = deadline
        self._release = release
        self._on_timeout = on_timeout
        self._timeout = timeout
        self._closed = False

    def __aiter__(self) -> "_Deadlined":
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            with trio.CancelScope(deadline=self._deadline) as scope:
                return await self._body.__anext__()
        except BaseException:
            await self.aclose()
            raise
        # only reached when our deadline cancelled the read
        await self.aclose()
        self._on_timeout()
        raise QueryTimeout(f"query exceeded -store.query-timeout ({self._timeout:g}s)")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "aclose", None)
            if close is not None:
                with trio.CancelScope(shield=True):
                    await close()
        finally:
            self._release()
