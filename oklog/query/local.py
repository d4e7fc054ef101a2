"""Answering a query from this node's own segments (``/store/_query``).

``plan`` only looks at the interval index (HEAD needs nothing more).
``prepare`` first makes every segment the query needs safe to read
(``StoreLog.verify``: checked, or repaired, if this process has not done
so yet) and plans from the index afterwards: a repair can rename a segment
after its real content, which changes how segments group, so a plan made
before it could return records out of order.  It runs before any header is
sent, so a failure there is an error status, not a cut-short answer.

Running opens the planned segments through the segment reader seam and
greps their blocks of the query's range.  Segments that overlap each other
(not yet compacted) are k-way merged with de-duplication; a segment that
overlaps no other streams straight through.  Files are opened when the
scan reaches their group; a file removed in between (no code path removes
one today; compaction will) is skipped, so compaction must only delete a
segment once its records live in another file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import AsyncIterator

import trio

from ..records.merge import merge_records
from ..segment import SegmentReader, open_segment
from ..store.log import Segment, StoreLog
from .params import Query


@dataclass
class LocalPlan:
    query: Query
    groups: list[list[Segment]]  # overlapping segments, in ULID order

    @property
    def segments(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def max_data_set_size(self) -> int:
        return sum(s.size for g in self.groups for s in g)

    def stats_headers(self) -> dict[str, str]:
        """This node's share of the ``X-Oklog-*`` statistics."""
        return {
            "X-Oklog-Segments-Queried": str(self.segments),
            "X-Oklog-Max-Data-Set-Size": str(self.max_data_set_size),
        }


def plan(store: StoreLog, query: Query) -> LocalPlan:
    """The segments to read, from the index alone (for statistics)."""
    return LocalPlan(query, store.overlapping_groups(query.lo, query.hi))


async def prepare(store: StoreLog, query: Query, *, stats_only: bool = False) -> LocalPlan:
    """``plan``, once every segment it names is safe to read (``stats_only``,
    as for HEAD: the index alone, nothing read)."""
    while True:
        p = plan(store, query)
        pending = [s for group in p.groups for s in group if not store.verified(s)]
        if stats_only or not pending:
            return p
        await store.verify(pending)


def _group_blocks(readers: list[SegmentReader], query: Query) -> Iterator[bytes]:
    """Matching records of one group of overlapping segments, in ULID order."""
    scans = [query.matcher.scan_blocks(r.blocks(query.lo, query.hi)) for r in readers]
    if len(scans) == 1:
        return scans[0]
    # store segments are sound (checked or written by us): no ULID twice in one
    return merge_records(scans, trusted_unique=True)


async def run(local: LocalPlan) -> AsyncIterator[bytes]:
    """Matching records in ULID order, each once, as blocks of whole lines."""
    for group in local.groups:
        with ExitStack() as stack:
            readers = []
            for segment in group:
                try:
                    readers.append(stack.enter_context(open_segment(segment.path)))
                except FileNotFoundError:
                    continue  # removed since planning (see the module docstring)
            if not readers:
                continue
            for block in _group_blocks(readers, local.query):
                yield block
                await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
