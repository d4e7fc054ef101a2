"""Scatter-gather: ask every store, merge the answers by ULID, once each.

Theory of operation: ``/store/query`` sends the same query to every live
store's ``/store/_query`` concurrently and waits for all their headers (a
peer that cannot be reached, or answers with an error, counts in
``X-Oklog-Error-Count`` and turns the status into 206).  The bodies are
then merged *block by block*: every source holds its current block of whole
lines; everything up to the smallest "last ULID" among the sources still
streaming is safe to merge now, because no later block can hold a smaller
ULID.  That keeps the per-record work inside ``merge_records`` and memory at
one block per store.  A peer that breaks mid-stream is logged and dropped;
the records it already sent are kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import trio

from .. import metrics
from ..errors import OklogError, PeerError
from ..lines import aiter_blocks
from ..peer import Peers, QueryAnswer
from . import local
from .streams import ShortSink, merge_streams

log = logging.getLogger("oklog.query")

# A store answers with headers right after planning from its index, before it
# scans anything, so headers come fast even for a long rare-term scan (OK Log
# waited for the scan and gave up after 5 s).  Only the gaps between body
# chunks can be long; the peer client's read timeout covers those.
HEADER_DEADLINE = 15.0

#: ``/store/_query`` names the answering node (its advertised API URL), so a
#: merge counts copies per distinct node (an extension header).
NODE_HEADER = "X-Oklog-Node"


@dataclass
class Gathered:
    responses: list[QueryAnswer]
    errors: list[str] = field(default_factory=list)
    nodes: int = 0

    def total(self, header: str) -> int:
        """``header`` summed over the answers merged: one per node, as
        ``merged_body`` takes them (a node reached twice counts once)."""
        total = 0
        for r in one_per_node(self.responses):
            try:
                total += int(r.headers.get(header, "0"))
            except ValueError:
                pass
        return total


class LocalAnswer:
    """This node's own share of a scatter, without an HTTP round trip to itself.

    A ``QueryAnswer`` like a peer's: the same headers, and blocks
    of whole lines straight from ``query.local``.
    """

    def __init__(self, peer: str, plan: local.LocalPlan) -> None:
        self.peer = peer
        self.plan = plan
        self.headers = plan.stats_headers()

    def chunks(self) -> AsyncIterator[bytes]:
        return local.run(self.plan)

    async def aclose(self) -> None:
        self.plan.release()


async def scatter(
    peers: Peers,
    stores: list[str],
    raw_query: bytes,
    method: str,
    *,
    deadline: float = HEADER_DEADLINE,
    self_url: str | None = None,
    local_plan: Callable[[], Awaitable[local.LocalPlan]] | None = None,
) -> Gathered:
    """Open the query on every store at once; return when all have answered.

    When this node is one of ``stores`` (``self_url``), its share comes from
    ``local_plan`` directly: same answer, half the work.
    """
    gathered = Gathered(responses=[], nodes=len(set(stores)))

    async def one(store: str) -> None:
        if store == self_url and local_plan is not None:
            try:
                gathered.responses.append(LocalAnswer(store, await local_plan()))
            except (OklogError, OSError) as exc:  # e.g. a repair that could not finish
                gathered.errors.append(f"{store}: {exc}")
                log.warning("event=query_local_failed error=%r", exc)
            return
        with trio.move_on_after(deadline) as scope:
            try:
                gathered.responses.append(await peers.open_query(store, raw_query, method=method))
            except PeerError as exc:
                gathered.errors.append(str(exc))
                log.warning("event=query_peer_failed error=%s", exc)
        if scope.cancelled_caught:
            gathered.errors.append(f"{store}: no answer within {deadline:.0f}s")

    try:
        async with trio.open_nursery() as nursery:
            for store in dict.fromkeys(stores):
                nursery.start_soon(one, store)
    except BaseException:  # cancelled (a query deadline, the client left): let go of what came
        with trio.CancelScope(shield=True):
            for r in gathered.responses:
                await r.aclose()
        raise
    metrics.query_errors.inc(len(gathered.errors))
    return gathered


async def merged_body(gathered: Gathered, *, copies: int = 0, short: ShortSink | None = None,
                      done: Callable[[bool], None] | None = None) -> AsyncIterator[bytes]:
    """The union of every store's records, in ULID order, each ULID once.

    Read repair: with ``short``, records seen on fewer than ``copies``
    distinct nodes (``X-Oklog-Node``) go there as well; ``done(complete)``
    is called once the merge ends or the client leaves, ``complete`` when
    no store broke off mid-answer.
    """
    broken: list[str] = []
    try:
        answers = one_per_node(gathered.responses)
        # this node's own answer is whole-line blocks already: no re-splitting
        sources = [_guarded(r, broken) if isinstance(r, LocalAnswer) else _safe_blocks(r, broken)
                   for r in answers]
        async for block in merge_streams(sources, trusted=all(map(_unique, answers)), copies=copies,
                                         short=short):
            yield block
    finally:
        with trio.CancelScope(shield=True):
            for r in gathered.responses:
                await r.aclose()
        if done is not None:
            done(not broken)


def whole_lines(answer: QueryAnswer) -> AsyncIterator[bytes]:
    """An answer as blocks of whole lines (this node's own is already); a
    peer's cut-off last line is an error, for callers that must know an
    answer is whole (a repair check, a histogram)."""
    if isinstance(answer, LocalAnswer):
        return answer.chunks()
    return aiter_blocks(answer.chunks(), final_tail="error")


def node_of(answer: QueryAnswer) -> str:
    """The identity of the node behind an answer: its ``X-Oklog-Node``
    header (its advertised API URL), else the URL it was asked at."""
    return answer.headers.get(NODE_HEADER) or answer.peer


async def passed_through_size(gathered: Gathered) -> int | None:
    """The length of ``merged_body`` (without read repair) when known up
    front: this node's own answer is the only one to merge (one store), so
    its blocks pass through untouched, and its length is known
    (``local.exact_size``)."""
    answers = one_per_node(gathered.responses)
    if len(answers) != 1 or not isinstance(answers[0], LocalAnswer):
        return None
    try:
        return await local.exact_size(answers[0].plan)
    except BaseException:  # cancelled: the merge that would let go of the answers never starts
        with trio.CancelScope(shield=True):
            for r in gathered.responses:
                await r.aclose()
        raise


def _unique(answer: QueryAnswer) -> bool:
    """Whether an answer holds each ULID once: this node's own, or a peer's
    that says it is one of ours (``X-Oklog-Node``: ``query.local`` merges
    overlapping segments with de-duplication, and a store segment never
    repeats a ULID).  Any other store's answer is checked for repeats."""
    return isinstance(answer, LocalAnswer) or NODE_HEADER in answer.headers


def one_per_node(answers: list[QueryAnswer]) -> list[QueryAnswer]:
    """The first answer of each distinct node (one node reached under two
    addresses holds one copy, not two, and its answer is merged once)."""
    seen: dict[str, QueryAnswer] = {}
    for r in answers:
        seen.setdefault(node_of(r), r)
    return list(seen.values())


async def _guarded(response: QueryAnswer, broken: list[str]) -> AsyncIterator[bytes]:
    """This node's own answer; one that breaks (a segment found damaged)
    ends its share, as a peer's broken stream does."""
    try:
        async for block in response.chunks():
            yield block
    except (OklogError, OSError) as exc:
        broken.append(response.peer)
        metrics.query_errors.inc()
        log.warning("event=query_local_broken error=%r", exc)


async def _safe_blocks(response: QueryAnswer, broken: list[str]) -> AsyncIterator[bytes]:
    """A peer's body as whole-line blocks; a broken stream just ends."""
    try:
        async for block in aiter_blocks(response.chunks(), final_tail="drop"):
            yield block
    except Exception as exc:  # httpx errors, truncated bodies
        broken.append(response.peer)
        metrics.query_errors.inc()
        log.warning("event=query_stream_broken peer=%s error=%r", response.peer, exc)


def stats_headers(gathered: Gathered, started: float) -> dict[str, str]:
    return {
        "X-Oklog-Nodes-Queried": str(gathered.nodes),
        "X-Oklog-Segments-Queried": str(gathered.total("X-Oklog-Segments-Queried")),
        "X-Oklog-Max-Data-Set-Size": str(gathered.total("X-Oklog-Max-Data-Set-Size")),
        "X-Oklog-Blocks-Queried": str(gathered.total("X-Oklog-Blocks-Queried")),
        "X-Oklog-Blocks-In-Range": str(gathered.total("X-Oklog-Blocks-In-Range")),
        "X-Oklog-Error-Count": str(len(gathered.errors)),
        "X-Oklog-Duration": f"{time.monotonic() - started:.6f}s",
    }
