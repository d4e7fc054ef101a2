"""Where scans run: never on the event loop.

A query's units (``oklog.query.unit``) go to an executor: a pool of scan
worker *processes*, or worker threads of the node.  Processes for heavy
filtering, because only decompression releases the GIL: matching in
threads takes the interpreter from the event loop that serves ingest
(measured: ingest fell to 57% of its idle rate under a query loop in
threads, 76% in processes).  The workers run at a lower CPU priority
(``nice``), so a heavy query yields the cores to ingest.  Threads for
*light* work -- a few blocks, or a query that keeps every record (then the
work is decompression, which runs outside the GIL): there a process only
adds the cost of moving the result (measured: match-everything 2x slower).

``Scanner.results`` runs a query's units in order with a few started ahead
(``depth``) and hands the results back in order, so a query uses every
worker while its memory stays bounded: at most ``depth`` results per
stream, and at most ``limit`` units *running* on the whole node (a
``trio.CapacityLimiter`` token per unit, given back as soon as the unit is
done, read or not: a stream suspended by a slow client, or one of several
merged streams, never holds tokens others wait for).  Leaving the iterator early (a client that
went away, a cancelled query) cancels the units not started; the ones
running finish their few blocks and are dropped.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio

from oklog.query.unit import Unit, collect, run_unit, run_unit_spilled

__all__ = ["Scanner"]

log = logging.getLogger("oklog.query")

T = TypeVar("T")

NICE = 10  # scan workers' CPU priority, relative to the node
#: Spill slot files kept for reuse when idle, and the size above which one
#: is removed rather than kept (tmpfs memory held while the node is idle:
#: at most about KEEP_SLOTS units' results).  Reusing them saves the page
#: allocation of a fresh tmpfs file per result (measured: 2.5x less worker
#: CPU for writing a dense term's results).
KEEP_SLOTS = 4
SLOT_MAX = 16 << 20


def _init_worker() -> None:
    """A scan worker: dies with the fork server (so with the node), yields
    the CPU to the node, and keeps freed block buffers for reuse as the
    node does (``oklog.malloc``: a worker decompresses a ~1 MiB block after
    another; measured, a third of its CPU went to faulting their pages in)."""
    from oklog import malloc
    from oklog.query.worker_init import die_with_parent

    die_with_parent()
    malloc.tune()
    try:
        os.nice(NICE)
    except OSError:
        pass


def _warm() -> int:
    return os.getpid()


class Scanner:
    """Runs scan units off the event loop (see the module docstring).

    ``workers`` processes; 0 means threads of this process instead (what
    tests and small nodes may prefer: nothing to start).
    """

    def __init__(self, workers: int = 2, *, depth: int = 4, limit: int | None = None) -> None:
        self.workers = workers
        self.depth = max(1, depth)
        self.limiter = trio.CapacityLimiter(limit or max(2, workers) * 4)
        self._pool: cf.Executor | None = None
        self._threads: cf.ThreadPoolExecutor | None = None
        self._spill: str | None = None  # where worker processes leave big results
        self._slots: list[str] = []  # spill slot files free for reuse

    def _executor(self) -> cf.Executor:
        if self._pool is None:
            if self.workers > 0:
                if self._spill is None:
                    self._spill = _spill_dir()
                ctx = multiprocessing.get_context("forkserver")
                # the first module ties the fork server's life to the node's
                ctx.set_forkserver_preload(["oklog.query.worker_init", "oklog.query.unit", "oklog.segment"])
                self._pool = cf.ProcessPoolExecutor(
                    self.workers, mp_context=ctx, initializer=_init_worker)
            else:
                return self._thread_pool()
        return self._pool

    def _thread_pool(self) -> cf.ThreadPoolExecutor:
        if self._threads is None:
            self._threads = cf.ThreadPoolExecutor(2, thread_name_prefix="oklog-scan")
        return self._threads

    async def start(self) -> None:
        """Start the workers now rather than at the first query (a pool
        starts one process per task it is handed at once)."""
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self.workers)):
                nursery.start_soon(self.call, _warm)

    def close(self) -> None:
        """Stop the workers.  Waits for the units already running (a few
        blocks each): a pool left running at exit makes CPython's own exit
        hook fail with a traceback (a closed wake-up pipe)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None
            self._slots = []

    def _take_slot(self) -> str:
        """A spill slot file for one unit's big result (a free one, or new)."""
        try:
            return self._slots.pop()
        except IndexError:
            assert self._spill is not None
            fd, path = tempfile.mkstemp(dir=self._spill, prefix="slot-")
            os.close(fd)
            return path

    def _put_slot(self, path: str) -> None:
        """A slot whose result was read, or will never be (any thread)."""
        try:
            keep = (self._spill is not None and len(self._slots) < KEEP_SLOTS
                    and os.stat(path).st_size <= SLOT_MAX)
        except OSError:
            return
        if keep:
            self._slots.append(path)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass

    async def _start_unit(self, pool: cf.Executor, unit: Unit) -> _Job:
        """Submit ``unit`` to ``pool``: a process spills a big result into a
        slot file, a thread hands its pieces over as they are."""
        if isinstance(pool, cf.ProcessPoolExecutor):
            slot = self._take_slot()
            return await self._start(lambda: pool.submit(run_unit_spilled, unit, slot),
                                     slot, self._put_slot)
        return await self._start(lambda: pool.submit(run_unit, unit))

    async def run(self, unit: Unit) -> bytes | list[bytes]:
        """One unit's result (joined, or pieces), in a worker; once more in
        a fresh pool if the worker died."""
        return await self._retrying(lambda pool: self._start_unit(pool, unit), _collected)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker (a module-level function: it is pickled
        by name), e.g. building a segment's n-gram index; once more in a
        fresh pool if the worker died."""
        return await self._retrying(lambda pool: self._start(lambda: pool.submit(fn, *args)),
                                    lambda job: job.take())

    async def _retrying(self, start: Callable[[cf.Executor], Awaitable[_Job]],
                        read: Callable[[_Job], T]) -> T:
        """``read`` the job ``start`` submits to the current pool; once more
        in a fresh pool if a worker died (at submit or while it ran)."""
        for attempt in (1, 2):
            pool = self._executor()
            try:
                job = await start(pool)
                try:
                    await job.done.wait()
                except BaseException:  # cancelled: nobody takes the result
                    job.drop()
                    raise
                return read(job)
            except cf.BrokenExecutor:
                self._broken(pool)  # the pool it ran in, not whichever is current
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _start(self, submit: Callable[[], cf.Future[Any]], slot: str | None = None,
                     put_slot: Callable[[str], None] | None = None) -> _Job:
        """Take a token (waiting for one) and submit; the token goes back
        when the work is done, read or not, so tokens bound running work
        (memory of finished results is bounded per stream, by ``depth``).
        ``slot``: the spill slot the work may write, the job's until
        released (``put_slot`` takes it back)."""
        job = _Job(self.limiter, trio.lowlevel.current_trio_token(), slot, put_slot)
        try:
            await self.limiter.acquire_on_behalf_of(job)
        except BaseException:
            job.release()
            raise
        try:
            job.future = submit()
        except BaseException:
            self.limiter.release_on_behalf_of(job)
            job.release()
            raise
        job.future.add_done_callback(job.finished)
        return job

    async def _submit_unit(self, pool: cf.Executor, unit: Unit) -> tuple[cf.Executor, _Job]:
        """``unit`` submitted, and the pool it went to (a fresh one if
        ``pool`` was found broken)."""
        try:
            return pool, await self._start_unit(pool, unit)
        except cf.BrokenExecutor:
            self._broken(pool)
            pool = self._executor()
            return pool, await self._start_unit(pool, unit)

    def _broken(self, pool: cf.Executor) -> None:
        """A worker died (killed, out of memory): start a fresh pool
        (unless another caller already did)."""
        if self._pool is pool:
            log.error("event=scan_worker_died action=restart_pool")
            pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def results(self, units: Iterable[Unit], *, light: bool = False) -> AsyncGenerator[bytes, None]:
        """The results of ``units``, in order, with up to ``depth`` started
        ahead (``light``: in threads, see the module docstring)."""
        pending: deque[tuple[Unit, cf.Executor, _Job]] = deque()
        todo = iter(units)
        try:
            while True:
                while len(pending) < self.depth:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    pool = self._thread_pool() if light else self._executor()  # a fresh one after a death
                    pending.append((nxt, *await self._submit_unit(pool, nxt)))
                if not pending:
                    return
                unit, pool, job = pending[0]
                await job.done.wait()
                pending.popleft()
                try:
                    result = _collected(job)
                except cf.BrokenExecutor:  # once more, in a fresh pool
                    self._broken(pool)  # the pool this unit ran in: others may be fresh
                    result = await self.run(unit)
                if isinstance(result, bytes):
                    if result:
                        yield result
                else:
                    for piece in result:
                        yield piece
        finally:
            for _, _, job in pending:
                job.drop()


def _collected(job: _Job) -> bytes | list[bytes]:
    """A finished job's result, read; its slot goes back either way."""
    try:
        return collect(job.take())
    finally:
        job.release()


