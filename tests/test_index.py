"""Tests for oklog.store.index: SegmentName and IntervalIndex."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from oklog.errors import CorruptSegment
from oklog.store.index import IntervalIndex, SegmentName, group_overlapping
from tests.recordutil import ulid


def name(lo: int, hi: int) -> SegmentName:
    return SegmentName(ulid(lo), ulid(hi))


LO = "01HQZZ0000AAAAAAAAAAAAAAAA"
HI = "01HQZZ0009ZZZZZZZZZZZZZZZZ"


# --- SegmentName ---------------------------------------------------------------


def test_filename_roundtrip() -> None:
    n = SegmentName(LO.encode(), HI.encode())
    assert n.filename("flushed") == f"{LO}-{HI}.flushed"
    assert SegmentName.parse(n.filename("flushed")) == (n, "flushed")
    assert SegmentName.parse(n.filename("reading")) == (n, "reading")
    assert SegmentName.parse(n.filename("flushed.zst")) == (n, "flushed.zst")


def test_single_record_segment() -> None:
    n = SegmentName(LO.encode(), LO.encode())
    assert SegmentName.parse(f"{LO}-{LO}.flushed") == (n, "flushed")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "flushed",
        f"{LO}-{HI}",  # no state
        f"{LO}-{HI}.",  # empty state
        f"{LO}-{HI}.Flushed",  # state not lowercase
        f"{LO}{HI}.flushed",  # no dash
        f"{LO}_{HI}.flushed",
        f"{LO[:-1]}-{HI}.flushed",  # short ULID
        f"{LO}0-{HI}.flushed",  # long ULID
        f"{LO.lower()}-{HI}.flushed",  # lowercase
        f"{LO[:-1]}U-{HI}.flushed",  # U is not Crockford
        f"{LO[:-1]}I-{HI}.flushed",
        f"8{LO[1:]}-{HI}.flushed",  # > 128 bits
        f"{HI}-{LO}.flushed",  # FROM > TO
        f"dir/{LO}-{HI}.flushed",
        f"{LO}-{HI}.flushed\n",
        f"{LO}-{HI}.flushé",
        f"{LO}-{HI}.flushed/x",
        "ü" * 60,
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(CorruptSegment):
        SegmentName.parse(bad)


def test_constructor_validates() -> None:
    with pytest.raises(CorruptSegment):
        SegmentName(b"short", HI.encode())
    with pytest.raises(CorruptSegment):
        SegmentName(HI.encode(), LO.encode())


def test_ordering_and_overlaps() -> None:
    a, b, c = name(1, 5), name(1, 9), name(2, 3)
    assert sorted([c, b, a]) == [a, b, c]
    assert a.overlaps(ulid(5), ulid(7))  # inclusive ends
    assert a.overlaps(ulid(0), ulid(1))
    assert not a.overlaps(ulid(6), ulid(7))
    assert not a.overlaps(ulid(0), ulid(0))
    assert a.overlaps(ulid(2), ulid(3))  # query inside
    assert c.overlaps(ulid(0), ulid(9))  # segment inside
    assert a.contains(ulid(1)) and a.contains(ulid(5)) and not a.contains(ulid(6))
    assert hash(name(1, 5)) == hash(a) and name(1, 5) == a


def test_of_block() -> None:
    block = ulid(3) + b" t x\n" + ulid(4) + b" t y\n" + ulid(9) + b" t z\n"
    assert SegmentName.of_block(block) == name(3, 9)
    assert SegmentName.of_block(ulid(3) + b" t x\n") == name(3, 3)
    for bad in [b"", b"\n", ulid(3) + b" t x", b"short\n", ulid(9) + b" a\n" + ulid(3) + b" b\n"]:
        with pytest.raises(CorruptSegment):
            SegmentName.of_block(bad)


# --- IntervalIndex: examples ---------------------------------------------------------


def test_empty_index() -> None:
    idx: IntervalIndex[str] = IntervalIndex()
    idx._check()
    assert len(idx) == 0 and not idx and list(idx) == []
    assert idx.query(b"", b"\xff") == []
    assert idx.overlapping_groups() == []
    assert idx.depth == 0
    with pytest.raises(KeyError):
        idx.remove(name(1, 2), "x")
    assert not idx.discard(name(1, 2), "x")


def test_query_examples() -> None:
    idx: IntervalIndex[str] = IntervalIndex()
    idx.add(name(10, 20), "a")
    idx.add(name(30, 40), "b")
    idx.add(name(15, 35), "c")
    idx.add(name(50, 50), "d")
    idx._check()
    assert idx.depth == 2

    def q(lo: int, hi: int) -> list[str]:
        return [v for _, v in idx.query(ulid(lo), ulid(hi))]

    assert q(0, 9) == []
    assert q(0, 10) == ["a"]
    assert q(20, 20) == ["a", "c"]
    assert q(21, 29) == ["c"]
    assert q(36, 49) == ["b"]
    assert q(41, 49) == []
    assert q(50, 50) == ["d"]
    assert q(0, 100) == ["a", "c", "b", "d"]
    assert q(51, 100) == []
    assert q(30, 10) == []  # lo > hi
    assert [v for _, v in idx.query(b"", b"\xff")] == ["a", "c", "b", "d"]
    assert [[v for _, v in g] for g in idx.overlapping_groups()] == [["a", "c", "b"], ["d"]]
    # clipped to the query range, a and b no longer chain through c
    groups = idx.overlapping_groups(ulid(36), ulid(60))
    assert [[v for _, v in g] for g in groups] == [["b"], ["d"]]
    groups = idx.overlapping_groups(ulid(0), ulid(22))
    assert [[v for _, v in g] for g in groups] == [["a", "c"]]


def test_same_name_twice_is_kept() -> None:
    idx: IntervalIndex[str] = IntervalIndex()
    n = name(5, 9)
    idx.add(n, "first")
    idx.add(n, "second")
    idx.add(n, "first")  # even the same value twice
    idx._check()
    assert len(idx) == 3
    assert [v for _, v in idx.query(ulid(6), ulid(6))] == ["first", "second", "first"]
    idx.remove(n, "first")  # the oldest matching one goes
    idx._check()
    assert [v for _, v in idx] == ["second", "first"]
    with pytest.raises(KeyError):
        idx.remove(n, "third")
    with pytest.raises(KeyError):
        idx.remove(name(5, 8), "second")
    idx.remove(n, "first")
    idx.remove(n, "second")
    idx._check()
    assert len(idx) == 0 and idx.depth == 0


def test_values_need_not_be_orderable() -> None:
    idx: IntervalIndex[object] = IntervalIndex()
    a, b = object(), object()
    idx.add(name(1, 2), a)
    idx.add(name(1, 2), b)
    idx.add(name(1, 2), {"dict": 1})
    idx._check()
    assert [v for _, v in idx.query(ulid(1), ulid(1))] == [a, b, {"dict": 1}]
    idx.remove(name(1, 2), b)
    assert [v for _, v in idx] == [a, {"dict": 1}]


def test_iter_is_a_snapshot() -> None:
    idx = IntervalIndex((name(i, i), i) for i in range(10))
    for n, v in idx:
        idx.remove(n, v)
    assert len(idx) == 0
    idx._check()


def test_bulk_build_matches_adds() -> None:
    rng = random.Random(11)
    entries = []
    for i in range(3000):
        lo = rng.randrange(100000)
        entries.append((name(lo, lo + rng.choice([0, 5, 50, 5000])), i))
    bulk = IntervalIndex(entries)
    one_by_one: IntervalIndex[int] = IntervalIndex()
    for n, v in entries:
        one_by_one.add(n, v)
    bulk._check()
    assert list(bulk) == list(one_by_one)
    for _ in range(200):
        a = rng.randrange(110000)
        b = a + rng.randrange(2000)
        assert bulk.query(ulid(a), ulid(b)) == one_by_one.query(ulid(a), ulid(b))
    bulk.update(entries[:10])  # non-empty: one add each
    bulk._check()
    assert len(bulk) == 3010


def test_constructor_and_clear() -> None:
    idx = IntervalIndex([(name(3, 4), "x"), (name(1, 2), "y")])
    assert [v for _, v in idx] == ["y", "x"]
    idx.clear()
    idx._check()
    assert len(idx) == 0
    assert "0 segments" in repr(idx)


def test_many_disjoint_segments_have_one_layer() -> None:
    idx: IntervalIndex[int] = IntervalIndex()
    order = list(range(5000))
    random.Random(7).shuffle(order)
    for i in order:
        idx.add(name(10 * i, 10 * i + 9), i)
    idx._check()
    assert idx.depth == 1
    assert [v for _, v in idx.query(ulid(12345), ulid(12399))] == [1234, 1235, 1236, 1237, 1238, 1239]
    assert len(idx.overlapping_groups()) == 5000


def test_query_does_not_scan_disjoint_segments() -> None:
    """A query touches O(log n) items per layer, not n (counted comparisons)."""

    class Counting(bytes):
        compares = 0

        def __lt__(self, other: bytes) -> bool:
            Counting.compares += 1
            return bytes.__lt__(self, other)

        def __le__(self, other: bytes) -> bool:
            Counting.compares += 1
            return bytes.__le__(self, other)

        def __gt__(self, other: bytes) -> bool:
            Counting.compares += 1
            return bytes.__gt__(self, other)

        def __ge__(self, other: bytes) -> bool:
            Counting.compares += 1
            return bytes.__ge__(self, other)

    idx: IntervalIndex[int] = IntervalIndex()
    n = 20000
    for i in range(n):
        idx.add(SegmentName(Counting(ulid(10 * i)), Counting(ulid(10 * i + 9))), i)
    Counting.compares = 0
    res = idx.query(Counting(ulid(10 * 777 + 5)), Counting(ulid(10 * 778 + 1)))
    assert [v for _, v in res] == [777, 778]
    assert Counting.compares < 200, Counting.compares


# --- IntervalIndex: seeded random stress against a naive model ----------------------------


class Model:
    """A plain list of (lo, hi, seq, value): obviously correct, slow."""

    def __init__(self) -> None:
        self.items: list[tuple[SegmentName, int, str]] = []
        self.seq = 0

    def add(self, n: SegmentName, v: str) -> None:
        self.items.append((n, self.seq, v))
        self.seq += 1

    def remove(self, n: SegmentName, v: str) -> bool:
        matches = sorted((s, i) for i, (m, s, w) in enumerate(self.items) if m == n and w == v)
        if not matches:
            return False
        del self.items[matches[0][1]]
        return True

    def sorted(self) -> list[tuple[SegmentName, str]]:
        return [(n, v) for n, _, v in sorted(self.items, key=lambda t: (t[0], t[1]))]

    def query(self, lo: bytes, hi: bytes) -> list[tuple[SegmentName, str]]:
        if lo > hi:
            return []
        return [(n, v) for n, v in self.sorted() if n.lo <= hi and lo <= n.hi]


def naive_groups(entries: list[tuple[SegmentName, str]]) -> list[list[tuple[SegmentName, str]]]:
    """Connected components by repeated union over all pairs."""
    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, (a, _) in enumerate(entries):
        for j, (b, _) in enumerate(entries):
            if a.overlaps(b.lo, b.hi):
                parent[find(i)] = find(j)
    comps: dict[int, list[tuple[SegmentName, str]]] = {}
    for i, e in enumerate(entries):
        comps.setdefault(find(i), []).append(e)
    return sorted(comps.values(), key=lambda g: (g[0][0],))


@pytest.mark.parametrize("seed", range(12))
def test_random_stress_against_model(seed: int) -> None:
    rng = random.Random(seed)
    idx: IntervalIndex[str] = IntervalIndex()
    model = Model()
    space = rng.choice([30, 200, 5000])
    maxlen = rng.choice([0, 3, 20, 400])
    for step in range(600):
        op = rng.random()
        if op < 0.5 or not model.items:
            lo = rng.randrange(space)
            n = name(lo, lo + rng.randint(0, maxlen))
            v = rng.choice("abc")
            idx.add(n, v)
            model.add(n, v)
        elif op < 0.75:
            if rng.random() < 0.8:
                n, _, v = rng.choice(model.items)
            else:
                lo = rng.randrange(space)
                n, v = name(lo, lo + rng.randint(0, maxlen)), rng.choice("abcd")
            assert idx.discard(n, v) == model.remove(n, v)
        else:
            a, b = rng.randrange(space + maxlen), rng.randrange(space + maxlen)
            assert idx.query(ulid(a), ulid(b)) == model.query(ulid(a), ulid(b))
        if step % 25 == 0:
            idx._check()
            assert list(idx) == model.sorted()
            assert len(idx) == len(model.items)
    idx._check()
    assert list(idx) == model.sorted()
    assert idx.overlapping_groups() == naive_groups(model.sorted())
    for _ in range(50):
        a = rng.randrange(space + maxlen)
        b = a + rng.randint(0, maxlen + 5)
        got = idx.overlapping_groups(ulid(a), ulid(b))
        assert [e for g in got for e in g] == model.query(ulid(a), ulid(b))
        # clipped groups: two entries share a group iff their clipped ranges chain
        clipped = [
            (SegmentName(max(n.lo, ulid(a)), min(n.hi, ulid(b))), v)
            for n, v in model.query(ulid(a), ulid(b))
        ]
        want = naive_groups(clipped)
        assert [len(g) for g in got] == [len(g) for g in want]


# --- hypothesis ---------------------------------------------------------------------------

intervals = st.tuples(st.integers(0, 60), st.integers(0, 15)).map(lambda t: name(t[0], t[0] + t[1]))


@given(
    st.lists(st.tuples(intervals, st.sampled_from("xyz")), max_size=40),
    st.integers(0, 80),
    st.integers(0, 80),
)
def test_hypothesis_query(entries: list[tuple[SegmentName, str]], a: int, b: int) -> None:
    idx = IntervalIndex(entries)
    idx._check()
    model = Model()
    for n, v in entries:
        model.add(n, v)
    assert idx.query(ulid(a), ulid(b)) == model.query(ulid(a), ulid(b))
    assert idx.overlapping_groups() == naive_groups(model.sorted())
    assert group_overlapping(list(idx)) == idx.overlapping_groups()


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.idx: IntervalIndex[str] = IntervalIndex()
        self.model = Model()

    @rule(n=intervals, v=st.sampled_from("xyz"))
    def add(self, n: SegmentName, v: str) -> None:
        self.idx.add(n, v)
        self.model.add(n, v)

    @rule(data=st.data())
    def remove_existing(self, data: st.DataObject) -> None:
        if self.model.items:
            n, _, v = data.draw(st.sampled_from(self.model.items))
            self.idx.remove(n, v)
            assert self.model.remove(n, v)

    @rule(n=intervals, v=st.sampled_from("xyz"))
    def discard_any(self, n: SegmentName, v: str) -> None:
        assert self.idx.discard(n, v) == self.model.remove(n, v)

    @rule(a=st.integers(0, 80), b=st.integers(0, 80))
    def query(self, a: int, b: int) -> None:
        assert self.idx.query(ulid(a), ulid(b)) == self.model.query(ulid(a), ulid(b))

    @invariant()
    def consistent(self) -> None:
        self.idx._check()
        assert list(self.idx) == self.model.sorted()


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
