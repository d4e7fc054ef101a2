"""Answering a query from this node's own segments (``/store/_query``).

Planning only looks at the interval index (HEAD needs nothing more);
running maps the overlapping files and greps them with ``scan``.  Segments
that overlap each other (not yet compacted) are k-way merged with
de-duplication; a segment that overlaps no other streams straight through.
Each group's files are mapped when the scan reaches that group; a file
removed in between (no code path removes one today; compaction will) is
skipped, so compaction must only delete a segment once its records live in
another file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import trio

from ..store.log import Segment, StoreLog, map_file
from ..store.merge import merge_records
from .params import Query
from .scan import compile_matcher, scan


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
    return LocalPlan(query, store.overlapping_groups(query.lo, query.hi))


async def run(local: LocalPlan) -> AsyncIterator[bytes]:
    """Matching records in ULID order, each once, as blocks of whole lines."""
    query = local.query
    matcher = compile_matcher(query)
    for group in local.groups:
        buffers = []
        for seg in group:
            try:
                buffers.append(map_file(seg.path))
            except FileNotFoundError:
                continue  # removed since planning (see the module docstring)
        if len(buffers) == 1:
            blocks = scan(buffers[0], query, matcher)
        else:
            # store segments are validated strictly sorted on write: no dups inside one
            blocks = merge_records([scan(b, query, matcher) for b in buffers], trusted_unique=True)
        for block in blocks:
            yield block
            await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
