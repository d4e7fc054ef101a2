"""The query engine over real store segments: the same records as a brute-
force scan, whatever the blocks, index, overlaps, compression or workers."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oklog.query import local
from oklog.query.params import Query
from oklog.query.scan import Matcher
from oklog.query.unit import Unit
from oklog.query.workers import Scanner
from oklog.store.log import StoreLog
from oklog.ulid import MAX_ULID, MIN_ULID
from tests.recordutil import rec, ulid

WORDS = [b"GET", b"ERROR", b"error", b"timeout", b"needle-7f3a9c", b"status=500", b"x", b"/api/v1",
         b"\xc3\xa9t\xc3\xa9", b"HTTP/1.1", b"a b"]
TOPICS = [b"default", b"web"]
QUERIES = st.sampled_from([
    (b"", False), (b"needle-7f3a9c", False), (b"status=500", False), (b"HTTP/1.1", False), (b"a b", False),
    (b"ERROR.*timeout", True), (b"(?i)error", True), (b"^GET", True), (b"(ERROR|timeout) x", True),
    (rb"\d+", True), (b"x$", True), (b"nothing-here", False), (b"(?i)\xc3\x89T\xc3\x89", True),
    (b".*", True),  # matches every record: the "all" strategy, as an empty q
])


def brute(records: list[bytes], q: bytes, regex: bool, topic: bytes | None, lo: bytes, hi: bytes) -> bytes:
    m = Matcher(q, regex, topic)
    seen: dict[bytes, bytes] = {}
    for r in records:
        if lo <= r[:26] <= hi and m.match(r):
            seen.setdefault(r[:26], r)
    return b"".join(seen[k] for k in sorted(seen))


def record(i: int) -> bytes:
    """Record ``i``: the same bytes wherever it is stored (a ULID is one record)."""
    r = random.Random(i)
    return rec(i, b" ".join(r.choices(WORDS, k=r.randrange(1, 5)))).replace(
        b" default ", b" " + r.choice(TOPICS) + b" ", 1)


async def store_with(tmp: Path, rng: random.Random, compression: str, overlap: bool) -> tuple[StoreLog, list[bytes]]:
    store = StoreLog(tmp, compression=compression, block_size=rng.choice([512, 2048, 8192]))
    store.open()
    everything: list[bytes] = []
    n = 0
    for _ in range(rng.randrange(1, 5)):
        count = rng.randrange(1, 300)
        if overlap and everything and rng.random() < 0.5:
            ids = sorted(rng.sample(range(max(0, n - 200), n + count), count))  # overlaps earlier ones
        else:
            ids = list(range(n, n + count))
        n = max(n, ids[-1] + 1)
        body = b"".join(record(i) for i in ids)
        everything.extend(body.splitlines(keepends=True))

        async def chunks(body: bytes = body):
            for i in range(0, len(body), 700):
                yield body[i : i + 700]

        await store.write_segment(chunks())
    if rng.random() < 0.8:
        await store.index_pending()  # else: no n-gram index yet, same answers
    return store, everything


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), query=st.lists(QUERIES, min_size=1, max_size=4),
       compression=st.sampled_from(["zstd", "none"]), overlap=st.booleans())
def test_results_equal_a_brute_force_scan(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                          query: list, compression: str, overlap: bool) -> None:
    tmp = tmp_path_factory.mktemp("engine")
    rng = random.Random(seed)

    async def main() -> None:
        store, records = await store_with(tmp, rng, compression, overlap)
        store._check()
        for q, regex in query:
            topic = rng.choice([None, None, b"web"])
            a, b = sorted(rng.randrange(-5, 1300) for _ in range(2))
            for lo, hi in ((MIN_ULID, MAX_ULID), (ulid(max(a, 0)), ulid(max(b, 0)))):
                p = await local.prepare(store, Query(lo, hi, q, regex, topic))
                size = await local.exact_size(p)
                got = b"".join([blk async for blk in local.run(p)])
                assert got == brute(records, q, regex, topic, lo, hi), (q, regex, topic, lo, hi)
                # the length an answer declares up front (Content-Length) is exact, and
                # known for match everything (an empty q, or a regex such as .*) unless
                # segments overlap
                assert size is None or size == len(got)
                merged = any(len([s for s in g if s.blocks]) > 1 for g in p.groups)
                everything = Matcher(q, regex, topic).strategy == "all"
                assert everything == (q in (b"", b".*") and topic is None)
                assert (size is not None) == (everything and not merged)
        store.close()

    trio.run(main)


def test_worker_processes_give_the_same_answers(tmp_path: Path) -> None:
    rng = random.Random(4)

    async def main() -> None:
        store, records = await store_with(tmp_path, rng, "zstd", overlap=True)
        scanner = Scanner(2)
        try:
            await scanner.start()
            for q, regex in [(b"", False), (b"needle-7f3a9c", False), (b"ERROR.*timeout", True)]:
                p = await local.prepare(store, Query(MIN_ULID, MAX_ULID, q, regex), scanner)
                got = b"".join([blk async for blk in local.run(p)])
                assert got == brute(records, q, regex, None, MIN_ULID, MAX_ULID)
        finally:
            scanner.close()
        store.close()

    trio.run(main)


def slow_units(tmp_path: Path, n: int) -> list[Unit]:
    body = b"".join(rec(i, b"payload %d" % i) for i in range(20000))
    path = tmp_path / "plain"
    path.write_bytes(body)
    return [Unit(str(path), "none", ((0, len(body), False),), MIN_ULID, MAX_ULID, b"payload", False, None)
            for _ in range(n)]


async def settled(scanner: Scanner) -> None:
    """Tokens come back once the units still running have finished."""
    with trio.fail_after(10):
        while scanner.limiter.borrowed_tokens:
            await trio.sleep(0.01)


def traced_without_collector(main: Callable[[], Awaitable[None]]) -> None:
    """``trio.run(main)`` with the cyclic garbage collector off and
    tracemalloc on: memory freed then is freed by reference counting."""
    import gc
    import tracemalloc

    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        trio.run(main)
    finally:
        tracemalloc.stop()
        gc.enable()


def test_results_read_are_freed_at_once_not_by_the_garbage_collector(tmp_path: Path) -> None:
    """A scan's memory is bounded by its depth, not by the answer's size:
    nothing keeps a result alive once it is read (a reference cycle
    through each unit's future once held every result of a query until
    the collector ran: ~400 MB after a few match-everything queries)."""
    import tracemalloc

    units = slow_units(tmp_path, 40)  # ~0.9 MB of results each

    async def main() -> None:
        scanner = Scanner(0, depth=2, limit=4)
        total = 0
        async for result in scanner.results(units):
            total += len(result)
        del result
        assert total > 30 << 20
        held, peak = tracemalloc.get_traced_memory()
        assert held < 4 << 20 and peak < 12 << 20, (held, peak)
        await settled(scanner)
        scanner.close()

    traced_without_collector(main)


def test_results_of_a_scan_left_mid_way_are_freed_at_once(tmp_path: Path) -> None:
    """The results a stream had read ahead when its reader left (a client
    gone, a deadline) are dropped unread: nothing keeps them alive until
    the garbage collector runs (``_Job.drop`` lets go of the future)."""
    import tracemalloc

    units = slow_units(tmp_path, 12)  # ~0.9 MB of results each

    async def main() -> None:
        scanner = Scanner(0, depth=8, limit=8)
        async with aclosing(scanner.results(units)) as results:
            async for first in results:
                await settled(scanner)  # the units read ahead have finished: results held
                break  # the reader leaves
        del first
        await settled(scanner)
        held, _ = tracemalloc.get_traced_memory()
        assert held < 2 << 20, held  # not the ~7 MB of the results read ahead
        scanner.close()

    traced_without_collector(main)


def test_merged_streams_never_wait_for_each_others_tokens(tmp_path: Path) -> None:
    """Several streams merged (overlapping segments) or a slow reader: a
    suspended stream holds results, not the node's tokens."""
    from oklog.query.streams import merge_streams

    units = slow_units(tmp_path, 6)

    async def main() -> None:
        scanner = Scanner(0, depth=3, limit=4)
        with trio.fail_after(30):
            merged = merge_streams([scanner.results(units) for _ in range(4)])
            got = b"".join([b async for b in merged])
        assert got.count(b"\n") == 20000 * 6  # the same records four times over, once each
        await settled(scanner)
        scanner.close()

    trio.run(main)


