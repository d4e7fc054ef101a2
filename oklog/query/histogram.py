"""Counts of matching records per time bucket: ``/store/histogram``.

Theory of operation.  ``/store/_histogram`` answers from this node alone:
the distinct matching records of its segments, per bucket
(``oklog.query.buckets``).  It plans like ``/store/_query``
(``query.local``) and then, for an empty query (no ``q``, no ``topic``),
counts from *metadata*: a block of a segment that overlaps no other segment
of the range, that lies wholly inside ``[from, to]`` and whose first and last
ULID fall in one bucket adds its record count from the segment's table and
is never read.  Every other block is scanned by the existing scanner (off
the event loop, merged and de-duplicated by ULID exactly as a query is), and
each record counts in the bucket of its ULID's millisecond.  Both ways give
the same numbers: a store segment never repeats a ULID, and overlapping
segments are merged before counting.

``/store/histogram`` counts *distinct records across the cluster*, though
every record is stored on replication-factor nodes.  Counts cannot be
de-duplicated, so it works in two rounds:

1. every store's ``/store/_histogram`` (this node's own share directly);
   a bucket where at most one store has records is exact as it is;
2. buckets where two or more stores have records (*contested*; with a
   replication factor above 1, usually all of them) are counted again from
   the records themselves: one ``/store/query``-style scatter-gather over
   the time span of the contested buckets, merged and de-duplicated by ULID,
   each record counted in its bucket.  As in ``/store/query``, a node
   reached under two addresses is merged once (``gather.one_per_node``,
   by ``X-Oklog-Node``); its other answers are closed unread.  (Round 1
   needs no such care: such a node reports its buckets twice, which makes
   them contested, so round 2 counts them again.)

A query that must be scanned anyway (a ``q`` or a ``topic``) on several
stores skips round 1: every bucket would be contested, and round 1 would
only scan everything once more.

So every count is exact when every store answered; round 2 costs what the
same ``/store/query`` costs, round 1 is free for empty queries on a single
store.  A store that fails in either round is listed in ``errors``, the
status is 206 and the counts are then lower bounds (as a 206 query is
partial).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import trio

from .. import metrics
from ..cluster.membership import Membership
from ..errors import ClientGone, OklogError, PeerError
from ..http import Request, Response, Router, json_response
from ..peer import Peers, QueryAnswer
from ..store.log import StoreLog
from ..ulid import ms_of, ulid_for_ms
from . import gather, local
from .buckets import Buckets, parse_buckets
from .params import Query, parse_query
from .streams import merge_streams
from .workers import Scanner

log = logging.getLogger("oklog.query")

__all__ = ["Histogram", "cluster_histogram", "histogram_router", "local_histogram"]


@dataclass
class Histogram:
    """Counts per bucket, and how they were obtained."""

    buckets: Buckets
    counts: np.ndarray
    nodes: int = 1
    errors: list[str] = field(default_factory=list)
    segments: int = 0
    blocks_counted: int = 0  # from metadata, never read
    blocks_scanned: int = 0
    rescanned_buckets: int = 0  # contested buckets counted again by ULID (round 2)

    def to_json(self, query: Query) -> dict[str, Any]:
        b = self.buckets
        return {
            "from": query.lo.decode("ascii"),
            "to": query.hi.decode("ascii"),
            "from_ms": b.from_ms,
            "to_ms": b.to_ms,
            "bucket_ms": b.step_ms,
            "buckets": [{"t": b.start(i), "count": int(c)} for i, c in enumerate(self.counts)],
            "total": int(self.counts.sum()),
            "exact": not self.errors,
            "nodes_queried": self.nodes,
            "errors": self.errors,
            "segments_queried": self.segments,
            "blocks_from_metadata": self.blocks_counted,
            "blocks_scanned": self.blocks_scanned,
            "buckets_deduplicated": self.rescanned_buckets,
        }


def layout(query: Query, n: int) -> Buckets:
    return Buckets.plan(ms_of(query.lo), ms_of(query.hi), n)


# --- one node ------------------------------------------------------------------------------


async def local_histogram(store: StoreLog, query: Query, buckets: Buckets,
                          scanner: Scanner | None = None) -> Histogram:
    """This node's distinct matching records per bucket (module docstring)."""
    p = await local.prepare(store, query, scanner)
    counts = buckets.zeros()
    h = Histogram(buckets, counts, segments=p.segments)
    metadata = query.matcher.strategy == "all"  # empty query: every record matches
    groups: list[list[local.SegmentPlan]] = []
    for group in p.groups:
        readable = [sp for sp in group if sp.blocks]
        if metadata and len(readable) == 1:
            readable = [_count_from_table(readable[0], query, buckets, h)]
        h.blocks_scanned += sum(len(sp.blocks) for sp in readable)
        groups.append(readable)
    async for block in local.run(replace(p, groups=groups)):
        buckets.count_block(block, counts)
    return h


