"""Store segment files: the one seam between the on-disk format and its users.

Query, merge, consume and replicate never touch a segment file's bytes
directly: they open a ``SegmentReader`` (time bounds, the blocks of a ULID
range, the raw content for verification) and write through a
``SegmentWriter`` (fed a sorted stream of blocks).  ``open_segment`` and
``create_segment`` pick the implementation; plain files
(``oklog.segment.plain``) are the first one, so a new format (compressed
blocks with a sidecar index) changes this package and nothing else.

A *block* is ``bytes`` of one or more whole records, each ending in LF.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

from oklog.segment.name import SegmentName
from oklog.segment.plain import PlainReader, PlainWriter

__all__ = [
    "SegmentName",
    "SegmentReader",
    "SegmentWriter",
    "create_segment",
    "open_segment",
    "write_segment",
]


class SegmentReader(Protocol):
    """One segment file, open for reading."""

    path: Path
    size: int  # bytes on disk

    def bounds(self) -> tuple[bytes, bytes] | None:
        """First and last ULID by content (None when it holds no record)."""
        ...

    def blocks(self, lo: bytes = b"", hi: bytes = b"\xff") -> Iterator[bytes]:
        """Blocks of the records whose ULID is in ``[lo, hi]``, in order."""
        ...

    def raw_blocks(self) -> Iterator[bytes]:
        """Everything the file holds, in file order, nothing checked (what
        verification and salvage read); a torn tail comes last, without LF."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> "SegmentReader": ...

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class SegmentWriter(Protocol):
    """One new segment file, written from a sorted stream of blocks."""

    path: Path
    records: int
    size: int

    def write(self, block: bytes) -> None:
        """Append records; ULIDs must continue strictly increasing."""
        ...

    def finish(self) -> SegmentName | None:
        """Make the file durable; its name, or None (no file) if empty."""
        ...

    def abort(self) -> None:
        """Close and remove the file."""
        ...


def open_segment(path: Path) -> SegmentReader:
    """A reader for the segment file at ``path``."""
    return PlainReader(path)


def create_segment(path: Path) -> SegmentWriter:
    """A writer for a new segment file at ``path`` (which must not exist)."""
    return PlainWriter(path)


def write_segment(path: Path, blocks: Iterable[bytes]) -> SegmentName | None:
    """Write a sorted stream of blocks as a segment; its name, or None."""
    writer = create_segment(path)
    try:
        for block in blocks:
            writer.write(block)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
