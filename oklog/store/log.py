"""The store file layer: ``FROM-TO.flushed`` segment files and their index.

Theory of operation: a replicate upload is streamed into ``ID.active`` while
every block is validated (a malformed body leaves nothing behind); if the
records did not arrive strictly sorted they are sorted and de-duplicated
once, then the file is fsynced and renamed ``FROMULID-TOULID.flushed``.  Should
a file of that exact name exist already (the same range replicated twice),
the two are merged into their union first, so nothing is ever overwritten.
The in-memory interval index maps ``[FROM, TO]`` to files and is rebuilt
from file names at start; there is no other metadata to lose.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import trio

from .. import metrics
from ..errors import CorruptSegment
from ..fsutil import fsync_path, lock_directory
from ..record import validate_block
from ..ulid import ULID_LEN, Stamper
from .index import IntervalIndex, SegmentName
from ..blocks import aiter_blocks
from .merge import is_strictly_sorted, merge_records, sort_records

log = logging.getLogger("oklog.store")

WRITE_CHUNK = 1 << 20


@dataclass(frozen=True)
class Segment:
    """One flushed store segment file."""

    name: SegmentName
    path: Path
    size: int


class StoreLog:
    """The segment files of one store node plus their interval index."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path / "tmp"
        self.index: IntervalIndex[Segment] = IntervalIndex()
        self._ids = Stamper()
        self._finalize = trio.Lock()
        self._lock_fd: int | None = None

    def open(self) -> None:
        self._lock_fd = lock_directory(self.path)
        self.tmp.mkdir(exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink()
        found: list[tuple[SegmentName, Segment]] = []
        for entry in sorted(self.path.iterdir()):
            if entry.suffix == ".active":
                entry.unlink()  # an upload that never finished; its sender retries
                continue
            if entry.suffix not in (".flushed", ".reading"):
                continue
            try:
                name, state = SegmentName.parse(entry.name)
            except CorruptSegment:
                log.warning("event=ignored_file path=%s", entry)
                continue
            if state == "reading":
                target = self.path / name.filename("flushed")
                os.rename(entry, target)
                entry = target
            found.append((name, Segment(name, entry, entry.stat().st_size)))
        self.index.update(found)  # bulk build: ~5x faster than one add at a time
        log.info("event=store_opened path=%s segments=%d", self.path, len(self.index))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def tmp_path(self, suffix: str) -> Path:
        return self.tmp / f"{self._ids.one().decode()}{suffix}"

    # -- writing -----------------------------------------------------------------

    async def write_segment(self, chunks: AsyncIterator[bytes]) -> Segment | None:
        """Store an uploaded body as a new segment; None when it held no records.

        Raises ``CorruptSegment`` (and writes nothing) on any malformed line.
        """
        path = self.path / f"{self._ids.one().decode()}.active"
        first = last = b""
        ordered = True
        records = 0
        try:
            with open(path, "xb") as f:
                async for block in aiter_blocks(chunks, final_tail="error"):
                    validate_block(block)
                    if ordered:
                        ordered = (block[:ULID_LEN] > last) and is_strictly_sorted(block)
                    if not first:
                        first = block[:ULID_LEN]
                    last = block[block.rfind(b"\n", 0, len(block) - 1) + 1 :][:ULID_LEN]
                    records += block.count(b"\n")
                    f.write(block)
                    await trio.lowlevel.checkpoint()
            if not records:
                path.unlink()
                return None
            if not ordered:
                first, last = await trio.to_thread.run_sync(_sort_file, path)
            segment = await self._install(path, SegmentName(first, last))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        metrics.replicate_segments.inc()
        metrics.replicate_records.inc(records)
        return segment

    async def install_file(self, path: Path, name: SegmentName) -> Segment:
        """Adopt an already sorted, validated file (e.g. a compaction output)."""
        return await self._install(path, name)

    async def _install(self, path: Path, name: SegmentName) -> Segment:
        async with self._finalize:
            target = self.path / name.filename("flushed")
            existing = [s for _, s in self.index.query(name.lo, name.hi) if s.name == name]
            if existing:
                await trio.to_thread.run_sync(_union_into, path, target)
                for old in existing:
                    self.index.remove(old.name, old)
            await trio.to_thread.run_sync(_sync_and_rename, path, target)
            segment = Segment(name, target, target.stat().st_size)
            self.index.add(name, segment)
            return segment

    # -- reading -----------------------------------------------------------------

    def overlapping(self, lo: bytes, hi: bytes) -> list[Segment]:
        return [segment for _, segment in self.index.query(lo, hi)]

    def overlapping_groups(self, lo: bytes, hi: bytes) -> list[list[Segment]]:
        """Segments overlapping ``[lo, hi]``, grouped where they overlap each
        other within that range (those need a k-way merge when read)."""
        return [[segment for _, segment in group] for group in self.index.overlapping_groups(lo, hi)]

    def stats(self) -> dict[str, int]:
        segments = [s for _, s in self.index]
        return {"segments": len(segments), "bytes": sum(s.size for s in segments)}


def map_file(path: Path) -> mmap.mmap | bytes:
    """Read-only map of a segment (empty files cannot be mapped)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def iter_file_blocks(path: Path, size: int = WRITE_CHUNK) -> Iterator[bytes]:
    """Whole-line blocks of a sorted segment file."""
    buf = map_file(path)
    pos, end = 0, len(buf)
    while pos < end:
        cut = buf.rfind(b"\n", pos, min(pos + size, end))
        if cut < 0:
            cut = buf.find(b"\n", pos)
            if cut < 0:
                cut = end - 1
        yield buf[pos : cut + 1]
        pos = cut + 1


def _sort_file(path: Path) -> tuple[bytes, bytes]:
    data = sort_records(path.read_bytes())
    with open(path, "wb") as f:
        f.write(data)
    last = data[data.rfind(b"\n", 0, len(data) - 1) + 1 :]
    return data[:ULID_LEN], last[:ULID_LEN]


def _union_into(path: Path, existing: Path) -> None:
    """Merge ``existing`` into ``path`` (both sorted, the stored copy wins): no record is dropped."""
    merged = path.with_suffix(".union")
    with open(merged, "wb") as out:
        for block in merge_records([iter_file_blocks(existing), iter_file_blocks(path)], trusted_unique=True):
            out.write(block)
    os.replace(merged, path)


def _sync_and_rename(path: Path, target: Path) -> None:
    fsync_path(path)
    os.replace(path, target)
    fsync_path(target.parent)
