"""Tests for oklog.records.merge: k-way merge with de-dup, sorting."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.errors import CorruptSegment
from oklog.lines import iter_blocks
from oklog.records import merge as merge_mod
from oklog.records.merge import is_strictly_sorted, merge_records, sort_records
from tests.recordutil import rec, ulid


# --- reference model ------------------------------------------------------------------


def ref_merge(sources: list[list[bytes]], need: int = 0) -> tuple[bytes, list[bytes]]:
    """Concatenate, stable sort by ULID, keep the first; lines short of copies."""
    tagged = [(line[:26], i, line) for i, src in enumerate(sources) for line in src]
    tagged.sort(key=lambda t: t[0])  # stable: source order, then position
    out: list[bytes] = []
    copies: dict[bytes, set[int]] = {}
    for key, i, line in tagged:
        if key not in copies:
            out.append(line)
            copies[key] = set()
        copies[key].add(i)
    short = [line for line in out if len(copies[line[:26]]) < need]
    return b"".join(out), short


def lines_into(short: list[bytes]) -> Callable[[bytes], None]:
    """An ``on_short`` keeping the reported records one per line (the merge
    reports blocks of whole lines, never an empty one)."""

    def add(block: bytes) -> None:
        assert block and block.endswith(b"\n"), block
        short.extend(line + b"\n" for line in block[:-1].split(b"\n"))

    return add


def split_blocks(lines: list[bytes], rng: random.Random, empty: bool = True) -> list[bytes]:
    """Random split of a source's lines into blocks (maybe with empty ones)."""
    blocks: list[bytes] = []
    i = 0
    while i < len(lines):
        j = i + rng.randint(1, 6)
        blocks.append(b"".join(lines[i:j]))
        if empty and rng.random() < 0.1:
            blocks.append(b"")
        i = j
    return blocks


def run_merge(
    sources: list[list[bytes]], rng: random.Random, *, trusted: bool, need: int
) -> tuple[bytes, list[bytes]]:
    short: list[bytes] = []
    blocks = [split_blocks(s, rng) for s in sources]
    out = list(
        merge_records(
            [iter(b) for b in blocks],
            trusted_unique=trusted,
            copies_needed=need,
            on_short=lines_into(short),
        )
    )
    for block in out:
        assert block and block.endswith(b"\n"), block
    return b"".join(out), short


# (MIN_BLOCK, WINDOW, RUN_MIN, PIECE): tiny sizes make tiny inputs take every
# path (batches cut by the window, runs, pieces); the last one is production.
TUNINGS = [(1, 1, 1, 1), (150, 100, 40, 64), (1, 300, 10**6, 200), (64 * 1024, 64 * 1024, 4096, 256 * 1024)]
DEFAULT_TUNING = TUNINGS[-1]


def set_tuning(t: tuple[int, int, int, int]) -> None:
    merge_mod.MIN_BLOCK, merge_mod.WINDOW, merge_mod.RUN_MIN, merge_mod.PIECE = t


@pytest.fixture(params=TUNINGS, ids=["tiny", "small", "noruns", "production"])
def min_block(request: pytest.FixtureRequest) -> Iterator[tuple[int, int, int, int]]:
    """Coalescing and windows change the batch boundaries: test several."""
    set_tuning(request.param)
    yield request.param
    set_tuning(DEFAULT_TUNING)


payloads = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"\r"))


@st.composite
def source_lists(draw: st.DrawFn, unique: bool) -> list[list[bytes]]:
    space = draw(st.sampled_from([8, 40, 400]))
    nsrc = draw(st.integers(0, 5))
    sources = []
    for _ in range(nsrc):
        keys = draw(st.lists(st.integers(0, space), max_size=30, unique=unique))
        keys.sort()
        sources.append([rec(k, draw(payloads)) for k in keys])
    return sources


@settings(max_examples=300, deadline=None)
@given(source_lists(unique=False), st.integers(0, 4), st.randoms(use_true_random=False))
def test_merge_matches_reference(sources: list[list[bytes]], need: int, rng: random.Random) -> None:
    for tuning in TUNINGS:
        set_tuning(tuning)
        try:
            assert run_merge(sources, rng, trusted=False, need=need) == ref_merge(sources, need)
        finally:
            set_tuning(DEFAULT_TUNING)


