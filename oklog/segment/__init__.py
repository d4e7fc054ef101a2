"""Store segment files: the one seam between the on-disk format and its users.

Query, merge, consume and replicate never touch a segment file's bytes
directly: they open a ``SegmentReader`` (time bounds, the blocks of a ULID
range, the raw content for verification) and write through a
``SegmentWriter`` (fed a sorted stream of blocks).  ``open_segment`` and
``create_segment`` pick the implementation: the block format of
``oklog.segment.blocked`` (zstd frames or plain records, with a sidecar
table from ``oklog.segment.table``), which also reads the plain files of
earlier versions.

A *block* is ``bytes`` of one or more whole records, each ending in LF.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

from oklog.segment.blocked import BLOCK_SIZE, BlockReader, BlockWriter, Frame, frames, sniff
from oklog.records.search import first_ulid, last_ulid, line_range
from oklog.segment import ngram, topics
from oklog.segment.name import SegmentName
from oklog.segment.table import Table, load_sidecar
from oklog.segment.topics import TopicIndex

__all__ = [
    "SegmentName",
    "SegmentReader",
    "SegmentWriter",
    "Table",
    "derive_table",
    "index_segment",
    "create_segment",
    "open_segment",
    "write_all",
    "write_segment",
]


class SegmentReader(Protocol):
    """One segment file, open for reading."""

    path: Path
    size: int  # bytes on disk
    table: Table

    def bounds(self) -> tuple[bytes, bytes] | None:
        """First and last ULID by content (None when it holds no record)."""
        ...

    def blocks(self, lo: bytes = b"", hi: bytes = b"\xff") -> Iterator[bytes]:
        """Blocks of the records whose ULID is in ``[lo, hi]``, in order."""
        ...

    def select(self, blocks: range | list[int], lo: bytes, hi: bytes) -> Iterator[bytes]:
        """The records of the table's ``blocks`` (ascending) within ``[lo, hi]``."""
        ...

    @property
    def compression(self) -> str: ...

    def frames(self) -> Iterator[Frame]:
        """Every block of the file, from the start, nothing trusted."""
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
    table: Table

    def write(self, block: bytes) -> None:
        """Append records; ULIDs must continue strictly increasing."""
        ...

    def finish(self) -> SegmentName | None:
        """Make the file durable; its name, or None (no file) if empty."""
        ...

    def abort(self) -> None:
        """Close and remove the file."""
        ...


def derive_table(path: Path, block_size: int = BLOCK_SIZE) -> Table:
    """A table for a segment file without a sidecar, from its content (no
    index; blocks that cannot be decoded are left out)."""
    table = Table(sniff(path))
    for frame in frames(path, block_size):
        if frame.data is None:
            continue
        data, length = frame.data, frame.length
        _, end = line_range(data)
        if end < len(data):  # a torn tail: whole lines only (a plain file's can be cut off)
            if table.compression != "none":
                continue
            data, length = data[:end], end
        if end:
            last = data.rfind(b"\n", 0, end - 1) + 1
            table.add(frame.offset, length, data, first_ulid(data), last_ulid(data[last:end]))
    return table


def index_segment(path: str | Path, table: Table) -> tuple[list[int], bytes, TopicIndex | None]:
    """The n-gram and topic indexes of a sound segment, as (blocks not
    indexed, the serialized bitmap, the topic index): what runs in a scan
    worker process, reading and decompressing every block."""
    builder, per_block = ngram.IndexBuilder(), []
    with BlockReader(Path(path), table) as reader:
        for block in reader.select(range(len(table)), b"", b"\xff"):
            builder.add(block)
            per_block.append(topics.block_topics(block))
    index = builder.finish()
    return index.wild, index.bitmap.serialize(), topics.build(per_block)


def open_segment(path: Path, table: Table | None = None) -> BlockReader:
    """A reader for the segment file at ``path``: through ``table``, or its
    sidecar, or (when it has neither) a table read off its content."""
    if table is None:
        table = load_sidecar(path) or derive_table(path)
    return BlockReader(path, table)


def create_segment(
    path: Path, *, compression: str = "zstd", block_size: int = BLOCK_SIZE, durable: bool = True
) -> BlockWriter:
    """A writer for a new segment file at ``path`` (which must not exist)."""
    return BlockWriter(path, compression=compression, block_size=block_size, durable=durable)


def write_segment(path: Path, blocks: Iterable[bytes], **options: object) -> SegmentName | None:
    """Write a sorted stream of blocks as a segment; its name, or None."""
    return write_all(create_segment(path, **options), blocks)  # type: ignore[arg-type]


def write_all(writer: BlockWriter, blocks: Iterable[bytes]) -> SegmentName | None:
    """Feed ``writer`` every block and finish it (or remove its file on any
    error); the segment's name, or None when it holds no record."""
    try:
        for block in blocks:
            writer.write(block)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
