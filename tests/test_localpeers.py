"""Calls a node makes to itself skip HTTP but keep every rule of the API."""

from __future__ import annotations

import random
from typing import Any
from pathlib import Path

import pytest
import trio

from oklog.cluster.membership import StaticMembership
from oklog.errors import PeerRejected
from oklog.ingest.log import IngestLog
from oklog.localpeers import LocalPeers
from oklog.peer import open_peers
from oklog.query import local
from oklog.query.params import Query
from oklog.records.format import stamp, validate_block
from oklog.store.consume import Consumer
from oklog.store.log import StoreLog
from oklog.ulid import MAX_ULID, MIN_ULID, Stamper

SELF = "http://127.0.0.1:1"


def everything(store: StoreLog) -> bytes:
    async def main() -> bytes:
        p = await local.prepare(store, Query(MIN_ULID, MAX_ULID))
        return b"".join([b async for b in local.run(p)])

    return trio.run(main)


def node(tmp_path: Path) -> tuple[IngestLog, StoreLog]:
    (tmp_path / "ingest").mkdir(exist_ok=True)
    ingest = IngestLog(tmp_path / "ingest")
    ingest.open()
    store = StoreLog(tmp_path / "store")
    store.open()
    return ingest, store


def consume(ingest: IngestLog, store: StoreLog) -> None:
    async def main() -> None:
        async with open_peers() as http:
            peers = LocalPeers(http, SELF, ingest=ingest, store=store)
            consumer = Consumer(store, StaticMembership(SELF, "ingeststore"), peers, replication_factor=1,
                                rng=random.Random(1))
            while await consumer.one_batch():
                pass

    trio.run(main)


def test_own_segments_are_consumed_without_http(tmp_path: Path) -> None:
    ingest, store = node(tmp_path)
    st = Stamper()
    blocks = [stamp([b"line %d.%d" % (s, i) for i in range(100)], st) for s in range(3)]

    async def write() -> None:
        for block in blocks:
            ingest.write(block)
            await ingest.flush()

    trio.run(write)
    consume(ingest, store)
    assert everything(store) == b"".join(blocks)
    assert ingest.book.unconsumed() == 0  # committed
    assert not list((tmp_path / "ingest").glob("*.pending"))
    store._check()


def test_a_damaged_segment_found_on_disk_is_still_checked(tmp_path: Path) -> None:
    """Only segments this process stamped skip the line check: one left on
    disk by an earlier run is validated, refused, and salvaged."""
    st = Stamper()
    good = stamp([b"kept %d" % i for i in range(50)], st)
    lines = good.split(b"\n")
    damaged = b"\n".join(lines[:10] + [b"\x00 not a record"] + lines[10:])
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / f"{st.one().decode()}.flushed").write_bytes(damaged)
    ingest, store = node(tmp_path)
    consume(ingest, store)
    assert everything(store) == good
    assert ingest.book.unconsumed() == 0


def test_segment_api_errors_keep_their_statuses(tmp_path: Path) -> None:
    ingest, store = node(tmp_path)

    async def main() -> None:
        async with open_peers() as http:
            peers = LocalPeers(http, SELF, ingest=ingest, store=store)
            assert await peers.next(SELF) is None
            with pytest.raises(PeerRejected) as info:
                await peers.read_to(SELF, "01ARZ3NDEKTSV4RRFFQ69G5FAV", tmp_path / "x")
            assert info.value.status == 404
            ingest.write(stamp([b"one"], Stamper()))
            await ingest.flush()
            seg = await peers.next(SELF)
            assert seg is not None
            with pytest.raises(PeerRejected) as info:
                await peers.commit(SELF, seg)  # never read
            assert info.value.status == 428
            await peers.failed(SELF, seg)
            bad = tmp_path / "bad"
            bad.write_bytes(b"garbage\n")
            with pytest.raises(PeerRejected) as info:
                await peers.replicate(SELF, [bad])
            assert info.value.status == 400

    trio.run(main)


def test_a_local_write_error_is_a_500_so_another_store_is_tried(tmp_path: Path) -> None:
    ingest, store = node(tmp_path)
    body = tmp_path / "body"
    body.write_bytes(stamp([b"x"], Stamper()))

    async def full_disk(chunks, validated=False):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    store.write_segment = full_disk  # type: ignore[method-assign]

    async def main() -> None:
        async with open_peers() as http:
            peers = LocalPeers(http, SELF, ingest=ingest, store=store)
            with pytest.raises(PeerRejected) as info:
                await peers.replicate(SELF, [body])
            assert info.value.status == 500 and "No space" in str(info.value)

    trio.run(main)