_TAKEN: cf.Future[Any] = cf.Future()  # a taken job's future: done, holding nothing
_TAKEN.set_result(None)


class _Job:
    """One submitted unit: its future, its limiter token, its done event,
    and the spill slot it may write (until ``release``)."""

    def __init__(self, limiter: trio.CapacityLimiter, token: trio.lowlevel.TrioToken,
                 slot: str | None = None, put_slot: Callable[[str], None] | None = None) -> None:
        self.limiter = limiter
        self.token = token
        self.done = trio.Event()
        self.future: cf.Future[Any] = cf.Future()
        self.slot = slot
        self.put_slot = put_slot

    def take(self) -> Any:
        """The finished result, once.  The job lets go of its future: the
        future's done-callbacks refer back to the job, a cycle that kept
        every result of a query alive until the garbage collector happened
        to run (measured: ~400 MB held after a few match-everything queries
        over 500 MB)."""
        future, self.future = self.future, _TAKEN
        return future.result()

    def release(self) -> None:
        """Give the slot back: its result was read, or never will be and no
        worker writes it any more.  Once; any thread."""
        slot, self.slot = self.slot, None
        if slot is not None and self.put_slot is not None:
            self.put_slot(slot)

    def finished(self, _: cf.Future[Any]) -> None:
        """The done-callback (once, any thread): give the token back and
        wake the reader, on the trio thread."""
        try:
            self.token.run_sync_soon(self._on_trio)
        except trio.RunFinishedError:
            pass

    def _on_trio(self) -> None:
        self.limiter.release_on_behalf_of(self)
        self.done.set()

    def drop(self) -> None:
        """Nobody will read this result: cancel it, or give its slot back
        once the worker is done with it (now, if it is)."""
        future, self.future = self.future, _TAKEN  # see ``take``: no cycle keeps its result
        if future.cancel():
            self.release()
        else:
            future.add_done_callback(lambda _: self.release())


def _spill_dir() -> str:
    """A fresh directory for big results, in shared memory where there is
    some; those of nodes that died without cleaning up are removed."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    for entry in os.listdir(base):
        if entry.startswith("oklog-scan-"):
            pid = entry.split("-")[2]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"oklog-scan-{os.getpid()}-", dir=base)
