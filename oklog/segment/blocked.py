"""The block segment format: sorted records in blocks, each block on its own.

A segment file is a run of *blocks*, each a few thousand whole records
(about ``block_size`` bytes, never splitting a record; a longer record is a
block of its own).  With ``zstd`` compression every block is one
independent zstd frame (with its content size and a checksum), so
``zstdcat``/``zstdgrep`` read the file as it is and a reader decompresses
only the blocks it needs; with ``none`` the file is plain records, as
``grep`` reads them, and as earlier versions wrote.

Where the blocks are comes from the segment's table (``oklog.segment.table``).
Without one, ``frames`` walks the file from the start: zstd frames one
after another, or plain records cut at about ``block_size``.  That walk is
what checking, salvaging and rebuilding a sidecar read; it hands out bytes
it cannot decode as ``Frame(data=None)`` and carries on at the next zstd
frame, so one bad frame never hides the rest of a file.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import zstandard

from oklog.errors import CorruptSegment
from oklog.fsutil import drop_pages
from oklog.records.search import bisect, first_ulid, last_ulid, line_range
from oklog.segment.name import SegmentName
from oklog.segment.table import Table

__all__ = [
    "BLOCK_SIZE",
    "COMPRESSIONS",
    "BlockReader",
    "BlockWriter",
    "Frame",
    "ZSTD_LEVEL",
    "clip",
    "frames",
    "sniff",
]

BLOCK_SIZE = 1 << 20
#: zstd level 1: on access logs it compresses better *and* faster than 3
#: when every block is its own frame (docs/performance.md).
ZSTD_LEVEL = 1
COMPRESSIONS = ("zstd", "none")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LF = b"\n"
_READ = 1 << 20  # bytes read at a time when walking a file without a table


def clip(block: bytes, lo: bytes, hi: bytes) -> bytes:
    """The records of a sorted block whose ULID is in ``[lo, hi]`` (binary
    search: only the first and last block of a range need it)."""
    _, end = line_range(block)
    start = bisect(block, lo, 0, end)
    return block[start : bisect(block, hi, start, end, after=True)]


def sniff(path: Path) -> str:
    """``zstd`` if the file starts with a zstd frame, else ``none``."""
    with open(path, "rb") as f:
        return "zstd" if f.read(4) == ZSTD_MAGIC else "none"


def cut(buf: bytes, pos: int, size: int) -> int:
    """End of the block starting at ``pos``: after the last LF within
    ``size`` bytes (or after the first LF, for a longer record)."""
    end = pos + size
    if end >= len(buf):
        return len(buf)
    nl = buf.rfind(_LF, pos, end)
    if nl < 0:
        nl = buf.find(_LF, end)
        if nl < 0:
            return len(buf)
    return nl + 1


@dataclass
class Frame:
    """One block of a segment file: where it is, and its records (``None``:
    the bytes could not be decoded)."""

    offset: int
    length: int
    data: bytes | None


def frames(path: Path, block_size: int = BLOCK_SIZE) -> Iterator[Frame]:
    """Every block of a segment file, from the start, nothing trusted.

    A plain file's last block may end without LF (a torn tail).
    """
    with open(path, "rb", buffering=0) as f:
        head = f.read(4)
        f.seek(0)
        if head == ZSTD_MAGIC:
            yield from _zstd_frames(f)
        else:
            yield from _plain_frames(f, block_size)


def _plain_frames(f, block_size: int) -> Iterator[Frame]:  # type: ignore[no-untyped-def]
    offset = 0  # of buf[0] in the file
    buf = b""
    eof = False
    while not eof:
        data = f.read(max(block_size, _READ))
        eof = not data
        buf = buf + data if buf else data
        pos = 0
        while pos < len(buf):
            end = cut(buf, pos, block_size)
            if end == len(buf) and not eof:
                break  # the block may go on in the bytes not read yet
            yield Frame(offset + pos, end - pos, buf[pos:end])  # at EOF maybe torn
            pos = end
        offset += pos
        buf = buf[pos:]


def _zstd_frames(f) -> Iterator[Frame]:  # type: ignore[no-untyped-def]
    size = os.fstat(f.fileno()).st_size
    if not size:
        return
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = done = 0
        while pos < size:
            done = drop_pages(data, done, pos)  # a whole file's pages otherwise stay resident
            decoded = _decode_frame(data, pos)
            if decoded is None:  # undecodable: go on at the next frame's magic
                nxt = data.find(ZSTD_MAGIC, pos + 1)
                stop = size if nxt < 0 else nxt
                yield Frame(pos, stop - pos, None)
                pos = stop
                continue
            end, block = decoded
            yield Frame(pos, end - pos, block)
            pos = end


def _decode_frame(data: mmap.mmap, pos: int) -> tuple[int, bytes] | None:
    """The end and content of the zstd frame at ``pos``; None if there is
    no whole, intact frame there."""
    if data[pos : pos + 4] != ZSTD_MAGIC:
        return None
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = []
    at = pos
    try:
        while at < len(data) and not dobj.eof:
            piece = data[at : at + _READ]
            out.append(dobj.decompress(piece))
            at += len(piece)
    except zstandard.ZstdError:
        return None
    if not dobj.eof:
        return None  # ran off the end: a torn frame
    return at - len(dobj.unused_data), b"".join(out)


class BlockReader:
    """Reads a segment through its table (see ``oklog.segment.SegmentReader``)."""

    def __init__(self, path: Path, table: Table, block_size: int = BLOCK_SIZE) -> None:
        self.path = Path(path)
        self.table = table
        self.block_size = block_size  # how ``frames`` cuts a plain file
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self.size = os.fstat(self._fd).st_size
        except BaseException:
            os.close(self._fd)
            raise
        self._dctx = zstandard.ZstdDecompressor() if table.compression == "zstd" else None

    def block(self, i: int) -> bytes:
        """The records of block ``i``; ``CorruptSegment`` if the bytes there
        are not what the table says (damaged since the table was built)."""
        t = self.table
        data = os.pread(self._fd, t.lengths[i], t.offsets[i])
        if self._dctx is not None:
            try:
                # the frame header's content size first: a damaged one could
                # make decompress allocate gigabytes
                if zstandard.frame_content_size(data) != t.raw[i]:
                    raise zstandard.ZstdError(f"frame content size is not {t.raw[i]}")
                data = self._dctx.decompress(data)
            except zstandard.ZstdError as exc:
                raise CorruptSegment(f"{self.path}: block at {t.offsets[i]}: {exc}") from None
        if len(data) != t.raw[i] or not data.endswith(_LF):
            raise CorruptSegment(f"{self.path}: block at {t.offsets[i]}: not the {t.raw[i]} bytes of "
                                 "whole records its table says")
        return data

    def bounds(self) -> tuple[bytes, bytes] | None:
        t = self.table
        return (t.firsts[0], t.lasts[-1]) if len(t) else None

    def blocks(self, lo: bytes = b"", hi: bytes = b"\xff") -> Iterator[bytes]:
        """Blocks of the records whose ULID is in ``[lo, hi]``, in order."""
        return self.select(self.table.span(lo, hi), lo, hi)

    def select(self, blocks: range | list[int], lo: bytes, hi: bytes) -> Iterator[bytes]:
        """The records of ``blocks`` (indexes, ascending) within ``[lo, hi]``."""
        t = self.table
        for i in blocks:
            data = self.block(i)
            if t.firsts[i] < lo or t.lasts[i] > hi:  # an edge block: cut it
                data = clip(data, lo, hi)
            if data:
                yield data

    @property
    def compression(self) -> str:
        return self.table.compression

    def frames(self) -> Iterator[Frame]:
        """Every block of the file from the start, nothing trusted (``frames``)."""
        return frames(self.path, self.block_size)

    def raw_blocks(self) -> Iterator[bytes]:
        for frame in frames(self.path, self.block_size):
            if frame.data is not None:
                yield frame.data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BlockWriter:
    """Writes a segment from a stream of whole records, in blocks.

    Records should come in strictly increasing ULID order (validated by the
    caller); the bytes are written in the order given either way, so a
    stream found out of order can be read back (``frames``) and sorted.
    ``table`` describes what was written (valid for a sorted stream).
    """

    def __init__(
        self,
        path: Path,
        *,
        compression: str = "zstd",
        block_size: int = BLOCK_SIZE,
        durable: bool = True,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}")
        self.path = Path(path)
        self.durable = durable
        self.block_size = block_size
        self.table = Table(compression)
        self._cctx = (zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
                      if compression == "zstd" else None)
        self._file = open(self.path, "xb")
        self._held: list[bytes] = []
        self._held_size = 0
        self.records = 0
        self.size = 0  # bytes on disk
        self.first = b""
        self.last = b""

    def write(self, block: bytes) -> None:
        if not block:
            return
        self._held.append(block)
        self._held_size += len(block)
        if self._held_size >= self.block_size:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        buf = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        pos = 0
        while pos < len(buf):
            end = cut(buf, pos, self.block_size)
            if not final and end - pos < self.block_size and end == len(buf):
                break  # a short tail: wait for more
            self._put(buf[pos:end] if pos or end < len(buf) else buf)
            pos = end
        rest = buf[pos:]
        self._held = [rest] if rest else []
        self._held_size = len(rest)

    def _put(self, block: bytes) -> None:
        lo, hi = first_ulid(block), last_ulid(block)
        # min/max: first/last for sorted input, and a valid name even for a
        # stream the caller is going to sort afterwards
        if not self.first or lo < self.first:
            self.first = lo
        if hi > self.last:
            self.last = hi
        data = block if self._cctx is None else self._cctx.compress(block)
        self._file.write(data)
        self.table.add(self.size, len(data), block, lo, hi)
        self.records += self.table.records[-1]
        self.size += len(data)

    def finish(self) -> SegmentName | None:
        """Write what is held, fsync (if durable) and close; the segment's
        name, or None (and no file) when nothing was written."""
        if self._held:
            self._emit(final=True)
        f = self._file
        f.flush()
        if self.durable:
            os.fsync(f.fileno())
        f.close()
        if not self.records:
            self.path.unlink(missing_ok=True)
            return None
        # an unsorted stream (the caller sorts it next) still gets a valid name
        return SegmentName(min(self.first, self.last), max(self.first, self.last))

    def abort(self) -> None:
        """Give up: close and remove the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)
