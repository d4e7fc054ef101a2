"""Finding records by ULID inside a sorted buffer, without splitting it.

A *buffer* is anything with ``find``/``rfind``/slicing (``bytes``, an
``mmap``) holding records ``ULID SP TOPIC SP PAYLOAD LF`` sorted by ULID.
The ULID is the first 26 bytes of a line, so a line boundary at a given
ULID is a binary search over byte offsets that snaps each probe back to
the start of its line: O(log n) ``rfind``/``find`` calls, about 10 µs,
whatever the buffer's size.  The merge, the scatter-gather and the segment
readers all use these; none splits a block into lines to find a boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from mmap import mmap
from operator import itemgetter
from typing import Union

from oklog.ulid import ULID_LEN

__all__ = ["Buffer", "bisect", "first_ulid", "last_ulid", "line_range", "line_slices", "ulid_of"]

Buffer = Union[bytes, bytearray, mmap]

_LF = b"\n"

#: The ULID of one line (a C-level callable: ``line[0:26]``).
ulid_of: Callable[[bytes], bytes] = itemgetter(slice(0, ULID_LEN))


def first_ulid(block: bytes) -> bytes:
    """The ULID of the first line of a block."""
    return block[:ULID_LEN]


def last_ulid(block: bytes) -> bytes:
    """The ULID of the last line of a non-empty, LF-terminated block."""
    start = block.rfind(_LF, 0, len(block) - 1) + 1
    return block[start : start + ULID_LEN]


def line_range(buf: Buffer, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """``[start, end)`` clipped to the buffer and snapped to whole lines.

    ``start`` moves forward to a line start; ``end`` moves back to just after
    the last LF before it (so a trailing partial line is left out).
    """
    size = len(buf)
    end = size if end is None else max(0, min(end, size))
    start = max(0, min(start, end))
    if start > 0 and buf[start - 1] != 10:
        nl = buf.find(_LF, start, end)
        start = end if nl < 0 else nl + 1
    end = buf.rfind(_LF, start, end) + 1 or start
    return start, end


def bisect(
    buf: Buffer,
    ulid: bytes,
    start: int = 0,
    end: int | None = None,
    *,
    after: bool = False,
) -> int:
    """Offset of the first line in ``[start, end)`` whose ULID is >= ``ulid``.

    With ``after=True``: the first whose ULID is > ``ulid`` (the exclusive
    end of an inclusive upper bound).  ``end`` (or ``len(buf)``) when there
    is none.  ``start`` and ``end`` must be line starts (or 0 / the end).
    """
    key = ulid + b"\xff" if after else ulid  # "ULID " < "ULID\xff" < the next ULID
    klen = len(key)
    lo = start
    hi = len(buf) if end is None else end
    rfind, find = buf.rfind, buf.find
    while lo < hi:
        mid = (lo + hi) // 2
        line = rfind(_LF, lo, mid) + 1 or lo
        if buf[line : line + klen] < key:
            nl = find(_LF, line, hi)
            lo = hi if nl < 0 else nl + 1
        else:
            hi = line
    return lo


def line_slices(buf: Buffer, start: int, end: int, size: int) -> Iterator[bytes]:
    """``buf[start:end]`` (whole lines) as ``bytes`` of at most ``size``
    bytes cut at LFs (a single longer line is one slice of its own).

    One copy per slice, so ``bytes`` methods work on an ``mmap`` too.
    """
    pos = start
    while pos < end:
        cut = pos + size
        if cut >= end:
            yield bytes(buf[pos:end])
            return
        nl = buf.rfind(_LF, pos, cut)
        if nl < 0:  # one line longer than size
            nl = buf.find(_LF, cut, end)
            if nl < 0:
                nl = end - 1
        yield bytes(buf[pos : nl + 1])
        pos = nl + 1
