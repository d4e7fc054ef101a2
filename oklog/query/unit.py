"""One unit of scan work: some blocks of one segment file, and a query.

A ``Unit`` is a plain, picklable value so that it can run anywhere: in a
worker thread of the node, or in a scan worker process (``oklog.query.workers``).
``run_unit`` opens the file, reads and decompresses each block, cuts the
first and last block of a time range by binary search, and greps them
with the query's matcher.  It returns the matching records, whole lines in
ULID order; memory is bounded by the unit's size, which the planner keeps
to a few blocks.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import zstandard

from oklog.errors import CorruptSegment, SegmentChanged
from oklog.query.scan import Matcher
from oklog.records.format import MAX_LINE
from oklog.segment.blocked import clip

__all__ = ["SPILL", "Spilled", "Unit", "collect", "run_unit", "run_unit_spilled"]

#: A result left in a slot file: (its path, its length).
Spilled = tuple[str, int]

#: A worker process hands back a result this big or bigger through a file
#: in shared memory (tmpfs) rather than its pipe: pickled through the pipe,
#: results arrived at ~0.4 GB/s, which made a process slower than a thread.
#: The file is a *slot* the scanner hands out and reuses: written from its
#: start over the previous result (tmpfs pages already there), the result's
#: length handed back with its path.
SPILL = 256 << 10


@dataclass(frozen=True)
class Unit:
    path: str
    compression: str  # "zstd" or "none"
    # (offset, length, cut): cut is True for a block that reaches outside [lo, hi]
    blocks: tuple[tuple[int, int, bool], ...]
    lo: bytes
    hi: bytes
    q: bytes
    regex: bool
    topic: bytes | None
    size: int = -1  # the file's size when planned (-1: do not check)
    ino: int = 0  # the file's inode when planned (0: do not check)


@functools.lru_cache(maxsize=16)  # each RE2 program may hold up to ~8 MiB
def _matcher(q: bytes, regex: bool, topic: bytes | None) -> Matcher:
    return Matcher(q, regex, topic)


_local = threading.local()  # a ZstdDecompressor is not thread-safe: one per thread


#: No block of ours holds more (a block is at most one record longer than
#: -store.block-size, a record at most MAX_LINE): a frame that claims more
#: is damaged, and decompress would allocate what it claims.
_MAX_RAW = 2 * MAX_LINE


def _decompress(data: bytes) -> bytes:
    if zstandard.frame_content_size(data) > _MAX_RAW:
        raise ValueError("implausible frame content size")
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx.decompress(data)


def run_unit(unit: Unit) -> list[bytes]:
    """The records of ``unit``'s blocks within ``[lo, hi]`` that match, as
    whole-line pieces in order (small pieces joined: see ``_coalesce``)."""
    return _coalesce(_matches(unit))


def _matches(unit: Unit) -> list[bytes]:
    """``run_unit``'s pieces as the matcher made them (many small ones
    for a term on some of the lines)."""
    matcher = _matcher(unit.q, unit.regex, unit.topic)
    fd = _open_planned(unit)
    try:
        datas = []
        for offset, length, cut in unit.blocks:
            data = os.pread(fd, length, offset)
            try:
                if unit.compression == "zstd":
                    data = _decompress(data)
                if len(data) < 1 or data[-1] != 10:
                    raise ValueError("not whole records")
            except (zstandard.ZstdError, ValueError) as exc:  # damaged since its sidecar was written
                raise CorruptSegment(f"{unit.path}: block at {offset}: {exc}") from None
            if cut:
                data = clip(data, unit.lo, unit.hi)
            if data:
                datas.append(data)
    finally:
        os.close(fd)
    return matcher.grep_parts(datas)


#: The states a planned segment file may have moved to since (a compaction
#: job claimed it, gave it back, or retired it: the query holds a lease, so
#: the file itself is still there, see ``oklog.store.log.Lease``).
_STATES = (".flushed", ".reading", ".trashed")


def _open_planned(unit: Unit) -> int:
    """A descriptor of the file ``unit`` was planned on: at its path, or
    under the name of another state it has moved to meanwhile (found by
    its inode).  ``SegmentChanged`` if another file took its name (a
    same-named upload's union: the planned offsets mean nothing there),
    ``FileNotFoundError`` if it is gone."""
    changed = False
    for path in _candidates(unit.path):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        st = os.fstat(fd)
        if (unit.ino and st.st_ino != unit.ino) or (unit.size >= 0 and st.st_size != unit.size):
            os.close(fd)
            changed = True
            continue
        return fd
    if changed:
        raise SegmentChanged(f"{unit.path} changed since the query was planned")
    raise FileNotFoundError(unit.path)


def _candidates(path: str) -> Iterator[str]:
    """``path`` first, then the same segment in each other state (and
    ``NAME.trashed.N``: a name trashed twice); lazily: the common case
    opens ``path`` and looks no further."""
    yield path
    base, dot, suffix = path.rpartition(".")
    if not dot or "." + suffix not in _STATES:
        return
    for state in _STATES:
        if state != "." + suffix:
            yield base + state
    directory = os.path.dirname(path) or "."
    stem = os.path.basename(base) + ".trashed."
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith(stem))
    except OSError:
        return
    for n in names:
        yield os.path.join(directory, n)


def _coalesce(parts: list[bytes], small: int = 64 << 10) -> list[bytes]:
    """Join runs of small pieces (each would be an HTTP chunk of its own);
    big ones (whole blocks) pass as they are, uncopied."""
    out: list[bytes] = []
    held: list[bytes] = []
    for part in parts:
        if len(part) >= small:
            if held:
                out.append(b"".join(held))
                held = []
            out.append(part)
        else:
            held.append(part)
    if held:
        out.append(held[0] if len(held) == 1 else b"".join(held))
    return out


def run_unit_spilled(unit: Unit, slot: str) -> bytes | Spilled:
    """``run_unit`` in a worker process, joined: a big result is written
    into the slot file ``slot`` (from its start, over whatever an earlier
    result left there) and ``(slot, length)`` returned instead (see
    ``collect``).  The pieces go to the file as they are (``writev``), never
    joined first: for a term on most lines that saved two copies of the
    answer."""
    parts = _matches(unit)
    size = sum(map(len, parts))
    if size < SPILL:
        return b"".join(parts)
    fd = os.open(slot, os.O_WRONLY)
    try:
        _write_all(fd, parts)
    finally:
        os.close(fd)
    return slot, size


_IOV_MAX = 1024  # pieces per writev (Linux's limit)


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write every piece, in order, with as few system calls as may be."""
    i = 0
    while i < len(parts):
        batch = parts[i : i + _IOV_MAX]
        written = os.writev(fd, batch)
        for piece in batch:  # skip the whole pieces written
            if written < len(piece):
                break
            written -= len(piece)
            i += 1
        if written:  # a piece written in part: the rest of it on its own
            parts[i] = parts[i][written:]


def collect(result: bytes | Spilled | list[bytes]) -> bytes | list[bytes]:
    """The records of a ``run_unit`` (pieces) or ``run_unit_spilled``
    result (read from its slot, which the scanner then reuses)."""
    if isinstance(result, (bytes, list)):
        return result
    path, size = result
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, size, 0)
        while len(data) < size:  # Linux reads a tmpfs file whole; be sure anyway
            more = os.pread(fd, size - len(data), len(data))
            if not more:
                raise OSError(f"{path}: {len(data)} of {size} result bytes")
            data += more
    finally:
        os.close(fd)
    return data
