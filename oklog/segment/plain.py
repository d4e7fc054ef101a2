"""Plain record files: records one per LF, nothing else.

The format of ingest segments, of the consumer's spools and composites,
and the wire format of ``/store/replicate`` bodies and query answers.
(Store segments are ``oklog.segment.blocked``, which reads the plain store
segments of earlier versions too.)  A reader maps the file, finds a ULID range by binary search
(``oklog.records.search``) and copies out blocks of about ``READ_BLOCK``
bytes cut at line ends.  Pages it has read are dropped from the process
right behind it (``madvise(MADV_DONTNEED)``; they stay in the page cache):
reading whole files through a mapping otherwise keeps every page resident
(measured: the node's peak RSS doubled), and ``pread`` instead was 15-20%
slower on a scan.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from oklog.fsutil import drop_pages
from oklog.records.search import bisect, first_ulid, last_ulid, line_range
from oklog.segment.blocked import Frame
from oklog.segment.name import SegmentName

__all__ = ["READ_BLOCK", "PlainReader", "PlainWriter"]

READ_BLOCK = 1 << 20
_LF = b"\n"


class PlainReader:
    """Reads one plain segment file (see ``oklog.segment.SegmentReader``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self.size = os.fstat(self._fd).st_size
            self._buf: mmap.mmap | bytes = (
                mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if self.size else b"")
        except BaseException:
            os.close(self._fd)
            raise

    def bounds(self) -> tuple[bytes, bytes] | None:
        """First and last ULID of the whole lines (None when there is none)."""
        buf = self._buf
        _, end = line_range(buf)
        if end == 0:
            return None
        last = buf.rfind(_LF, 0, end - 1) + 1
        return first_ulid(bytes(buf[:27])), last_ulid(bytes(buf[last:end]))

    def blocks(self, lo: bytes = b"", hi: bytes = b"\xff", size: int = READ_BLOCK) -> Iterator[bytes]:
        """Blocks of the whole lines whose ULID is in ``[lo, hi]``, in order."""
        buf = self._buf
        _, end = line_range(buf)
        start = bisect(buf, lo, 0, end) if lo else 0
        stop = bisect(buf, hi, start, end, after=True)
        return self.span(start, stop, size)

    def raw_blocks(self, size: int = READ_BLOCK) -> Iterator[bytes]:
        """The whole file, cut at line ends; bytes after the last LF (a torn
        tail) come last, as a block without LF."""
        _, end = line_range(self._buf)
        yield from self.span(0, end, size)
        if end < self.size:
            yield bytes(self._buf[end:])

    def frames(self) -> Iterator[Frame]:
        """``raw_blocks`` with where each one lies."""
        pos = 0
        for block in self.raw_blocks():
            yield Frame(pos, len(block), block)
            pos += len(block)

    @property
    def compression(self) -> str:
        return "none"

    def span(self, start: int, stop: int, size: int = READ_BLOCK) -> Iterator[bytes]:
        """Whole lines ``[start, stop)`` (both line boundaries) as ``bytes``
        blocks of at most ``size`` bytes cut after an LF (a longer line is a
        block of its own).  The pages read are dropped from this process
        behind the reader (``MADV_DONTNEED``; the page cache keeps them)."""
        buf, pos = self._buf, start
        done = pos - pos % mmap.PAGESIZE  # pages below this are dropped
        while pos < stop:
            end = pos + size
            if end >= stop:
                end = stop
            else:
                nl = buf.rfind(_LF, pos, end)
                if nl < 0:  # one line longer than size
                    nl = buf.find(_LF, end, stop)
                end = stop if nl < 0 else nl + 1
            yield buf[pos:end]
            pos = end
            done = drop_pages(buf, done, pos)

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()
        self._buf = b""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PlainReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PlainWriter:
    """Writes one plain segment file from a sorted stream of blocks.

    The caller hands over blocks of whole records in strictly increasing
    ULID order (validated upstream: the writer only keeps the books).  The
    bytes are written in the order given either way, so a stream found out
    of order can be read back (``raw_blocks``) and sorted.
    """

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable  # fsync on finish (a temporary file needs none)
        self._file = open(self.path, "xb")
        self.records = 0
        self.size = 0
        self.first = b""
        self.last = b""

    def write(self, block: bytes) -> None:
        if not block:
            return
        lo, hi = first_ulid(block), last_ulid(block)
        # min/max: the same as first/last for sorted input, and a valid
        # name even for a stream the caller is going to sort afterwards
        if not self.first or lo < self.first:
            self.first = lo
        if hi > self.last:
            self.last = hi
        self.records += block.count(_LF)
        self.size += len(block)
        self._file.write(block)

    def finish(self) -> SegmentName | None:
        """fsync (if durable) and close; the segment's name, or None (and no
        file) when nothing was written."""
        f = self._file
        f.flush()
        if self.durable:
            os.fsync(f.fileno())
        f.close()
        if not self.records:
            self.path.unlink(missing_ok=True)
            return None
        return SegmentName(self.first, self.last)

    def abort(self) -> None:
        """Give up: close and remove the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)
