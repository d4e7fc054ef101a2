"""Compaction and retention on real files, with an injected clock.

``Compactor.step`` is called directly with a fake clock (no sleeping); a
query held open across a whole compaction job must still return the
complete, exact answer.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from oklog.query import local
from oklog.query.params import Query
from oklog.records.format import stamp
from oklog.segment.name import SegmentName
from oklog.segment.table import sidecar_path
from oklog.store.compactor import Compactor
from oklog.store.log import StoreLog
from oklog.ulid import MAX_ULID, MIN_ULID, Stamper
from tests.recordutil import rec, segment_bytes


def compactor(store: StoreLog, **kw: Any) -> Compactor:
    """A compactor with no age limit: these records are from 1970."""
    kw.setdefault("retain", None)
    kw.setdefault("clock", Clock(time.time()))
    return Compactor(store, **kw)


def paused(store: StoreLog, **kw: Any) -> Paused:
    kw.setdefault("retain", None)
    kw.setdefault("clock", Clock(time.time()))
    return Paused(store, **kw)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def names(store: StoreLog) -> list[SegmentName]:
    return sorted(n for n, _ in store.index)


def on_disk(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file() and p.name != "LOCK")


async def query_all(store: StoreLog, lo: bytes = MIN_ULID, hi: bytes = MAX_ULID) -> bytes:
    p = await local.prepare(store, Query(lo, hi))
    return b"".join([b async for b in local.run(p)])


def no_overlaps(store: StoreLog) -> bool:
    ns = names(store)
    return all(a.hi < b.lo for a, b in zip(ns, ns[1:]))


async def converge(c: Compactor, limit: int = 200) -> int:
    jobs = 0
    while await c.step() is not None:
        jobs += 1
        assert jobs < limit
    return jobs


def overlapping_uploads(rng: random.Random, n: int) -> tuple[list[bytes], bytes]:
    """``n`` uploads of random, overlapping ranges with repeats; and the
    answer: every distinct record once, in order."""
    uploads, every = [], set()
    for _ in range(n):
        lo = rng.randint(0, 3000)
        ids = sorted({lo + rng.randint(0, 500) for _ in range(rng.randint(1, 300))})
        every |= set(ids)
        uploads.append(b"".join(rec(i, b"payload %d" % i) for i in ids))
    return uploads, b"".join(rec(i, b"payload %d" % i) for i in sorted(every))


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_overlapping_uploads_compact_into_few_sound_segments(tmp_path: Path, compression: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="oklog.store")

    async def main() -> None:
        store = StoreLog(tmp_path, compression=compression, block_size=4096)
        store.open()
        uploads, want = overlapping_uploads(random.Random(7), 25)
        for data in uploads:
            await store.write_segment(body(data))
        assert not no_overlaps(store)
        before = sample("oklog_store_compaction_bytes_total", direction="out")
        c = compactor(store, target_size=64 << 10)
        jobs = await converge(c)
        assert jobs >= 1 and no_overlaps(store)
        store._check()
        assert await query_all(store) == want
        # the files themselves: each once, in order, named after their content
        files = sorted(tmp_path.glob("*.flushed"))
        assert b"".join(segment_bytes(f) for f in files) == want
        assert len(files) == len(store.index) and not list(tmp_path.glob("*.reading"))
        assert not list(tmp_path.glob("*.trashed")) and not list(tmp_path.glob("*.active"))
        assert sample("oklog_store_compaction_bytes_total", direction="out") > before
        assert caplog.text.count("event=compacted kind=overlap") >= 1  # small jobs: at debug level
        # outputs get their n-gram index and sidecar like any new segment
        await store.index_pending()
        assert all(store.table(s).index is not None for _, s in store.index)  # type: ignore[union-attr]
        assert {p.name for p in tmp_path.glob("*.idx")} == {f.name + ".idx" for f in files}
        store._check()
        store.close()
        again = StoreLog(tmp_path, compression=compression)
        again.open()
        assert again.unverified() == 0  # every sidecar matched
        assert await query_all(again) == want
        again.close()

    trio.run(main)


class Paused(Compactor):
    """A compactor whose jobs wait at each step until told to go on."""

    def __init__(self, *args, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.reached: dict[str, trio.Event] = {}
        self.go: dict[str, trio.Event] = {}

    async def _pause(self, step: str) -> None:
        self.reached.setdefault(step, trio.Event()).set()
        await self.go.setdefault(step, trio.Event()).wait()

    def proceed(self, step: str) -> None:
        self.go.setdefault(step, trio.Event()).set()


def test_queries_running_across_a_compaction_job_return_the_exact_answer(tmp_path: Path) -> None:
    """A long query planned before the job reads the inputs while they are
    claimed, replaced and retired; queries planned at every step of the job
    see inputs, outputs or both -- always the exact answer."""

    async def main() -> None:
        store = StoreLog(tmp_path, compression="zstd", block_size=4096)
        store.open()
        uploads, want = overlapping_uploads(random.Random(3), 12)
        for data in uploads:
            await store.write_segment(body(data))
        c = paused(store, target_size=16 << 10)
        long_query = await local.prepare(store, Query(MIN_ULID, MAX_ULID))
        stream = local.run(long_query)
        got = [await stream.__anext__()]  # started: some units are read already
        during: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.step)
            for step in ("claimed", "written", "installed", "retired"):
                await c.reached.setdefault(step, trio.Event()).wait()
                during.append(await query_all(store))
                c.proceed(step)
        # the job is done and purged what it could: the leased inputs are still on disk
        assert list(tmp_path.glob("*.trashed"))
        store._check()
        got += [b async for b in stream]
        assert b"".join(got) == want
        assert all(d == want for d in during)
        c.purge(c.clock())  # the lease is released: the inputs go
        assert not list(tmp_path.glob("*.trashed"))
        store._check()
        store.close()

    trio.run(main)


def test_a_query_dropped_unread_releases_its_lease(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path, compression="none")
        store.open()
        await store.write_segment(body(b"".join(rec(i) for i in range(0, 100, 2))))
        await store.write_segment(body(b"".join(rec(i) for i in range(1, 100, 2))))
        plan = await local.prepare(store, Query(MIN_ULID, MAX_ULID))
        c = compactor(store, target_size=1 << 20)
        await c.step()
        assert len(list(tmp_path.glob("*.trashed"))) == 2
        del plan  # never run (a client gone before the body): garbage
        c.purge(c.clock())
        assert not list(tmp_path.glob("*.trashed"))
        store._check()
        store.close()

    trio.run(main)


def test_a_damaged_input_fails_the_job_and_is_repaired(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path, compression="zstd", block_size=1024)
        store.open()
        a = b"".join(rec(i, b"x" * 50) for i in range(0, 400, 2))
        b = b"".join(rec(i, b"x" * 50) for i in range(1, 400, 2))
        sa = await store.write_segment(body(a))
        await store.write_segment(body(b))
        assert sa is not None
        with open(sa.path, "r+b") as f:  # flip bytes inside a block, behind the sidecar's back
            f.seek(sa.size // 2)
            f.write(b"\0" * 16)
        failed = sample("oklog_store_compactions_total", kind="overlap", outcome="failed")
        c = compactor(store, target_size=1 << 20)
        await c.step()
        assert sample("oklog_store_compactions_total", kind="overlap", outcome="failed") == failed + 1
        assert not list(tmp_path.glob("*.active")) and not list(tmp_path.glob("*.reading"))
        assert store.unverified() == 0  # given back, checked and the damaged one repaired at once
        assert len(list(tmp_path.glob("*.corrupt"))) == 1 and c.failures == 1
        got = await query_all(store)
        assert len(got.splitlines()) > 300
        await converge(c)
        assert no_overlaps(store) and await query_all(store) == got
        store._check()
        store.close()

    trio.run(main)


def test_an_upload_named_like_a_jobs_input_waits_for_the_job(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path, compression="none")
        store.open()
        await store.write_segment(body(b"".join(rec(i) for i in range(0, 100, 2))))
        await store.write_segment(body(b"".join(rec(i) for i in range(1, 99, 2))))
        c = paused(store, target_size=1 << 20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.step)
            await c.reached.setdefault("claimed", trio.Event()).wait()
            done = trio.Event()

            async def upload() -> None:  # the first input's very name
                await store.write_segment(body(rec(0) + rec(50, b"new") + rec(98)))
                done.set()

            nursery.start_soon(upload)
            await trio.sleep(0.05)
            assert not done.is_set()
            for step in ("claimed", "written", "installed", "retired"):
                c.proceed(step)
        await converge(c)
        want = b"".join(rec(i) for i in range(0, 99))
        assert await query_all(store) == want
        store._check()
        store.close()

    trio.run(main)


def test_a_job_stopped_after_installing_gives_back_its_inputs(tmp_path: Path) -> None:
    """Cancelled (a shutdown) with its outputs installed: the inputs come
    back, but one whose name an output took is retired, not renamed over it."""

    async def main() -> None:
        store = StoreLog(tmp_path, compression="none")
        store.open()
        await store.write_segment(body(b"".join(rec(i) for i in range(0, 30, 3))))  # the outer name
        await store.write_segment(body(b"".join(rec(i) for i in range(10, 20))))
        want = b"".join(rec(i) for i in sorted(set(range(10, 20)) | set(range(0, 30, 3))))
        c = paused(store, target_size=1 << 20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.step)
            c.proceed("claimed")
            c.proceed("written")
            await c.reached.setdefault("installed", trio.Event()).wait()
            nursery.cancel_scope.cancel()
        store._check()
        assert len(store.index) == 2 and len(store.trash) == 1
        assert await query_all(store) == want
        await converge(compactor(store, target_size=1 << 20))
        assert len(store.index) == 1 and await query_all(store) == want
        store._check()
        store.close()

    trio.run(main)


def test_a_job_stopped_after_retiring_gives_nothing_back(tmp_path: Path) -> None:
    """Cancelled once its inputs are retired: they stay trashed (the
    outputs hold their records), none is renamed back."""

    async def main() -> None:
        store = StoreLog(tmp_path, compression="none")
        store.open()
        await store.write_segment(body(b"".join(rec(i) for i in range(0, 30, 3))))
        await store.write_segment(body(b"".join(rec(i) for i in range(10, 20))))
        want = b"".join(rec(i) for i in sorted(set(range(10, 20)) | set(range(0, 30, 3))))
        c = paused(store, target_size=1 << 20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.step)
            for step in ("claimed", "written", "installed"):
                c.proceed(step)
            await c.reached.setdefault("retired", trio.Event()).wait()
            nursery.cancel_scope.cancel()
        store._check()
        assert len(store.index) == 1 and len(store.trash) == 2
        assert not list(tmp_path.glob("*.reading"))
        assert await query_all(store) == want
        store.close()

    trio.run(main)


def test_open_after_a_crash_between_install_and_retire(tmp_path: Path) -> None:
    """An output installed next to its same-named input: the input goes to
    the trash at start; other inputs come back; nothing is lost or doubled."""
    inner = b"".join(rec(i) for i in range(10, 20))
    outer = b"".join(rec(i) for i in range(0, 30, 3))
    union = b"".join(rec(i) for i in sorted(set(range(10, 20)) | set(range(0, 30, 3))))
    n_outer = SegmentName.of_block(outer)
    assert SegmentName.of_block(union) == n_outer
    (tmp_path / n_outer.filename("reading")).write_bytes(outer)
    (tmp_path / SegmentName.of_block(inner).filename("reading")).write_bytes(inner)
    (tmp_path / n_outer.filename("flushed")).write_bytes(union)  # the output
    store = StoreLog(tmp_path)
    store.open()
    assert len(store.index) == 2 and len(store.trash) == 1
    assert trio.run(query_all, store) == union
    store._check()
    c = compactor(store, target_size=1 << 20)
    trio.run(converge, c)
    assert [p for p in on_disk(tmp_path) if not p.endswith(".idx")] == [n_outer.filename("flushed")]
    assert trio.run(query_all, store) == union
    store.close()


# -- retention -------------------------------------------------------------------------


def test_retention_trashes_old_segments_then_purges_every_file(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path)
        store.open()
        stamper = Stamper()
        old = await store.write_segment(body(stamp([b"old %d" % i for i in range(50)], stamper)))
        await store.index_pending()  # sidecars written
        t0 = time.time()
        clock = Clock(t0 + 100)
        c = Compactor(store, target_size=1 << 20, retain=3600, purge=60, clock=clock, compact=False)
        await c.step()
        assert old is not None and len(store.index) == 1  # an hour not yet up
        clock.now = t0 + 3601
        trashed = sample("oklog_store_trashed_segments_total", reason="age")
        await c.step()
        assert sample("oklog_store_trashed_segments_total", reason="age") == trashed + 1
        assert len(store.index) == 0 and await query_all(store) == b""
        assert [p.suffix for p in tmp_path.iterdir() if p.is_file() and p.name != "LOCK"] == [".trashed"]
        store._check()
        clock.now += 59
        await c.step()
        assert len(store.trash) == 1
        clock.now += 2
        purged = sample("oklog_store_purged_segments_total")
        await c.step()
        assert sample("oklog_store_purged_segments_total") == purged + 1
        assert on_disk(tmp_path) == [] and not store.trash
        store._check()
        store.close()

    trio.run(main)


def test_trashed_files_found_at_start_are_purged_later(tmp_path: Path) -> None:
    data = b"".join(rec(i) for i in range(5))
    (tmp_path / SegmentName.of_block(data).filename("trashed")).write_bytes(data)
    store = StoreLog(tmp_path)
    store.open()
    assert len(store.index) == 0 and len(store.trash) == 1
    clock = Clock(1000.0)
    c = compactor(store, target_size=1 << 20, purge=10, clock=clock)
    trio.run(c.step)
    assert len(store.trash) == 1
    clock.now = 1011
    trio.run(c.step)
    assert on_disk(tmp_path) == []
    store.close()


def test_a_disk_budget_trashes_the_oldest_segments_first(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path, compression="none")
        store.open()
        segs = []
        for k in range(4):
            s = await store.write_segment(body(b"".join(rec(1000 * k + i, b"y" * 90) for i in range(100))))
            assert s is not None
            segs.append(s)
        size = segs[0].size
        clock = Clock(time.time())
        c = Compactor(store, target_size=size, retain=None, retain_size=2 * size + 1, purge=0,
                      clock=clock, compact=False)
        await c.step()
        assert names(store) == [segs[2].name, segs[3].name]
        assert on_disk(tmp_path) == sorted(s.path.name for s in segs[2:])  # purge 0: gone at once
        store._check()
        store.close()

    trio.run(main)


# -- the edges -------------------------------------------------------------------------


def test_the_compactor_loop_outlives_errors_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []

    async def main() -> None:
        store = StoreLog.__new__(StoreLog)  # never touched: step is replaced
        c = Compactor(store, target_size=1, interval=1.0)

        async def step() -> None:
            calls.append(trio.current_time())
            if len(calls) == 1:
                raise RuntimeError("a bug")
            if len(calls) == 2:
                c.failures = 3  # three jobs failed in a row: wait 8 ticks
            if len(calls) == 3:
                c.failures = 0
                raise OSError(28, "No space left on device")

        c.step = step  # type: ignore[method-assign]
        with trio.move_on_after(11.5):
            await c.run()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [round(b - a) for a, b in zip(calls, calls[1:])] == [1, 8, 1, 1]
    assert caplog.text.count("event=compactor_error") == 2


def test_a_unit_finds_its_file_under_another_state(tmp_path: Path) -> None:
    from oklog.errors import SegmentChanged
    from oklog.query.unit import Unit, run_unit

    data = b"".join(rec(i) for i in range(10))
    name = SegmentName.of_block(data)
    planned = tmp_path / name.filename("flushed")
    planned.write_bytes(data)
    st = planned.stat()
    unit = Unit(str(planned), "none", ((0, len(data), False),), MIN_ULID, MAX_ULID, b"", False, None,
                st.st_size, st.st_ino)
    assert b"".join(run_unit(unit)) == data
    for state in ("reading", "trashed", "trashed.1"):  # claimed, retired, retired twice
        moved = tmp_path / name.filename(state)
        planned.rename(moved)
        assert b"".join(run_unit(unit)) == data
        planned = moved
    other = tmp_path / name.filename("flushed")
    other.write_bytes(data)  # another file, the very same size, took the name
    planned.unlink()
    with pytest.raises(SegmentChanged):
        run_unit(unit)
    other.unlink()
    with pytest.raises(FileNotFoundError):
        run_unit(unit)


def test_the_flags() -> None:
    from oklog.config import NodeConfig, flags

    cfg = NodeConfig()
    assert (cfg.store_retain, cfg.store_purge, cfg.store_retain_size) == (7 * 86400, 86400, 0)
    parse = {f.name: f.parse for _, f in flags("store")}
    assert parse["store.segment-retain"]("3s") == 3
    assert parse["store.segment-retain"]("1h") == 3600
    assert parse["store.segment-retain-size"]("50GB") == 50 * 10**9
    assert parse["store.segment-retain-size"]("2GiB") == 2 << 30
    assert parse["store.segment-retain-size"]("off") == 0
    assert parse["store.compaction-interval"]("0") == 0
    from oklog.errors import ConfigError

    for bad, flag in (("7 days", "store.segment-retain"), ("-1s", "store.segment-purge"),
                      ("lots", "store.segment-retain-size")):
        with pytest.raises(ConfigError):
            parse[flag](bad)
    with pytest.raises(ValueError):
        Compactor(StoreLog.__new__(StoreLog), target_size=1, pause_at="somewhere")


def test_a_plan_made_stale_while_planning_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import oklog.store.compactor as compactor_module
    from oklog.store.planner import plan_compaction

    async def main() -> None:
        store = StoreLog(tmp_path, compression="none")
        store.open()
        await store.write_segment(body(b"".join(rec(i) for i in range(0, 100, 2))))
        await store.write_segment(body(b"".join(rec(i) for i in range(1, 100, 2))))

        def stale_plan(*args: Any, **kw: Any) -> Any:
            job = plan_compaction(*args, **kw)
            assert job is not None
            victim = next(s for n, s in store.index if n == job.inputs[0])
            trio.from_thread.run_sync(store._forget, victim)  # as a union or a repair would
            return job

        monkeypatch.setattr(compactor_module, "plan_compaction", stale_plan)
        c = compactor(store, target_size=1 << 20)
        assert await c.step() is None
        assert len(list(tmp_path.glob("*.flushed"))) == 2 and not list(tmp_path.glob("*.reading"))
        store.close()

    trio.run(main)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_merge_job_cuts_at_the_target_size_and_at_cuts(tmp_path: Path, compression: str) -> None:
    from oklog.segment import write_segment
    from oklog.segment.table import load_sidecar
    from oklog.store.compactor import merge_job
    from oklog.ulid import encode_int

    def pay(i: int, src: bytes) -> bytes:  # incompressible enough for zstd to need several files
        return src + random.Random(i).randbytes(30).hex().encode()

    a = b"".join(rec(i, pay(i, b"a")) for i in range(0, 3000, 2))
    b = b"".join(rec(i, pay(i, b"b")) for i in range(1, 3000, 3))  # overlaps a; 1 in 6 ULIDs in both
    paths = []
    for k, data in enumerate((a, b)):
        p = tmp_path / f"in{k}.flushed"
        write_segment(p, [data], compression=compression, block_size=4096)
        paths.append(p)
    from oklog.segment import derive_table

    inputs = [(p, load_sidecar(p) or derive_table(p)) for p in paths]
    cuts = (encode_int(1000, 26), encode_int(1001, 26), encode_int(2500, 26))
    ids = iter(range(100))
    outputs = merge_job(inputs, tmp_path, cuts, 32 << 10, compression, 4096, lambda: f"out{next(ids):02d}")
    want = b"".join(rec(i, pay(i, b"a") if i % 2 == 0 else pay(i, b"b")) for i in sorted(
        set(range(0, 3000, 2)) | set(range(1, 3000, 3))))
    got = b"".join(segment_bytes(path) for path, _, _ in outputs)
    assert got == want  # each ULID once (the first input's copy), in order
    names = [name for _, name, _ in outputs]
    assert all(x.hi < y.lo for x, y in zip(names, names[1:]))
    for cut in cuts:  # no output straddles a cut
        assert not any(n.lo < cut <= n.hi for n in names)
    assert len(outputs) > len(cuts) + 1  # and the target size cut the rest
    assert all(t.size < (32 << 10) + 2 * 4096 for _, _, t in outputs)  # near it: a block or so over
    for path, name, table in outputs:
        assert path.suffix == ".active" and SegmentName.of_block(segment_bytes(path)) == name
        table._check()
        assert table.size == path.stat().st_size


def test_a_segment_deleted_by_hand_is_forgotten(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path, compression="none")
        store.open()
        for k in range(3):
            await store.write_segment(body(b"".join(rec(i) for i in range(k, 300, 3))))
        victim = sorted(tmp_path.glob("*.flushed"))[1]
        victim.unlink()
        c = compactor(store, target_size=1 << 20)
        with pytest.raises(FileNotFoundError):
            await c.step()
        assert len(store.index) == 2 and not list(tmp_path.glob("*.reading"))
        store._check()
        await converge(c)
        assert len(store.index) == 1
        store._check()
        store.close()

    trio.run(main)


def test_a_sidecar_that_cannot_be_rewritten_on_release_is_only_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A failed job's inputs come back even when their sidecars (derived
    data, removed at claim) cannot be written again: a full disk; the next
    start checks the file and writes it."""

    async def main() -> None:
        want = b"".join(rec(i) for i in range(50))
        store = StoreLog(tmp_path, compression="none")
        store.open()
        await store.write_segment(body(want))
        await store.index_pending()
        segment = store.live_segments(verified_only=True).popitem()[1][0]
        claimed = store.claim([segment], trio.Event())
        assert not sidecar_path(segment.path).exists()  # an output may take its name

        def full(*_: object, **__: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("oklog.store.log.write_sidecar", full)
        with caplog.at_level(logging.WARNING, logger="oklog.store"):
            (back,) = store.release(claimed)
        assert "event=sidecar_write_failed" in caplog.text
        assert back.path == segment.path and not sidecar_path(back.path).exists()
        store._check()
        assert await query_all(store) == want
        store.close()
        monkeypatch.undo()

        again = StoreLog(tmp_path, compression="none")
        again.open()
        assert await query_all(again) == want
        again._check()
        again.close()

    trio.run(main)
