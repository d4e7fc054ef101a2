"""Hostile bytes everywhere a parser meets the outside world: each input
either parses or raises our own typed error (``oklog.errors``), never an
IndexError, a zstd or numpy error, or a crash.

In-process, one parser at a time: the record validator and salvager, the
line splitter, the segment readers and checker (any file as a segment),
the sidecar decoder (any bytes, and well-checksummed nonsense), and the
ingest segment ids.  ``tests/test_hostile.py`` does the same over HTTP
against a real node.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oklog.errors import CorruptSegment, OklogError, UnknownSegment
from oklog.lines import LineSplitter
from oklog.records.format import TOPIC_RE, is_valid_block, salvage, validate_block
from oklog.segment import derive_table, open_segment, write_segment
from oklog.segment import check as segcheck
from oklog.segment.blocked import BlockReader, frames
from oklog.segment.name import SegmentName
from oklog.segment.plain import PlainReader
from oklog.segment.table import Table, decode, encode, load_sidecar, sidecar_path, write_sidecar
from oklog.ulid import Stamper, is_ulid, ulid_for_ms

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def records(n: int, payload: bytes = b"hello") -> bytes:
    stamper = Stamper()
    return b"".join(u + b" default " + payload + b" %d\n" % i for i, u in enumerate(stamper.batch(n)))


# Bytes that look like records often enough to reach the deep branches.
_pieces = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\n", b" ", b"default", b"\x00", b"\xff", b"\r", b"01ARZ3NDEKTSV4RRFFQ69G5FAV",
                     b"01arz3ndektsv4rrffq69g5fav", b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ", b"8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
                     b"\x28\xb5\x2f\xfd", b"-", b"_"]),
    st.builds(lambda n: records(n), st.integers(1, 3)),
)
record_ish = st.lists(_pieces, max_size=12).map(b"".join)


# --- records --------------------------------------------------------------------


@FUZZ
@given(record_ish)
def test_record_validator_and_salvage(block: bytes) -> None:
    valid = is_valid_block(block)
    try:
        validate_block(block)
    except CorruptSegment as exc:
        assert not valid
        assert str(exc)
    else:
        assert valid
    kept, dropped = salvage(block)
    assert is_valid_block(kept)
    assert (dropped == 0) == valid
    if valid:
        assert kept == block
    # nothing invented: every kept line is a line of the input
    assert set(kept.splitlines()) <= set(block.split(b"\n"))
    for line in kept.splitlines():
        ulid, topic, _ = line.split(b" ", 2)
        assert is_ulid(ulid) and TOPIC_RE.fullmatch(topic)


# --- the line splitter -----------------------------------------------------------


@FUZZ
@given(st.lists(st.binary(max_size=30), max_size=20), st.sampled_from(["error", "keep", "drop"]),
       st.sampled_from(["error", "drop"]), st.one_of(st.none(), st.integers(0, 20)), st.integers(0, 40))
def test_line_splitter_any_chunks(chunks: list[bytes], final_tail: str, too_long: str,
                                  max_line: int | None, min_size: int) -> None:
    sp = LineSplitter(final_tail=final_tail, too_long=too_long, max_line=max_line,  # type: ignore[arg-type]
                      min_size=min_size)
    out = []
    try:
        for c in chunks:
            out.append(sp.feed(c))
        out.extend(sp.finish())
    except CorruptSegment:
        assert final_tail == "error" or too_long == "error"
        return
    data = b"".join(chunks)
    got = b"".join(out)
    assert all(block == b"" or block.endswith(b"\n") for block in out)
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail and final_tail == "keep":
        lines.append(tail)
    if max_line is not None:
        lines = [ln for ln in lines if len(ln) <= max_line]
    assert got == b"".join(ln + b"\n" for ln in lines)


# --- segment files ----------------------------------------------------------------


def _read_everything(path: Path) -> None:
    """Every read path a store uses on a file found on disk."""
    table = derive_table(path)  # unverified: not sound, only readable
    with open_segment(path, table) as reader:
        for block in reader.blocks():
            assert block.endswith(b"\n")
        list(reader.blocks(b"0", b"7"))
        reader.bounds()
        verdict = segcheck.check(reader)
        verdict.problems(SegmentName(b"0" * 26, b"7" * 26))
        verdict2, sound = segcheck.inspect(reader)
        assert (sound is None) == bool(verdict2.malformed or verdict2.torn or verdict2.unreadable
                                       or verdict2.unsorted or not verdict2.records)
        if sound is not None:
            sound._check()
        out = path.with_name("salvaged")
        scratch = path.with_name("scratch")
        verdict3 = segcheck.salvage(reader, _Collect(), scratch)
        assert verdict3.records == verdict.records
        assert not out.exists()
    with PlainReader(path) as plain:
        for block in plain.raw_blocks():
            assert block
        list(plain.frames())


class _Collect:
    """A SegmentWriter that checks what it is given."""

    path = Path("/nonexistent")
    records = 0
    size = 0
    table = Table("none")

    def __init__(self) -> None:
        self.last = b""

    def write(self, block: bytes) -> None:
        assert is_valid_block(block)
        first = block[:26]
        assert first > self.last
        self.last = block[block.rfind(b"\n", 0, len(block) - 1) + 1:][:26]

    def finish(self) -> None:
        return None

    def abort(self) -> None:
        return None


@FUZZ
@given(content=st.one_of(record_ish, st.binary(max_size=300)))
def test_any_bytes_as_a_segment_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "seg"
    path.write_bytes(content)
    _read_everything(path)


_SEGMENTS: dict[tuple[int, int], bytes] = {}


def _zstd_segment(tmp_path: Path, n: int = 40, block_size: int = 300) -> bytes:
    """A sound multi-block zstd segment, the same bytes every time (hypothesis
    replays examples)."""
    if (n, block_size) not in _SEGMENTS:
        path = tmp_path / "good"
        fixed = b"".join(ulid_for_ms(1_700_000_000_000 + i, upper=True)
                         + b" default payload of some length %d\n" % i for i in range(n))
        write_segment(path, [fixed], compression="zstd", block_size=block_size, durable=False)
        _SEGMENTS[(n, block_size)] = path.read_bytes()
        path.unlink()
    return _SEGMENTS[(n, block_size)]


@FUZZ
@given(st.data())
def test_damaged_zstd_segment_files(tmp_path: Path, data: st.DataObject) -> None:
    """A real multi-frame zstd segment, then bit flips, cuts and splices."""
    original = _zstd_segment(tmp_path)
    content = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        at = data.draw(st.integers(0, max(0, len(content) - 1)))
        if kind == "flip":
            content[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del content[at:at + data.draw(st.integers(1, 64))]
        elif kind == "insert":
            content[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            content[at:at + 8] = bytes(min(8, len(content) - at))
    path = tmp_path / "seg"
    path.write_bytes(bytes(content))
    _read_everything(path)


@FUZZ
@given(st.data())
def test_a_block_damaged_behind_a_trusted_table_is_a_corrupt_segment(tmp_path: Path,
                                                                     data: st.DataObject) -> None:
    """The table was right when built (a sidecar naming this size and
    mtime); the bytes changed since (bit rot): reading is CorruptSegment."""
    path = tmp_path / "seg"
    path.write_bytes(_zstd_segment(tmp_path))
    table = derive_table(path)
    content = bytearray(path.read_bytes())
    at = data.draw(st.integers(0, len(content) - 1))
    content[at] ^= 1 << data.draw(st.integers(0, 7))
    path.write_bytes(bytes(content))
    with BlockReader(path, table) as reader:
        try:
            for block in reader.blocks():
                assert block.endswith(b"\n")
        except CorruptSegment:
            pass


# --- sidecars --------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 1000), st.integers(0, 2**63))
def test_any_bytes_as_a_sidecar(raw: bytes, size: int, mtime: int) -> None:
    table = decode(raw, size, mtime)
    assert table is None  # no checksum, no trust


def _sealed(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


@FUZZ
@given(st.data())
def test_well_sealed_nonsense_sidecars_are_never_trusted_wrongly(tmp_path: Path, data: st.DataObject) -> None:
    """A sidecar with a valid checksum (a bug, or a hand-made file) whose
    header or entries lie: decoded as None, or as a table that matches the
    segment's size and reads as records or CorruptSegment, never a crash."""
    path = tmp_path / "seg"
    path.write_bytes(_zstd_segment(tmp_path, n=20, block_size=200))
    st_ = os.stat(path)
    good = derive_table(path)
    encoded = encode(good, st_.st_size, st_.st_mtime_ns)
    hlen = struct.unpack_from("<I", encoded, 12)[0]
    header = json.loads(encoded[16:16 + hlen])
    rest = encoded[16 + hlen:-4]
    choice = data.draw(st.sampled_from(["header", "body", "both"]))
    if choice in ("header", "both"):
        key = data.draw(st.sampled_from(sorted(header) + ["extra"]))
        header[key] = data.draw(_json_values)
    if choice in ("body", "both") and rest:
        body = bytearray(rest)
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, len(body) - 1))
            body[at] = data.draw(st.integers(0, 255))
        rest = bytes(body)
    hb = json.dumps(header).encode()
    raw = _sealed(b"OKLOGIDX" + struct.pack("<II", 1, len(hb)) + hb + rest)
    sidecar_path(path).write_bytes(raw)
    table = load_sidecar(path)
    if table is None:
        return
    assert table.size == st_.st_size
    table._check()
    with open_segment(path) as reader:
        try:
            for block in reader.blocks():
                assert block.endswith(b"\n")
        except CorruptSegment:
            pass


