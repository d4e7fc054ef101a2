"""Read repair and the repair walker: every record back on ``rf`` stores.

Theory of operation.  A *check* of a range ``[lo, hi]`` (``Repairer.check``)
asks every live store for the ULIDs it holds there
(``/store/_query?ids=true``: lines of ``ULID LF``, no payloads), counts the
copies of each ULID across the stores that answered, *knowing which stores
hold it* (``copies.CopyCounter``: a block-level merge in numpy, memory of
one block per store), and for every record on fewer than ``rf`` distinct
stores: picks stores that lack it (``copies.plan_targets``), gets its bytes
-- from what the caller already has, else from a holder with a few
narrow ``_query`` calls (``copies.fetch_ranges``) --, writes one plain
segment per target store and sends it with ``Peers.replicate``
(``POST /store/replicate``, validated and sorted by the receiver like any
upload).  A check only counts when at least ``rf`` distinct stores
answered; a store that did not answer is reported (``unreachable``), and
the check still stands for the ones that did (if that store is alive after
all, the worst outcome is an extra copy: duplicates are dropped by ULID at
read time).  Two checks running at once can only over-replicate.

Two callers:

- **read repair** (``/store/query``): the querying node's merge of the
  stores' answers counts copies as it goes (``merge_streams`` with a
  ``ShortRecords`` sink; only when at least ``rf`` distinct stores answered)
  and, once the answer is sent, ``submit`` hands what it found to this
  node's background task (``run``) -- the user's response never waits.
  Before anything is written the task waits until the newest of those
  records is ``grace`` old (a batch still on its way to its second replica
  looks under-replicated) and checks their range again, with the user's
  filter, so only what is really short is written.  Bounded: the sink keeps
  at most ``buffer`` bytes of records (once full, the merge stops counting
  and the check covers the rest of the query's range, fetching what it
  finds short from holders); at most ``QUEUE`` findings wait; a query
  arriving while the queue is full does not count at all; a check keeps at
  most ``CHECK_LIMIT`` under-replicated ULIDs; and every record a cap
  leaves out is counted (``oklog_repair_dropped_records_total``) -- a later
  query or the walker catches it.
- **the walker** (``POST /store/repair?from=&to=[&dry-run]``, driven step by
  step by ``oklog repair``): checks a range with no filter, up to ``grace``
  before now; ``dry-run`` counts and writes nothing.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, BinaryIO, Callable

import numpy as np
import trio

from .. import metrics
from ..cluster.membership import Membership
from ..errors import OklogError, PeerError
from ..peer import Peers, QueryAnswer
from ..store.log import StoreLog
from ..ulid import ms_of, ulid_for_ms
from . import local
from .copies import CopyCounter, ShortRecords, fetch_ranges, ids_block, lines_to, plan_targets, select
from .gather import NODE_HEADER, Gathered, node_of, one_per_node, scatter, whole_lines
from .params import Query
from .workers import Scanner

__all__ = ["IDS_HEADER", "NODE_HEADER", "RepairStats", "Repairer", "node_of"]

log = logging.getLogger("oklog.repair")

#: ``/store/_query?ids=true`` answers ``ULID LF`` lines and says so.
IDS_HEADER = "X-Oklog-Ids"
#: Findings of queries waiting for the background task.
QUEUE = 2
#: Under-replicated records one check keeps (ULIDs and holders); more are
#: counted as deferred, for a later run.
CHECK_LIMIT = 1_000_000


@dataclass
class RepairStats:
    """What one check did (the JSON body of ``/store/repair``)."""

    checked: int = 0  # distinct records in the range
    under_replicated: int = 0  # of those, on fewer than rf stores
    repaired: int = 0  # copied to enough stores now
    deferred: int = 0  # under-replicated, left for a later run (caps)
    errors: int = 0  # failures (see problems)
    stores: int = 0  # distinct stores that answered
    unreachable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    def fail(self, problem: str) -> None:
        self.errors += 1
        self.problems.append(problem)


@dataclass
class _Finding:
    """What one query's merge found under-replicated."""

    query: Query  # the user's filter, over the range of the records found
    records: bytes