@settings(max_examples=300, deadline=None)
@given(source_lists(unique=True), st.integers(0, 4), st.randoms(use_true_random=False))
def test_merge_trusted_matches_reference(sources: list[list[bytes]], need: int, rng: random.Random) -> None:
    for tuning in TUNINGS:
        set_tuning(tuning)
        try:
            assert run_merge(sources, rng, trusted=True, need=need) == ref_merge(sources, need)
        finally:
            set_tuning(DEFAULT_TUNING)


@pytest.mark.parametrize("seed", range(40))
def test_merge_random_larger(seed: int, min_block: object) -> None:
    """Bigger inputs with realistic shapes: replicas, overlaps, sparse repairs."""
    rng = random.Random(seed)
    space = rng.choice([300, 3000, 100000])
    universe = sorted(rng.sample(range(space), min(space, 600)))
    sources = []
    for _ in range(rng.randint(1, 5)):
        shape = rng.random()
        if shape < 0.3:  # a replica of a contiguous range
            a = rng.randrange(len(universe))
            keys = universe[a : a + rng.randint(0, 400)]
        elif shape < 0.6:  # a random subset
            keys = sorted(rng.sample(universe, rng.randint(0, len(universe))))
        else:  # a few scattered records (a read-repair segment)
            keys = sorted(rng.sample(universe, rng.randint(0, 5)))
        sources.append([rec(k, b"x" * (k % 17)) for k in keys])
    need = rng.randint(0, 4)
    for trusted in (True, False):
        assert run_merge(sources, rng, trusted=trusted, need=need) == ref_merge(sources, need)


def test_no_sources_and_empty_sources(min_block: object) -> None:
    assert list(merge_records([])) == []
    assert list(merge_records([[]])) == []
    assert list(merge_records([[], [b""], iter([])])) == []
    assert list(merge_records([[b""], [rec(1)], []])) == [rec(1)]


def test_single_trusted_source_is_passed_through(min_block: object) -> None:
    blocks = [rec(1) + rec(2), rec(3), b"", rec(4) + rec(5) + rec(6)]
    out = list(merge_records([blocks], trusted_unique=True))
    assert out == [blocks[0], blocks[1], blocks[3]]
    assert all(a is b for a, b in zip(out, [blocks[0], blocks[1], blocks[3]]))


def test_single_untrusted_source_drops_adjacent_duplicates(min_block: object) -> None:
    blocks = [rec(1, b"a") + rec(2, b"a"), rec(2, b"b"), rec(2, b"c") + rec(3, b"a") + rec(3, b"b")]
    assert b"".join(merge_records([blocks])) == rec(1, b"a") + rec(2, b"a") + rec(3, b"a")
    clean = [rec(1) + rec(2), rec(3)]
    out = list(merge_records([clean]))
    assert b"".join(out) == b"".join(clean)
    if merge_mod.PIECE > len(clean[0]):
        assert out[0] is clean[0] and out[1] is clean[1]  # nothing dropped: no copy


def test_first_occurrence_wins_by_source_order(min_block: object) -> None:
    a = [rec(1, b"A") + rec(2, b"A") + rec(4, b"A")]
    b = [rec(2, b"B") + rec(3, b"B") + rec(4, b"B")]
    c = [rec(0, b"C") + rec(2, b"C")]
    out = b"".join(merge_records([a, b, c], trusted_unique=True))
    assert out == rec(0, b"C") + rec(1, b"A") + rec(2, b"A") + rec(3, b"B") + rec(4, b"A")
    # the payload does not decide: a "smaller" payload in a later source loses
    a = [rec(5, b"zzz")]
    b = [rec(5, b"aaa")]
    assert b"".join(merge_records([a, b])) == rec(5, b"zzz")
    assert b"".join(merge_records([b, a])) == rec(5, b"aaa")


