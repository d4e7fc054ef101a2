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
from typing import Protocol
from pathlib import Path

from oklog.records.format import is_valid_block, salvage as salvage_block
from oklog.records.merge import is_strictly_sorted
from oklog.records.search import first_ulid, last_ulid
from oklog.segment import SegmentReader, SegmentWriter, ngram, topics
from oklog.segment.blocked import Frame
from oklog.segment.name import SegmentName
from oklog.segment.table import Table
from oklog.segment.sort import sort_blocks

__all__ = ["Verdict", "check", "good_blocks", "inspect", "salvage"]

_LF = b"\n"


@dataclass
class Verdict:
    """What ``check`` found in one segment file."""

    records: int = 0  # well-formed records
    malformed: int = 0  # lines that are not records
    too_long: int = 0  # records over the ``max_line`` asked for (left out)
    torn: bool = False  # bytes after the last LF (a partial record)
    unreadable: int = 0  # stretches of the file that could not be decoded
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
        if self.unreadable:
            out.append("unreadable")
        if self.unsorted:
            out.append("unsorted")
        if not self.records:
            out.append("empty")
        elif not self.unsorted and (self.first, self.last) != (name.lo, name.hi):
            out.append("misnamed")
        return out


class Framed(Protocol):
    """Anything whose blocks can be walked from the start (segment or spool)."""

    def frames(self) -> Iterator[Frame]: ...


def good_blocks(reader: Framed, verdict: Verdict, max_line: int | None = None) -> Iterator[bytes]:
    """The well-formed records of ``reader``, in file order, counting in
    ``verdict`` what was left out and whether the order holds.  With
    ``max_line``, a longer record is left out too (counted as too long)."""
    for frame in reader.frames():
        yield from _good(frame, verdict, max_line)


def _good(frame: Frame, verdict: Verdict, max_line: int | None) -> Iterator[bytes]:
    block = frame.data
    if block is None:
        verdict.unreadable += 1
        return
    if not block.endswith(_LF):  # a torn tail: only the end of a file has one
        verdict.torn = True
        block = block[: block.rfind(_LF) + 1]
        if not block:
            return
    if max_line is not None and len(block) > max_line + 1 and block.find(_LF) == len(block) - 1:
        verdict.too_long += 1  # a line longer than a block: a block of its own
        return
    if not is_valid_block(block):
        block, dropped = salvage_block(block)
        verdict.malformed += dropped
        if not block:
            return
    lo, hi = first_ulid(block), last_ulid(block)
    if not verdict.unsorted and (lo <= verdict.last or not is_strictly_sorted(block)):
        verdict.unsorted = True
    verdict.records += block.count(_LF)
    verdict.first = min(verdict.first, lo) if verdict.first else lo
    verdict.last = max(verdict.last, hi)
    yield block


def inspect(reader: SegmentReader) -> tuple[Verdict, Table | None]:
    """Read the whole segment once: what is wrong with it, and when nothing
    is, its table with the n-gram and topic indexes (what its sidecar holds)."""
    verdict = Verdict()
    table = Table(reader.compression)
    index = ngram.IndexBuilder()
    per_block = []
    for frame in reader.frames():
        # a sound frame yields its data as it is: then this entry is exact
        for block in _good(frame, verdict, None):
            table.add(frame.offset, frame.length, block, first_ulid(block), last_ulid(block))
            index.add(block)
            per_block.append(topics.block_topics(block))
    damaged = verdict.malformed or verdict.torn or verdict.unreadable or verdict.unsorted
    if damaged or not verdict.records:
        return verdict, None
    table.index = index.finish()
    table.topics = topics.build(per_block)
    return verdict, table


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
