"""A segment's block table and its sidecar file.

The *table* says where each block of a segment file lies (offset and length
on disk, length uncompressed), how many records it holds and its first and
last ULID, plus the segment's n-gram index (``oklog.segment.ngram``).  It
is what lets a query read only the blocks of its time range that can hold
its literal, and lets HEAD answer without reading any record.

On disk the table is a *sidecar* next to the segment, ``NAME.idx`` for the
segment file ``NAME``.  It is derived data, so it is never trusted blindly:
it names the size and modification time of the segment it was built from
and ends with a CRC-32 of itself; a sidecar that is missing, truncated,
bit-flipped, of another version or of another file is ignored (the segment
is then checked and the sidecar rebuilt from it).  Deleting every sidecar
loses nothing.

Layout (little-endian)::

    b"OKLOGIDX"  u32 version  u32 header length  header (JSON)
    blocks x (u64 offset, u32 length, u32 raw length, u32 records)
    blocks x 26-byte first ULID   blocks x 26-byte last ULID
    index (serialized pyroaring BitMap64, "index_bytes" long; 0 = none)
    (the header's "topics" is the topic index: topic → hex mask of the
    blocks holding it, or null when there are too many topics; a sidecar
    written before topic indexes has no such key: its table is used and
    its indexes are rebuilt in the background)
    u32 CRC-32 of everything before it
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pyroaring import BitMap64

from oklog.segment.ngram import GramIndex
from oklog.segment.topics import TopicIndex
from oklog.ulid import is_ulid

__all__ = ["SIDECAR_SUFFIX", "Table", "load_sidecar", "sidecar_path", "write_sidecar"]

SIDECAR_SUFFIX = ".idx"
_MAGIC = b"OKLOGIDX"
_VERSION = 1
_ENTRY = np.dtype([("offset", "<u8"), ("length", "<u4"), ("raw", "<u4"), ("records", "<u4")])
_ULID = 26


@dataclass
class Table:
    """Where a segment's blocks are and what they hold (see module doc)."""

    compression: str  # "zstd" or "none"
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # bytes on disk
    raw: list[int] = field(default_factory=list)  # bytes of records
    records: list[int] = field(default_factory=list)
    firsts: list[bytes] = field(default_factory=list)
    lasts: list[bytes] = field(default_factory=list)
    index: GramIndex | None = None
    topics: TopicIndex | None = None  # built with ``index`` (None: every block may hold any topic)

    def add(self, offset: int, length: int, block: bytes, first: bytes, last: bytes) -> None:
        self.offsets.append(offset)
        self.lengths.append(length)
        self.raw.append(len(block))
        self.records.append(block.count(b"\n"))
        self.firsts.append(first)
        self.lasts.append(last)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def size(self) -> int:
        """Bytes on disk the blocks cover (the whole file when sound)."""
        return self.offsets[-1] + self.lengths[-1] if self.offsets else 0

    def span(self, lo: bytes, hi: bytes) -> range:
        """Blocks that may hold a ULID in ``[lo, hi]`` (by first/last ULID)."""
        start = bisect.bisect_left(self.lasts, lo)
        stop = bisect.bisect_right(self.firsts, hi)
        return range(start, max(start, stop))

    def raw_bytes(self, blocks: range) -> int:
        return sum(self.raw[i] for i in blocks)

    def _check(self) -> None:
        """Assert the invariants of a sound segment's table (tests call this)."""
        pos = 0
        for i in range(len(self)):
            assert self.offsets[i] == pos, f"block {i} is not where the last one ended"
            pos += self.lengths[i]
            assert self.firsts[i] <= self.lasts[i]
            if i:
                assert self.lasts[i - 1] < self.firsts[i], f"block {i} overlaps block {i - 1}"
        assert self.index is None or self.index.blocks == len(self)
        assert self.topics is None or self.topics.blocks == len(self)


def sidecar_path(segment: Path) -> Path:
    return segment.with_name(segment.name + SIDECAR_SUFFIX)


