"""The ingest HTTP API (``/ingest/*``), wire-compatible with OK Log v0.3.

Store nodes pull: ``next`` hands out the oldest flushed segment as pending,
``read`` streams it, ``commit`` deletes it (428 if it was never read),
``failed`` returns it for another store node to take.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, BinaryIO, Callable

import trio

from ..errors import UnknownSegment
from ..http import Request, Response, Router, json_response, text
from .log import IngestLog

log = logging.getLogger("oklog.ingest")

READ_CHUNK = 1 << 20


def ingest_router(ingest_log: IngestLog, cluster_state: Callable[[], dict]) -> Router:
    router = Router()

    async def next_segment(request: Request) -> Response:
        seg_id = ingest_log.next()
        if seg_id is None:
            return text(404, "no segments available")
        return Response(200, seg_id.encode())

    async def read_segment(request: Request) -> Response:
        seg_id = request.params.get("id", "")
        path = ingest_log.read_path(seg_id)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise UnknownSegment(f"segment file {path.name} is gone") from None
        return Response(200, _chunks(f, lambda: ingest_log.mark_read(seg_id)),
                        content_type="application/octet-stream")

    async def commit(request: Request) -> Response:
        ingest_log.commit(request.params.get("id", ""))
        return text(200, "OK")

    async def failed(request: Request) -> Response:
        ingest_log.failed(request.params.get("id", ""))
        return text(200, "OK")

    async def segment_state(request: Request) -> Response:
        return json_response(ingest_log.segment_state())

    async def clusterstate(request: Request) -> Response:
        return json_response(cluster_state())

    router.add("GET", "/ingest/next", next_segment)
    router.add("GET", "/ingest/read", read_segment)
    router.add("POST", "/ingest/commit", commit)
    router.add("POST", "/ingest/failed", failed)
    router.add("GET", "/ingest/_segmentstate", segment_state)
    router.add("GET", "/ingest/_clusterstate", clusterstate)
    return router


async def _chunks(f: BinaryIO, done: Callable[[], None]) -> AsyncIterator[bytes]:
    """Stream a file in large chunks, yielding to other tasks in between;
    ``done()`` once the last chunk is out (before the body's end is sent)."""
    with f:
        while True:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                break
            yield chunk
            await trio.lowlevel.checkpoint()
    try:
        done()
    except UnknownSegment:  # timed out and handed to another store meanwhile
        log.info("event=read_after_timeout segment=%s", getattr(f, "name", "?"))