def test_a_scan_cancelled_mid_way_releases_everything(tmp_path: Path) -> None:
    units = slow_units(tmp_path, 50)

    async def main() -> None:
        scanner = Scanner(0, depth=3, limit=4)
        got = 0
        async with aclosing(scanner.results(units)) as results:  # as the HTTP layer does
            async for _ in results:
                got += 1
                if got == 2:
                    break  # a client that went away
        await settled(scanner)
        with trio.CancelScope() as scope:  # a cancelled query
            async with aclosing(scanner.results(units)) as results:
                async for _ in results:
                    scope.cancel()
                    await trio.sleep(0)
        await settled(scanner)
        # the scanner still works afterwards, for everybody
        results = [r async for r in scanner.results(units[:3])]
        assert len(results) == 3 and all(r.count(b"\n") == 20000 for r in results)
        scanner.close()

    trio.run(main)


def test_a_dead_worker_process_is_replaced(tmp_path: Path) -> None:
    import os
    import signal

    units = slow_units(tmp_path, 4)

    async def main() -> None:
        scanner = Scanner(1)
        try:
            await scanner.start()
            pool = scanner._pool
            assert pool is not None
            for pid in list(pool._processes):  # type: ignore[attr-defined]
                os.kill(pid, signal.SIGKILL)
            await trio.sleep(0.5)
            results = [r async for r in scanner.results(units)]
            assert len(results) == 4 and all(r.count(b"\n") == 20000 for r in results)
        finally:
            scanner.close()

    trio.run(main)


