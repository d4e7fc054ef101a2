"""The store file layer: ``FROM-TO.flushed`` segment files and their index.

Theory of operation
-------------------
A replicate upload is streamed through a segment writer into ``ID.active``
(blocks compressed as they arrive) while every block is validated (a
malformed body leaves nothing behind);
if the records did not arrive strictly sorted they are sorted and
de-duplicated afterwards (an external sort: memory stays bounded), then
the file is synced and renamed ``FROMULID-TOULID.flushed``.  Should a file
of that exact name exist already (the same range replicated twice), the two
are merged into their union first, so nothing is ever overwritten.  The
in-memory interval index maps ``[FROM, TO]`` to files and is rebuilt from
file names at start; there is no other metadata to lose.  While a live
stream is open, the upload's blocks are also matched against it and the
matches handed to it once the segment is installed (``self.live``, an
``oklog.stream.hub.Hub``; nothing is done when no stream is open).

Every segment has a *table* (``oklog.segment.table``: its blocks, their
ULID ranges, its trigram index), kept in memory and saved as the sidecar
``NAME.idx``.  A segment written here gets its table from the writer; its
n-gram index is built in the background (``index_pending``, in a scan
worker) and the sidecar written then.

Segments found on disk at start whose sidecar matches them (checksum, size
and mtime) were sound when it was written and are read through it.  Every
other one is *unverified*: a crash, a failing disk or a hand edit may have
damaged it, and a damaged file must never be read as it is.  Each is
checked once (``oklog.segment.check.inspect``, which also rebuilds its
table and sidecar): by a background pass at start, newest first, and on
demand by the first query that needs it (``verify``, before that query
plans), whichever comes first.  A segment that is not sound is repaired without losing a valid
record, crash-safely (a repair that fails half-way leaves the original to
be retried):

1. its well-formed records are written, sorted and de-duplicated, to a
   temporary file (the original is untouched);
2. the original is renamed ``FROM-TO.repairing`` (a crash from here on
   repeats the repair from it at the next start);
3. the salvaged records are installed as a proper segment (named after
   their own first and last ULID, merged with a same-named segment);
4. the original is renamed ``FROM-TO.corrupt``: quarantined, kept for the
   operator, never read again.

Every dropped line is counted (``oklog_store_rejected_records_total``)
and each repair is logged once.  Segments this process writes are sound by
construction and never checked again.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from pyroaring import BitMap64

import trio

from .. import metrics
from ..errors import CorruptSegment, IllegalTransition
from ..fsutil import fsync_path, lock_directory
from ..lines import aiter_blocks
from ..records.format import MAX_LINE, validate_block
from ..records.merge import is_strictly_sorted, merge_records
from ..records.search import first_ulid, last_ulid
from ..segment import Table, create_segment, index_segment, ngram, open_segment, write_all
from ..segment.blocked import BLOCK_SIZE, BlockReader, BlockWriter, sniff
from ..segment.check import inspect, salvage
from ..segment.sort import sort_blocks
from ..segment.table import SIDECAR_SUFFIX, load_sidecar, sidecar_path, write_sidecar
from ..stream.hub import Hub
from ..ulid import Stamper
from .index import IntervalIndex, SegmentName
from .lifecycle import State, next_state, state_of
from .planner import Seg

log = logging.getLogger("oklog.store")

#: A replicate body line longer than this is refused (bounds the memory a
#: peer can make us hold for one line).
MAX_UPLOAD_LINE = MAX_LINE
#: Seconds before the background verifier retries after a failure.
VERIFY_RETRY = 60.0
#: Upload bytes validated and written per hop to a worker thread.
WRITE_BATCH = 1 << 20


#: Runs a function somewhere off the event loop and returns its result.
Offload = Callable[..., Awaitable[Any]]


class _Order:
    """Whether a stream of blocks comes in strictly increasing ULID order."""

    def __init__(self) -> None:
        self.ordered = True
        self._prev = b""

    def see(self, block: bytes) -> None:
        if self.ordered:
            self.ordered = first_ulid(block) > self._prev and is_strictly_sorted(block)
            self._prev = last_ulid(block)


@dataclass(frozen=True)
class Segment:
    """One store segment file (its extension is its state)."""

    name: SegmentName
    path: Path
    size: int
    ino: int = field(default=0, compare=False)  # the file's inode: who it is, whatever its name


@dataclass
class Trashed:
    """A trashed segment file, removed at ``purge_at`` (wall-clock seconds;
    None: found at start, scheduled by the next retention pass) once no
    running query reads it."""

    segment: Segment
    purge_at: float | None
    reason: str


class Lease:
    """The segment files one query reads: kept on disk (under whichever of
    their names, see ``oklog.query.unit``) until released.  Released by the
    query's end, or when the query is dropped unread (garbage collected)."""

    def __init__(self, counts: Counter[int], inos: list[int]) -> None:
        self._counts = counts
        self._inos: list[int] | None = inos
        for ino in inos:
            counts[ino] += 1

    def release(self) -> None:
        inos, self._inos = self._inos, None
        for ino in inos or ():
            self._counts[ino] -= 1
            if self._counts[ino] <= 0:
                del self._counts[ino]

    def __del__(self) -> None:
        self.release()


