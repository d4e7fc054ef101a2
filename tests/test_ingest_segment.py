"""The ingest segment state machine, without files."""

import random

import pytest

from oklog.errors import IllegalTransition, SegmentNotRead, UnknownSegment
from oklog.ingest.segment import IngestBook, State, next_state


def test_table_allows_only_the_documented_moves():
    assert next_state("flush", State.ACTIVE) is State.FLUSHED
    with pytest.raises(IllegalTransition):
        next_state("commit", State.FLUSHED)
    with pytest.raises(IllegalTransition):
        next_state("claim", State.PENDING)


def test_happy_path_and_428():
    book = IngestBook(pending_timeout=60)
    book.activate("A")
    book.flushed("A", 10)
    assert book.claim(now=0) == "A"
    assert book.claim(now=0) is None
    with pytest.raises(SegmentNotRead):
        book.commit("A")
    book.mark_read("A")
    book.commit("A")
    assert book.state_of("A") is None
    with pytest.raises(UnknownSegment):
        book.commit("A")


def test_failed_and_expired_segments_come_back_oldest_first():
    book = IngestBook(pending_timeout=5)
    for seg in ("01", "02", "03"):
        book.recovered(seg, 1)
    a, b = book.claim(0), book.claim(1)
    assert (a, b) == ("01", "02")
    book.fail("02")
    assert book.expire(now=4.9) == []
    assert book.expire(now=5) == ["01"]
    assert [book.claim(6) for _ in range(3)] == ["01", "02", "03"]
    book._check()


def test_unknown_ids():
    book = IngestBook(pending_timeout=5)
    for op in (book.mark_read, book.commit, book.fail):
        with pytest.raises(UnknownSegment):
            op("nope")


def test_random_walk_keeps_invariants():
    rng = random.Random(7)
    book = IngestBook(pending_timeout=3)
    n = 0
    now = 0.0
    for _ in range(5000):
        now += rng.random()
        op = rng.randrange(6)
        if op == 0:
            n += 1
            seg = f"{n:05d}"
            book.activate(seg)
            book.flushed(seg, rng.randrange(100))
        elif op == 1:
            book.claim(now)
        elif op == 2:
            book.expire(now)
        else:
            pending = [k for k, e in book._entries.items() if e.state is State.PENDING]
            if not pending:
                continue
            seg = rng.choice(pending)
            try:
                [book.mark_read, book.commit, book.fail][op - 3](seg)
            except SegmentNotRead:
                assert not book._entries[seg].read
        book._check()
    counts = book.counts()
    assert sum(c["segments"] for c in counts.values()) == len(book._entries)