def encode(table: Table, segment_size: int, mtime_ns: int) -> bytes:
    entries = np.zeros(len(table), _ENTRY)
    entries["offset"] = table.offsets
    entries["length"] = table.lengths
    entries["raw"] = table.raw
    entries["records"] = table.records
    index = table.index.bitmap.serialize() if table.index is not None else b""
    header = json.dumps({
        "segment_size": segment_size,
        "segment_mtime_ns": mtime_ns,
        "compression": table.compression,
        "blocks": len(table),
        "index": "trigram" if table.index is not None else None,
        "index_bytes": len(index),
        "unindexed_blocks": table.index.wild if table.index is not None else [],
        "topics": table.topics.to_json() if table.topics is not None else None,
    }).encode()
    body = b"".join([
        _MAGIC, struct.pack("<II", _VERSION, len(header)), header, entries.tobytes(),
        b"".join(table.firsts), b"".join(table.lasts), index,
    ])
    return body + struct.pack("<I", zlib.crc32(body))


def decode(data: bytes, segment_size: int, mtime_ns: int) -> Table | None:
    """The table in ``data``, or None unless it is intact and of this segment."""
    try:
        if len(data) < 20 or data[:8] != _MAGIC:
            return None
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if zlib.crc32(memoryview(data)[:-4]) != crc:
            return None
        version, hlen = struct.unpack_from("<II", data, 8)
        if version != _VERSION:
            return None
        pos = 16 + hlen
        header = json.loads(data[16:pos])
        if (header["segment_size"], header["segment_mtime_ns"]) != (segment_size, mtime_ns):
            return None  # stale: built from another file of this name
        n = int(header["blocks"])
        if n < 0:
            return None
        entries = np.frombuffer(data, _ENTRY, n, pos)
        pos += n * _ENTRY.itemsize
        firsts = [data[pos + i * _ULID : pos + (i + 1) * _ULID] for i in range(n)]
        pos += n * _ULID
        lasts = [data[pos + i * _ULID : pos + (i + 1) * _ULID] for i in range(n)]
        pos += n * _ULID
        table = Table(
            str(header["compression"]), entries["offset"].tolist(), entries["length"].tolist(),
            entries["raw"].tolist(), entries["records"].tolist(), firsts, lasts)
        ilen = int(header["index_bytes"])
        if ilen < 0 or pos + ilen + 4 != len(data) or table.size != segment_size:
            return None
        if ilen:
            wild = [int(i) for i in header.get("unindexed_blocks", [])]
            if not all(0 <= i < n for i in wild):
                return None
            table.index = GramIndex(BitMap64.deserialize(data[pos : pos + ilen]), n, wild)
        if "topics" not in header:
            # written before topic indexes: its block table is good, its
            # indexes are rebuilt (StoreLog.open queues a table without one)
            table.index = None
        elif header["topics"] is not None:  # None: too many topics to index
            table.topics = TopicIndex.from_json(header["topics"], n)
        if table.compression not in ("zstd", "none") or not _consistent(table, entries):
            return None
        return table
    except (ValueError, KeyError, TypeError, OverflowError, struct.error, json.JSONDecodeError):
        return None


def _consistent(table: Table, entries: np.ndarray) -> bool:
    """Whether a decoded table describes a sound segment: blocks one after
    another from offset 0, none empty, each with whole records whose ULIDs
    rise from block to block.  The checksum only proves the sidecar is what
    some writer wrote; this keeps a lying one (a bug, a hand-made file) from
    being trusted."""
    n = len(table)
    if not n:
        return False
    offsets, lengths = entries["offset"], entries["length"]
    if offsets[0] != 0 or not np.all(lengths > 0) or not np.all(entries["records"] > 0):
        return False
    if not np.all(offsets[1:] == offsets[:-1] + lengths[:-1]) or not np.all(entries["raw"] >= entries["records"]):
        return False
    if table.compression == "none" and not np.all(entries["raw"] == lengths):
        return False
    previous = b""
    for first, last in zip(table.firsts, table.lasts):
        if not (is_ulid(first) and is_ulid(last) and previous < first <= last):
            return False
        previous = last
    return True


def write_sidecar(segment: Path, table: Table, st: os.stat_result | None = None) -> None:
    """Write (atomically replace) the sidecar of ``segment``, naming the
    file ``st`` describes (the one the table was built from; default: the
    file there now).  Not fsynced: a sidecar lost or torn by a crash is just
    rebuilt."""
    st = st or os.stat(segment)
    path = sidecar_path(segment)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(encode(table, st.st_size, st.st_mtime_ns))
    os.replace(tmp, path)


def load_sidecar(segment: Path) -> Table | None:
    """The table of ``segment`` from its sidecar, or None if there is no
    usable one (missing, damaged, stale)."""
    try:
        st = os.stat(segment)
        data = sidecar_path(segment).read_bytes()
    except OSError:
        return None
    return decode(data, st.st_size, st.st_mtime_ns)