def _count_from_table(sp: local.SegmentPlan, query: Query, buckets: Buckets,
                      h: Histogram) -> local.SegmentPlan:
    """Count the blocks the table answers for; the plan of the rest."""
    t = sp.table
    assert t is not None  # prepared: verified segments have tables
    rest = []
    for i in sp.blocks:
        first, last = t.firsts[i], t.lasts[i]
        if query.lo <= first and last <= query.hi:
            b = buckets.index(ms_of(first))
            if b == buckets.index(ms_of(last)):
                h.counts[b] += t.records[i]
                h.blocks_counted += 1
                continue
        rest.append(i)
    return replace(sp, blocks=rest)


def _answer_counts(body: bytes, buckets: Buckets) -> np.ndarray:
    """A peer's ``/store/_histogram`` counts, checked against our layout."""
    try:
        data = json.loads(body)
        counts = [int(b["count"]) for b in data["buckets"]]
        if data["bucket_ms"] != buckets.step_ms or data["from_ms"] != buckets.from_ms \
                or len(counts) != len(buckets) or min(counts, default=0) < 0:
            raise ValueError("a different bucket layout")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unusable histogram answer: {exc}") from None
    return np.array(counts, np.int64)


# --- the cluster ---------------------------------------------------------------------------


async def cluster_histogram(store: StoreLog | None, stores: list[str], peers: Peers, query: Query,
                            n: int, *, self_url: str | None = None,
                            scanner: Scanner | None = None) -> Histogram:
    """Distinct matching records per bucket across ``stores`` (module docstring)."""
    buckets = layout(query, n)
    stores = list(dict.fromkeys(stores))
    raw = (query.encode() + f"&buckets={n}").encode()
    answers: dict[str, Histogram] = {}
    errors: list[str] = []

    async def one(peer: str) -> None:
        try:
            if peer == self_url and store is not None:
                answers[peer] = await local_histogram(store, query, buckets, scanner)
            else:
                body = await peers.histogram(peer, raw)
                answers[peer] = Histogram(buckets, _answer_counts(body, buckets))
        except (PeerError, OklogError, OSError, ValueError) as exc:
            errors.append(f"{peer}: {exc}")
            log.warning("event=histogram_peer_failed peer=%s error=%s", peer, exc)

    # A query that must be scanned anyway, on several stores: round 1 would
    # scan everything once more for nothing (every bucket is contested).
    every_bucket_contested = query.matcher.strategy != "all" and len(stores) > 1
    if not every_bucket_contested:
        async with trio.open_nursery() as nursery:
            for peer in stores:
                nursery.start_soon(one, peer)

    counts = buckets.zeros()
    holders = np.zeros(len(buckets), np.int64)
    for a in answers.values():
        counts += a.counts
        holders += a.counts > 0
    h = Histogram(buckets, counts, nodes=len(stores), errors=errors,
                  segments=sum(a.segments for a in answers.values()),
                  blocks_counted=sum(a.blocks_counted for a in answers.values()),
                  blocks_scanned=sum(a.blocks_scanned for a in answers.values()))
    metrics.query_errors.inc(len(errors))  # round 2 counts its own
    contested = np.ones(len(buckets), bool) if every_bucket_contested else holders >= 2
    if contested.any():
        await _recount(h, contested, store, stores, peers, query, self_url, scanner)
    return h


