"""The ingest and store file layers on real files."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from oklog.errors import CorruptSegment, DirectoryLocked, SegmentNotRead, UnknownSegment
from oklog.ingest.log import IngestLog
from oklog.records.format import stamp
from oklog.store.log import StoreLog
from oklog.ulid import Stamper
from tests.recordutil import segment_bytes


async def chunks_of(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await trio.lowlevel.checkpoint()


def test_ingest_segments_flush_by_size_and_go_through_the_api(tmp_path):
    async def main():
        log = IngestLog(tmp_path, flush_size=100, flush_age=60, pending_timeout=5)
        log.open()
        block = stamp([b"x" * 80], Stamper())
        assert log.write(block)  # over the flush size
        await log.flush()
        assert [p.suffix for p in tmp_path.iterdir() if p.name != "LOCK"] == [".flushed"]
        seg = log.next()
        assert seg and (tmp_path / f"{seg}.pending").exists()
        with pytest.raises(SegmentNotRead):
            log.commit(seg)
        assert log.read_path(seg).read_bytes() == block
        with pytest.raises(SegmentNotRead):
            log.commit(seg)  # not until the whole file went out
        log.mark_read(seg)
        log.commit(seg)
        assert not (tmp_path / f"{seg}.pending").exists()
        with pytest.raises(UnknownSegment):
            log.commit(seg)
        assert log.drained()
        log.close()

    trio.run(main)


def test_age_flush_and_pending_timeout_on_a_mock_clock(tmp_path):
    async def main():
        log = IngestLog(tmp_path, flush_size=1 << 20, flush_age=3, pending_timeout=60)
        log.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run_flusher)
            log.write(stamp([b"a"], Stamper()))
            await trio.sleep(2.5)
            assert log.book.counts()["flushed"]["segments"] == 0
            while log.book.counts()["flushed"]["segments"] == 0:  # fsync runs in a thread
                await trio.sleep(0.1)
            assert trio.current_time() >= 3
            seg = log.next()
            await trio.sleep(59)
            assert log.book.counts()["pending"]["segments"] == 1
            await trio.sleep(2)
            assert log.book.counts()["flushed"]["segments"] == 1
            assert (tmp_path / f"{seg}.flushed").exists()
            nursery.cancel_scope.cancel()
        log.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_ingest_recovery_and_lock(tmp_path):
    (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAA.active").write_bytes(stamp([b"x"], Stamper()))
    (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAB.pending").write_bytes(stamp([b"y"], Stamper()))
    (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAC.active").write_bytes(b"")
    log = IngestLog(tmp_path)
    log.open()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "01AAAAAAAAAAAAAAAAAAAAAAAA.flushed", "01AAAAAAAAAAAAAAAAAAAAAAAB.flushed", "LOCK"]
    with pytest.raises(DirectoryLocked):
        IngestLog(tmp_path).open()
    log.close()
    IngestLog(tmp_path).open()


def test_store_replicate_sorts_validates_and_names(tmp_path):
    async def main():
        store = StoreLog(tmp_path)
        store.open()
        st = Stamper()
        a = stamp([b"one", b"two", b"three"], st)
        shuffled = b"".join(reversed(a.splitlines(keepends=True))) + a.splitlines(keepends=True)[0]
        seg = await store.write_segment(chunks_of(shuffled, 7))
        assert seg is not None and segment_bytes(seg.path) == a
        lines = a.splitlines()
        assert seg.path.name == f"{lines[0][:26].decode()}-{lines[-1][:26].decode()}.flushed"
        assert await store.write_segment(chunks_of(b"", 7)) is None
        before = sorted(os.listdir(tmp_path))
        for bad in (a + b"garbage\n", a[:-1], b"\n"):
            with pytest.raises(CorruptSegment):
                await store.write_segment(chunks_of(bad, 5))
        assert sorted(os.listdir(tmp_path)) == before  # nothing written
        # the same range again with different content: the union is kept
        other = a.replace(b"two", b"TWO")
        await store.write_segment(chunks_of(other, 1000))
        assert len(store.index) == 1
        assert segment_bytes(store.overlapping_groups(b"0" * 26, b"Z" * 26)[0][0].path) == a
        store.close()
        reopened = StoreLog(tmp_path)
        reopened.open()
        assert len(reopened.index) == 1

    trio.run(main)


def test_recovery_salvages_a_segment_torn_by_a_crash(tmp_path):
    good = stamp([b"one", b"two", b"three"], Stamper())
    torn = good + b"01M7Z1NWKZ4AAAAAAAAAAAAA00 default half-writ"  # the write never finished
    (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAA.active").write_bytes(torn)
    (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAB.active").write_bytes(good + b"\x00" * 4096)  # zero-filled
    (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAC.active").write_bytes(b"\x00" * 100)  # nothing usable
    log = IngestLog(tmp_path)
    log.open()
    assert (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAA.flushed").read_bytes() == good
    assert (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAB.flushed").read_bytes() == good
    assert not list(tmp_path.glob("01AAAAAAAAAAAAAAAAAAAAAAAC.*"))
    assert log.book.counts()["flushed"] == {"segments": 2, "bytes": 2 * len(good)}
    log.close()
