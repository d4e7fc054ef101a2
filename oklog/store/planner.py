"""Planning compaction and retention: pure functions of the segment set.

Theory of operation
-------------------
The planner sees the store as a list of ``Seg`` (name, size on disk,
state) and a time; it reads no file and keeps no state.  The compactor
(``oklog.store.compactor``) asks it once per tick and carries out at most
one job.

**Retention** (``plan_retention``): every ``flushed`` segment whose newest
record (its ``TO`` ULID's time) is older than ``retain`` is expired; then,
with a disk budget, the oldest remaining segments (by ``TO``, then
``FROM``) are expired until the live segments fit in it.  Trashed segments
do not count against the budget (they are gone at the next purge).

**Compaction** (``plan_compaction``) walks the flushed segments in
``(FROM, TO)`` order, oldest first, and returns the first job it finds, so
old regions converge and a busy tail cannot starve them:

1. *Overlap*: a *cluster* is a chain of segments each starting before the
   previous ones end.  A cluster of two or more is merged (its first
   ``max_inputs`` members: a prefix of a chain is a chain).  When members of
   the cluster are left out, their starts are *cuts*: the merge starts a new
   output there, so only the records that really overlap what is left
   (a small tail) are rewritten again, never the whole output.
2. *Small*: in a run of non-overlapping segments, a window of adjacent
   segments whose total is at most ``target_size`` is merged when its
   biggest member is no bigger than ``ratio`` times the rest together.
   ``ratio`` is 1 while the window's newest record is younger than
   ``settle`` (each merge then at least doubles what any input held, so a
   byte is rewritten at most log2(target / first size) times: tiered
   merging, and a big segment is never rewritten to absorb a tiny one);
   once it is older (the writes stopped) and small (at most
   ``SETTLED_BYTES`` in all: cheap to rewrite), ``SETTLED_RATIO`` lets a
   quiet tail collapse into a few files.  The longest such window from the
   oldest start wins.

Outputs are cut near ``target_size`` (and at cuts), so a job's outputs
never overlap each other; with every overlap cluster merged and every
admissible window merged, the planner returns None: converged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..segment.name import SegmentName
from ..ulid import ms_of
from .lifecycle import State

__all__ = ["Job", "Seg", "plan_compaction", "plan_retention", "SETTLE_MS", "SETTLED_BYTES", "SETTLED_RATIO",
           "MAX_INPUTS"]

#: A window whose newest record is at least this old (ms) has settled.
SETTLE_MS = 10_000
#: How much bigger than the rest of its window a settled segment may be...
SETTLED_RATIO = 8
#: ...in a window of at most this many bytes (beyond, the tiered rule holds).
SETTLED_BYTES = 4 << 20
#: Inputs of one job at most (each holds one decompressed block while merged).
MAX_INPUTS = 32


@dataclass(frozen=True)
class Seg:
    """What the planner knows of one segment."""

    name: SegmentName
    size: int  # bytes on disk
    state: State = State.FLUSHED


@dataclass(frozen=True)
class Job:
    """Merge ``inputs`` into new segments (``kind``: overlap or small);
    start a new output at every ULID in ``cuts``."""

    kind: str
    inputs: tuple[SegmentName, ...]
    cuts: tuple[bytes, ...] = ()


def plan_retention(segs: Iterable[Seg], *, now_ms: int, retain_ms: int | None,
                   retain_size: int = 0) -> list[tuple[SegmentName, str]]:
    """The flushed segments to expire now, each with why (``age`` or ``size``)."""
    live = sorted((s for s in segs if s.state in (State.FLUSHED, State.READING)),
                  key=lambda s: (s.name.hi, s.name.lo))
    out: list[tuple[SegmentName, str]] = []
    kept: list[Seg] = []
    for s in live:
        if s.state == State.FLUSHED and retain_ms is not None and ms_of(s.name.hi) < now_ms - retain_ms:
            out.append((s.name, "age"))
        else:
            kept.append(s)
    if retain_size > 0:
        total = sum(s.size for s in kept)
        for s in kept:  # oldest first
            if total <= retain_size:
                break
            if s.state == State.FLUSHED:
                out.append((s.name, "size"))
                total -= s.size
    return out


def plan_compaction(segs: Iterable[Seg], *, target_size: int, now_ms: int,
                    settle_ms: int = SETTLE_MS, max_inputs: int = MAX_INPUTS) -> Job | None:
    """The next compaction job, or None (converged, or a job is running)."""
    segs = list(segs)
    if any(s.state == State.READING for s in segs):
        return None  # one job at a time
    flushed = sorted((s for s in segs if s.state == State.FLUSHED), key=lambda s: s.name)
    run: list[Seg] = []  # non-overlapping segments since the last cluster
    i = 0
    while i < len(flushed):
        cluster = [flushed[i]]
        reach = flushed[i].name.hi
        j = i + 1
        while j < len(flushed) and flushed[j].name.lo <= reach:
            cluster.append(flushed[j])
            reach = max(reach, flushed[j].name.hi)
            j += 1
        if len(cluster) > 1:
            job = _small(run, target_size, now_ms, settle_ms, max_inputs)
            if job is not None:
                return job
            return _overlap(cluster, max_inputs)
        run.append(cluster[0])
        i = j
    return _small(run, target_size, now_ms, settle_ms, max_inputs)


def _overlap(cluster: list[Seg], max_inputs: int) -> Job:
    taken = cluster[:max_inputs]
    reach = max(s.name.hi for s in taken)
    cuts = sorted({s.name.lo for s in cluster[max_inputs:] if s.name.lo <= reach})
    return Job("overlap", tuple(s.name for s in taken), tuple(cuts))


def _small(run: Sequence[Seg], target_size: int, now_ms: int, settle_ms: int,
           max_inputs: int) -> Job | None:
    for i in range(len(run) - 1):
        best = 0
        total = run[i].size
        biggest = run[i].size
        for j in range(i + 1, min(len(run), i + max_inputs)):
            total += run[j].size
            if total > target_size:
                break
            biggest = max(biggest, run[j].size)
            settled = ms_of(run[j].name.hi) <= now_ms - settle_ms
            ratio = SETTLED_RATIO if settled and total <= SETTLED_BYTES else 1
            if biggest <= ratio * (total - biggest):
                best = j
        if best:
            return Job("small", tuple(s.name for s in run[i:best + 1]))
    return None