def test_a_worker_dying_mid_query_restarts_the_pool_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Units started ahead in the pool that died fail one by one; each is
    blamed on the pool it ran in, never on the fresh pool that replaced it
    (which would be shut down under the units it runs)."""
    import logging
    import os
    import signal

    units = slow_units(tmp_path, 8)

    async def main() -> None:
        scanner = Scanner(1, depth=3)
        try:
            await scanner.start()
            got = []
            async for r in scanner.results(units):
                got.append(r)
                if len(got) == 1:
                    pool = scanner._pool
                    assert pool is not None
                    for pid in list(pool._processes):  # type: ignore[attr-defined]
                        os.kill(pid, signal.SIGKILL)
                    await trio.sleep(0.5)  # the pool knows it is broken
            assert len(got) == 8 and all(r.count(b"\n") == 20000 for r in got)
        finally:
            scanner.close()

    with caplog.at_level(logging.ERROR, logger="oklog.query"):
        trio.run(main)
    assert sum("scan_worker_died" in r.getMessage() for r in caplog.records) == 1


def test_a_segment_replaced_under_a_query_cuts_it_short_never_mixes(tmp_path: Path) -> None:
    """A same-named upload unions into a new file while a query that was
    planned on the old one runs: the query fails, it never returns a mix."""
    from oklog.errors import SegmentChanged

    async def main() -> None:
        store = StoreLog(tmp_path, compression="none", block_size=1024)
        store.open()
        first = b"".join(record(i) for i in range(0, 400, 2))
        more = b"".join(record(i) for i in [0] + list(range(1, 399, 2)) + [398])

        async def body(data: bytes):
            yield data

        await store.write_segment(body(first))
        p = await local.prepare(store, Query(ulid(50), ulid(300)))
        await store.write_segment(body(more))  # same first and last ULID: a union
        with pytest.raises(SegmentChanged):
            b"".join([blk async for blk in local.run(p)])
        p = await local.prepare(store, Query(ulid(50), ulid(300)))
        got = b"".join([blk async for blk in local.run(p)])
        assert got == b"".join(record(i) for i in range(50, 301))
        store.close()

    trio.run(main)


def test_spill_dirs_of_dead_nodes_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    from oklog.query import workers

    monkeypatch.setattr(workers.os.path, "isdir", lambda p: False)  # no /dev/shm: the temp dir
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    dead = tmp_path / "oklog-scan-999999999-x"
    dead.mkdir()
    (dead / "leftover").write_bytes(b"x")
    mine = tmp_path / f"oklog-scan-{os.getpid()}-y"
    mine.mkdir()
    fresh = workers._spill_dir()
    assert not dead.exists() and mine.exists() and fresh.startswith(str(tmp_path))


def test_spilled_pieces_are_written_whole_and_in_order_even_in_partial_writes(monkeypatch):
    import os

    from oklog.query import unit as unit_mod

    written = bytearray()

    def writev(fd: int, buffers: list[bytes]) -> int:  # the kernel may take less than asked
        data = b"".join(bytes(b) for b in buffers)[:7]
        written.extend(data)
        return len(data)

    monkeypatch.setattr(os, "writev", writev)
    parts = [b"abc\n", b"", b"defghijklmnop\n", b"q\n"] + [b"r%d\n" % i for i in range(2500)]
    unit_mod._write_all(0, list(parts))
    assert bytes(written) == b"".join(parts)


def test_spill_slots_are_reused_bounded_and_never_mixed_up(tmp_path: Path) -> None:
    """Big results come back through slot files that are written over:
    results of different sizes in turn (a smaller one over a bigger one),
    a stream left early, and the slots kept afterwards are few."""
    import os

    from oklog.query import workers

    body = b"".join(rec(i, b"payload %d" % i) for i in range(20000))
    path = tmp_path / "plain"
    path.write_bytes(body)
    lines = body.splitlines(keepends=True)
    queries = [b"payload", b"payload 1", b"payload 77", b"payload 2"]
    want = {q: b"".join(ln for ln in lines if q in ln.split(b" ", 2)[2]) for q in queries}
    units = [Unit(str(path), "none", ((0, len(body), False),), MIN_ULID, MAX_ULID, q, False, None)
             for q in queries * 3]

    async def main() -> None:
        scanner = Scanner(2, depth=3)
        try:
            await scanner.start()
            got = [r async for r in scanner.results(units)]
            assert got == [want[u.q] for u in units]
            async with aclosing(scanner.results(units)) as early:  # left after one result
                async for _ in early:
                    break
            await settled(scanner)
            got = [r async for r in scanner.results(units)]
            assert got == [want[u.q] for u in units]
            assert scanner._spill is not None
            await trio.sleep(0.2)  # done-callbacks of the dropped units
            assert len(os.listdir(scanner._spill)) <= workers.KEEP_SLOTS
        finally:
            scanner.close()

    trio.run(main)
