"""Consumption: OK Log's gather → replicate → commit | fail transaction.

Theory of operation: ``ConsumeTxn`` is the IO-free book of one batch.  It
gathers ingest segments (remembering which ingester each came from) until
the batch reaches the target size or age, or the ingesters have nothing
more; it is then replicated; every source is finally committed (success) or
failed back (any shortfall), so the ingesters hand them out again.  A crash
anywhere can only over-replicate: the ingester still has every segment that
was not committed, and duplicates are dropped by ULID at read time.

``Consumer`` drives one transaction after another over real HTTP (even in
a single ``ingeststore`` process): segments are spooled to files and merged
into one sorted, de-duplicated composite file, which is then uploaded to
``replication_factor`` distinct live stores.  Memory stays bounded: nothing
holds a whole segment, let alone the composite.

An ingester's segment is a peer's data, and may be damaged (disk
corruption, a hand edit): the consumer is where such lines are dropped.
The stores validate every upload (``/store/replicate`` answers a malformed
body with a 400 and writes nothing), so the consumer does not check the
composite a second time on the happy path; when a store refuses it, the
consumer rebuilds it from the same spooled segments through ``salvage``,
keeping every well-formed record, counting each dropped line
(``oklog_store_rejected_records_total{source="consume"}``) and logging once
per damaged segment, and replicates that.  No batch can be refused forever
for one bad line, and the check costs nothing when nothing is wrong.  Any
other failure of a batch -- a peer's error, a bug -- fails the batch back to
its ingesters; the consumer backs off and goes on.
"""

from __future__ import annotations

import enum
import logging
import os
import random
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import trio

from .. import metrics
from ..cluster.membership import Membership
from ..errors import (
    CorruptSegment,
    IllegalTransition,
    OklogError,
    PeerError,
    PeerRejected,
    ReplicationShortfall,
)
from ..peer import Peers
from ..records.format import MAX_LINE
from ..records.merge import merge_records
from ..ulid import ULID_LEN
from ..segment.check import Verdict, good_blocks
from ..segment.plain import PlainReader, PlainWriter
from .log import StoreLog
from .park import Park

log = logging.getLogger("oklog.consume")

TAIL = 1 << 16  # bytes read from a spool's end to find its last line


class Phase(enum.Enum):
    GATHER = "gather"
    REPLICATE = "replicate"
    COMMIT = "commit"
    FAIL = "fail"


_MOVES = {
    (Phase.GATHER, "replicate"): Phase.REPLICATE,
    (Phase.GATHER, "fail"): Phase.FAIL,
    (Phase.REPLICATE, "commit"): Phase.COMMIT,
    (Phase.REPLICATE, "fail"): Phase.FAIL,
}


@dataclass
class Source:
    ingester: str
    seg_id: str
    size: int


@dataclass
class ConsumeTxn:
    """One batch: which segments it holds and where it is in its life."""

    target_size: int
    target_age: float
    started: float
    phase: Phase = Phase.GATHER
    sources: list[Source] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.sources)

    def add(self, ingester: str, seg_id: str, size: int) -> None:
        if self.phase is not Phase.GATHER:
            raise IllegalTransition(f"cannot add a segment while {self.phase.value}")
        self.sources.append(Source(ingester, seg_id, size))

    def gathered_enough(self, now: float) -> bool:
        return self.size >= self.target_size or now - self.started >= self.target_age

    def _move(self, event: str) -> None:
        try:
            self.phase = _MOVES[(self.phase, event)]
        except KeyError:
            raise IllegalTransition(f"cannot {event} while {self.phase.value}") from None

    def replicate(self) -> None:
        if not self.sources:
            raise IllegalTransition("nothing gathered to replicate")
        self._move("replicate")

    def commit(self) -> list[Source]:
        self._move("commit")
        return list(self.sources)

    def fail(self) -> list[Source]:
        self._move("fail")
        return list(self.sources)


def _salvaged(reader: PlainReader, source: Source) -> Iterator[bytes]:
    """The well-formed records of a gathered ingest segment, none longer
    than a store takes; the rest is counted and logged, once for the segment."""
    verdict = Verdict()
    yield from good_blocks(reader, verdict, max_line=MAX_LINE)
    counts = {"malformed": verdict.malformed, "torn": int(verdict.torn), "too_long": verdict.too_long}
    if any(counts.values()):
        for reason, n in counts.items():
            if n:
                metrics.store_rejected.labels(reason, "consume").inc(n)
        log.warning("event=segment_salvaged ingester=%s segment=%s dropped_lines=%d reason=%s",
                    source.ingester, source.seg_id, sum(counts.values()),
                    ",".join(r for r, n in counts.items() if n))


