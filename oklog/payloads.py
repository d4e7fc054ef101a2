"""Record headers cut off a block of lines in a few vectorised passes.

``oklog query`` prints each record's payload: ``ULID SP TOPIC SP PAYLOAD
LF`` becomes ``PAYLOAD LF`` (``ULID SP PAYLOAD LF`` with ``-ulid``).  Per line that is a regex match and a slice
(~0.6 µs a line, ~0.6 s for a million records).  In the usual answer every
header has the same length (one topic), so ``fixed_width`` does it with
numpy on the whole block instead: find the LFs, check that every line has
a well-formed header of that one length (26 ULID characters ``[0-9A-Z]``,
SP, a topic without SP, SP), and drop those bytes from every line with a
mask.  It returns ``None`` when any line does not fit, and the caller
falls back to the per-line path, whose result is the reference.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fixed_width", "MIN_BLOCK"]

#: Blocks smaller than this are not worth numpy's per-call costs.
MIN_BLOCK = 64 << 10

_np: Any = None


def _numpy() -> Any:
    global _np
    if _np is None:
        import numpy

        _np = numpy
    return _np


def fixed_width(block: bytes, keep_ulid: bool = False) -> bytes | None:
    """``block`` (whole lines, ending in LF) with every line's header
    ``ULID SP TOPIC SP`` removed (``keep_ulid``: only ``TOPIC SP``, leaving
    ``ULID SP PAYLOAD``), when all headers are well-formed and of one
    length; otherwise ``None``."""
    if not block or block[-1] != 10 or len(block) < 28:
        return None
    sp = block.find(b" ", 27, block.find(b"\n"))
    if sp < 0:
        return None
    width = sp + 1  # header bytes of each line, both spaces included
    np = _numpy()
    a = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(a == 10)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    if int((ends - starts).min()) < width:  # a line shorter than the header
        return None
    head = a[starts[:, None] + np.arange(width)]  # every line's header bytes
    ulid = head[:, :26]
    if not bool((((ulid >= 48) & (ulid <= 57)) | ((ulid >= 65) & (ulid <= 90))).all()):
        return None
    if not (bool((head[:, 26] == 32).all()) and bool((head[:, width - 1] == 32).all())):
        return None
    topic = head[:, 27 : width - 1]
    if topic.size and bool(((topic == 32) | (topic == 10)).any()):
        return None
    keep = np.ones(len(a), dtype=bool)
    keep[(starts[:, None] + np.arange(27 if keep_ulid else 0, width)).ravel()] = False
    return bytes(a[keep].tobytes())
