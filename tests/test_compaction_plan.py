"""The store segment lifecycle and the compaction / retention planner: no IO.

The stress tests run a model store (each segment a set of integer ULIDs)
through the planner's jobs, merging the way ``merge_job`` does (union,
de-duplicated, cut near the target size and at the job's cuts), and check
the model's invariants after every step (``Model._check``): no lost ULID,
no duplicate within a segment, names match contents; once the planner
says it has converged, no two segments overlap.
"""

from __future__ import annotations

import random

import pytest

from oklog.errors import IllegalTransition
from oklog.segment.name import SegmentName
from oklog.store.lifecycle import TRANSITIONS, State, next_state, state_of
from oklog.store.planner import SETTLE_MS, Job, Seg, plan_compaction, plan_retention
from oklog.ulid import encode_int, ms_of

REC = 100  # bytes a model record takes on disk
TARGET = 100 * REC


def u(ms: int, n: int = 0) -> bytes:
    """A ULID at time ``ms`` whose order follows ``(ms, n)``."""
    return encode_int(ms, 10) + encode_int(n, 16)


def seg(lo: int, hi: int, size: int = REC, state: State = State.FLUSHED) -> Seg:
    return Seg(SegmentName(u(lo), u(hi)), size, state)


# -- the lifecycle ------------------------------------------------------------------


def test_every_legal_transition_and_nothing_else() -> None:
    events = {e for e, _ in TRANSITIONS}
    for event in events:
        for state in State:
            if (event, state) in TRANSITIONS:
                assert next_state(event, state) == TRANSITIONS[(event, state)]
            else:
                with pytest.raises(IllegalTransition):
                    next_state(event, state)
    # the paths of the lifecycle
    s = next_state("install", State.ACTIVE)
    s = next_state("claim", s)
    assert next_state("release", s) == State.FLUSHED
    assert next_state("purge", next_state("retire", s)) == State.PURGED
    assert next_state("expire", State.FLUSHED) == State.TRASHED
    with pytest.raises(IllegalTransition):
        next_state("expire", State.READING)  # retention never takes a job's input
    with pytest.raises(IllegalTransition):
        next_state("purge", State.FLUSHED)  # only trashed files are removed
    assert state_of(".reading") == State.READING
    with pytest.raises(IllegalTransition):
        state_of(".corrupt")


# -- retention ----------------------------------------------------------------------


def test_retention_by_age_uses_the_newest_record() -> None:
    now = 1_000_000
    old = seg(1000, 2000)
    straddling = seg(1000, now - 500)  # its newest record is young: kept
    young = seg(now - 100, now - 50)
    out = plan_retention([old, straddling, young], now_ms=now, retain_ms=1000)
    assert out == [(old.name, "age")]
    assert plan_retention([old], now_ms=now, retain_ms=None) == []


def test_retention_by_size_trashes_the_oldest_first() -> None:
    a, b, c = seg(1, 2, 500), seg(3, 4, 300), seg(5, 6, 400)
    trashed = seg(0, 1, 10_000, State.TRASHED)  # does not count
    out = plan_retention([c, trashed, a, b], now_ms=10, retain_ms=None, retain_size=800)
    assert out == [(a.name, "size")]
    out = plan_retention([c, a, b], now_ms=10, retain_ms=None, retain_size=100)
    assert out == [(a.name, "size"), (b.name, "size"), (c.name, "size")]
    reading = seg(1, 2, 500, State.READING)  # a job's input: counted, never taken
    assert plan_retention([reading, b, c], now_ms=10, retain_ms=None, retain_size=900) == [(b.name, "size")]
    assert plan_retention([a, b, c], now_ms=10, retain_ms=None, retain_size=0) == []


# -- compaction: single cases ----------------------------------------------------------


def plan(segs: list[Seg], now: int = 10**9, **kw: int) -> Job | None:
    return plan_compaction(segs, target_size=kw.pop("target", TARGET), now_ms=now, **kw)


def test_overlapping_segments_are_merged_first_and_a_running_job_blocks() -> None:
    a, b, c = seg(1, 10), seg(5, 20), seg(30, 40)
    job = plan([c, b, a])
    assert job == Job("overlap", (a.name, b.name), ())
    assert plan([a, seg(5, 20, state=State.READING)]) is None


def test_a_big_segment_is_not_rewritten_to_absorb_a_tiny_one_while_fresh() -> None:
    now = 10**9
    big, tiny = seg(now - 5000, now - 4000, 50 * REC), seg(now - 3000, now - 2000, REC)
    assert plan([big, tiny], now) is None  # 50x the rest: not worth it yet
    tiny2 = seg(now - 1900, now - 1000, REC)
    assert plan([big, tiny, tiny2], now) == Job("small", (tiny.name, tiny2.name))
    # equal sizes merge at once
    assert plan([seg(now - 9, now - 8, 10 * REC), seg(now - 7, now - 6, 10 * REC)], now) is not None


def test_a_settled_run_collapses_but_a_huge_one_stays_alone() -> None:
    now = 10**9
    old = now - SETTLE_MS - 1
    sizes = [16, 8, 4, 2, 1]  # a binary counter: never admissible while fresh
    run = [seg(old - 100 + 10 * i, old - 95 + 10 * i, s * REC) for i, s in enumerate(sizes)]
    assert plan(run, old + 1) is None
    job = plan(run, now)
    assert job is not None and job.inputs == tuple(s.name for s in run)
    huge = seg(old - 200, old - 150, 90 * REC)
    job = plan([huge] + run[3:], now)  # 90x the rest even when settled: only the tail merges
    assert job is not None and job.inputs == tuple(s.name for s in run[3:])
    # big settled windows follow the tiered rule: a big segment absorbs no smaller one
    mib = 1 << 20
    big = [seg(old - 100 + 10 * i, old - 95 + 10 * i, s * mib) for i, s in enumerate([16, 8, 4])]
    assert plan(big, now, target=128 * mib) is None
    assert plan(big + [seg(old - 50, old - 40, 4 * mib)], now, target=128 * mib) is not None