def test_replicas_are_emitted_once_and_counted(min_block: object) -> None:
    data = b"".join(rec(i) for i in range(1000))
    blocks = [data[i : i + 700] for i in range(0, len(data), 700)]
    whole = list(iter_blocks(blocks))
    short: list[bytes] = []
    out = b"".join(merge_records([whole, whole], trusted_unique=True, copies_needed=2, on_short=lines_into(short)))
    assert out == data and short == []
    out = b"".join(merge_records([whole, whole], trusted_unique=True, copies_needed=3, on_short=lines_into(short)))
    assert out == data and b"".join(short) == data


def test_copies_counting_across_sources(min_block: object) -> None:
    # RF 2 over 3 nodes: each record on two nodes, except 3 that lost a copy
    rng = random.Random(5)
    nodes: list[list[bytes]] = [[], [], []]
    lost = {10, 500, 999}
    for i in range(1000):
        holders = rng.sample(range(3), 1 if i in lost else 2)
        for h in holders:
            nodes[h].append(rec(i))
    short: list[bytes] = []
    out = b"".join(
        merge_records(
            [[b"".join(n)] for n in nodes], trusted_unique=True, copies_needed=2, on_short=lines_into(short)
        )
    )
    assert out == b"".join(rec(i) for i in range(1000))
    assert short == [rec(10), rec(500), rec(999)]


def test_copies_ignore_intra_source_duplicates(min_block: object) -> None:
    short: list[bytes] = []
    a = [rec(1) + rec(1) + rec(2), rec(2) + rec(3)]
    b = [rec(2)]
    out = b"".join(merge_records([a, b], copies_needed=2, on_short=lines_into(short)))
    assert out == rec(1) + rec(2) + rec(3)
    assert short == [rec(1), rec(3)]


def test_on_short_without_copies_needed_does_nothing() -> None:
    short: list[bytes] = []
    assert b"".join(merge_records([[rec(1)]], on_short=lines_into(short))) == rec(1)
    out = b"".join(merge_records([[rec(1)], [rec(2)]], copies_needed=1, on_short=lines_into(short)))
    assert out == rec(1) + rec(2)
    assert short == []


def test_conflicting_copies_after_duplicates(min_block: object) -> None:
    """Same ULID, different bytes, in a stretch that follows identical copies:
    the earliest source wins in every batch, whichever check runs first."""
    a: list[bytes] = []
    b: list[bytes] = []
    for i in range(3000):
        if i % 3 == 0:  # only in a
            a.append(rec(i, b"a-only"))
        elif i < 1500:  # identical copies
            a.append(rec(i, b"same"))
            b.append(rec(i, b"same"))
        else:  # conflicting copies
            a.append(rec(i, b"from-a"))
            b.append(rec(i, b"from-b" * (i % 3)))
    for order in ([a, b], [b, a]):
        short: list[bytes] = []
        datas = [b"".join(s) for s in order]
        blocks = [list(iter_blocks([d[k : k + 4000] for k in range(0, len(d), 4000)])) for d in datas]
        got = b"".join(merge_records(blocks, trusted_unique=True, copies_needed=2, on_short=lines_into(short)))
        assert (got, short) == ref_merge(order, 2)


def test_output_blocks_are_coalesced() -> None:
    # two finely interleaved sources: runs of one line, yet few big blocks
    a = b"".join(rec(i) for i in range(0, 20000, 2))
    b = b"".join(rec(i) for i in range(1, 20000, 2))
    out = list(merge_records([list(iter_blocks([a])), list(iter_blocks([b]))], trusted_unique=True))
    assert b"".join(out) == b"".join(rec(i) for i in range(20000))
    assert len(out) <= len(b"".join(out)) // merge_mod.WINDOW + 2


def test_disjoint_and_touching_sources(min_block: object) -> None:
    a = [b"".join(rec(i) for i in range(0, 100))]
    b = [b"".join(rec(i) for i in range(100, 200))]
    c = [b"".join(rec(i) for i in range(199, 300))]  # touches b at 199
    out = b"".join(merge_records([c, a, b], trusted_unique=True))
    assert out == b"".join(rec(i) for i in range(300))


def test_sparse_source_inside_dense_one(min_block: object) -> None:
    dense = b"".join(rec(i) for i in range(0, 5000, 2))
    sparse = rec(1) + rec(2001) + rec(4999) + rec(6000)
    out = b"".join(merge_records([list(iter_blocks([dense])), [sparse]], trusted_unique=True))
    want = {rec(i) for i in range(0, 5000, 2)} | {rec(1), rec(2001), rec(4999), rec(6000)}
    assert out == b"".join(sorted(want))


