"""Counting copies for read repair (oklog.query.copies, merge_streams' count): no IO."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import numpy as np
import pytest
import trio

from oklog.errors import CorruptSegment
from oklog.query.copies import (
    CopyCounter,
    ShortRecords,
    fetch_ranges,
    ids_block,
    ids_of_lines,
    lines_to,
    plan_targets,
    select,
)
from oklog.query.streams import merge_streams
from tests.recordutil import rec, ulid


def random_cluster(rng: random.Random, stores: int, n: int) -> tuple[list[list[int]], dict[int, set[int]]]:
    """Each record on a random number (0..stores) of random stores."""
    held: list[list[int]] = [[] for _ in range(stores)]
    where: dict[int, set[int]] = {}
    for r in range(n):
        k = rng.choice([0, 1, 1, 2, 2, 2, 3, stores])
        chosen = set(rng.sample(range(stores), min(k, stores)))
        if chosen:
            where[r] = chosen
        for s in chosen:
            held[s].append(r)
    return held, where


def blocks_of(lines: list[bytes], rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(lines):
        j = i + rng.randint(1, 40)
        out.append(b"".join(lines[i:j]))
        i = j
    return out


async def aiter(blocks: list[bytes]) -> AsyncIterator[bytes]:
    for b in blocks:
        await trio.lowlevel.checkpoint()
        yield b


# --- the query merge's count ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_merge_streams_reports_exactly_the_short_records(seed: int) -> None:
    rng = random.Random(seed)
    stores, rf = rng.randint(2, 5), rng.randint(2, 3)
    held, where = random_cluster(rng, stores, rng.randint(0, 600))
    sources = [[rec(r) for r in rs] for rs in held]

    async def merged(count: bool) -> tuple[bytes, ShortRecords]:
        short = ShortRecords(1 << 30)
        streams = [aiter(blocks_of(s, rng)) for s in sources]
        out = [b async for b in merge_streams(streams, copies=rf if count else 0,
                                                short=short if count else None)]
        return b"".join(out), short

    plain, _ = trio.run(merged, False)
    counted, short = trio.run(merged, True)
    assert counted == plain == b"".join(rec(r) for r in sorted(where))  # counting changes nothing
    assert short.take() == b"".join(rec(r) for r in sorted(where) if len(where[r]) < rf)
    assert short.dropped == 0


def test_happy_path_reports_nothing() -> None:
    lines = [rec(r) for r in range(3000)]

    async def main() -> ShortRecords:
        short = ShortRecords(1 << 20)
        async for _ in merge_streams([aiter([b"".join(lines)]), aiter(blocks_of(lines, random.Random(1)))],
                                     copies=2, short=short):
            pass
        return short

    short = trio.run(main)
    assert not short and short.dropped == 0


def test_short_records_cap_counts_what_it_drops() -> None:
    short = ShortRecords(len(rec(1)) * 3)
    short.add(rec(1) + rec(2))
    short.add(rec(3))
    short.add(rec(4) + rec(5))  # does not fit: dropped, and nothing more is kept
    short.add(rec(6))
    assert short.full and short.records == 3 and short.dropped == 3
    assert (short.lo, short.hi) == (ulid(1), ulid(3))
    assert short.take() == rec(1) + rec(2) + rec(3)
    assert ShortRecords(0).full  # 0: read repair off
    # a block that fits in part: its whole records that fit are kept
    short = ShortRecords(len(rec(1)) * 2 + 5)
    short.add(rec(1) + rec(2) + rec(3) + rec(4))
    assert short.full and short.records == 2 and short.dropped == 2
    assert (short.lo, short.hi) == (ulid(1), ulid(2)) and short.take() == rec(1) + rec(2)


def test_a_full_sink_stops_the_count() -> None:
    a = [rec(r) for r in range(0, 2000, 2)]  # nothing in common: all short
    b = [rec(r) for r in range(1, 2000, 2)]

    async def main() -> ShortRecords:
        short = ShortRecords(5000)
        async for _ in merge_streams([aiter(blocks_of(a, random.Random(2))),
                                      aiter(blocks_of(b, random.Random(3)))], copies=2, short=short):
            pass
        return short

    short = trio.run(main)
    assert short.full and short.records * len(rec(1)) <= 5000
    assert short.records + short.dropped < 2000  # stopped counting once full


# --- counting holders from id streams --------------------------------------------------


def count(sources: list[list[int]], rf: int, rng: random.Random, limit: int = 10**9) -> CopyCounter:
    counter = CopyCounter(len(sources), rf, limit)
    feeds = [blocks_of([ulid(r) + b"\n" for r in s], rng) for s in sources]
    while not counter.done:
        for i in counter.needs():
            counter.feed(i, feeds[i].pop(0) if feeds[i] else None)
        counter.count()
    return counter


@pytest.mark.parametrize("seed", range(15))
def test_copy_counter_matches_brute_force(seed: int) -> None:
    rng = random.Random(100 + seed)
    stores, rf = rng.randint(2, 6), rng.randint(2, 4)
    held, where = random_cluster(rng, stores, rng.randint(0, 800))
    counter = count(held, rf, rng)
    short = sorted(r for r in where if len(where[r]) < rf)
    assert counter.checked == len(where)
    assert counter.under == len(short) and counter.dropped == 0
    assert [bytes(k) for k in counter.keys] == [ulid(r) for r in short]
    for k, r in enumerate(short):
        row = counter.holders[k]
        assert {int(h) for h in row if h >= 0} == where[r]
        assert sorted(where).index(r) == counter.positions[k]  # rank among the checked


def test_copy_counter_counts_a_repeating_source_once() -> None:
    counter = count([[1, 1, 2], [2]], 2, random.Random(0))
    assert counter.checked == 2 and counter.under == 1
    assert bytes(counter.keys[0]) == ulid(1)


def test_copy_counter_limit_defers_the_rest() -> None:
    counter = count([list(range(100)), []], 2, random.Random(0), limit=30)
    assert counter.under == 100 and len(counter.keys) == 30 and counter.dropped == 70


def test_copy_counter_needs_rf_2() -> None:
    with pytest.raises(ValueError):
        CopyCounter(3, 1)


def test_ids_block_and_parsing() -> None:
    block = rec(1, b"a b c") + rec(5, b"") + rec(9, b"\x00\xff")
    ids = ids_block(block)
    assert ids == ulid(1) + b"\n" + ulid(5) + b"\n" + ulid(9) + b"\n"
    assert [bytes(k) for k in ids_of_lines(ids)] == [ulid(1), ulid(5), ulid(9)]
    assert ids_block(b"") == b""
    for bad in (ids[:-1], ids.replace(b"\n", b" "), rec(1)):
        with pytest.raises(CorruptSegment):
            ids_of_lines(bad)


# --- planning the copies -------------------------------------------------------------------


def test_plan_targets_prefers_stores_that_lack_the_record() -> None:
    rng = random.Random(5)
    holders = np.array([[0, -1], [1, -1], [0, 2], [3, -1], [0, -1]], np.int32)
    plan = plan_targets(holders, 4, 3, rng)
    for k, row in enumerate(holders):
        have = {int(h) for h in row if h >= 0}
        gets = {t for t, mask in plan.to.items() if mask[k]}
        assert not gets & have and len(gets) == 3 - len(have)
        assert plan.source[k] in have
    assert not plan.short_after.any()
    # records with the same holders go to the same stores (few segments)
    assert all(mask[0] == mask[4] for mask in plan.to.values())


def test_plan_targets_with_too_few_stores_says_so() -> None:
    plan = plan_targets(np.array([[0, -1]], np.int32), 2, 3, random.Random(1))
    assert plan.short_after[0] and list(plan.to) == [1]
    empty = plan_targets(np.empty((0, 1), np.int32), 3, 2, random.Random(1))
    assert not empty.to and len(empty.source) == 0


def test_fetch_ranges_cover_every_key_in_few_requests() -> None:
    rng = random.Random(9)
    positions = np.array(sorted(rng.sample(range(100_000), 500)))
    keys = np.array([ulid(int(p)) for p in positions], dtype="S26")
    ranges = fetch_ranges(keys, positions, gap=64, max_ranges=8)
    assert len(ranges) <= 8
    for k in keys:
        assert sum(lo <= bytes(k) <= hi for lo, hi in ranges) == 1
    assert fetch_ranges(keys[:0], positions[:0]) == []
    near = fetch_ranges(keys[:3], np.array([1, 2, 3]))
    assert near == [(bytes(keys[0]), bytes(keys[2]))]


def test_select_and_lines_to() -> None:
    keys = np.array([ulid(2), ulid(5), ulid(7)], dtype="S26")
    block = b"".join(rec(r) for r in range(10))
    lines, at = select(block, keys)
    assert lines == [rec(2)[:-1], rec(5)[:-1], rec(7)[:-1]] and at.tolist() == [0, 1, 2]
    assert lines_to(lines, np.array([True, False, True])) == rec(2) + rec(7)
    assert lines_to(lines, np.zeros(3, bool)) == b""
    assert select(b"", keys)[0] == [] and select(block, keys[:0])[0] == []