def test_segments_at_the_target_size_are_left_alone() -> None:
    assert plan([seg(1, 2, TARGET), seg(3, 4, TARGET)]) is None
    assert plan([seg(1, 2, TARGET // 2), seg(3, 4, TARGET // 2)]) is not None


def test_a_cluster_bigger_than_a_job_is_cut_where_the_rest_begins() -> None:
    chain = [seg(10 * i, 10 * i + 15) for i in range(6)]  # each overlaps the next
    job = plan(chain, max_inputs=4)
    assert job is not None and job.inputs == tuple(s.name for s in chain[:4])
    assert job.cuts == (chain[4].name.lo,)


# -- compaction: the model --------------------------------------------------------------


class Model:
    """A store as sets of integer ULIDs per segment."""

    def __init__(self, target: int = TARGET) -> None:
        self.target = target
        self.segments: list[list[int]] = []  # each sorted, unique
        self.ingested: set[int] = set()
        self.bytes_in = 0
        self.bytes_written = 0

    @staticmethod
    def name(records: list[int]) -> SegmentName:
        return SegmentName(u(records[0] // 1000, records[0]), u(records[-1] // 1000, records[-1]))

    def view(self) -> list[Seg]:
        return [Seg(self.name(r), len(r) * REC) for r in self.segments]

    def add(self, records: list[int]) -> None:
        records = sorted(set(records))
        self.segments.append(records)
        self.ingested |= set(records)
        self.bytes_in += len(records) * REC

    def run(self, job: Job) -> None:
        names = set(job.inputs)
        inputs = [r for r in self.segments if self.name(r) in names]
        assert len(inputs) == len(job.inputs) >= 2
        merged = sorted(set().union(*inputs))
        cuts = sorted(job.cuts)
        outputs: list[list[int]] = [[]]
        for r in merged:
            key = u(r // 1000, r)
            while cuts and cuts[0] <= key:
                cuts.pop(0)
                outputs.append([])
            outputs[-1].append(r)
            if len(outputs[-1]) * REC >= self.target:
                outputs.append([])
        outputs = [o for o in outputs if o]
        self.bytes_written += sum(len(o) * REC for o in outputs)
        self.segments = [r for r in self.segments if self.name(r) not in names] + outputs

    def _check(self) -> None:
        held: set[int] = set()
        for r in self.segments:
            assert r == sorted(set(r)), "a segment repeats a ULID or is unsorted"
            held |= set(r)
        assert held == self.ingested, "compaction lost or invented a record"
        names = [self.name(r) for r in self.segments]
        assert len(set(names)) == len(names), "two segments of one name"

    def overlaps(self) -> int:
        names = sorted(self.name(r) for r in self.segments)
        return sum(1 for a, b in zip(names, names[1:]) if b.lo <= a.hi)

    def converge(self, now: int, limit: int = 10_000) -> int:
        steps = 0
        while (job := plan_compaction(self.view(), target_size=self.target, now_ms=now, max_inputs=8)) is not None:
            self.run(job)
            self._check()
            steps += 1
            assert steps < limit, "the planner does not converge"
        return steps


@pytest.mark.parametrize("seed", range(12))
def test_random_stores_converge_without_overlaps_losses_or_duplicates(seed: int) -> None:
    rng = random.Random(seed)
    model = Model()
    now = 10**9
    for _ in range(rng.randint(1, 60)):
        lo = rng.randint(0, 2000)
        width = rng.choice([1, 5, 50, 400])
        n = rng.randint(1, 60)
        model.add([lo + rng.randint(0, width) for _ in range(n)])
        model._check()
        if rng.random() < 0.5:  # sometimes a job between arrivals
            job = plan_compaction(model.view(), target_size=TARGET, now_ms=now, max_inputs=8)
            if job is not None:
                model.run(job)
                model._check()
    model.converge(now)
    assert model.overlaps() == 0
    # converged: every run of small neighbours was merged as far as the target allows
    sizes = [len(r) * REC for r in sorted(model.segments, key=lambda r: r[0])]
    for a, b in zip(sizes, sizes[1:]):
        assert a + b > TARGET or max(a, b) > 8 * min(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_a_stream_of_small_segments_stays_few_files_and_low_write_amplification(seed: int) -> None:
    """A quiet, steady stream: segments of a few records, each newer than the
    last, one compaction tick between arrivals (as on a store node)."""
    rng = random.Random(seed)
    model = Model(1000 * TARGET)
    t = 10**9
    n = 0
    most = 0
    for _ in range(300):
        t += 500
        k = rng.randint(1, 3)
        model.add([t * 1000 + n + i for i in range(k)])
        n += k
        job = plan_compaction(model.view(), target_size=model.target, now_ms=t, max_inputs=32)
        if job is not None:
            model.run(job)
        model._check()
        most = max(most, len(model.segments))
    assert most <= 12, "tiered merging keeps a logarithmic number of files"
    assert model.bytes_written <= 10 * model.bytes_in  # log2(300 segments) rewrites at most
    steps = model.converge(t + SETTLE_MS + 1)
    assert len(model.segments) <= 2 and steps <= 3 and model.overlaps() == 0
