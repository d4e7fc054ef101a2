"""The store HTTP API (``/store/*``), wire-compatible with OK Log v0.3.

``/store/replicate`` takes a segment from a consumer; ``/store/_query``
answers from this node only; ``/store/query`` scatters to every live store
(itself included, over HTTP like any other) and merges the answers.
``HEAD`` on either query returns the statistics headers and reads no
record data.
"""

from __future__ import annotations

import time
from typing import Callable

from .. import metrics
from ..cluster.membership import Membership
from ..errors import CorruptSegment
from ..http import Request, Response, Router, json_response, text
from ..peer import Peers
from ..query import gather, local
from ..query.params import Query, parse_query
from .log import StoreLog


def query_headers(query: Query) -> dict[str, str]:
    return {
        "X-Oklog-From": query.from_text,
        "X-Oklog-To": query.to_text,
        "X-Oklog-Q": query.q.decode("latin-1"),  # control bytes are escaped by oklog.http
        "X-Oklog-Regex": "true" if query.regex else "false",
    }


def store_router(
    store: StoreLog, membership: Membership, peers: Peers, cluster_state: Callable[[], dict]
) -> Router:
    router = Router()

    async def replicate(request: Request) -> Response:
        try:
            segment = await store.write_segment(request.stream())
        except CorruptSegment:
            metrics.replicate_rejected.inc()
            raise
        return text(200, "OK" if segment else "No records")

    async def local_query(request: Request) -> Response:
        started = time.monotonic()
        query = parse_query(request.raw_query)
        p = local.plan(store, query)
        headers = query_headers(query) | p.stats_headers() | {
            "X-Oklog-Nodes-Queried": "1",
            "X-Oklog-Error-Count": "0",
            "X-Oklog-Duration": f"{time.monotonic() - started:.6f}s",
        }
        metrics.queries.labels("local").inc()
        body = b"" if request.method == "HEAD" else local.run(p)
        return Response(200, body, headers, content_type="text/plain; charset=utf-8")

    async def cluster_query(request: Request) -> Response:
        started = time.monotonic()
        query = parse_query(request.raw_query)  # 400 here, before bothering peers
        # Absolute bounds: a relative "from" must mean the same instant on every store.
        gathered = await gather.scatter(
            peers, membership.stores(), query.encode().encode(), request.method,
            self_url=membership.self_url(), local_plan=lambda: local.plan(store, query))
        headers = query_headers(query) | gather.stats_headers(gathered, started)
        status = 206 if gathered.errors else 200
        metrics.queries.labels("cluster").inc()
        if request.method == "HEAD":
            for r in gathered.responses:
                await r.aclose()
            return Response(status, b"", headers)
        return Response(status, gather.merged_body(gathered), headers)

    async def clusterstate(request: Request) -> Response:
        return json_response(cluster_state())

    router.add("POST", "/store/replicate", replicate)
    router.add("GET|HEAD", "/store/_query", local_query)
    router.add("GET|HEAD", "/store/query", cluster_query)
    router.add("GET", "/store/_clusterstate", clusterstate)
    return router
