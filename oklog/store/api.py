"""The store HTTP API for peers (``/store/replicate``, ``/store/_clusterstate``).

``/store/replicate`` takes a composite segment from a consumer (any node's)
and stores it; a malformed body is refused whole with a 400 and leaves
nothing behind.  The query endpoints of a store node live in
``oklog.query.api``.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import metrics
from ..errors import CorruptSegment
from ..http import Request, Response, Router, json_response, text
from .log import StoreLog


def store_router(store: StoreLog, cluster_state: Callable[[], dict[str, Any]]) -> Router:
    router = Router()

    async def replicate(request: Request) -> Response:
        try:
            segment = await store.write_segment(request.stream())
        except CorruptSegment:
            metrics.replicate_rejected.inc()
            raise
        return text(200, "OK" if segment else "No records")

    async def clusterstate(request: Request) -> Response:
        return json_response(cluster_state())

    router.add("POST", "/store/replicate", replicate)
    router.add("GET", "/store/_clusterstate", clusterstate)
    return router