def _one_run(spools: list[Path]) -> bool:
    """Whether ``spools``, one after another, are already in strictly
    increasing ULID order by their first and last lines (the usual case: one
    ingester's segments, from one monotonic stamper); False when they
    overlap or look odd, and need a merge.  Inside a file the order is not
    checked here: the store checks every line (and sorts if it must)."""
    prev = b""
    for path in spools:
        with open(path, "rb") as f:
            head = f.read(ULID_LEN)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - TAIL))
            tail = f.read()
            if not tail.endswith(b"\n") or len(head) < ULID_LEN:
                return False
            start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
            if start == 0 and size > TAIL:
                return False  # a last line longer than TAIL: let the merge deal with it
            last = tail[start : start + ULID_LEN]
            if head <= prev or last < head:
                return False
            prev = last
    return bool(spools)


def replication_order(stores: list[str], rng: random.Random) -> list[str]:
    """Distinct stores in random order: the first ones are tried first, the
    rest are fallbacks when one of those fails."""
    order = list(dict.fromkeys(stores))
    rng.shuffle(order)
    return order


class Consumer:
    """Runs consume transactions forever against the live cluster."""

    def __init__(
        self,
        store: StoreLog,
        membership: Membership,
        peers: Peers,
        *,
        replication_factor: int = 2,
        target_size: int = 128 << 20,
        target_age: float = 3.0,
        idle_sleep: float = 0.1,
        max_backoff: float = 5.0,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
        park: Park | None = None,
    ) -> None:
        self.store = store
        self.membership = membership
        self.peers = peers
        self.rf = replication_factor
        self.target_size = target_size
        self.target_age = target_age
        self.idle_sleep = idle_sleep
        self.max_backoff = max_backoff
        self.failures = 0  # batches failed in a row
        self.clock = clock
        self.rng = rng or random.Random()
        self._last_shortage_log = -1e9
        # test-only: park at a stage when armed (oklog.store.park); None in production
        self.park = park if park is not None else Park.from_env()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            worked = await self.one_batch()
            if not worked:
                # failing batches back off: 2x, 4x, ... the idle sleep, up to max_backoff
                await trio.sleep(min(self.idle_sleep * 2 ** min(self.failures, 30), self.max_backoff))

    async def one_batch(self) -> bool:
        """Run one transaction; False when there was nothing to do."""
        stores = self.membership.stores()
        if len(set(stores)) < self.rf:
            self._log_shortage(len(set(stores)))
            return False
        ingesters = self.membership.ingesters()
        if not ingesters:
            return False
        txn = ConsumeTxn(self.target_size, self.target_age, self.clock())
        files: list[Path] = []
        try:
            await self._gather(txn, ingesters, files)
            if not txn.sources:
                return False
            txn.replicate()
            await self._merge_and_replicate(txn, files, stores)
            if self.park is not None:
                await self.park.at("commit")
        except Exception as exc:
            with trio.CancelScope(shield=True):
                await self._finish(txn, ok=False, reason=exc)
            self.failures += 1
            if not isinstance(exc, (OklogError, OSError)):  # a bug: say where
                log.exception("event=batch_error segments=%d", len(txn.sources))
            return False
        except BaseException as exc:  # cancelled: hand the segments back
            with trio.CancelScope(shield=True):
                await self._finish(txn, ok=False, reason=exc)
            raise
        finally:
            for f in files:
                f.unlink(missing_ok=True)
        await self._finish(txn, ok=True)
        self.failures = 0
        metrics.consume_bytes.inc(txn.size)
        return True

    async def _gather(self, txn: ConsumeTxn, ingesters: list[str], files: list[Path]) -> None:
        while not txn.gathered_enough(self.clock()):
            got = False
            for ingester in self.rng.sample(ingesters, len(ingesters)):
                try:
                    seg_id = await self.peers.next(ingester)
                except PeerError as exc:
                    log.debug("event=next_failed ingester=%s error=%s", ingester, exc)
                    continue
                if seg_id is None:
                    continue
                path = self.store.tmp_path(".gather")
                files.append(path)
                try:
                    size = await self.peers.read_to(ingester, seg_id, path)
                except PeerError as exc:
                    log.warning("event=read_failed ingester=%s segment=%s error=%s", ingester, seg_id, exc)
                    await self._tell(ingester, seg_id, ok=False)
                    files.remove(path)
                    path.unlink(missing_ok=True)
                    continue
                txn.add(ingester, seg_id, size)
                got = True
                if self.park is not None and len(txn.sources) == 1:
                    await self.park.at("gather")
                if txn.gathered_enough(self.clock()):
                    return
            if not got:
                return  # the ingesters have nothing more right now

    async def _merge_and_replicate(self, txn: ConsumeTxn, files: list[Path], stores: list[str]) -> None:
        """Replicate the batch as one sorted segment; if a store refuses it
        (or it cannot even be merged), build it again from the salvaged
        sources.  ``files`` holds the spooled sources, in ``txn.sources``
        order; composites are added to it, for the caller to clean up."""
        spools = list(files)
        try:
            return await self._send(txn.sources, spools, files, stores, salvage=False)
        except (PeerRejected, CorruptSegment) as exc:  # a damaged source: keep what is valid
            log.warning("event=composite_refused error=%s action=salvage", exc)
        await self._send(txn.sources, spools, files, stores, salvage=True)

    async def _send(self, sources: list[Source], spools: list[Path], files: list[Path],
                    stores: list[str], *, salvage: bool) -> None:
        if not salvage and await trio.to_thread.run_sync(_one_run, spools):
            # already one sorted run: the spools are the body as they are (no copy)
            await self._replicate(spools, stores)
            return
        composite = self.store.tmp_path(".composite")
        files.append(composite)
        records = await trio.to_thread.run_sync(self._merge, sources, spools, composite, salvage)
        if records:
            await self._replicate([composite], stores)

    def _merge(self, sources: list[Source], spools: list[Path], out: Path, salvage: bool) -> int:
        """Merge the spooled segments into one sorted, de-duplicated file
        ``out`` (the plain format: the body of ``/store/replicate``); with
        ``salvage``, keep only their well-formed records."""
        with ExitStack() as stack:
            readers = [stack.enter_context(PlainReader(p)) for p in spools]
            inputs = [_salvaged(r, s) if salvage else r.raw_blocks() for r, s in zip(readers, sources)]
            writer = PlainWriter(out, durable=False)  # a temporary upload body
            try:
                # one ingester's segment never repeats a ULID (one monotonic
                # stamper); should a damaged one, the store sorts it out
                for block in merge_records(inputs, trusted_unique=True):
                    writer.write(block)
            except BaseException:
                writer.abort()
                raise
            writer.finish()
            return writer.records

    async def _replicate(self, body: list[Path], stores: list[str]) -> None:
        """Upload to ``rf`` distinct stores, trying others when one fails.

        A store answering that the body is malformed (400) is raised at
        once: every store validates the same way, so no other would take it.
        """
        done = 0
        for store in replication_order(stores, self.rng):
            try:
                await self.peers.replicate(store, body)
            except PeerRejected as exc:
                if exc.status == 400:
                    raise
                log.warning("event=replicate_failed store=%s error=%s", store, exc)
                continue
            except PeerError as exc:
                log.warning("event=replicate_failed store=%s error=%s", store, exc)
                continue
            done += 1
            if done == self.rf:
                return
            if self.park is not None and done == 1:
                await self.park.at("replicate")
        raise ReplicationShortfall(self.rf, done)

    async def _finish(self, txn: ConsumeTxn, *, ok: bool, reason: object = None) -> None:
        if not txn.sources:
            return
        sources = txn.commit() if ok else txn.fail()
        async with trio.open_nursery() as nursery:
            for s in sources:
                nursery.start_soon(self._tell, s.ingester, s.seg_id, ok)
        if ok:
            metrics.consume_batches.labels("committed").inc()
            metrics.consume_segments.inc(len(sources))
            log.debug("event=committed segments=%d bytes=%d", len(sources), txn.size)
        else:
            metrics.consume_batches.labels("failed").inc()
            log.warning("event=batch_failed segments=%d reason=%r", len(sources), reason)

    async def _tell(self, ingester: str, seg_id: str, ok: bool) -> None:
        """Commit or fail one source; an unreachable ingester times it out itself."""
        try:
            if ok:
                await self.peers.commit(ingester, seg_id)
            else:
                await self.peers.failed(ingester, seg_id)
        except PeerError as exc:
            log.warning("event=%s_failed ingester=%s segment=%s error=%s",
                        "commit" if ok else "fail", ingester, seg_id, exc)

    def _log_shortage(self, have: int) -> None:
        now = self.clock()
        if now - self._last_shortage_log >= 30.0:
            self._last_shortage_log = now
            log.warning(
                "event=waiting_for_stores have=%d replication_factor=%d "
                "(consumption paused until enough store nodes are alive)",
                have,
                self.rf,
            )