def test_source_block_without_lf_raises(min_block: object) -> None:
    with pytest.raises(CorruptSegment):
        list(merge_records([[rec(1) + b"tail"]]))
    with pytest.raises(CorruptSegment):
        list(merge_records([[rec(1) + b"tail"]], trusted_unique=True))
    with pytest.raises(CorruptSegment):
        list(merge_records([[rec(1)], [rec(2) + b"tail"]]))
    with pytest.raises(CorruptSegment):
        list(merge_records([[rec(1)], [rec(0), rec(2) + b"tail"]]))


def test_merge_is_lazy() -> None:
    pulled: list[int] = []

    def source(base: int) -> Iterator[bytes]:
        for i in range(100):
            pulled.append(i)
            yield b"".join(rec(base + 2 * (1000 * i + j)) for j in range(1000))

    for trusted in (True, False):
        pulled.clear()
        it = merge_records([source(0), source(1)], trusted_unique=trusted)
        head = b"".join(itertools.islice(it, 3))
        assert head.startswith(rec(0) + rec(1) + rec(2))
        assert len(pulled) < 12


def test_unsorted_input_does_not_crash(min_block: object) -> None:
    a = [rec(5) + rec(1) + rec(3), rec(2)]
    b = [rec(4) + rec(0)]
    out = b"".join(merge_records([a, b]))
    assert sorted(out.splitlines()) == [rec(i).rstrip(b"\n") for i in range(6)]


# --- sort_records / is_strictly_sorted -----------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 50), payloads), max_size=60))
def test_sort_records_matches_reference(items: list[tuple[int, bytes]]) -> None:
    block = b"".join(rec(k, p) for k, p in items)
    want, _ = ref_merge([[rec(k, p) for k, p in items]])
    got = sort_records(block)
    assert got == want
    assert is_strictly_sorted(got)
    keys = [k for k, _ in items]
    assert is_strictly_sorted(block) == (keys == sorted(set(keys)))
    if is_strictly_sorted(block):
        assert sort_records(block) is block


def test_sort_records_edges() -> None:
    assert sort_records(b"") == b""
    with pytest.raises(CorruptSegment):
        sort_records(rec(1) + b"no lf")
    assert sort_records(rec(2) + rec(1) + rec(2, b"x")) == rec(1) + rec(2)
    assert sort_records(rec(1, b"\r\x00 a b")) == rec(1, b"\r\x00 a b")


def test_is_strictly_sorted_edges() -> None:
    assert is_strictly_sorted(b"")
    assert is_strictly_sorted(rec(1))
    assert is_strictly_sorted(rec(1) + rec(2))
    assert not is_strictly_sorted(rec(1) + rec(1, b"other payload"))
    assert not is_strictly_sorted(rec(2) + rec(1))
    assert is_strictly_sorted(rec(1) + ulid(2) + b" t tail")  # last line without LF
    assert not is_strictly_sorted(rec(2) + ulid(1) + b" t tail")


@given(st.lists(st.lists(st.integers(0, 60), max_size=15), min_size=2, max_size=4), st.randoms())
@settings(max_examples=400, deadline=None)
def test_unsorted_sources_never_hang_and_lose_nothing(sources: list[list[int]], rng: random.Random) -> None:
    """A damaged source (out of order) gives unsorted output, never a hang:
    every record still comes out.  Tiny windows make every code path run."""
    sizes = {"MIN_BLOCK": 64, "WINDOW": 128, "RUN_MIN": 48, "PIECE": 100}
    saved = {k: getattr(merge_mod, k) for k in sizes}
    for k, v in sizes.items():
        setattr(merge_mod, k, v)
    try:
        blocks = [split_blocks([rec(n) for n in src], rng, empty=False) for src in sources]
        out = b"".join(merge_records(blocks, trusted_unique=True))
    finally:
        for k, v in saved.items():
            setattr(merge_mod, k, v)
    assert {line[:26] for line in out.splitlines()} == {ulid(n) for src in sources for n in src}