def test_a_good_sidecar_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    path.write_bytes(_zstd_segment(tmp_path))
    table = derive_table(path)
    write_sidecar(path, table)
    loaded = load_sidecar(path)
    assert loaded is not None and loaded.offsets == table.offsets and loaded.firsts == table.firsts


# --- ingest segment ids ------------------------------------------------------------------

HOSTILE_IDS = ["", "..", "../", "../../etc/passwd", "/etc/passwd", "/", ".", "a/b", "a\x00b", "\x00",
               "x" * 100_000, "01ARZ3NDEKTSV4RRFFQ69G5FAV/../../x", "01ARZ3NDEKTSV4RRFFQ69G5FA\x00",
               "%2e%2e%2f", "01ARZ3NDEKTSV4RRFFQ69G5FAV.pending", "\u00e9" * 26, "LOCK", "\n"]


@pytest.fixture
def ingest_log(tmp_path: Path):  # type: ignore[no-untyped-def]
    from oklog.ingest.log import IngestLog

    log = IngestLog(tmp_path / "ingest")
    yield log
    log.close()


def _hostile_id_calls(log, seg_id: str) -> None:  # type: ignore[no-untyped-def]
    for op in (log.read_path, log.mark_read, log.commit, log.failed):
        with pytest.raises(UnknownSegment) as exc:
            op(seg_id)
        assert exc.value.status_hint == 404
        assert len(str(exc.value)) < 300  # a huge id is not echoed whole


