"""StoreLog on real files: recovery at open, and damaged segments repaired."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY

from oklog.errors import CorruptSegment
from oklog.query import local
from oklog.query.params import parse_query
from oklog.records.format import stamp
from oklog.segment.name import SegmentName
from oklog.store.log import StoreLog
from oklog.ulid import Stamper
from tests.recordutil import segment_bytes

EVERYTHING = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"


def lines_of(block: bytes) -> list[bytes]:
    return block.splitlines(keepends=True)


def put(store_dir: Path, content: bytes, name: SegmentName, state: str = "flushed") -> Path:
    store_dir.mkdir(parents=True, exist_ok=True)
    path = store_dir / name.filename(state)
    path.write_bytes(content)
    return path


def everything(store: StoreLog, q: str = "") -> bytes:
    async def collect() -> bytes:
        plan = await local.prepare(store, parse_query(f"{EVERYTHING}&q={q}"))
        return b"".join([b async for b in local.run(plan)])

    return trio.run(collect)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def flushed(store_dir: Path) -> list[str]:
    return sorted(p.name for p in store_dir.glob("*.flushed"))


def test_open_recovers_leftovers(tmp_path: Path) -> None:
    good = stamp([b"a", b"b"], Stamper())
    name = SegmentName.of_block(good)
    put(tmp_path, good, name, "reading")  # a compaction that did not finish
    (tmp_path / "01AAAAAAAAAAAAAAAAAAAAAAAA.active").write_bytes(b"half an upload")
    (tmp_path / "not-a-segment.flushed").write_bytes(good)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "x.composite").write_bytes(b"spool")
    store = StoreLog(tmp_path)
    store.open()
    assert flushed(tmp_path) == [name.filename("flushed"), "not-a-segment.flushed"]
    assert not list(tmp_path.glob("*.active")) and not list((tmp_path / "tmp").iterdir())
    assert len(store.index) == 1 and store.unverified() == 1
    store._check()
    assert everything(store) == good
    assert store.unverified() == 0  # checked once by the first read
    store._check()


def test_write_segment_with_no_records(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path)
        store.open()

        async def nothing():  # type: ignore[no-untyped-def]
            for chunk in (b"", b""):
                yield chunk

        assert await store.write_segment(nothing()) is None
        assert flushed(tmp_path) == [] and not list(tmp_path.glob("*.active"))

    trio.run(main)


def test_a_long_line_upload_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oklog.store import log as log_mod

    monkeypatch.setattr(log_mod, "MAX_UPLOAD_LINE", 100)

    async def main() -> None:
        store = StoreLog(tmp_path)
        store.open()

        async def body():  # type: ignore[no-untyped-def]
            yield stamp([b"x" * 200], Stamper())

        with pytest.raises(CorruptSegment):
            await store.write_segment(body())
        assert not list(tmp_path.glob("*.active")) and flushed(tmp_path) == []

    trio.run(main)


def damaged_store(tmp_path: Path) -> tuple[Path, list[bytes], dict[str, SegmentName]]:
    """A store directory with one sound and four damaged segments."""
    st = Stamper()
    sound = stamp([b"sound %d" % i for i in range(5)], st)
    garbage = lines_of(stamp([b"garbage-neighbour %d" % i for i in range(6)], st))
    unsorted = lines_of(stamp([b"unsorted %d" % i for i in range(6)], st))
    torn = stamp([b"torn %d" % i for i in range(3)], st)
    misnamed = stamp([b"misnamed %d" % i for i in range(3)], st)
    names = {
        "sound": SegmentName.of_block(sound),
        "garbage": SegmentName.of_block(b"".join(garbage)),
        "unsorted": SegmentName.of_block(b"".join(unsorted)),
        "torn": SegmentName.of_block(torn),
        "misnamed": SegmentName(misnamed[:26], b"7" + b"Z" * 25),
    }
    put(tmp_path, sound, names["sound"])
    put(tmp_path, b"".join(garbage[:3]) + b"GARBAGE \xff\x00 line\n" + b"".join(garbage[3:]), names["garbage"])
    put(tmp_path, b"".join([unsorted[3], unsorted[0], unsorted[5], unsorted[1], unsorted[4], unsorted[2],
                            unsorted[1]]), names["unsorted"])
    put(tmp_path, torn + b"01ARZ3NDEKTSV4RR default half-wri", names["torn"])
    put(tmp_path, misnamed, names["misnamed"])
    valid = sorted(lines_of(sound) + garbage + unsorted + lines_of(torn) + lines_of(misnamed))
    return tmp_path, valid, names


def test_the_verifier_repairs_every_damaged_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store_dir, valid, names = damaged_store(tmp_path)
    malformed = sample("oklog_store_rejected_records_total", reason="malformed", source="segment")
    caplog.set_level(logging.INFO)
    store = StoreLog(store_dir)
    store.open()
    trio.run(store.run_verifier)
    assert store.unverified() == 0
    store._check()
    # every original but the sound one is quarantined, and never read again
    corrupt = sorted(p.name for p in store_dir.glob("*.corrupt"))
    assert corrupt == sorted(names[k].filename("corrupt") for k in ("garbage", "unsorted", "torn", "misnamed"))
    assert not list(store_dir.glob("*.repairing"))
    # the salvaged records are proper segments: sound, named after their content
    for path in store_dir.glob("*.flushed"):
        content = segment_bytes(path)
        assert path.name == SegmentName.of_block(content).filename("flushed")
        assert lines_of(content) == sorted(set(lines_of(content)))
    assert lines_of(everything(store)) == valid
    assert sample("oklog_store_rejected_records_total", reason="malformed", source="segment") == malformed + 1
    repaired = [r.message for r in caplog.records if "segment_repaired" in r.message]
    assert len(repaired) == 4
    assert any("problems=malformed" in m and "dropped_lines=1" in m for m in repaired)
    assert any("problems=unsorted" in m for m in repaired)
    assert any("problems=torn" in m for m in repaired)
    assert any("problems=misnamed" in m for m in repaired)
    store.close()
    # a restart reads the repaired store as it is: nothing left to repair
    again = StoreLog(store_dir)
    again.open()
    trio.run(again.run_verifier)
    assert lines_of(everything(again)) == valid
    assert len(list(store_dir.glob("*.corrupt"))) == 4


def test_a_query_before_the_verifier_gets_there_repairs_on_demand(tmp_path: Path) -> None:
    store_dir, valid, _ = damaged_store(tmp_path)
    store = StoreLog(store_dir)
    store.open()
    assert store.unverified() == 5
    assert lines_of(everything(store)) == valid  # never a prefix, never out of order
    assert store.unverified() == 0
    assert len(list(store_dir.glob("*.corrupt"))) == 4
    assert lines_of(everything(store, q="unsorted")) == [l for l in valid if b" unsorted " in l]


def test_concurrent_readers_share_one_repair(tmp_path: Path) -> None:
    store_dir, valid, _ = damaged_store(tmp_path)
    store = StoreLog(store_dir)
    store.open()
    results: list[bytes] = []

    async def read() -> None:
        plan = await local.prepare(store, parse_query(EVERYTHING))
        results.append(b"".join([b async for b in local.run(plan)]))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_verifier)
            for _ in range(4):
                nursery.start_soon(read)

    trio.run(main)
    store._check()
    assert all(lines_of(r) == valid for r in results)
    assert len(list(store_dir.glob("*.corrupt"))) == 4


def test_an_interrupted_repair_is_done_again_at_start(tmp_path: Path) -> None:
    st = Stamper()
    lines = lines_of(stamp([b"r %d" % i for i in range(4)], st))
    name = SegmentName.of_block(b"".join(lines))
    # crashed after step 2: the original renamed, the salvage not installed
    put(tmp_path, lines[0] + b"junk\n" + b"".join(lines[1:]), name, "repairing")
    store = StoreLog(tmp_path)
    store.open()
    trio.run(store.run_verifier)
    assert flushed(tmp_path) == [name.filename("flushed")]
    assert segment_bytes(tmp_path / name.filename("flushed")) == b"".join(lines)
    assert [p.name for p in tmp_path.glob("*.corrupt")] == [name.filename("corrupt")]
    # crashed after step 3: the salvage installed too -- repeating it is harmless
    store.close()
    damaged = (tmp_path / name.filename("corrupt")).read_bytes()
    (tmp_path / name.filename("repairing")).write_bytes(damaged)
    again = StoreLog(tmp_path)
    again.open()
    trio.run(again.run_verifier)
    assert lines_of(everything(again)) == lines
    assert sorted(p.name for p in tmp_path.glob("*.corrupt*")) == sorted(
        [name.filename("corrupt"), name.filename("corrupt") + ".1"])


def test_a_segment_of_nothing_valid_is_quarantined_and_gone(tmp_path: Path) -> None:
    name = SegmentName(b"01AAAAAAAAAAAAAAAAAAAAAAAA", b"01AAAAAAAAAAAAAAAAAAAAAAAB")
    put(tmp_path, b"\x00" * 64, name)
    put(tmp_path, b"", SegmentName(b"01AAAAAAAAAAAAAAAAAAAAAAAC", b"01AAAAAAAAAAAAAAAAAAAAAAAD"))
    store = StoreLog(tmp_path)
    store.open()
    trio.run(store.run_verifier)
    assert flushed(tmp_path) == [] and len(store.index) == 0
    assert len(list(tmp_path.glob("*.corrupt"))) == 2
    assert everything(store) == b""


def test_a_salvage_with_the_name_of_another_segment_is_merged_into_it(tmp_path: Path) -> None:
    st = Stamper()
    lines = lines_of(stamp([b"u %d" % i for i in range(4)], st))
    name = SegmentName.of_block(b"".join(lines))
    put(tmp_path, b"".join([lines[0], lines[2], lines[1], lines[3]]), name)  # unsorted
    store = StoreLog(tmp_path)
    store.open()
    trio.run(store.run_verifier)
    assert flushed(tmp_path) == [name.filename("flushed")]
    assert everything(store) == b"".join(lines)


def test_a_replicated_segment_named_like_a_damaged_one(tmp_path: Path) -> None:
    st = Stamper()
    lines = lines_of(stamp([b"x %d" % i for i in range(4)], st))
    name = SegmentName.of_block(b"".join(lines))
    put(tmp_path, lines[0] + b"junk\n" + b"".join(lines[1:]), name)

    async def main() -> StoreLog:
        store = StoreLog(tmp_path)
        store.open()

        async def body():  # type: ignore[no-untyped-def]
            yield b"".join(lines)

        await store.write_segment(body())  # must not fold the junk in unchecked
        return store

    store = trio.run(main)
    assert everything(store) == b"".join(lines)
    assert segment_bytes(tmp_path / name.filename("flushed")) == b"".join(lines)


@pytest.mark.parametrize("seed", range(6))
def test_random_uploads_and_damage_keep_every_valid_record_once(tmp_path: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)
    st = Stamper()
    pool = lines_of(stamp([b"r%d" % i for i in range(600)], st))
    expected: set[bytes] = set()

    async def upload(store: StoreLog, lines: list[bytes]) -> None:
        async def body():  # type: ignore[no-untyped-def]
            data = b"".join(lines)
            step = rng.randrange(1, 500)
            for i in range(0, len(data), step):
                yield data[i : i + step]

        await store.write_segment(body())

    async def session(store: StoreLog) -> None:
        for _ in range(rng.randrange(3, 8)):
            lines = rng.sample(pool, rng.randrange(1, 80))
            if rng.random() < 0.7:
                lines.sort()
            expected.update(lines)
            await upload(store, lines)
            store._check()

    for _restart in range(3):
        store = StoreLog(tmp_path)
        store.open()
        trio.run(session, store)
        assert lines_of(everything(store)) == sorted(expected)
        store._check()
        store.close()
        # damage one file behind the store's back: a garbage line, or shuffled lines
        victims = sorted(tmp_path.glob("*.flushed"))
        victim = rng.choice(victims)
        content = lines_of(segment_bytes(victim))
        if rng.random() < 0.5:
            content.insert(rng.randrange(len(content) + 1), b"\x00garbage\n")
        else:
            rng.shuffle(content)
        victim.write_bytes(b"".join(content))
    store = StoreLog(tmp_path)
    store.open()
    trio.run(store.run_verifier)
    store._check()
    assert lines_of(everything(store)) == sorted(expected)


def one_damaged_segment(tmp_path: Path, text: bytes, n: int) -> tuple[list[bytes], SegmentName, StoreLog]:
    """A store whose one segment of ``n`` records has a junk line after its first."""
    lines = lines_of(stamp([text + b" %d" % i for i in range(n)], Stamper()))
    name = SegmentName.of_block(b"".join(lines))
    put(tmp_path, lines[0] + b"junk\n" + b"".join(lines[1:]), name)
    store = StoreLog(tmp_path)
    store.open()
    return lines, name, store


def test_a_repair_that_fails_half_way_keeps_the_records_for_a_retry(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from oklog.store import log as log_mod

    lines, name, store = one_damaged_segment(tmp_path, b"kept", 5)
    real = log_mod._sync_and_rename
    failures = [1]

    def disk_full(path: Path, target: Path) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError(28, "No space left on device")
        real(path, target)

    monkeypatch.setattr(log_mod, "_sync_and_rename", disk_full)
    with pytest.raises(OSError):
        everything(store)  # the repair fails before anything is sent
    assert not list((tmp_path / "tmp").iterdir())  # no salvage left behind
    assert len(store.index) == 1 and store.unverified() == 1
    store._check()
    assert lines_of(everything(store)) == lines  # the retry repairs from the .repairing file
    assert store.unverified() == 0 and [p.name for p in tmp_path.glob("*.corrupt")] == [name.filename("corrupt")]
    store._check()


def test_a_query_plans_after_repairs_that_rename_segments(tmp_path: Path) -> None:
    """A misnamed segment holding records beyond its name: once repaired it
    overlaps another segment, and the answer must still be in ULID order."""
    st = Stamper()
    early = lines_of(stamp([b"early %d" % i for i in range(3)], st))
    middle = lines_of(stamp([b"middle %d" % i for i in range(3)], st))
    late = lines_of(stamp([b"late %d" % i for i in range(3)], st))
    misnamed = SegmentName(early[0][:26], early[-1][:26])  # but it holds the late ones too
    put(tmp_path, b"".join(early + late), misnamed)
    put(tmp_path, b"".join(middle), SegmentName.of_block(b"".join(middle)))
    store = StoreLog(tmp_path)
    store.open()
    assert lines_of(everything(store)) == early + middle + late


def test_a_repair_whose_first_rename_fails_leaves_the_segment_as_it_was(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from oklog.store import log as log_mod

    lines, name, store = one_damaged_segment(tmp_path, b"as it was", 3)
    real = log_mod.os.rename

    def refused(src, dst):  # type: ignore[no-untyped-def]
        if str(dst).endswith(".repairing"):
            raise OSError(30, "Read-only file system")
        return real(src, dst)

    monkeypatch.setattr(log_mod.os, "rename", refused)
    with pytest.raises(OSError):
        everything(store)
    assert flushed(tmp_path) == [name.filename("flushed")] and not list((tmp_path / "tmp").iterdir())
    assert store.unverified() == 1
    store._check()
    monkeypatch.setattr(log_mod.os, "rename", real)
    assert lines_of(everything(store)) == lines


def test_a_segment_removed_before_its_check_is_dropped_from_the_index(tmp_path: Path) -> None:
    lines = stamp([b"gone"], Stamper())
    path = put(tmp_path, lines, SegmentName.of_block(lines))
    store = StoreLog(tmp_path)
    store.open()
    path.unlink()  # an operator cleaning up under a running node
    assert everything(store) == b""
    assert len(store.index) == 0 and store.unverified() == 0
    store._check()


def test_purge_removes_only_files_whose_name_says_trashed(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """``purge`` asks the lifecycle with the file's own state: a live segment
    booked as trash by mistake is not deleted (it leaves the trash, logged);
    ``.trashed`` and its unused variant ``.trashed.1`` go."""
    from oklog.store.log import Trashed

    stamper = Stamper()
    live = stamp([b"live"], stamper)
    old = stamp([b"old"], stamper)
    name, old_name = SegmentName.of_block(live), SegmentName.of_block(old)
    put(tmp_path, live, name)
    put(tmp_path, old, old_name, "trashed")
    put(tmp_path, old, old_name, "trashed.1")
    store = StoreLog(tmp_path)
    store.open()
    assert len(store.trash) == 2
    (_, segment), = list(store.index)
    store.trash[segment.path] = Trashed(segment, 0.0, "a bug")  # a live segment booked as trash
    for t in store.trash.values():
        t.purge_at = 0.0
    with caplog.at_level(logging.ERROR, logger="oklog.store"):
        gone = store.purge(1.0)
    assert sorted(t.segment.path.name for t in gone) == [old_name.filename("trashed"),
                                                         old_name.filename("trashed.1")]
    assert flushed(tmp_path) == [name.filename("flushed")] and not list(tmp_path.glob("*.trashed*"))
    assert not store.trash
    assert "event=purge_refused" in caplog.text and name.filename("flushed") in caplog.text
    assert everything(store) == live
    store._check()
    store.close()
