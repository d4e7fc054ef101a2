"""The ingest file layer: segment files on disk, driven by ``IngestBook``.

Files live in one directory, the state is the extension, and every state
change is an atomic ``rename(2)``:  ``ID.active`` → ``ID.flushed`` →
``ID.pending`` → unlinked (or back to ``.flushed``).  A ``LOCK`` file held
with ``flock`` keeps a second process out.  On open, leftover ``.active`` and
``.pending`` files become ``.flushed``: whatever a crashed process had
written is handed to the store tier again (at-least-once; duplicates are
removed at read time by ULID).

A bulk upload (``oklog.ingest.bulk``) writes a segment of its own beside
the active one (``open_bulk`` → ``write`` → ``finish_bulk`` or
``discard_bulk``); ``finish_bulk`` returns an event set when a store node
commits that segment, which is when the uploader gets its ``OK``.

Writes are plain blocking ``write`` calls of whole record blocks (the page
cache absorbs them far faster than the network delivers); ``fsync`` runs in
a worker thread so the event loop keeps serving other connections.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import trio

from .. import metrics
from ..errors import UnknownSegment
from ..fsutil import fsync_path, lock_directory
from ..records.format import salvage
from ..ulid import Stamper, is_ulid
from .segment import IngestBook, State, shown_id

log = logging.getLogger("oklog.ingest")

EXTENSIONS = (".active", ".flushed", ".pending")


class ActiveSegment:
    """The one segment currently being written."""

    def __init__(self, directory: Path, seg_id: str, started: float) -> None:
        self.id = seg_id
        self.path = directory / f"{seg_id}.active"
        self.file = open(self.path, "xb", buffering=0)
        self.size = 0
        self.started = started
        self.torn = False  # a write cut short could not be taken back

    def write(self, block: bytes) -> None:
        """Append ``block`` whole, or raise with the file as it was before
        (a write cut short -- a full disk -- is taken back, so the segment
        never holds part of a record, nor a later record glued to one)."""
        view = memoryview(block)
        try:
            while view:
                n = self.file.write(view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self.file.fileno(), self.size)
                self.file.seek(self.size)
            except OSError:
                self.torn = True
            raise
        self.size += len(block)


class IngestLog:
    """Segment files of one ingester plus the book of their states."""

    def __init__(
        self,
        path: Path,
        *,
        flush_size: int = 16 << 20,
        flush_age: float = 0.5,
        pending_timeout: float = 60.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.path = Path(path)
        self.flush_size = flush_size
        self.flush_age = flush_age
        self.clock = clock
        self.book = IngestBook(pending_timeout)
        self._ids = Stamper()
        self._active: ActiveSegment | None = None
        self._lock_file: int | None = None
        self._flushing = 0
        self._stamped: set[str] = set()  # segments this process wrote (not recovered)
        self.changed = trio.Event()  # set (and replaced) when segments are consumed
        self._commits: dict[str, trio.Event] = {}  # bulk segments whose uploader waits

    # -- open / close -----------------------------------------------------------

    def open(self) -> None:
        self._lock_file = lock_directory(self.path)
        self._recover()

    def _recover(self) -> None:
        for entry in sorted(self.path.iterdir()):
            stem, ext = entry.stem, entry.suffix
            if ext not in EXTENSIONS:
                continue
            if not is_ulid(stem.encode("ascii", "replace")):
                log.warning("event=ignored_file path=%s reason=not_a_segment_id", entry)
                continue
            size = entry.stat().st_size
            if size == 0:
                entry.unlink()
                continue
            if ext == ".active":
                size = _repair(entry)  # the only state a crash can leave torn
                if size == 0:
                    entry.unlink()
                    continue
            if ext != ".flushed":
                os.rename(entry, self.path / f"{stem}.flushed")
                log.info("event=recovered segment=%s from=%s", stem, ext)
            self.book.recovered(stem, size)

    def close(self) -> None:
        """Synchronous last resort: sync and flush the active segment, unlock."""
        if self._active is not None:
            active, self._active = self._active, None
            self._finish(active)
            self.book.flushed(active.id, active.size)
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    # -- writing ----------------------------------------------------------------

    def write(self, block: bytes) -> bool:
        """Append a block of records; True when the segment should be flushed.

        A write that fails (``OSError``: a full disk) leaves the segment as
        it was; the caller may try again later."""
        if self._active is not None and self._active.torn:
            # never append to part of a record: close that segment out as it is
            torn, self._active = self._active, None
            self._finish(torn)
            self.book.flushed(torn.id, torn.size)
            metrics.ingest_segments_flushed.inc()
        if self._active is None:
            seg_id = self._ids.one().decode()
            active = ActiveSegment(self.path, seg_id, self.clock())  # may fail: then nothing changed
            self.book.activate(seg_id)
            self._active = active
            self._stamped.add(seg_id)
        try:
            self._active.write(block)
        except BaseException:
            # a write cut short (disk full) was taken back; if even that
            # failed, part of a record is left: the segment is no longer
            # records by construction (the consumer salvages it)
            if self._active.torn:
                self._stamped.discard(self._active.id)
            raise
        return self._active.size >= self.flush_size

    async def sync(self) -> None:
        """Durable mode: fsync what was written so far before reading more."""
        if self._active is None:
            return  # already flushed, and flushing fsyncs
        fd = os.dup(self._active.file.fileno())
        try:
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)

    async def flush(self) -> None:
        """Close the active segment: fsync, rename to ``.flushed``."""
        active, self._active = self._active, None
        if active is None:
            return
        self._flushing += 1
        try:
            await trio.to_thread.run_sync(self._finish, active, abandon_on_cancel=False)
        finally:
            self._flushing -= 1
        self.book.flushed(active.id, active.size)
        metrics.ingest_segments_flushed.inc()

    def _finish(self, active: ActiveSegment) -> None:
        os.fsync(active.file.fileno())
        active.file.close()
        os.rename(active.path, self.path / f"{active.id}.flushed")
        fsync_path(self.path)

    # -- bulk uploads: one segment each, written beside the active one -----------

    def open_bulk(self) -> ActiveSegment:
        """A new segment for one bulk upload (``ActiveSegment.write`` it)."""
        seg_id = self._ids.one().decode()
        segment = ActiveSegment(self.path, seg_id, self.clock())  # may fail: then nothing changed
        self.book.activate(seg_id)
        self._stamped.add(seg_id)
        return segment

    async def finish_bulk(self, segment: ActiveSegment) -> trio.Event:
        """Sync the upload's segment and rename it ``.flushed`` (from now on
        the store tier may take it); the event is set once a store node
        commits it.  On an error the segment is discarded."""
        self._flushing += 1
        try:
            await trio.to_thread.run_sync(self._finish, segment, abandon_on_cancel=False)
        except BaseException:
            self.discard_bulk(segment)
            raise
        finally:
            self._flushing -= 1
        committed = self._commits[segment.id] = trio.Event()  # before anyone can claim it
        self.book.flushed(segment.id, segment.size)
        metrics.ingest_segments_flushed.inc()
        return committed

    def discard_bulk(self, segment: ActiveSegment) -> None:
        """Remove the segment of an upload that did not complete (the
        uploader got no ``OK`` and sends it again)."""
        if self.book.state_of(segment.id) is not State.ACTIVE:
            return
        self.book.discard(segment.id)
        self._stamped.discard(segment.id)
        segment.file.close()
        segment.path.unlink(missing_ok=True)

    def forget_commit(self, seg_id: str) -> None:
        """Nobody waits for this segment's commit any more (it is still consumed)."""
        self._commits.pop(seg_id, None)

    async def run_flusher(self, *, tick: float = 0.05, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Flush by age (on time: freshness is this age plus the consumer's
        poll) and return timed-out pending segments, forever."""
        task_status.started()
        while True:
            active = self._active
            wait = tick
            if active is not None:
                wait = min(tick, max(0.0, active.started + self.flush_age - self.clock()))
            await trio.sleep(wait)
            now = self.clock()
            active = self._active
            if active is not None and now - active.started >= self.flush_age:
                await self.flush()
            for seg_id in self.book.expire(now):
                self._rename(seg_id, ".pending", ".flushed")
                metrics.ingest_segments_failed.labels("expired").inc()
                log.info("event=pending_timeout segment=%s", seg_id)

    # -- the segment API, as used by store nodes ------------------------------------

    def next(self) -> str | None:
        seg_id = self.book.claim(self.clock())
        if seg_id is not None:
            self._rename(seg_id, ".flushed", ".pending")
        return seg_id

    def read_path(self, seg_id: str) -> Path:
        """The file of a pending segment, for streaming to the store that
        claimed it (``UnknownSegment`` if it is not pending)."""
        self.book.pending(_checked_id(seg_id))
        return self.path / f"{seg_id}.pending"

    def mark_read(self, seg_id: str) -> None:
        """The whole segment went out: from now on it may be committed."""
        self.book.mark_read(_checked_id(seg_id))

    def stamped_here(self, seg_id: str) -> bool:
        """Whether this process wrote the segment itself, in this run: every
        line of it is a record by construction (``stamp``).  Segments found
        on disk at start are not: a crash or a hand edit may have left
        anything in them."""
        return seg_id in self._stamped

    def commit(self, seg_id: str) -> None:
        self.book.commit(_checked_id(seg_id))
        committed = self._commits.pop(seg_id, None)  # a bulk upload waiting for this
        if committed is not None:
            committed.set()
        self._stamped.discard(seg_id)
        os.unlink(self.path / f"{seg_id}.pending")
        metrics.ingest_segments_committed.inc()
        self._changed()

    def failed(self, seg_id: str) -> None:
        self.book.fail(_checked_id(seg_id))
        self._rename(seg_id, ".pending", ".flushed")
        metrics.ingest_segments_failed.labels("failed").inc()
        self._changed()

    def _rename(self, seg_id: str, old: str, new: str) -> None:
        os.rename(self.path / f"{seg_id}{old}", self.path / f"{seg_id}{new}")

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- state ---------------------------------------------------------------------

    def segment_state(self) -> dict[str, dict[str, int]]:
        counts = self.book.counts()
        if self._active is not None:
            counts[State.ACTIVE.value]["bytes"] = self._active.size
        return counts

    def oldest_ids(self) -> dict[str, str | None]:
        """The oldest segment id in each state (ids are ULIDs: their age)."""
        return self.book.oldest()

    def drained(self) -> bool:
        """Nothing written is left for the store tier."""
        return self._active is None and not self._flushing and self.book.unconsumed() == 0


def _repair(path: Path) -> int:
    """Keep only whole, well-formed records of a segment a crash interrupted.

    A torn last write would otherwise make every composite segment built from
    this file fail validation at the stores, and be retried forever.
    """
    data = path.read_bytes()
    good, dropped = salvage(data)
    if dropped:
        metrics.ingest_rejected.labels("torn_by_crash").inc(dropped)
        log.warning("event=repaired_segment segment=%s dropped_lines=%d", path.name, dropped)
        with open(path, "wb") as f:
            f.write(good)
            os.fsync(f.fileno())
    return len(good)


def _checked_id(seg_id: str) -> str:
    """Segment ids are ULIDs; anything else cannot name one of our files."""
    if not is_ulid(seg_id.encode("ascii", "replace")):
        raise UnknownSegment(f"no pending segment {shown_id(seg_id)}")
    return seg_id