async def _recount(h: Histogram, contested: np.ndarray, store: StoreLog | None, stores: list[str],
                   peers: Peers, query: Query, self_url: str | None, scanner: Scanner | None) -> None:
    """Round 2: count the contested buckets from the merged, de-duplicated records."""
    b = h.buckets
    where = np.flatnonzero(contested)
    lo = max(query.lo, ulid_for_ms(max(b.start(int(where[0])), 0)))
    hi = min(query.hi, ulid_for_ms(b.start(int(where[-1])) + b.step_ms - 1, upper=True))
    span = replace(query, lo=lo, hi=hi, from_text="", to_text="")
    gathered = await gather.scatter(
        peers, stores, span.encode().encode(), "GET", self_url=self_url,
        local_plan=(lambda: local.prepare(store, span, scanner)) if store is not None else None)
    # One node reached under two addresses holds one copy: its first answer
    # is merged, the others are closed unread (as ``/store/query`` does).
    kept = gather.Gathered(gather.one_per_node(gathered.responses))
    recount = b.zeros()
    broken: list[str] = []
    try:
        async for block in merge_streams([_blocks(r, broken) for r in kept.responses]):
            b.count_block(block, recount, only=contested)
    finally:
        with trio.CancelScope(shield=True):
            for r in gathered.responses:
                await r.aclose()
    h.counts[contested] = recount[contested]
    h.rescanned_buckets = int(contested.sum())
    h.segments = max(h.segments, kept.total("X-Oklog-Segments-Queried"))
    h.blocks_scanned += kept.total("X-Oklog-Blocks-Queried")
    h.errors.extend(gathered.errors + broken)


async def _blocks(answer: QueryAnswer, broken: list[str]) -> AsyncIterator[bytes]:
    """A store's records as blocks of whole lines; an answer that breaks off
    ends there and is listed in ``broken`` (the counts are then lower bounds:
    unlike a query's body, a histogram can still say so)."""
    try:
        async for block in gather.whole_lines(answer):
            yield block
    except Exception as exc:  # httpx errors, a truncated body, a segment found damaged
        metrics.query_errors.inc()
        broken.append(f"{answer.peer}: answer broke off: {exc}")
        log.warning("event=histogram_stream_broken peer=%s error=%r", answer.peer, exc)


# --- HTTP ------------------------------------------------------------------------------


def histogram_router(store: StoreLog, membership: Membership, peers: Peers,
                     scanner: Scanner | None = None,
                     warnings: Callable[[], list[str]] = list) -> Router:
    """``/store/histogram`` (the cluster) and ``/store/_histogram`` (this node)."""
    router = Router()

    def params(request: Request) -> tuple[Query, int]:
        query = parse_query(request.raw_query)
        return query, parse_buckets(request.params.get("buckets"))

    async def local_endpoint(request: Request) -> Response:
        query, n = params(request)
        h = await _unless_gone(request, lambda: local_histogram(store, query, layout(query, n), scanner))
        metrics.queries.labels("local_histogram").inc()
        return json_response(h.to_json(query))

    async def cluster_endpoint(request: Request) -> Response:
        started = time.monotonic()
        query, n = params(request)  # 400 here, before bothering peers
        h = await _unless_gone(request, lambda: cluster_histogram(
            store, membership.stores(), peers, query, n, self_url=membership.self_url(), scanner=scanner))
        body = h.to_json(query)
        body["duration_s"] = round(time.monotonic() - started, 6)
        notes = warnings()
        response = json_response(body, 206 if h.errors else 200)
        if notes:
            response.headers["X-Oklog-Warning"] = " | ".join(notes)
        metrics.queries.labels("histogram").inc()
        return response

    router.add("GET", "/store/_histogram", local_endpoint)
    router.add("GET", "/store/histogram", cluster_endpoint)
    return router


async def _unless_gone(request: Request, work: Callable[[], Awaitable[Histogram]]) -> Histogram:
    """``work()``, cancelled (scans and peer calls with it) if the client
    goes away first: a UI that zooms again drops the histogram it no longer shows."""
    result: list[Histogram] = []

    async def watch(scope: trio.CancelScope) -> None:
        await request.wait_disconnect()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        result.append(await work())
        nursery.cancel_scope.cancel()
    if not result:
        raise ClientGone("client disconnected")
    return result[0]