def test_spools_are_linked_or_copied_when_linking_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from oklog import localpeers

    source = tmp_path / "src"
    data = stamp([b"line %d" % i for i in range(1000)], Stamper())
    source.write_bytes(data)
    assert localpeers._link_or_copy(source, tmp_path / "linked") == len(data)
    assert os.stat(tmp_path / "linked").st_ino == os.stat(source).st_ino  # no byte copied

    def no_link(*a):  # type: ignore[no-untyped-def]
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert localpeers._link_or_copy(source, tmp_path / "copied") == len(data)
    assert (tmp_path / "copied").read_bytes() == data

    def no_copy_range(*a):  # type: ignore[no-untyped-def]
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "copy_file_range", no_copy_range)
    assert localpeers._link_or_copy(source, tmp_path / "by_hand") == len(data)
    assert (tmp_path / "by_hand").read_bytes() == data


class _DiskFills:
    """A segment file whose disk fills up after ``room`` more bytes."""

    def __init__(self, file: Any, room: int, truncate_fails: bool = False) -> None:
        self.file, self.room, self.truncate_fails = file, room, truncate_fails

    def write(self, view: Any) -> int:
        if self.room == 0:
            raise OSError(28, "No space left on device")
        n = self.file.write(view[: self.room])
        self.room -= n
        return n

    def fileno(self) -> int:
        if self.truncate_fails:
            raise OSError(5, "Input/output error")
        return self.file.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def test_a_write_cut_short_is_taken_back(tmp_path: Path) -> None:
    """A full disk in the middle of a block: the part written is taken
    back, so the segment stays whole records (and trusted), and the block
    can be written again once there is room."""
    ingest, _ = node(tmp_path)

    async def main() -> None:
        stamper = Stamper()
        ingest.write(stamp([b"fine"], stamper))
        active = ingest._active
        assert active is not None
        seg, before = active.id, active.path.read_bytes()
        active.file = _DiskFills(active.file, room=10)  # type: ignore[assignment]
        block = stamp([b"cut short", b"here"], stamper)
        with pytest.raises(OSError):
            ingest.write(block)
        assert active.path.read_bytes() == before and active.size == len(before)
        assert ingest.stamped_here(seg)  # still records by construction

        active.file = active.file.file  # type: ignore[attr-defined]  # room again
        ingest.write(block)
        assert active.path.read_bytes() == before + block
        validate_block(active.path.read_bytes())

    trio.run(main)


def test_a_write_that_cannot_be_taken_back_makes_a_segment_no_longer_trusted(tmp_path: Path) -> None:
    ingest, _ = node(tmp_path)

    async def main() -> None:
        stamper = Stamper()
        ingest.write(stamp([b"fine"], stamper))
        active = ingest._active
        assert active is not None
        active.file = _DiskFills(active.file, room=10, truncate_fails=True)  # type: ignore[assignment]
        with pytest.raises(OSError):
            ingest.write(stamp([b"lost"], stamper))
        assert not ingest.stamped_here(active.id)  # its lines are checked again by the store

        # the torn segment is closed out as it is; the next block starts a new one
        active.file = active.file.file  # type: ignore[attr-defined]
        ingest.write(stamp([b"next"], stamper))
        assert ingest._active is not None and ingest._active.id != active.id
        assert (tmp_path / "ingest" / f"{active.id}.flushed").exists()
        assert ingest._active.path.read_bytes().endswith(b" default next\n")

    trio.run(main)


def test_a_block_held_back_by_a_full_disk_is_stamped_again_in_order() -> None:
    """The ingester re-stamps a block it could not write (oklog.ingest.server):
    same topics and payloads, byte for byte, with ULIDs after everything
    stamped meanwhile."""
    from oklog.ingest.server import restamp

    stamper = Stamper()
    first = stamp([b"a", b"", b"  spaced \x00\xff", b"last"], stamper, b"app-1")
    between = stamp([b"other connection"], stamper)
    again = restamp(first, stamper)
    validate_block(again)
    old, new = first.split(b"\n")[:-1], again.split(b"\n")[:-1]
    assert [line[27:] for line in new] == [line[27:] for line in old]
    assert between[:26] < new[0][:26] and new == sorted(new)