class StoreLog:
    """The segment files of one store node plus their interval index."""

    def __init__(self, path: Path, *, compression: str = "zstd", block_size: int = BLOCK_SIZE) -> None:
        self.path = Path(path)
        # where the n-gram indexes are built: a worker thread unless told
        # otherwise (a node sets its scan workers: off this process's GIL)
        self.offload: Offload = self._in_thread
        self.compression = compression
        self.block_size = block_size
        self._tables: dict[Segment, Table] = {}  # every verified segment's
        self._unindexed: set[Segment] = set()  # written here, n-gram index not built yet
        self._index_wanted = trio.Event()
        self._index_limiter = trio.CapacityLimiter(1)
        self.tmp = self.path / "tmp"
        self.index: IntervalIndex[Segment] = IntervalIndex()
        self._ids = Stamper()
        self._leases: Counter[int] = Counter()  # inode -> running queries that read it
        self.trash: dict[Path, Trashed] = {}  # trashed segment files awaiting purge
        self._job: set[Segment] = set()  # inputs of the running compaction job (.reading)
        self._finalize = trio.Lock()
        self._lock_fd: int | None = None
        self._unverified: set[Segment] = set()
        self._verifying: dict[Segment, trio.Event] = {}
        self._check_limiter = trio.CapacityLimiter(2)  # whole-file checks run in threads
        # live tail: subscribers get the records of every upload stored from now on
        self.live = Hub(on_drop=metrics.stream_dropped.labels("store").inc)

    # -- open / close ----------------------------------------------------------------

    def open(self) -> None:
        self._lock_fd = lock_directory(self.path)
        self.tmp.mkdir(exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink()
        found: list[tuple[SegmentName, Segment]] = []
        quarantined = 0
        entries = sorted(self.path.iterdir())
        names = {e.name for e in entries}
        for entry in entries:
            if entry.name.endswith((SIDECAR_SUFFIX, SIDECAR_SUFFIX + ".tmp")):
                segment_name = entry.name[: entry.name.rindex(SIDECAR_SUFFIX)]
                if entry.suffix == ".tmp" or segment_name not in names:
                    entry.unlink()  # a sidecar of nothing (derived data)
                continue
            if entry.suffix == ".active":
                entry.unlink()  # an upload that never finished; its sender retries
                continue
            if ".corrupt" in entry.suffixes:  # FROM-TO.corrupt, FROM-TO.corrupt.1, ...
                quarantined += 1
                continue
            if ".trashed" in entry.suffixes:  # FROM-TO.trashed, FROM-TO.trashed.1, ...
                try:
                    name, _ = SegmentName.parse(entry.name)
                except CorruptSegment:
                    continue
                st = entry.stat()
                self.trash[entry] = Trashed(Segment(name, entry, st.st_size, st.st_ino), None, "found")
                continue
            if entry.suffix not in (".flushed", ".reading", ".repairing"):
                continue
            try:
                name, state = SegmentName.parse(entry.name)
            except CorruptSegment:
                log.warning("event=ignored_file path=%s reason=not_a_segment_name", entry)
                continue
            if state == "reading":  # a compaction that did not finish
                target = self.path / name.filename("flushed")
                if target.name in names:
                    # a job's output of the very same name was installed:
                    # it holds every record of this input (see compactor)
                    trashed = _unused(self.path / name.filename("trashed"))
                    os.rename(entry, trashed)
                    st = trashed.stat()
                    self.trash[trashed] = Trashed(Segment(name, trashed, st.st_size, st.st_ino), None,
                                                  "compacted")
                    continue
                os.rename(entry, target)
                names.add(target.name)
                entry = target
            st = entry.stat()
            found.append((name, Segment(name, entry, st.st_size, st.st_ino)))
        self.index.update(found)  # bulk build: ~5x faster than one add at a time
        self._unverified = set()
        for _, segment in found:
            # a segment whose sidecar matches it was sound when the sidecar
            # was written; anything else is checked (and the sidecar rebuilt)
            table = load_sidecar(segment.path) if segment.path.suffix == ".flushed" else None
            if table is None:
                self._unverified.add(segment)
            else:
                self._tables[segment] = table
                if table.index is None:  # a sidecar of an earlier version
                    self._unindexed.add(segment)
        log.info("event=store_opened path=%s segments=%d", self.path, len(self.index))
        if quarantined:
            log.warning("event=quarantined_segments path=%s files=%d (*.corrupt: originals of "
                        "repaired segments, never read; delete them when done looking)",
                        self.path, quarantined)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def new_id(self) -> str:
        """A fresh file id (a ULID: unique in this directory)."""
        return self._ids.one().decode()

    def tmp_path(self, suffix: str) -> Path:
        return self.tmp / f"{self._ids.one().decode()}{suffix}"

    # -- writing -----------------------------------------------------------------

    async def write_segment(self, chunks: AsyncIterator[bytes], *, validated: bool = False) -> Segment | None:
        """Store an uploaded body as a new segment; None when it held no records.

        Blocks are validated, compressed and written as they arrive (in a
        worker thread, about ``WRITE_BATCH`` bytes at a time: zstd releases
        the GIL).  Raises ``CorruptSegment`` (and writes nothing) on any
        malformed line.  ``validated``: the body is known to be records
        already (segments this very process stamped; see
        ``oklog.localpeers``), so the per-line check is skipped; the order
        is checked either way.
        """
        path = self.path / f"{self._ids.one().decode()}.active"
        writer = self._writer(path)
        order = _Order()
        tap = self.live.tap()  # None unless a live stream is open

        def put(blocks: list[bytes]) -> None:
            for block in blocks:
                if not validated:
                    validate_block(block)
                order.see(block)
                writer.write(block)
                if tap is not None:
                    tap.see(block)

        held: list[bytes] = []
        size = 0
        try:
            async for block in aiter_blocks(chunks, final_tail="error", max_line=MAX_UPLOAD_LINE):
                held.append(block)
                size += len(block)
                if size >= WRITE_BATCH:
                    await trio.to_thread.run_sync(put, held)
                    held, size = [], 0
            if held:
                await trio.to_thread.run_sync(put, held)
        except BaseException:
            writer.abort()
            raise
        records = writer.records
        try:
            written = await trio.to_thread.run_sync(writer.finish)
            if written is None:
                return None
            if order.ordered:
                name, table = written, writer.table
            else:
                path, name, table = await trio.to_thread.run_sync(self._sort_file, path)
            segment = await self._install(path, name, table)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if tap is not None:
            tap.publish()
        metrics.replicate_segments.inc()
        metrics.replicate_records.inc(records)
        metrics.replicate_bytes.inc(segment.size)
        return segment

    def _writer(self, path: Path) -> BlockWriter:
        return create_segment(path, compression=self.compression, block_size=self.block_size)

    def _write(self, path: Path, blocks: Iterable[bytes]) -> tuple[SegmentName, Table] | None:
        """Write a sorted stream as a segment file: its name and table."""
        writer = self._writer(path)
        name = write_all(writer, blocks)
        return None if name is None else (name, writer.table)

    def _sort_file(self, path: Path) -> tuple[Path, SegmentName, Table]:
        """Sort (and de-duplicate) a segment file written out of order."""
        out = self.tmp_path(".sorted")
        with open_segment(path, Table("none")) as reader:
            written = self._write(out, sort_blocks(reader.raw_blocks(), self.tmp_path(".sort")))
        path.unlink()
        assert written is not None, "records vanished in a sort"  # it held records before
        return out, *written

    async def _install(self, path: Path, name: SegmentName, table: Table,
                       replacing: frozenset[Segment] = frozenset()) -> Segment:
        """Rename a complete, sound segment file into place and index it
        (``replacing``: the inputs of the compaction job that wrote it, whose
        names it may share: they stay apart until the job retires them)."""
        while True:
            # A same-named file found at start may be damaged: fold it in only
            # once checked (a repair may give it another name); one that a
            # compaction job reads: once the job is over (that waits too).
            for old in self._same_named(name, replacing):
                await self._verify(old)
            async with self._finalize:
                existing = self._same_named(name, replacing)
                if any(s in self._unverified or s in self._job for s in existing):
                    continue  # changed meanwhile: wait again
                return await self._put_in_place(path, name, table, existing)

    async def _put_in_place(self, path: Path, name: SegmentName, table: Table,
                            existing: list[Segment]) -> Segment:
        target = self.path / name.filename("flushed")
        if existing:
            table = await trio.to_thread.run_sync(
                self._union_into, path, existing[0].path, self._tables[existing[0]])
            for old in existing:
                self._forget(old)
        await trio.to_thread.run_sync(_sync_and_rename, path, target)
        st = target.stat()
        segment = Segment(name, target, st.st_size, st.st_ino)
        self.index.add(name, segment)
        self._tables[segment] = table
        self._unindexed.add(segment)
        self._index_wanted.set()
        return segment

    def _union_into(self, path: Path, existing: Path, existing_table: Table) -> Table:
        """Merge ``existing`` into ``path`` (both sorted, the stored copy
        wins): no record is dropped.  Returns the union's table."""
        merged = self.tmp_path(".union")
        with open_segment(existing, existing_table) as old, open_segment(path) as new:
            written = self._write(merged, merge_records([old.blocks(), new.blocks()], trusted_unique=True))
        assert written is not None, "a union of two segments is empty"
        os.replace(merged, path)
        return written[1]

    def _forget(self, segment: Segment) -> None:
        """Drop a segment from the index and the books (its file is gone,
        renamed or about to be replaced), with its sidecar."""
        self.index.discard(segment.name, segment)
        self._tables.pop(segment, None)
        self._unindexed.discard(segment)
        sidecar_path(segment.path).unlink(missing_ok=True)

    # -- the n-gram index ------------------------------------------------------------

    def table(self, segment: Segment) -> Table | None:
        """The block table of a verified segment (None until verified)."""
        return self._tables.get(segment)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._index_limiter)

    async def run_indexer(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Build the n-gram index of every segment written here, in the
        background, forever (see ``index_pending``)."""
        task_status.started()
        while True:
            await self.index_pending()
            self._index_wanted = trio.Event()
            if not self._unindexed:
                await self._index_wanted.wait()

    async def index_pending(self) -> None:
        """Build the n-gram index of each segment written here that has none
        yet, newest first, in a worker thread, and save it with the table as
        the segment's sidecar.  Until then a query reads every block of that
        segment's range (slower, the same answer)."""
        while self._unindexed:
            segment = max(self._unindexed, key=lambda s: s.name)
            self._unindexed.discard(segment)
            table = self._tables.get(segment)
            if table is None:
                continue
            try:
                before = os.stat(segment.path)
                data = await self.offload(index_segment, str(segment.path), table)
                if self._tables.get(segment) is not table or not _same_file(before, segment.path):
                    continue  # replaced (a union, a repair) meanwhile: its new table is queued
                wild, raw, topic_index = data
                table.index = ngram.GramIndex(BitMap64.deserialize(raw), len(table), wild)
                table.topics = topic_index
                await trio.to_thread.run_sync(write_sidecar, segment.path, table, before)
            except FileNotFoundError:
                continue  # removed meanwhile
            except Exception as exc:  # a worker's error, a damaged block: the index is optional
                log.error("event=index_failed segment=%s error=%r", segment.path.name, exc)

    def _same_named(self, name: SegmentName, but: frozenset[Segment] = frozenset()) -> list[Segment]:
        return [s for _, s in self.index.query(name.lo, name.hi) if s.name == name and s not in but]

    # -- verification and repair ---------------------------------------------------------

    async def verify(self, segments: list[Segment]) -> None:
        """Make ``segments`` safe to read: check (and repair) each one not
        checked yet, two at a time (the check limiter).  A repair changes
        the index: plan again afterwards."""
        errors: list[Exception] = []

        async def one(segment: Segment) -> None:
            try:
                await self._verify(segment)
            except Exception as exc:  # the caller gets the first, as from a loop
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for segment in segments:
                nursery.start_soon(one, segment)
        if errors:
            raise errors[0]

    def suspect(self, segment: Segment) -> None:
        """A read found ``segment`` damaged (a block that no longer
        decompresses): forget its table and sidecar and check it again, and
        repair it, before the next read."""
        if segment in self._tables:
            log.warning("event=segment_suspect segment=%s action=recheck", segment.path.name)
            self._tables.pop(segment, None)
            self._unindexed.discard(segment)
            sidecar_path(segment.path).unlink(missing_ok=True)
            self._unverified.add(segment)

    def unverified(self) -> int:
        return len(self._unverified)

    def verified(self, segment: Segment) -> bool:
        """Whether ``segment`` is known sound (checked, or written here)."""
        return segment not in self._unverified

    async def run_verifier(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Check every segment found at start, newest first, then return."""
        task_status.started()
        while self._unverified:
            for segment in sorted(self._unverified, key=lambda s: s.name, reverse=True):
                try:
                    await self._verify(segment)
                except OSError as exc:
                    log.error("event=verify_failed segment=%s error=%r retry_in=%.0fs",
                              segment.path.name, exc, VERIFY_RETRY)
                    await trio.sleep(VERIFY_RETRY)
        log.info("event=segments_verified path=%s segments=%d", self.path, len(self.index))

    async def _verify(self, segment: Segment) -> None:
        """Check one segment (once; concurrent callers wait for the first)."""
        while (busy := self._verifying.get(segment)) is not None:
            await busy.wait()  # and look again: a failed check leaves it unverified
        if segment not in self._unverified:
            return
        self._verifying[segment] = done = trio.Event()
        try:
            await self._check_and_repair(segment)
            self._unverified.discard(segment)
        finally:
            self._verifying.pop(segment, None)
            done.set()

    async def _check_and_repair(self, segment: Segment) -> None:
        def check_file() -> tuple[list[str], Table | None]:
            with BlockReader(segment.path, Table(sniff(segment.path)), self.block_size) as reader:
                verdict, table = inspect(reader)
            problems = verdict.problems(segment.name)
            if table is not None and not problems and segment.path.suffix == ".flushed":
                write_sidecar(segment.path, table)
            return problems, table

        try:
            problems, table = await trio.to_thread.run_sync(check_file, limiter=self._check_limiter)
        except FileNotFoundError:  # removed under us: nothing to read
            self._forget(segment)
            return
        if segment.path.suffix == ".repairing":
            problems = problems or ["interrupted_repair"]
        if problems or table is None:
            await self._repair(segment, problems or ["unreadable"])
        else:
            self._tables[segment] = table

    async def _repair(self, segment: Segment, problems: list[str]) -> None:
        """Salvage, quarantine and replace one damaged segment (see the
        module docstring for the steps and why each is crash-safe)."""
        original = segment.path
        salvaged = self.tmp_path(".salvage")

        def salvage_file() -> tuple[SegmentName | None, Table, int, int, bool]:
            writer = self._writer(salvaged)
            try:
                with open_segment(original, Table("none")) as reader:
                    verdict = salvage(reader, writer, self.tmp_path(".sort"))
            except BaseException:
                writer.abort()
                raise
            name = writer.finish()
            return name, writer.table, verdict.records, verdict.malformed + verdict.unreadable, verdict.torn

        try:
            name, table, records, malformed, torn = await trio.to_thread.run_sync(
                salvage_file, limiter=self._check_limiter)
        except BaseException:
            salvaged.unlink(missing_ok=True)
            raise
        repairing = original.with_name(segment.name.filename("repairing"))
        with trio.CancelScope(shield=True):  # a few renames: do them all
            try:
                if original != repairing:
                    os.rename(original, repairing)
                    fsync_path(self.path)
                self._forget(segment)
                replacement = None if name is None else await self._install(salvaged, name, table)
            except BaseException:
                self._keep_for_retry(segment, repairing, salvaged)
                raise
            quarantine = _unused(original.with_name(segment.name.filename("corrupt")))
            os.rename(repairing, quarantine)
            fsync_path(self.path)
        for problem in problems:
            metrics.store_repaired_segments.labels(problem).inc()
        if malformed:
            metrics.store_rejected.labels("malformed", "segment").inc(malformed)
        if torn:
            metrics.store_rejected.labels("torn", "segment").inc()
        log.warning(
            "event=segment_repaired segment=%s problems=%s dropped_lines=%d records=%d "
            "replacement=%s quarantined=%s",
            original.name, ",".join(problems), malformed + int(torn), records,
            replacement.path.name if replacement else "none", quarantine.name,
        )

    def _keep_for_retry(self, segment: Segment, repairing: Path, salvaged: Path) -> None:
        """A repair failed half-way (disk full, I/O error): keep the original
        readable through a retry, as a restart would find it."""
        salvaged.unlink(missing_ok=True)
        if not repairing.exists():  # never moved: ``segment`` is as it was
            return
        st = repairing.stat()
        held = Segment(segment.name, repairing, st.st_size, st.st_ino)
        self.index.discard(segment.name, segment)
        self._unverified.discard(segment)
        self._unverified.add(held)
        self.index.add(segment.name, held)

    # -- compaction and retention (the file layer; plans: oklog.store.planner) ----------

    def lease(self, segments: Iterable[Segment]) -> Lease:
        """Keep ``segments``' files on disk until the lease is released (a
        query holds one from its plan to its last record)."""
        return Lease(self._leases, [s.ino for s in segments if s.ino])

    def leased(self, segment: Segment) -> bool:
        return self._leases.get(segment.ino, 0) > 0

    def live_segments(self, *, verified_only: bool) -> dict[SegmentName, tuple[Segment, Seg]]:
        """The flushed segments (and a running job's inputs) as the planner
        sees them, by name; ``verified_only``: those a job may read."""
        out: dict[SegmentName, tuple[Segment, Seg]] = {}
        clashes: set[SegmentName] = set()
        for name, segment in self.index:
            suffix = segment.path.suffix
            if suffix not in (".flushed", ".reading"):
                continue  # being repaired
            if segment in self._verifying and segment not in self._job:
                continue  # being checked
            if verified_only and segment in self._unverified:
                continue
            if name in out:
                clashes.add(name)
            out[name] = (segment, Seg(name, segment.size, state_of(suffix)))
        for name in clashes:  # two files of one name: the next install unites them
            del out[name]
        return out

    def _move(self, segment: Segment, event: str) -> Segment:
        """Rename ``segment``'s file for ``event`` (the lifecycle says where)."""
        state = next_state(event, state_of(segment.path.suffix))
        target = segment.path.with_name(segment.name.filename(state.value))
        if state == State.TRASHED:
            target = _unused(target)
        os.rename(segment.path, target)
        return Segment(segment.name, target, segment.size, segment.ino)

    def _rekey(self, old: Segment, new: Segment) -> None:
        self.index.discard(old.name, old)
        self.index.add(new.name, new)
        table = self._tables.pop(old, None)
        if table is not None:
            self._tables[new] = table
        for books in (self._unindexed, self._unverified):
            if old in books:
                books.discard(old)
                books.add(new)

    def claim(self, segments: list[Segment], done: trio.Event) -> list[Segment]:
        """Make ``segments`` a compaction job's inputs: ``.flushed`` →
        ``.reading``; still indexed and queryable.  No check or repair runs
        on them until ``done`` is set; their sidecars go (an output may
        take one's name)."""
        claimed: list[Segment] = []
        try:
            for segment in segments:
                try:
                    moved = self._move(segment, "claim")
                except FileNotFoundError:  # removed behind our back (by hand): forget it
                    log.warning("event=segment_gone segment=%s", segment.path.name)
                    self._forget(segment)
                    self._unverified.discard(segment)
                    raise
                self._rekey(segment, moved)
                self._unindexed.discard(moved)  # no n-gram index (nor sidecar) for a job's input
                self._job.add(moved)
                self._verifying[moved] = done
                claimed.append(moved)
                sidecar_path(segment.path).unlink(missing_ok=True)
        except BaseException:
            self.release(claimed)
            raise
        return claimed

    def release(self, segments: list[Segment]) -> list[Segment]:
        """A job failed: its inputs go back to ``.flushed`` (sidecars rewritten
        from the tables in memory), but for one whose name an installed
        output took: that one is retired.  Inputs retired already are skipped."""
        back: list[Segment] = []
        for segment in segments:
            if segment not in self._job:
                continue  # retired before the job failed: nothing to give back
            if (self.path / segment.name.filename("flushed")).exists():
                # an output of the very same name is installed: it holds
                # every record of this input (it covers its whole range)
                self.retire([segment], 0.0)
                continue
            self._job.discard(segment)
            self._verifying.pop(segment, None)
            moved = self._move(segment, "release")
            self._rekey(segment, moved)
            back.append(moved)
            table = self._tables.get(moved)
            if table is None:
                continue
            if table.index is None:
                self._unindexed.add(moved)
                self._index_wanted.set()
            else:
                try:
                    write_sidecar(moved.path, table)
                except OSError as exc:  # derived data: rebuilt at the next start
                    log.warning("event=sidecar_write_failed segment=%s error=%r", moved.path.name, exc)
        return back

    def retire(self, segments: list[Segment], now: float) -> None:
        """A job's outputs are installed: its inputs leave the index
        (``.reading`` → ``.trashed``) and are purged as soon as no running
        query reads them."""
        for segment in segments:
            self._job.discard(segment)
            self._verifying.pop(segment, None)
            moved = self._move(segment, "retire")
            self._forget(segment)
            self._unverified.discard(segment)  # suspected during the job: gone now
            self.trash[moved.path] = Trashed(moved, now, "compacted")

    def expire(self, segment: Segment, purge_at: float, reason: str) -> Segment:
        """Retention: ``.flushed`` → ``.trashed``, never planned again;
        purged at ``purge_at``."""
        moved = self._move(segment, "expire")
        self._forget(segment)
        self._unverified.discard(segment)
        self.trash[moved.path] = Trashed(moved, purge_at, reason)
        return moved

    def purge(self, now: float) -> list[Trashed]:
        """Remove the trashed files whose time has come and that no running
        query reads.  The lifecycle is asked with the state the file's name
        says: an entry of the trash whose file is not ``.trashed`` (never
        made so here) is not removed but leaves the trash, logged
        (``event=purge_refused``), and the other purges go on."""
        gone: list[Trashed] = []
        for path, t in list(self.trash.items()):
            if t.purge_at is None or t.purge_at > now or self.leased(t.segment):
                continue
            try:
                next_state("purge", _file_state(path))
            except IllegalTransition as exc:
                del self.trash[path]
                log.error("event=purge_refused path=%s reason=%r", path.name, str(exc))
                continue
            path.unlink(missing_ok=True)
            sidecar_path(path).unlink(missing_ok=True)
            del self.trash[path]
            gone.append(t)
        return gone

    # -- reading -----------------------------------------------------------------

    def overlapping_groups(self, lo: bytes, hi: bytes) -> list[list[Segment]]:
        """Segments overlapping ``[lo, hi]``, grouped where they overlap each
        other within that range (those need a k-way merge when read)."""
        return [[segment for _, segment in group] for group in self.index.overlapping_groups(lo, hi)]

    def disk_stats(self) -> dict[str, int]:
        """What this store holds, for the ``/metrics`` gauges: segment files,
        their bytes and sidecars' bytes on disk, blocks and records of the
        verified ones (from memory, plus one ``stat`` per sidecar), and the
        bytes of trashed files still on disk, awaiting their purge."""
        stats = {"segments": 0, "bytes": 0, "blocks": 0, "records": 0, "sidecar_bytes": 0,
                 "unverified_segments": len(self._unverified),
                 "trashed_bytes": sum(t.segment.size for t in self.trash.values())}
        for _, segment in self.index:
            stats["segments"] += 1
            stats["bytes"] += segment.size
            table = self._tables.get(segment)
            if table is not None:
                stats["blocks"] += len(table)
                stats["records"] += sum(table.records)
            try:
                stats["sidecar_bytes"] += os.stat(sidecar_path(segment.path)).st_size
            except OSError:
                pass  # not written yet, or being replaced
        return stats

    def _check(self) -> None:
        """Assert the invariants (tests call this): every indexed segment is
        a file of its own name, found or written here; nothing is half done."""
        self.index._check()
        for name, segment in self.index:
            assert segment.name == name
            assert segment.path.parent == self.path and segment.path.exists(), segment.path
            parsed, state = SegmentName.parse(segment.path.name)
            assert parsed == name and state in ("flushed", "repairing", "reading"), segment.path
            assert state != "repairing" or segment in self._unverified
            assert (state == "reading") == (segment in self._job), segment.path
            assert segment.ino == segment.path.stat().st_ino, segment.path
        assert not set(self._verifying) - self._job, "a check is running"
        for path, t in self.trash.items():  # trashed: on disk until purged, never indexed
            assert path == t.segment.path and ".trashed" in path.suffixes and path.exists(), path
            assert t.segment.ino == path.stat().st_ino, path
        indexed_inos = {s.ino for _, s in self.index} | {t.segment.ino for t in self.trash.values()}
        assert set(self._leases) <= indexed_inos, "a query reads a file that is gone"
        indexed = {s for _, s in self.index}
        assert self._unverified <= indexed, "an unverified segment is not indexed"
        assert set(self._tables) == indexed - self._unverified, "tables and verified segments differ"
        for segment, table in self._tables.items():
            table._check()
            assert table.size == segment.size, segment.path
            assert (table.firsts[0], table.lasts[-1]) == (segment.name.lo, segment.name.hi)



def _file_state(path: Path) -> State:
    """The lifecycle state a store segment file's name says (``LO-HI.trashed``
    and its unused variants ``LO-HI.trashed.1``, ...: trashed)."""
    try:
        _, state = SegmentName.parse(path.name)
    except CorruptSegment:
        raise IllegalTransition(f"{path.name!r} is not a store segment file name") from None
    return state_of(state.split(".")[0])


def _unused(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _same_file(before: os.stat_result, path: Path) -> bool:
    now = os.stat(path)
    return (now.st_ino, now.st_size, now.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def _sync_and_rename(path: Path, target: Path) -> None:
    fsync_path(path)
    os.replace(path, target)
    fsync_path(target.parent)
