"""The query HTTP API of a store node, wire-compatible with OK Log v0.3.

``/store/_query`` answers from this node only; ``/store/query`` scatters
to every live store (its own share is answered locally, without an HTTP
round trip) and merges the answers.  ``HEAD`` on either returns the
statistics headers and reads no record data.
"""

from __future__ import annotations

import functools
import time
from contextlib import aclosing
from typing import AsyncIterator, Callable

from .. import metrics
from ..cluster.membership import Membership
from ..http import Request, Response, Router, json_response
from ..peer import Peers
from ..store.log import StoreLog
from . import gather, local
from .copies import ids_block
from .params import Query, flag_param, parse_query, split_params
from .repair import IDS_HEADER, Repairer
from .workers import Scanner

def _switch(request: Request, name: str) -> bool:
    """A present-means-true parameter (``ids``, ``dry-run``), as ``regex``."""
    return flag_param(split_params(request.raw_query), name)


async def _ids_only(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for block in body:
        yield ids_block(block)


def query_headers(query: Query) -> dict[str, str]:
    return {
        "X-Oklog-From": query.from_text,
        "X-Oklog-To": query.to_text,
        "X-Oklog-Q": query.q.decode("latin-1"),  # control bytes are escaped by oklog.http
        "X-Oklog-Regex": "true" if query.regex else "false",
    }


async def timed(body: AsyncIterator[bytes], kind: str, started: float) -> AsyncIterator[bytes]:
    """``body``, observed in ``oklog_store_query_seconds`` once it ends
    (a query's cost is its whole body, not its headers)."""
    try:
        async with aclosing(body) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk
    finally:
        metrics.query_seconds.labels(kind).observe(time.monotonic() - started)


def _kind(request: Request, kind: str) -> str:
    return "stats" if request.method == "HEAD" else kind


def query_router(
    store: StoreLog,
    membership: Membership,
    peers: Peers,
    warnings: Callable[[], list[str]] = list,
    scanner: Scanner | None = None,
    repairer: Repairer | None = None,
) -> Router:
    """``warnings()``: what the user should know about this cluster, sent
    with every cluster query as one ``X-Oklog-Warning`` header (``|``
    between warnings); ``oklog query`` prints it on stderr.

    ``repairer``: read repair on ``/store/query`` and the walker's
    ``POST /store/repair`` (``oklog.query.repair``).  Extensions of
    ``/store/_query``: every answer names its node (``X-Oklog-Node``, the
    advertised API URL); ``ids=true`` answers ``ULID LF`` lines only (and
    says so: ``X-Oklog-Ids: true``), for counting copies cheaply.
    """
    router = Router()

    async def local_query(request: Request) -> Response:
        started = time.monotonic()
        query = parse_query(request.raw_query)
        ids = _switch(request, "ids")
        p = await local.prepare(store, query, scanner, stats_only=request.method == "HEAD")
        headers = query_headers(query) | p.stats_headers() | {
            "X-Oklog-Nodes-Queried": "1",
            "X-Oklog-Error-Count": "0",
            "X-Oklog-Duration": f"{time.monotonic() - started:.6f}s",
            gather.NODE_HEADER: membership.self_url(),
        }
        if ids:
            headers[IDS_HEADER] = "true"
        metrics.queries.labels(_kind(request, "local")).inc()
        if request.method == "HEAD":
            metrics.query_seconds.labels("stats").observe(time.monotonic() - started)
            return Response(200, b"", headers, content_type="text/plain; charset=utf-8")
        if ids:
            return Response(200, timed(_ids_only(local.run(p)), "local", started), headers,
                            content_type="text/plain; charset=utf-8")
        try:
            length = await local.exact_size(p)
        except BaseException:  # cancelled: the scan will never start to let go of its files
            p.release()
            raise
        return Response(200, timed(local.run(p), "local", started), headers,
                        content_type="text/plain; charset=utf-8", length=length)

    async def cluster_query(request: Request) -> Response:
        started = time.monotonic()
        query = parse_query(request.raw_query)  # 400 here, before bothering peers
        # Absolute bounds: a relative "from" must mean the same instant on every store.
        gathered = await gather.scatter(
            peers, membership.stores(), query.encode().encode(), request.method,
            self_url=membership.self_url(),
            local_plan=lambda: local.prepare(store, query, scanner,
                                             stats_only=request.method == "HEAD"))
        headers = query_headers(query) | gather.stats_headers(gathered, started)
        notes = warnings()
        if notes:
            headers["X-Oklog-Warning"] = " | ".join(notes)
        status = 206 if gathered.errors else 200
        metrics.queries.labels(_kind(request, "cluster")).inc()
        response = Response(status, b"", headers)
        if request.method == "HEAD":
            for r in gathered.responses:
                await r.aclose()
            metrics.query_seconds.labels("stats").observe(time.monotonic() - started)
            return response
        short = repairer.counting(gathered) if repairer is not None else None
        if repairer is None or short is None:
            response.length = await gather.passed_through_size(gathered)
            body = gather.merged_body(gathered)
        else:  # read repair: the merge counts copies; the repairer acts afterwards
            body = gather.merged_body(gathered, copies=repairer.rf, short=short,
                                      done=functools.partial(repairer.submit, query, short))
        response.body = timed(body, "cluster", started)
        return response

    async def repair(request: Request) -> Response:
        query = parse_query(request.raw_query)  # from, to (q and the rest are ignored)
        dry_run = _switch(request, "dry-run")
        if repairer is None:
            return json_response({"error": "repair is not available on this node"}, 501)
        stats = await repairer.walk(query.lo, query.hi, dry_run=dry_run)
        metrics.queries.labels("repair").inc()
        return json_response(stats.as_json())

    router.add("GET|HEAD", "/store/_query", local_query)
    router.add("GET|HEAD", "/store/query", cluster_query)
    router.add("POST", "/store/repair", repair)
    return router
