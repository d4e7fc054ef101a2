"""Sidecars are derived data: damaged, stale or missing ones are rebuilt,
never trusted, and deleting them all changes no answer."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import trio

from oklog.query import local
from oklog.query.params import Query
from oklog.segment import write_segment
from oklog.segment.table import decode, encode, load_sidecar, sidecar_path
from oklog.store.log import StoreLog
from oklog.ulid import MAX_ULID, MIN_ULID
from tests.recordutil import rec, segment_bytes, ulid

WORDS = [b"GET", b"POST", b"ERROR", b"timeout", b"needle-7f3a9c", b"status=500", b"x", b"/api/v1"]


def make_records(rng: random.Random, start: int, n: int) -> bytes:
    return b"".join(rec(start + i, b" ".join(rng.choices(WORDS, k=rng.randrange(1, 6)))) for i in range(n))


async def fill(store: StoreLog, rng: random.Random, segments: int = 5, per: int = 400) -> bytes:
    everything = []
    for s in range(segments):
        body = make_records(rng, s * per * 2, per)  # gaps between segments
        everything.append(body)

        async def chunks(body: bytes = body):
            for i in range(0, len(body), 5000):
                yield body[i : i + 5000]

        await store.write_segment(chunks())
    await store.index_pending()
    return b"".join(everything)


QUERIES = [(b"", False), (b"needle-7f3a9c", False), (b"ERROR.*timeout", True), (b"status=500", False),
           (b"(?i)error", True), (b"nothing-here", False)]


async def answers(store: StoreLog) -> list[bytes]:
    out = []
    for q, regex in QUERIES:
        for lo, hi in ((MIN_ULID, MAX_ULID), (ulid(300), ulid(2500))):
            p = await local.prepare(store, Query(lo, hi, q, regex))
            out.append(b"".join([b async for b in local.run(p)]))
    return out


def open_store(path: Path, **kw) -> StoreLog:  # type: ignore[no-untyped-def]
    store = StoreLog(path, block_size=4096, **kw)
    store.open()
    return store


def test_table_round_trip_and_every_kind_of_damage(tmp_path: Path) -> None:
    data = make_records(random.Random(1), 0, 2000)
    write_segment(tmp_path / "s", [data], block_size=4096)
    from oklog.segment import open_segment
    from oklog.segment.ngram import build

    with open_segment(tmp_path / "s") as r:
        table = r.table
        table.index = build(r.block(i) for i in range(len(table)))
    st = os.stat(tmp_path / "s")
    raw = encode(table, st.st_size, st.st_mtime_ns)
    again = decode(raw, st.st_size, st.st_mtime_ns)
    assert again is not None
    assert (again.offsets, again.lengths, again.raw, again.records, again.firsts, again.lasts) == (
        table.offsets, table.lengths, table.raw, table.records, table.firsts, table.lasts)
    assert again.index is not None and again.index.bitmap == table.index.bitmap
    assert decode(raw, st.st_size + 1, st.st_mtime_ns) is None  # another file of that name
    assert decode(raw, st.st_size, st.st_mtime_ns + 1) is None  # rewritten since
    for cut in (0, 5, 20, len(raw) // 2, len(raw) - 1):
        assert decode(raw[:cut], st.st_size, st.st_mtime_ns) is None  # truncated
    rng = random.Random(2)
    for _ in range(200):
        flipped = bytearray(raw)
        flipped[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        assert decode(bytes(flipped), st.st_size, st.st_mtime_ns) is None  # bit-flipped
    assert load_sidecar(tmp_path / "s") is None  # none written


@pytest.mark.parametrize("damage", ["delete", "truncate", "bitflip", "garbage", "stale"])
def test_a_bad_sidecar_is_rebuilt_and_changes_no_answer(tmp_path: Path, damage: str) -> None:
    async def main() -> None:
        store = open_store(tmp_path)
        await fill(store, random.Random(5))
        before = await answers(store)
        assert before[2] and before[0].count(b"\n") == 2000
        store._check()
        store.close()
        sidecars = sorted(tmp_path.glob("*.idx"))
        assert len(sidecars) == 5
        for path in sidecars:
            raw = path.read_bytes()
            if damage == "delete":
                path.unlink()
            elif damage == "truncate":
                path.write_bytes(raw[: len(raw) // 3])
            elif damage == "bitflip":
                flipped = bytearray(raw)
                flipped[len(raw) // 2] ^= 0x10
                path.write_bytes(bytes(flipped))
            elif damage == "garbage":
                path.write_bytes(b"\x00" * 100)
            else:  # the segment was rewritten (same content, newer file): the sidecar no longer fits
                segment = tmp_path / path.name[: -len(".idx")]
                os.utime(segment, ns=(1, 1))
        again = open_store(tmp_path)
        assert again.unverified() == 5  # nothing trusted
        assert await answers(again) == before
        assert again.unverified() == 0
        again._check()
        for path in sorted(tmp_path.glob("*.flushed")):
            table = load_sidecar(path)  # rebuilt, with its n-gram index
            assert table is not None and table.index is not None
        again.close()

    trio.run(main)


def test_deleting_every_non_segment_file_loses_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_store(tmp_path)
        data = await fill(store, random.Random(9), segments=6)
        before = await answers(store)
        store.close()
        for path in tmp_path.iterdir():
            if path.suffix != ".flushed":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        again = open_store(tmp_path)
        await again.run_verifier()
        assert await answers(again) == before
        assert b"".join(segment_bytes(p) for p in sorted(tmp_path.glob("*.flushed"))) == data
        again.close()

    trio.run(main)


def test_plain_segments_of_earlier_versions_stay_readable(tmp_path: Path) -> None:
    """Plain files with no sidecar (what earlier versions wrote) are read,
    indexed, and stay plain."""
    rng = random.Random(11)
    data = make_records(rng, 0, 3000)
    data = data.replace(b"\n", b" rare-token-qq\n", 1)  # one rare line
    first, last = data[:26].decode(), data[data.rfind(b"\n", 0, len(data) - 1) + 1:][:26].decode()
    (tmp_path / f"{first}-{last}.flushed").write_bytes(data)

    async def main() -> None:
        store = open_store(tmp_path)
        p = await local.prepare(store, Query(MIN_ULID, MAX_ULID, b"rare-token-qq"))
        got = b"".join([b async for b in local.run(p)])
        assert got == data[: data.find(b"\n") + 1]
        table = load_sidecar(tmp_path / f"{first}-{last}.flushed")
        assert table is not None and table.compression == "none" and table.index is not None
        assert p.blocks_read == 1 and p.blocks_in_range > 30  # the index works on it too
        store._check()
        store.close()

    trio.run(main)
    assert (tmp_path / f"{first}-{last}.flushed").read_bytes() == data  # untouched: still grep-able


def test_orphan_sidecars_are_removed_at_open(tmp_path: Path) -> None:
    orphan = sidecar_path(tmp_path / f"{ulid(1).decode()}-{ulid(2).decode()}.flushed")
    orphan.write_bytes(b"left behind")
    (tmp_path / "x.flushed.idx.tmp").write_bytes(b"torn")
    store = open_store(tmp_path)
    store.close()
    assert not orphan.exists() and not (tmp_path / "x.flushed.idx.tmp").exists()


def test_a_block_damaged_behind_an_intact_sidecar_is_found_and_repaired(tmp_path: Path) -> None:
    """A bit flip that keeps the file's size and mtime: the sidecar still
    matches, so the damage shows when the block is read; that query fails,
    the segment is checked again, and the next query reads what is left."""
    from oklog.errors import CorruptSegment

    async def main() -> None:
        store = open_store(tmp_path)
        await fill(store, random.Random(3), segments=1, per=2000)
        store.close()
        path = next(tmp_path.glob("*.flushed"))
        table = load_sidecar(path)
        assert table is not None and len(table) > 3
        st = os.stat(path)
        raw = bytearray(path.read_bytes())
        victim = 2
        raw[table.offsets[victim] + table.lengths[victim] // 2] ^= 0x40
        path.write_bytes(bytes(raw))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        again = open_store(tmp_path)
        assert again.unverified() == 0  # the sidecar matches: trusted
        p = await local.prepare(again, Query(MIN_ULID, MAX_ULID))
        with pytest.raises(CorruptSegment):
            b"".join([b async for b in local.run(p)])
        assert again.unverified() == 1  # to be checked again
        p = await local.prepare(again, Query(MIN_ULID, MAX_ULID))
        got = b"".join([b async for b in local.run(p)])
        assert got.count(b"\n") == 2000 - table.records[victim]  # all but the damaged block
        assert list(tmp_path.glob("*.corrupt"))  # the original, kept for the operator
        again._check()
        again.close()

    trio.run(main)


def test_an_index_that_fails_to_build_is_logged_and_the_segment_still_read(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    async def broken(fn, *args):  # type: ignore[no-untyped-def]
        raise RuntimeError("a worker's bug")

    async def main() -> None:
        store = open_store(tmp_path)
        store.offload = broken
        data = await fill(store, random.Random(4), segments=2)  # index_pending runs: and fails
        assert "index_failed" in caplog.text
        assert not list(tmp_path.glob("*.idx"))  # no sidecar from a failed build
        p = await local.prepare(store, Query(MIN_ULID, MAX_ULID))
        assert b"".join([b async for b in local.run(p)]) == data
        store.close()

    trio.run(main)


def test_an_index_built_for_a_file_replaced_meanwhile_is_not_saved(tmp_path: Path) -> None:
    """A union replaced the segment while its index was being built: the
    old table must not be saved as the new file's sidecar."""
    async def main() -> None:
        store = open_store(tmp_path)
        first = make_records(random.Random(1), 0, 300)

        async def body(data: bytes):  # type: ignore[no-untyped-def]
            yield data

        await store.write_segment(body(first))
        superset = b"".join(sorted(set(first.splitlines(keepends=True))
                                   | set(make_records(random.Random(2), 0, 300).splitlines(keepends=True)[1:-1])))
        replaced = []

        async def racing(fn, *args):  # type: ignore[no-untyped-def]
            result = fn(*args)
            if not replaced:
                replaced.append(True)
                await store.write_segment(body(superset))  # same first and last ULID: a union
            return result

        store.offload = racing
        await store.index_pending()
        store._check()
        (segment,) = [s for _, s in store.index]
        sidecar = load_sidecar(segment.path)
        assert sidecar is not None and sidecar.records == store.table(segment).records  # the new file's
        store.close()

    trio.run(main)
