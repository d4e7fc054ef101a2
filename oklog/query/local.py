"""Answering a query from this node's own segments (``/store/_query``).

Planning reads no record.  The interval index gives the segments of the
query's range; each segment's table (``oklog.segment.table``) gives the
blocks of the range by their first and last ULID, and its n-gram index
drops the blocks that lack a literal every match needs (the query's
``Required`` clauses: ``q`` itself, or the literals of a regex, plus the
topic); with ``topic=``, its topic index (``oklog.segment.topics``) drops
every block holding no record of that topic.  What is left is cut into *units* of a few blocks, the work a scan
worker does at once (``oklog.query.workers``).  HEAD needs the plan only.

``prepare`` first makes every segment the query needs safe to read
(``StoreLog.verify``: checked, or repaired, if this process has not done
so yet; that also rebuilds a missing sidecar) and plans afterwards: a
repair can rename a segment after its real content, which changes how
segments group, so a plan made before it could return records out of
order.  It runs before any header is sent, so a failure there is an error
status, not a cut-short answer.

Running hands the units to the scanner and streams the results in ULID
order.  Segments that overlap each other (not yet compacted) are k-way
merged with de-duplication; a segment that overlaps no other streams
straight through.  A plan holds a *lease* on the files it names
(``StoreLog.lease``) until its scan is over: a compaction job that claims
or retires one of them renames it (``.reading``, ``.trashed``) but keeps
it on disk, and a unit finds it under its new name by its inode
(``oklog.query.unit``), so compaction never cuts an answer short.  A file
removed after planning otherwise is skipped (an answer that declared its
length, ``exact_size``, is then cut: it ends short of it); one replaced (a same-named
upload's union) or found damaged cuts the answer short
(``SegmentChanged``, ``CorruptSegment``: the latter also has the segment
checked again), so an answer is never a mix of two files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncGenerator, AsyncIterator

import trio

from .. import metrics
from ..errors import CorruptSegment, SegmentChanged
from ..segment.ngram import literal_grams
from ..segment.table import Table
from ..store.log import Lease, Segment, StoreLog
from .params import Query
from .streams import merge_streams
from .unit import Unit, run_unit
from .workers import Scanner

log = logging.getLogger("oklog.query")

#: Raw bytes of blocks handed to a scan worker at once.
UNIT_BYTES = 4 << 20
#: A query reading no more than this is light work: scanned in threads.
LIGHT_BYTES = 16 << 20


@dataclass
class SegmentPlan:
    """What a query reads of one segment."""

    segment: Segment
    table: Table | None  # None: not verified yet (statistics only)
    blocks: list[int] = field(default_factory=list)  # to read, ascending
    in_range: int = 0  # blocks of the time range (before the n-gram index)
    data_size: int = 0  # record bytes of the time range


@dataclass
class LocalPlan:
    query: Query
    groups: list[list[SegmentPlan]]  # overlapping segments, in ULID order
    scanner: Scanner | None = None
    store: StoreLog | None = None  # told about a segment found damaged while read
    lease: Lease | None = None  # keeps the planned files on disk until the scan is done

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def plans(self) -> Iterator[SegmentPlan]:
        return (p for group in self.groups for p in group)

    @property
    def segments(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def max_data_set_size(self) -> int:
        return sum(p.data_size for p in self.plans())

    @property
    def blocks_read(self) -> int:
        return sum(len(p.blocks) for p in self.plans())

    @property
    def bytes_to_read(self) -> int:
        """Record bytes of the blocks the scan reads."""
        return sum(p.table.raw[i] for p in self.plans() if p.table for i in p.blocks)

    @property
    def blocks_in_range(self) -> int:
        return sum(p.in_range for p in self.plans())

    def stats_headers(self) -> dict[str, str]:
        """This node's share of the ``X-Oklog-*`` statistics (the two block
        counts are extensions: how much the index saved)."""
        return {
            "X-Oklog-Segments-Queried": str(self.segments),
            "X-Oklog-Max-Data-Set-Size": str(self.max_data_set_size),
            "X-Oklog-Blocks-Queried": str(self.blocks_read),
            "X-Oklog-Blocks-In-Range": str(self.blocks_in_range),
        }


def _clauses(query: Query) -> list[list[list[list[int]]]]:
    """The query's required literals as n-gram clauses for ``GramIndex``."""
    required = query.matcher.required
    clauses = [[literal_grams(lit, required.fold) for lit in clause] for clause in required.clauses]
    if query.topic is not None:
        clauses.append([literal_grams(query.topic + b" ")])
    return [c for c in clauses if all(c)]  # a literal too short to index prunes nothing


def plan_segment(segment: Segment, table: Table | None, query: Query,
                 clauses: list[list[list[list[int]]]]) -> SegmentPlan:
    """The blocks of one segment that ``query`` must read."""
    if table is None:
        return SegmentPlan(segment, None, [], 0, segment.size)
    span = table.span(query.lo, query.hi)
    p = SegmentPlan(segment, table, [], len(span), table.raw_bytes(span))
    if query.matcher.strategy == "none":
        return p
    mask = -1  # bit i: block i may match
    if clauses and table.index is not None and span:
        mask = table.index.candidates(clauses)
    if query.topic is not None and table.topics is not None:
        mask &= table.topics.blocks_with(query.topic)  # exact: blocks holding that topic
    p.blocks = list(span) if mask == -1 else [i for i in span if mask >> i & 1]
    return p


