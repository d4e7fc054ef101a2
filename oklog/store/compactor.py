"""Compaction and retention: the background task of a store node.

Theory of operation
-------------------
Every tick (``-store.compaction-interval``, 1 s) the compactor reads one
clock (``clock``, wall seconds: injected, so tests pass time in instead of
sleeping) and:

1. **retention**: asks ``plan_retention`` which segments are too old
   (``-store.segment-retain``) or beyond the disk budget
   (``-store.segment-retain-size``) and moves each ``.flushed`` →
   ``.trashed`` (never planned by a query again);
2. **purge**: removes trashed files whose time has come
   (``-store.segment-purge`` after retention; at once for a job's inputs)
   and that no running query still reads (its lease);
3. **compaction**: asks ``plan_compaction`` for one job and runs it:

   a. *claim*: the inputs go ``.flushed`` → ``.reading`` (still indexed
      and queryable);
   b. *write*: a worker thread streams a block-level k-way merge of the
      inputs (``records.merge``, duplicate ULIDs dropped) into new
      segment files ``ID.active``, cut near ``-store.segment-target-size``
      and at the job's cuts; each is synced;
   c. *install*: each output is renamed ``FROM-TO.flushed`` and indexed
      (queries now see inputs and outputs: de-duplicated by ULID); the
      n-gram indexer builds its index and sidecar as for any new segment;
   d. *retire*: the inputs go ``.reading`` → ``.trashed``, out of the
      index; they are purged once no running query reads them.

   A crash at any step loses nothing and duplicates nothing a query
   returns: before (c) the ``.active`` outputs are deleted at start and the
   ``.reading`` inputs come back as ``.flushed``; during (c) an installed
   output holds every record of a same-named input (it covers that
   input's whole range), so such an input is trashed at start and the
   others come back; after (d) only the outputs remain.  Outputs and
   inputs seen together are de-duplicated by ULID.

   A failed job (a damaged input, a full disk) removes its outputs, gives
   the inputs back (``.flushed``; on a damaged block they are checked
   again and repaired), is counted and logged, and the next tick plans
   afresh.

``OKLOG_TEST_PAUSE_COMPACTION=STEP`` (tests only) parks every job at
``claimed``, ``written``, ``installed`` or ``retired`` -- after that step --
and logs ``event=compaction_paused step=STEP``, so a test can kill the
process exactly there.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio
import zstandard

from .. import metrics
from ..errors import CorruptSegment
from ..fsutil import fsync_path
from ..records.merge import merge_records
from ..records.search import bisect
from ..segment import SegmentName, Table, create_segment, open_segment
from ..segment.blocked import BlockWriter, cut
from ..timespec import format_rfc3339
from ..ulid import ms_of
from .log import Segment, StoreLog
from .planner import MAX_INPUTS, SETTLE_MS, Job, plan_compaction, plan_retention

__all__ = ["Compactor", "PAUSE_ENV", "STEPS", "merge_job"]

log = logging.getLogger("oklog.store")

PAUSE_ENV = "OKLOG_TEST_PAUSE_COMPACTION"
STEPS = ("claimed", "written", "installed", "retired")

Output = tuple[Path, SegmentName, Table]
#: Jobs that read less than this are logged at debug level only.
QUIET_JOB_BYTES = 1 << 20


class Compactor:
    """Runs retention, purge and compaction jobs over one ``StoreLog``."""

    def __init__(
        self,
        store: StoreLog,
        *,
        target_size: int,
        retain: float | None = 7 * 86400.0,
        retain_size: int = 0,
        purge: float = 86400.0,
        interval: float = 1.0,
        compact: bool = True,
        clock: Callable[[], float] = time.time,
        settle_ms: int = SETTLE_MS,
        max_inputs: int = MAX_INPUTS,
        pause_at: str | None = None,
    ) -> None:
        self.store = store
        self.target_size = target_size
        self.retain = retain
        self.retain_size = retain_size
        self.purge_delay = purge
        self.interval = interval
        self.compact = compact
        self.clock = clock
        self.settle_ms = settle_ms
        self.max_inputs = max_inputs
        self.pause_at = pause_at if pause_at is not None else os.environ.get(PAUSE_ENV) or None
        self.failures = 0  # jobs failed in a row: the loop backs off
        if self.pause_at is not None and self.pause_at not in STEPS:
            raise ValueError(f"{PAUSE_ENV}={self.pause_at!r}: want one of {', '.join(STEPS)}")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """One step per tick, forever."""
        task_status.started()
        while True:
            try:
                await self.step()
            except Exception as exc:  # a full or failing disk, a bug: never the node's end
                log.error("event=compactor_error error=%r retry_in=%.0fs", exc, self.interval)
            # a job that keeps failing (a full disk) is retried ever less often, up to a minute
            await trio.sleep(min(self.interval * 2 ** min(self.failures, 6), max(self.interval, 60.0)))

    async def step(self) -> Job | None:
        """Retention, purge, then at most one compaction job; the job run."""
        now = self.clock()
        self.retention(now)
        self.purge(now)
        if not self.compact:
            return None
        view = self.store.live_segments(verified_only=True)
        # planning is pure but O(n log n): off the event loop (a store that
        # was left uncompacted may hold tens of thousands of files)
        job = await trio.to_thread.run_sync(functools.partial(
            plan_compaction, [seg for _, seg in view.values()], target_size=self.target_size,
            now_ms=int(now * 1000), settle_ms=self.settle_ms, max_inputs=self.max_inputs))
        if job is None:
            return None
        now_view = self.store.live_segments(verified_only=True)
        segments = [view[name][0] for name in job.inputs]
        if any(now_view.get(name, (None,))[0] is not s for name, s in zip(job.inputs, segments)):
            return None  # changed while planning (a union, a repair): plan again next tick
        await self.run_job(job, segments)
        self.purge(self.clock())
        return job

    # -- retention ------------------------------------------------------------------

    def retention(self, now: float) -> None:
        for t in self.store.trash.values():
            if t.purge_at is None:  # found at start: its clock starts now
                t.purge_at = now if t.reason == "compacted" else now + self.purge_delay
        view = self.store.live_segments(verified_only=False)
        retain_ms = None if self.retain is None else int(self.retain * 1000)
        for name, reason in plan_retention([seg for _, seg in view.values()], now_ms=int(now * 1000),
                                           retain_ms=retain_ms, retain_size=self.retain_size):
            segment = view[name][0]
            moved = self.store.expire(segment, now + self.purge_delay, reason)
            metrics.store_trashed_segments.labels(reason).inc()
            log.info("event=segment_trashed segment=%s reason=%s bytes=%d newest=%s purge_in=%.0fs",
                     moved.path.name, reason, segment.size, format_rfc3339(ms_of(name.hi)), self.purge_delay)

    def purge(self, now: float) -> None:
        for t in self.store.purge(now):
            metrics.store_purged_segments.inc()
            log.info("event=segment_purged segment=%s reason=%s bytes=%d",
                     t.segment.path.name, t.reason, t.segment.size)

    # -- compaction -----------------------------------------------------------------

    async def run_job(self, job: Job, segments: list[Segment]) -> list[Segment]:
        """Claim, write, install, retire (see the module docstring); the outputs."""
        store = self.store
        started = time.monotonic()
        done = trio.Event()
        tables = [store.table(s) for s in segments]
        inputs = store.claim(segments, done)
        outputs: list[Output] = []
        installed: list[Segment] = []
        bytes_in = sum(s.size for s in inputs)
        try:
            await self._pause("claimed")
            paths = [(s.path, t) for s, t in zip(inputs, tables) if t is not None]
            if len(paths) != len(inputs):
                raise CorruptSegment("a compaction input has no table")  # planner takes verified ones
            outputs = await trio.to_thread.run_sync(
                merge_job, paths, store.path, job.cuts, self.target_size, store.compression,
                store.block_size, store.new_id)
            await self._pause("written")
            for path, name, table in outputs:
                installed.append(await store._install(path, name, table, frozenset(inputs)))
            await self._pause("installed")
            with trio.CancelScope(shield=True):
                store.retire(inputs, self.clock())
                await trio.to_thread.run_sync(fsync_path, store.path)
            done.set()
            await self._pause("retired")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                back = self._failed(job, inputs, outputs, installed, exc)
                done.set()
            if not isinstance(exc, Exception):  # cancelled (shutdown): given back, go on stopping
                raise
            self.failures += 1
            if isinstance(exc, CorruptSegment):  # check (and repair) the inputs now, not at the next read
                try:
                    await store.verify(back)
                except Exception as again:
                    log.error("event=compaction_recheck_failed error=%r", again)
            return []
        self.failures = 0
        seconds = time.monotonic() - started
        bytes_out = sum(s.size for s in installed)
        metrics.compactions.labels(job.kind, "done").inc()
        metrics.compaction_bytes.labels("in").inc(bytes_in)
        metrics.compaction_bytes.labels("out").inc(bytes_out)
        metrics.compaction_seconds.observe(seconds)
        # a quiet cluster compacts tiny segments every second: those at -debug
        log.log(logging.INFO if bytes_in >= QUIET_JOB_BYTES else logging.DEBUG,
                "event=compacted kind=%s inputs=%d outputs=%d bytes_in=%d bytes_out=%d seconds=%.3f first=%s",
                job.kind, len(inputs), len(installed), bytes_in, bytes_out, seconds,
                installed[0].path.name if installed else "none")
        return installed

    def _failed(self, job: Job, inputs: list[Segment], outputs: list[Output],
                installed: list[Segment], exc: BaseException) -> list[Segment]:
        store = self.store
        for path, _, _ in outputs:
            path.unlink(missing_ok=True)  # not installed (an installed one's path is gone)
        back = store.release(inputs)
        if isinstance(exc, CorruptSegment):
            for segment in back:
                store.suspect(segment)
        if isinstance(exc, Exception):
            metrics.compactions.labels(job.kind, "failed").inc()
            log.error("event=compaction_failed kind=%s inputs=%d installed=%d error=%r",
                      job.kind, len(inputs), len(installed), exc)
        return back

    async def _pause(self, step: str) -> None:
        if self.pause_at == step:
            log.warning("event=compaction_paused step=%s", step)
            await trio.sleep_forever()


def merge_job(inputs: list[tuple[Path, Table]], directory: Path, cuts: tuple[bytes, ...],
              target_size: int, compression: str, block_size: int,
              new_id: Callable[[], str]) -> list[Output]:
    """Merge sorted, duplicate-free segment files into new ones (in a worker
    thread): a block-level k-way merge, so memory holds about one block per
    input.  Outputs are ``ID.active`` files in ``directory``, synced, cut
    after about ``target_size`` bytes on disk and before each ULID in
    ``cuts``; their paths, names and tables, in ULID order."""
    outputs: list[Output] = []
    readers = [open_segment(path, table) for path, table in inputs]
    writer: BlockWriter | None = None
    pending_cuts = list(cuts)

    def finish() -> None:
        nonlocal writer
        if writer is not None:
            name = writer.finish()
            if name is not None:
                outputs.append((writer.path, name, writer.table))
            writer = None

    try:
        for block in merge_records([r.blocks() for r in readers], trusted_unique=True):
            while block:
                while pending_cuts and pending_cuts[0] <= block[:26]:
                    pending_cuts.pop(0)
                    finish()  # what is held lies below the cut: the next output starts here
                if pending_cuts:  # the first record lies below the cut: at > 0
                    at = bisect(block, pending_cuts[0])
                    piece, block = block[:at], block[at:]
                else:
                    piece, block = block, b""
                pos = 0
                while pos < len(piece):  # a block at a time: outputs end near the target size
                    end = cut(piece, pos, block_size)
                    if writer is None:
                        writer = create_segment(directory / f"{new_id()}.active",
                                                compression=compression, block_size=block_size)
                    writer.write(piece[pos:end] if pos or end < len(piece) else piece)
                    pos = end
                    if writer.size >= target_size:
                        finish()
        finish()
    except zstandard.ZstdError as exc:  # a block damaged behind its sidecar's back
        _clean(writer, outputs)
        raise CorruptSegment(f"a compaction input: {exc}") from None
    except BaseException:
        _clean(writer, outputs)
        raise
    finally:
        for r in readers:
            r.close()
    return outputs


def _clean(writer: BlockWriter | None, outputs: list[Output]) -> None:
    if writer is not None:
        writer.abort()
    for path, _, _ in outputs:
        path.unlink(missing_ok=True)