class Repairer:
    """Read repair's background task, and the checks (module docstring)."""

    def __init__(self, membership: Membership, peers: Peers, *, rf: int, grace: float = 5.0,
                 buffer: int = 8 << 20, store: StoreLog | None = None,
                 scanner: Scanner | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time, tmp: Path | None = None) -> None:
        self.membership = membership
        self.peers = peers
        self.rf = rf
        self.grace = grace
        self.buffer = buffer
        self.store = store
        self.scanner = scanner
        self.rng = rng or random.Random()
        self.clock = clock
        self.tmp = tmp
        self._send, self._recv = trio.open_memory_channel[_Finding](QUEUE)

    # -- read repair: the query side -------------------------------------------------------

    def counting(self, gathered: Gathered) -> ShortRecords | None:
        """A sink for this query's merge, or None when it should not count:
        replication factor 1, read repair off, fewer than ``rf`` distinct
        stores answered (nothing to learn), or the queue is full."""
        if self.rf < 2 or self.buffer <= 0:
            return None
        if len({node_of(r) for r in gathered.responses}) < self.rf:
            metrics.repair_skipped.labels("few_stores").inc()
            return None
        if self._send.statistics().current_buffer_used >= QUEUE:
            metrics.repair_skipped.labels("busy").inc()
            return None
        return ShortRecords(self.buffer)

    def submit(self, query: Query, short: ShortRecords, complete: bool) -> None:
        """Hand a merge's findings to the background task (never blocks).
        ``complete``: every answer streamed to its end (a store that broke
        off mid-answer makes every later record look short)."""
        if not short:
            return
        if not complete:
            metrics.repair_dropped.labels("query", "broken_stream").inc(short.records + short.dropped)
            return
        hi = short.hi
        if short.dropped:
            # The buffer filled up: the check covers the rest of the query's
            # range, and fetches from their holders the records not in hand;
            # up to now (what the answer could hold), so records that arrive
            # meanwhile get their grace before they are judged.
            hi = min(query.hi, ulid_for_ms(int(self.clock() * 1000), upper=True))
            log.info("event=read_repair_capped kept=%d not_kept=%d", short.records, short.dropped)
        finding = _Finding(Query(short.lo, hi, query.q, query.regex, query.topic), short.take())
        try:
            self._send.send_nowait(finding)
        except trio.WouldBlock:
            metrics.repair_dropped.labels("query", "queue").inc(short.records)
            return
        metrics.repair_found.inc(short.records)
        log.info("event=read_repair_queued records=%d from=%s to=%s", short.records,
                 short.lo.decode(), short.hi.decode())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Work through the findings of queries, one at a time."""
        task_status.started()
        async for finding in self._recv:
            wait = (ms_of(finding.query.hi) / 1000 + self.grace) - self.clock()
            if wait > 0:
                await trio.sleep(min(wait, self.grace))
            try:
                stats = await self.check(finding.query, records=finding.records, source="query")
            except Exception:  # a bug: say where, and go on with the next finding
                log.exception("event=read_repair_error")
                continue
            log.info("event=read_repair checked=%d under_replicated=%d repaired=%d errors=%d%s",
                     stats.checked, stats.under_replicated, stats.repaired, stats.errors,
                     "".join(f" problem={p!r}" for p in stats.problems))

    # -- the walker's step -----------------------------------------------------------------

    async def walk(self, lo: bytes, hi: bytes, *, dry_run: bool = False) -> RepairStats:
        """Check ``[lo, hi]`` with no filter, up to ``grace`` before now
        (newer records may still be on their way to their replicas)."""
        newest = ulid_for_ms(max(0, int((self.clock() - self.grace) * 1000)), upper=True)
        hi = min(hi, newest)
        if lo > hi:
            return RepairStats(dry_run=dry_run)
        stats = await self.check(Query(lo, hi), dry_run=dry_run, source="walk")
        log.info("event=repair_walk from=%s to=%s checked=%d under_replicated=%d repaired=%d "
                 "deferred=%d errors=%d dry_run=%s%s", lo.decode(), hi.decode(), stats.checked,
                 stats.under_replicated, stats.repaired, stats.deferred, stats.errors, dry_run,
                 "".join(f" problem={p!r}" for p in stats.problems))
        return stats

    # -- the check -------------------------------------------------------------------------

    async def check(self, query: Query, *, records: bytes = b"", dry_run: bool = False,
                    source: str = "walk") -> RepairStats:
        """Count copies of the records matching ``query`` and copy the
        under-replicated ones to stores that lack them (``records``: some
        of them already in hand, whole lines, sorted)."""
        stats = RepairStats(dry_run=dry_run)
        try:
            await self._check(query, records, stats, dry_run)
        finally:
            metrics.repair_checked.labels(source).inc(stats.checked)
            metrics.repair_under.labels(source).inc(stats.under_replicated)
            metrics.repair_repaired.labels(source).inc(stats.repaired)
            metrics.repair_dropped.labels(source, "limit").inc(stats.deferred)
            metrics.repair_errors.labels(source).inc(stats.errors)
        return stats

    async def _check(self, query: Query, records: bytes, stats: RepairStats, dry_run: bool) -> None:
        stores = list(dict.fromkeys(self.membership.stores()))
        if len(stores) < self.rf:
            stats.fail(f"{len(stores)} live store(s) for replication factor {self.rf}: cannot count copies")
            return
        gathered = await self._scatter(stores, query, ids=True)
        stats.unreachable = list(gathered.errors)
        try:
            answers = one_per_node(gathered.responses)
            nodes = [node_of(r) for r in answers]
            stats.stores = len(nodes)
            if len(nodes) < self.rf:
                stats.fail(f"{len(nodes)} store(s) answered, fewer than the replication factor "
                           f"{self.rf}: cannot count copies")
                return
            counter = CopyCounter(len(answers), self.rf, CHECK_LIMIT)
            try:
                await _count(counter, [_ids(r) for r in answers])
            except (OklogError, PeerError, OSError, ValueError) as exc:
                stats.fail(f"counting copies failed: {exc}")
                return
        finally:
            with trio.CancelScope(shield=True):
                for r in gathered.responses:
                    await r.aclose()
        stats.checked, stats.under_replicated, stats.deferred = counter.checked, counter.under, counter.dropped
        if dry_run or not counter.under:
            return
        await self._repair(counter, nodes, records, stats)

    async def _repair(self, counter: CopyCounter, nodes: list[str], records: bytes,
                      stats: RepairStats) -> None:
        keys, holders, positions = counter.keys, counter.holders, counter.positions
        plan = plan_targets(holders, len(nodes), self.rf, self.rng)
        have = np.zeros(len(keys), bool)
        files: dict[int, tuple[Path, BinaryIO]] = {}
        try:
            for t in plan.to:
                path = self._tmp_path(".repair")
                files[t] = (path, open(path, "xb"))

            def put(block: bytes) -> None:
                lines, at = select(block, keys)
                fresh = ~have[at]
                if not fresh.all():
                    lines = [line for line, f in zip(lines, fresh.tolist()) if f]
                    at = at[fresh]
                have[at] = True
                for t, mask in plan.to.items():
                    part = lines_to(lines, mask[at])
                    if part:
                        files[t][1].write(part)

            if records:
                put(records)
            for h in sorted(set(plan.source[~have].tolist())):
                wanted = ~have & (plan.source == h)
                for lo, hi in fetch_ranges(keys[wanted], positions[wanted]):
                    try:
                        await self._fetch(nodes[h], Query(lo, hi), put)
                    except (OklogError, PeerError, OSError) as exc:
                        stats.fail(f"fetching records from {nodes[h]} failed: {exc}")
                        break
            for _, f in files.values():
                f.close()
            ok = have & ~plan.short_after
            for t, (path, _) in files.items():
                if not (plan.to[t] & have).any():
                    continue
                try:
                    await self.peers.replicate(nodes[t], [path])
                except PeerError as exc:
                    stats.fail(f"replicating to {nodes[t]} failed: {exc}")
                    ok &= ~plan.to[t]
            stats.repaired = int(ok.sum())
        finally:
            for path, f in files.values():
                f.close()
                path.unlink(missing_ok=True)

    # -- talking to stores (this node's own share without HTTP) ------------------------------

    async def _scatter(self, stores: list[str], query: Query, *, ids: bool = False) -> Gathered:
        store = self.store
        local_plan: Callable[[], Awaitable[local.LocalPlan]] | None = None
        if store is not None:
            async def plan() -> local.LocalPlan:  # whole records: ``_ids`` cuts them
                return await local.prepare(store, query, self.scanner)
            local_plan = plan
        raw = query.encode() + ("&ids=true" if ids else "")
        return await scatter(self.peers, stores, raw.encode(), "GET",
                             self_url=self.membership.self_url(), local_plan=local_plan)

    async def _fetch(self, node: str, query: Query, put: Callable[[bytes], None]) -> None:
        gathered = await self._scatter([node], query)
        try:
            if gathered.errors or not gathered.responses:
                raise PeerError(node, "; ".join(gathered.errors) or "no answer")
            for r in gathered.responses:
                async for block in whole_lines(r):
                    put(block)
        finally:
            with trio.CancelScope(shield=True):
                for r in gathered.responses:
                    await r.aclose()

    def _tmp_path(self, suffix: str) -> Path:
        if self.store is not None:
            return self.store.tmp_path(suffix)
        base = self.tmp or Path("/tmp")
        return base / f"oklog-{os.getpid()}-{random.getrandbits(64):016x}{suffix}"


async def _ids(answer: QueryAnswer) -> AsyncIterator[bytes]:
    """An answer as blocks of ``ULID LF`` lines, whether the store
    understood ``ids=true`` or sent whole records (an older store)."""
    convert = answer.headers.get(IDS_HEADER, "").lower() != "true"
    async for block in whole_lines(answer):
        yield ids_block(block) if convert else block


async def _count(counter: CopyCounter, sources: list[AsyncIterator[bytes]]) -> None:
    """Drive ``counter`` over the id streams (see ``CopyCounter``)."""
    while not counter.done:
        for i in counter.needs():
            try:
                block = await sources[i].__anext__()
            except StopAsyncIteration:
                counter.feed(i, None)
            else:
                counter.feed(i, block)
        counter.count()