def plan(store: StoreLog, query: Query, scanner: Scanner | None = None) -> LocalPlan:
    """The blocks to read, from the index and the tables alone."""
    clauses = _clauses(query)
    groups = [
        [plan_segment(s, store.table(s), query, clauses) for s in group]
        for group in store.overlapping_groups(query.lo, query.hi)
    ]
    return LocalPlan(query, groups, scanner, store)


async def prepare(store: StoreLog, query: Query, scanner: Scanner | None = None, *,
                  stats_only: bool = False) -> LocalPlan:
    """``plan``, once every segment it names is safe to read (``stats_only``,
    as for HEAD: the index and tables alone, nothing read)."""
    while True:
        p = plan(store, query, scanner)
        pending = [s.segment for s in p.plans() if not store.verified(s.segment)]
        if stats_only:
            return p
        if not pending:
            # no await since planning: every file planned is still there
            p.lease = store.lease(s.segment for s in p.plans())
            return p
        await store.verify(pending)


def units(p: SegmentPlan, query: Query) -> Iterator[Unit]:
    """The plan's blocks of one segment, a few at a time."""
    t = p.table
    if t is None:
        return
    held: list[tuple[int, int, bool]] = []
    size = 0
    for i in p.blocks:
        held.append((t.offsets[i], t.lengths[i], t.firsts[i] < query.lo or t.lasts[i] > query.hi))
        size += t.raw[i]
        if size >= UNIT_BYTES:
            yield _unit(p, query, held)
            held, size = [], 0
    if held:
        yield _unit(p, query, held)


def _unit(p: SegmentPlan, query: Query, blocks: list[tuple[int, int, bool]]) -> Unit:
    assert p.table is not None
    return Unit(str(p.segment.path), p.table.compression, tuple(blocks), query.lo, query.hi,
                query.q, query.regex, query.topic, p.segment.size, p.segment.ino)


async def exact_size(local: LocalPlan) -> int | None:
    """The answer's length in bytes, known before a record is sent when the
    query keeps every record of its range (match everything) and no two of
    its segments overlap (nothing to de-duplicate): the whole blocks' sizes
    are in their tables, and a block the range cuts (at most the first and
    the last of a segment) is read and cut here, before the headers (the
    scan reads it again).  None otherwise, or when a cut block cannot be
    read (the scan will meet it and say so).  It lets the answer go out
    with a ``Content-Length`` (``oklog.http.Response``), so whatever lies
    between ``run`` and the wire must keep every byte: ``timed``, the
    limits' deadline and ``gather.merged_body`` of this answer alone do;
    ``ids=true`` and a merge with other answers do not, and declare none."""
    if local.query.matcher.strategy != "all":
        return None
    total = 0
    cut: list[Unit] = []
    for group in local.groups:
        readable = [p for p in group if p.blocks]
        if len(readable) > 1:
            return None
        for p in readable:
            t = p.table
            assert t is not None
            for i in p.blocks:
                if t.firsts[i] < local.query.lo or t.lasts[i] > local.query.hi:
                    cut.append(_unit(p, local.query, [(t.offsets[i], t.lengths[i], True)]))
                else:
                    total += t.raw[i]
    for unit in cut:
        try:
            total += await trio.to_thread.run_sync(_result_size, unit)
        except (CorruptSegment, SegmentChanged, OSError):
            return None
    return total


def _result_size(unit: Unit) -> int:
    return sum(map(len, run_unit(unit)))


_fallback: list[Scanner] = []


def _threads() -> Scanner:
    """The scanner of plans made without one (tests, tools): threads."""
    if not _fallback:
        _fallback.append(Scanner(0))
    return _fallback[0]


async def _segment_results(scanner: Scanner, p: SegmentPlan, query: Query, light: bool,
                           store: StoreLog | None) -> AsyncGenerator[bytes, None]:
    try:
        async with aclosing(scanner.results(units(p, query), light=light)) as results:
            async for result in results:
                yield result
    except FileNotFoundError:  # removed since planning (see the module docstring)
        log.info("event=segment_gone segment=%s", p.segment.path.name)
    except CorruptSegment as exc:  # damaged behind its sidecar's back: check it again
        log.error("event=segment_damaged segment=%s error=%s action=recheck", p.segment.path.name, exc)
        if store is not None:
            store.suspect(p.segment)
        raise


async def run(local: LocalPlan) -> AsyncIterator[bytes]:
    """Matching records in ULID order, each once, as blocks of whole lines."""
    try:
        async with aclosing(_run(local)) as blocks:
            async for block in blocks:
                yield block
    finally:
        local.release()


async def _run(local: LocalPlan) -> AsyncGenerator[bytes, None]:
    scanner = local.scanner or _threads()
    metrics.query_blocks.labels("read").inc(local.blocks_read)
    metrics.query_blocks.labels("skipped").inc(local.blocks_in_range - local.blocks_read)
    # decompression-only (every record kept) or a few blocks: threads
    light = local.query.matcher.strategy == "all" or local.bytes_to_read <= LIGHT_BYTES
    for group in local.groups:
        readable = [p for p in group if p.blocks]
        if not readable:
            continue
        if len(readable) == 1:
            stream = _segment_results(scanner, readable[0], local.query, light, local.store)
        else:
            stream = merge_streams([_segment_results(scanner, p, local.query, light, local.store)
                                    for p in readable])
        async with aclosing(stream):  # a client gone: stop the scan now, not at GC
            async for block in stream:
                yield block
        await trio.lowlevel.checkpoint()