@pytest.mark.parametrize("seg_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_segment_ids(ingest_log, tmp_path: Path, seg_id: str) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "canary.pending"
    outside.write_bytes(b"do not touch\n")
    _hostile_id_calls(ingest_log, seg_id)
    assert outside.read_bytes() == b"do not touch\n"


@FUZZ
@given(st.text(max_size=60))
def test_any_text_as_a_segment_id(ingest_log, seg_id: str) -> None:  # type: ignore[no-untyped-def]
    _hostile_id_calls(ingest_log, seg_id)


def test_zstd_module_error_type_is_what_we_convert() -> None:
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(b"\x28\xb5\x2f\xfd" + b"\x00" * 10)
    assert issubclass(CorruptSegment, OklogError)


def test_every_bit_flip_in_frame_headers_is_a_corrupt_segment_on_both_read_paths(tmp_path: Path) -> None:
    """A damaged frame header may claim any content size; neither the
    reader nor a query's scan unit believes it (decompress would allocate
    what it claims: a MemoryError, or gigabytes)."""
    from oklog.query.unit import Unit, run_unit

    original = _zstd_segment(tmp_path)
    path = tmp_path / "seg"
    path.write_bytes(original)
    table = derive_table(path)
    assert len(table) >= 2
    blocks = tuple((o, n, False) for o, n in zip(table.offsets, table.lengths))
    unit = Unit(str(path), "zstd", blocks, b"0" * 26, b"Z" * 26, b"", False, None)
    flips = 0
    for start in table.offsets[:2]:
        for at in range(start, start + 14):
            for bit in range(8):
                content = bytearray(original)
                content[at] ^= 1 << bit
                path.write_bytes(bytes(content))
                for read in (lambda: _read_blocks(path, table), lambda: run_unit(unit)):
                    try:
                        read()
                    except CorruptSegment:
                        flips += 1
    assert flips > 100  # most header flips are caught (a few land in bits zstd ignores)


def _read_blocks(path: Path, table: Table) -> list[bytes]:
    with BlockReader(path, table) as reader:
        return list(reader.blocks())
