"""Is a segment file well formed, and if not, what can be saved of it.

A store segment must hold whole records (every line ``ULID SP TOPIC SP
PAYLOAD LF``) in strictly increasing ULID order, and carry the name of its
first and last ULID: the index plans queries from names, and every read
path assumes sorted, duplicate-free segments.  A file that breaks any of
this (a garbage line from disk corruption or a hand edit, lines out of
order, a tail torn by a crash, a wrong name) must never be read as it is:
a query would silently return a prefix, or records out of ULID order.

``check`` reads a segment once and says what is wrong (``Verdict``);
``salvage`` writes every well-formed record of it, sorted, each ULID once,
as a proper new segment.  Both are IO through the segment reader/writer
seam only, and run in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from oklog.records.format import is_valid_block, salvage as salvage_block
from oklog.records.merge import is_strictly_sorted
from oklog.records.search import first_ulid, last_ulid
from oklog.segment import SegmentReader, SegmentWriter
from oklog.segment.name import SegmentName
from oklog.segment.sort import sort_blocks

__all__ = ["Verdict", "check", "good_blocks", "salvage"]

_LF = b"\n"


@dataclass
class Verdict:
    """What ``check`` found in one segment file."""

    records: int = 0  # well-formed records
    malformed: int = 0  # lines that are not records
    too_long: int = 0  # records over the ``max_line`` asked for (left out)
    torn: bool = False  # bytes after the last LF (a partial record)
    unsorted: bool = False  # ULIDs not strictly increasing (or a ULID twice)
    first: bytes = b""  # first / last ULID (meaningful when sorted)
    last: bytes = b""

    def problems(self, name: SegmentName) -> list[str]:
        """Everything wrong with a segment of this name; empty when sound."""
        out = []
        if self.malformed:
            out.append("malformed")
        if self.torn:
            out.append("torn")
        if self.unsorted:
            out.append("unsorted")
        if not self.records:
            out.append("empty")
        elif not self.unsorted and (self.first, self.last) != (name.lo, name.hi):
            out.append("misnamed")
        return out


def good_blocks(reader: SegmentReader, verdict: Verdict, max_line: int | None = None) -> Iterator[bytes]:
    """The well-formed records of ``reader``, in file order, counting in
    ``verdict`` what was left out and whether the order holds.  With
    ``max_line``, a longer record is left out too (counted as too long)."""
    prev = b""
    for block in reader.raw_blocks():
        if not block.endswith(_LF):  # raw_blocks hands out a torn tail on its own
            verdict.torn = True
            continue
        if max_line is not None and len(block) > max_line + 1 and block.find(_LF) == len(block) - 1:
            verdict.too_long += 1  # a line longer than a block: a block of its own
            continue
        if not is_valid_block(block):
            block, dropped = salvage_block(block)
            verdict.malformed += dropped
            if not block:
                continue
        lo, hi = first_ulid(block), last_ulid(block)
        if not verdict.unsorted and (lo <= prev or not is_strictly_sorted(block)):
            verdict.unsorted = True
        verdict.records += block.count(_LF)
        verdict.first = min(verdict.first, lo) if verdict.first else lo
        verdict.last = max(verdict.last, hi)
        prev = max(prev, hi)
        yield block


def check(reader: SegmentReader) -> Verdict:
    """Read the whole segment once and report on it (nothing is written)."""
    verdict = Verdict()
    for _ in good_blocks(reader, verdict):
        pass
    return verdict


def salvage(reader: SegmentReader, writer: SegmentWriter, scratch: Path) -> Verdict:
    """Write every well-formed record of ``reader`` into ``writer``, sorted
    by ULID, each ULID once (the first copy in file order wins).

    ``scratch`` is a temporary file for the external sort, used only when
    the records are out of order.  The writer is finished by the caller.
    """
    verdict = check(reader)
    blocks = good_blocks(reader, Verdict())
    if verdict.unsorted:
        blocks = sort_blocks(blocks, scratch)
    for block in blocks:
        writer.write(block)
    return verdict
