"""The segment seam: plain reader/writer, external sort, check and salvage."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.records.format import is_valid_block
import shutil
import subprocess

from oklog.segment import create_segment, derive_table, open_segment, write_segment
from oklog.segment.blocked import BlockReader, frames, sniff
from oklog.segment.table import Table
from oklog.segment.check import check, salvage
from oklog.segment.name import SegmentName
from oklog.segment.sort import sort_blocks
from tests.recordutil import rec, segment_bytes, ulid


def records(ns: list[int]) -> bytes:
    return b"".join(rec(n, b"payload %d" % n) for n in ns)


COMPRESSIONS = pytest.mark.parametrize("compression", ["zstd", "none"])


@COMPRESSIONS
def test_writer_names_the_segment_and_reader_reads_ranges(tmp_path: Path, compression: str) -> None:
    data = records(list(range(10, 1000, 3)))
    name = write_segment(tmp_path / "s", [data[:500], b"", data[500:]], compression=compression,
                         block_size=4096)
    assert name == SegmentName(ulid(10), ulid(997))
    with open_segment(tmp_path / "s") as r:
        assert (r.size == len(data)) == (compression == "none")
        assert r.compression == compression == sniff(tmp_path / "s")
        assert r.bounds() == (ulid(10), ulid(997))
        assert (len(r.table) > 1) == (compression == "zstd")  # plain: cut on reading, 1 MiB
        r.table._check()
        assert b"".join(r.blocks()) == data
        assert b"".join(r.blocks(ulid(100), ulid(200))) == records(list(range(100, 201, 3)))
        assert b"".join(r.blocks(ulid(2000), ulid(3000))) == b""
        assert b"".join(r.raw_blocks()) == data


def test_a_zstd_segment_is_read_by_zstdcat_and_zstdgrep(tmp_path: Path) -> None:
    data = records(list(range(20000)))
    write_segment(tmp_path / "s", [data], block_size=64 << 10)
    with open_segment(tmp_path / "s") as r:
        assert len(r.table) > 4  # many independent frames
    if shutil.which("zstdcat") is None:
        pytest.skip("zstdcat is not installed")
    assert subprocess.run(["zstdcat", str(tmp_path / "s")], capture_output=True, check=True).stdout == data
    grep = subprocess.run(["zstdgrep", "payload 12345$", str(tmp_path / "s")], capture_output=True)
    assert grep.stdout == rec(12345, b"payload 12345")


def test_empty_writer_leaves_no_file(tmp_path: Path) -> None:
    assert write_segment(tmp_path / "s", []) is None
    assert not (tmp_path / "s").exists()
    w = create_segment(tmp_path / "t")
    w.write(rec(1))
    w.abort()
    assert not (tmp_path / "t").exists()


@COMPRESSIONS
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=120), block=st.integers(16, 3000),
       cuts=st.lists(st.integers(0, 40000), max_size=8))
@settings(max_examples=80, deadline=None)
def test_round_trip_blocks_never_split_a_record(tmp_path_factory: pytest.TempPathFactory, compression: str,
                                                 sizes: list[int], block: int, cuts: list[int]) -> None:
    """Any records, written in any pieces, in any block size: the same bytes
    come back, and every block is whole records of about the block size."""
    tmp = tmp_path_factory.mktemp("rt")
    data = b"".join(rec(i, b"x" * n) for i, n in enumerate(sizes))
    edges = sorted({0, len(data), *[c for c in cuts if c < len(data)]})
    lines = [data[a:b] for a, b in zip(edges, edges[1:])]
    # writers get whole records: join the pieces back at line ends
    pieces, held = [], b""
    for piece in lines:
        held += piece
        cut = held.rfind(b"\n") + 1
        if cut:
            pieces.append(held[:cut])
            held = held[cut:]
    name = write_segment(tmp / "s", pieces + [held], compression=compression, block_size=block)
    assert name == SegmentName(ulid(0), ulid(len(sizes) - 1))
    with open_segment(tmp / "s") as r:
        r.table._check()
        blocks = [r.block(i) for i in range(len(r.table))]
        assert b"".join(blocks) == data == b"".join(r.blocks())
        for i, b in enumerate(blocks):
            assert b.endswith(b"\n")
            assert len(b) <= block or b.count(b"\n") == 1 or i == len(blocks) - 1 or len(b) < 2 * block + 400
            assert r.table.firsts[i] == b[:26] and r.table.records[i] == b.count(b"\n")
    assert derive_table(tmp / "s", block).offsets == r.table.offsets or compression == "none"


def test_blocks_never_split_a_record(tmp_path: Path) -> None:
    data = records(list(range(5000)))
    write_segment(tmp_path / "s", [data], block_size=1000)
    with open_segment(tmp_path / "s") as r:
        blocks = list(r.blocks())
    assert all(b.endswith(b"\n") for b in blocks) and b"".join(blocks) == data
    assert len(blocks) > 50


def test_a_damaged_zstd_frame_hides_nothing_after_it(tmp_path: Path) -> None:
    data = records(list(range(3000)))
    write_segment(tmp_path / "s", [data], block_size=8192)
    with open_segment(tmp_path / "s") as r:
        t = r.table
    victim = len(t) // 2
    raw = bytearray((tmp_path / "s").read_bytes())
    raw[t.offsets[victim] + t.lengths[victim] // 2] ^= 0xFF  # a bit flip inside one frame
    (tmp_path / "s").write_bytes(bytes(raw))
    walked = list(frames(tmp_path / "s"))
    bad = [f for f in walked if f.data is None]
    assert len(bad) == 1 and bad[0].offset == t.offsets[victim]
    kept = b"".join(f.data for f in walked if f.data is not None)
    before, after = sum(t.raw[:victim]), sum(t.raw[: victim + 1])
    assert kept == data[:before] + data[after:]  # every other frame is read
    verdict = check(BlockReader(tmp_path / "s", Table("zstd")))
    assert verdict.unreadable == 1
    assert "unreadable" in verdict.problems(SegmentName(ulid(0), ulid(2999)))


def test_raw_blocks_end_with_a_torn_tail(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(records([1, 2]) + b"01ARZ3 torn")
    with open_segment(tmp_path / "s") as r:
        raw = list(r.raw_blocks())
        assert raw[-1].endswith(b"01ARZ3 torn") and b"".join(raw) == records([1, 2]) + b"01ARZ3 torn"
        assert b"".join(r.blocks()) == records([1, 2])  # whole lines only


@given(st.lists(st.integers(0, 300), max_size=200), st.integers(1, 2000))
@settings(max_examples=60, deadline=None)
def test_external_sort_matches_sorted(tmp_path_factory: pytest.TempPathFactory, ns: list[int], run: int) -> None:
    tmp = tmp_path_factory.mktemp("sort")
    lines = [rec(n, b"copy %d" % i) for i, n in enumerate(ns)]
    blocks = [b"".join(lines[i:i + 7]) for i in range(0, len(lines), 7)]
    out = b"".join(sort_blocks(blocks, tmp / "scratch", run_size=run))
    first: dict[bytes, bytes] = {}
    for line in lines:
        first.setdefault(line[:26], line)
    assert out == b"".join(first[k] for k in sorted(first))
    assert not (tmp / "scratch").exists()


def test_check_a_sound_segment(tmp_path: Path) -> None:
    data = records([1, 5, 9])
    name = write_segment(tmp_path / "s", [data])
    assert name is not None
    with open_segment(tmp_path / "s") as r:
        v = check(r)
    assert v.records == 3 and v.problems(name) == []
    assert v.problems(SegmentName(ulid(1), ulid(10))) == ["misnamed"]


@pytest.mark.parametrize(
    "content, problems",
    [
        (records([1, 2]) + b"garbage\n" + records([3]), ["malformed"]),
        (records([1, 3, 2]), ["unsorted"]),
        (records([1, 2, 2, 3]), ["unsorted"]),  # a ULID twice
        (records([1, 2, 3]) + b"01ARZ3NDEK partial", ["torn"]),
        (b"", ["empty"]),
        (b"\x00" * 100, ["torn", "empty"]),
        (b"junk\n" + records([3, 1]) + b"tail", ["malformed", "torn", "unsorted"]),
    ],
)
def test_check_finds_every_kind_of_damage(tmp_path: Path, content: bytes, problems: list[str]) -> None:
    (tmp_path / "s").write_bytes(content)
    with open_segment(tmp_path / "s") as r:
        assert check(r).problems(SegmentName(ulid(1), ulid(3))) == problems


@given(st.lists(st.one_of(st.integers(0, 50), st.sampled_from(["junk", "empty", "short"])), max_size=80),
       st.booleans())
@settings(max_examples=80, deadline=None)
def test_salvage_keeps_every_valid_record_sorted_once(tmp_path_factory: pytest.TempPathFactory,
                                                      items: list, torn: bool) -> None:
    tmp = tmp_path_factory.mktemp("salvage")
    lines = []
    for i, item in enumerate(items):
        if item == "junk":
            lines.append(b"\xff junk line\n")
        elif item == "empty":
            lines.append(b"\n")
        elif item == "short":
            lines.append(ulid(7)[:12] + b"\n")
        else:
            lines.append(rec(item, b"v%d" % i))
    content = b"".join(lines) + (rec(99)[:30] if torn else b"")
    (tmp / "in").write_bytes(content)
    writer = create_segment(tmp / "out")
    with open_segment(tmp / "in") as r:
        salvage(r, writer, tmp / "scratch")
    writer.finish()
    first: dict[bytes, bytes] = {}
    for line in lines:
        if is_valid_block(line):
            first.setdefault(line[:26], line)
    want = b"".join(first[k] for k in sorted(first))
    got = segment_bytes(tmp / "out") if (tmp / "out").exists() else b""
    assert got == want
    if want:
        with open_segment(tmp / "out") as r:
            name = SegmentName.of_block(want)
            assert check(r).problems(name) == []


def test_random_reads_agree_with_brute_force(tmp_path: Path) -> None:
    rng = random.Random(7)
    ns = sorted(rng.sample(range(100_000), 3000))
    data = records(ns)
    write_segment(tmp_path / "s", [data])
    with open_segment(tmp_path / "s") as r:
        for _ in range(200):
            lo, hi = sorted(rng.sample(range(-10, 100_010), 2))
            got = b"".join(r.blocks(ulid(max(lo, 0)), ulid(max(hi, 0))))
            assert got == records([n for n in ns if max(lo, 0) <= n <= max(hi, 0)])


@given(st.lists(st.integers(0, 40), max_size=30), st.integers(0, 30), st.integers(1, 50))
@settings(max_examples=150, deadline=None)
def test_reads_in_any_block_size_cut_at_line_ends(tmp_path_factory: pytest.TempPathFactory,
                                                   lengths: list[int], tail: int, size: int) -> None:
    tmp = tmp_path_factory.mktemp("span")
    data = b"".join(b"%c" % (97 + i % 26) * n + b"\n" for i, n in enumerate(lengths)) + b"t" * tail
    (tmp / "s").write_bytes(data)
    from oklog.segment.plain import PlainReader

    with PlainReader(tmp / "s") as r:
        raw = list(r.raw_blocks(size=size))
    assert b"".join(raw) == data
    whole = raw[:-1] if tail else raw
    assert all(b.endswith(b"\n") for b in whole)
    assert all(len(b) <= size or b.count(b"\n") == 1 for b in whole)  # only a long line exceeds size
    if tail:
        assert raw[-1] == b"t" * tail


def test_reading_every_frame_keeps_no_file_pages_resident(tmp_path: Path) -> None:
    """``frames`` reads a whole segment through a mapping (checking a
    segment, rebuilding its sidecar): the pages behind the reader are
    dropped from the process (they stay in the page cache), so the node's
    RSS does not grow by the file's size."""
    import os
    import zstandard

    def rss_file() -> int:  # mapped file pages (RssShmem: a file on tmpfs)
        with open("/proc/self/status") as f:
            return sum(int(line.split()[1]) << 10 for line in f
                       if line.startswith(("RssFile:", "RssShmem:")))

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc")
    path = tmp_path / "big.flushed"
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=True)
    with open(path, "wb") as f:
        for _ in range(40):  # incompressible: the file is as big as its records
            f.write(cctx.compress(os.urandom(1 << 20)))
    grew = 0
    before = rss_file()
    for n, frame in enumerate(frames(path), 1):
        assert frame.data is not None and len(frame.data) == 1 << 20
        grew = max(grew, rss_file() - before)
    assert n == 40 and grew < 12 << 20, grew
