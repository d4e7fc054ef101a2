"""The canary's bookkeeping: which sequence numbers were sent, seen, missing,
duplicated or out of order, and how long each took to become queryable.

Theory of operation
-------------------
``oklog canary`` writes lines numbered 0, 1, 2, … and reads them back with
queries.  :class:`CanaryBook` is the IO-free core of that check; the caller
(``oklog.canary``) tells it what happened and when (``now`` in Unix seconds,
the caller's clock) and asks it what to query next.

Every sequence number below ``next_seq`` is in exactly one state:

- **pending** — sent, not seen yet, sent less than ``max_wait`` ago;
- **seen** — some query returned it (the first sighting gives its latency:
  the time of that answer minus the time it was sent);
- **missing** — not seen within ``max_wait`` of being sent.  A missing record
  that shows up later is counted as ``late`` (and is seen from then on).

A second record with the same sequence number but another ULID is a
**duplicate** (the cluster stored one line twice; copies with the same ULID
are the same record and are de-duplicated by every query, so one ULID twice
in one answer is a duplicate too: the de-duplication failed).  A record is
**out of order** when the record just before it in ULID order has a higher
sequence number, or the record just after it a lower one (the cluster's
order disagrees with the order the lines were written in).

Lines written to a connection that then broke may be lost without any fault
of the cluster (the line protocol has no acknowledgements): the writer
reports them with :meth:`CanaryBook.unconfirmed`, and those among the
missing are counted apart (``missing_unconfirmed``).

A seen record is forgotten once it was sent ``2 * skew + max_wait`` before
the query window: its ULID can no longer be in an answer (unless the
ingester's clock is that far ahead of ours), so a record of that sequence
number that still turns up is another copy, counted as a duplicate.

Memory is bounded by time, not by the length of the run: the book keeps
the pending records (at most ``max_wait`` of them), the records seen during
the last query window, and the numbers of missing records.  The query
window (:meth:`CanaryBook.window`) starts ``skew`` before the oldest pending
record was sent, so each answer holds about ``max_wait`` seconds of records.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sortedcontainers import SortedDict

__all__ = ["CanaryBook", "CanaryStats", "percentile"]

#: How many recent latencies the summary's percentiles are computed over.
LATENCY_SAMPLE = 100_000


@dataclass
class CanaryStats:
    """Running totals of one canary run (monotonic counters, except ``lost``)."""

    sent: int = 0  #: lines written to an ingester
    seen: int = 0  #: distinct sequence numbers seen at least once (late ones included)
    missing: int = 0  #: declared missing after max_wait (each at most once)
    late: int = 0  #: seen after having been declared missing
    duplicates: int = 0  #: extra copies (another ULID for a sequence number already seen)
    out_of_order: int = 0  #: records whose ULID order disagrees with their sequence order
    unconfirmed: int = 0  #: pending lines written to a connection that then broke
    missing_unconfirmed: int = 0  #: of ``missing``, those written to a broken connection
    foreign: int = 0  #: matching lines with a sequence number this run never sent


def percentile(sorted_values: list[float], p: float) -> float:
    """The ``p``-th percentile (0–100, nearest rank) of ascending values; NaN if none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class CanaryBook:
    """The IO-free state of one canary run (see the module docstring)."""

    def __init__(self, max_wait: float, skew: float = 10.0) -> None:
        if max_wait <= 0:
            raise ValueError(f"max_wait must be positive, not {max_wait}")
        if skew < 0:
            raise ValueError(f"skew must not be negative, not {skew}")
        self.max_wait = max_wait
        self.skew = skew
        self.stats = CanaryStats()
        self.next_seq = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLE)
        self._pending: dict[int, float] = {}  # seq -> sent at
        self._order: deque[tuple[int, float]] = deque()  # (seq, sent at), every pending one, in order
        self._unconfirmed: set[int] = set()  # pending seqs written to a broken connection
        self._missing: dict[int, float] = {}  # declared missing, not seen since -> sent at
        self._missing_unconfirmed: set[int] = set()  # of _missing, written to a broken connection
        self._seen: dict[int, tuple[float, list[bytes]]] = {}  # seq -> (sent at, ULIDs), recent ones
        self._seen_order: deque[int] = deque()  # keys of _seen, in the order first seen
        self._by_ulid: SortedDict = SortedDict()  # ULID -> seq, of the recent seen records
        self._disordered: set[bytes] = set()  # ULIDs counted as out of order
        self._last_sent = -math.inf

    # --- what the writer reports ------------------------------------------------

    def send(self, n: int, now: float) -> range:
        """Reserve and record ``n`` new sequence numbers as sent at ``now``."""
        seqs = range(self.next_seq, self.next_seq + n)
        for seq in seqs:
            self._pending[seq] = now
            self._order.append((seq, now))
        self.next_seq += n
        self.stats.sent += n
        if n:
            self._last_sent = now
        return seqs

    def unconfirmed(self, seqs: range) -> int:
        """Lines ``seqs`` went to a connection that broke (possibly lost);
        returns how many of them are still pending."""
        # Only pending ones matter; they are at most max_wait worth of lines.
        lo = max(seqs.start, self._order[0][0] if self._order else seqs.stop)
        marked = 0
        for seq in range(lo, seqs.stop):
            if seq in self._pending and seq not in self._unconfirmed:
                self._unconfirmed.add(seq)
                marked += 1
        self.stats.unconfirmed += marked
        return marked

    # --- what the checker reports ----------------------------------------------------

    def observe(self, records: Iterable[tuple[bytes, int]], now: float) -> list[float]:
        """Take one query answer: ``(ULID, seq)`` pairs, in the order
        received.  Returns the latencies of the records seen for the first time."""
        latencies: list[float] = []
        in_answer: set[bytes] = set()
        for ulid, seq in records:
            if ulid in in_answer:  # the query's de-duplication failed
                self.stats.duplicates += 1
                continue
            in_answer.add(ulid)
            if ulid in self._by_ulid:
                continue  # the same record as in an earlier answer
            if not 0 <= seq < self.next_seq:
                self.stats.foreign += 1
                continue
            seen = self._seen.get(seq)
            if seen is not None:
                self.stats.duplicates += 1
                seen[1].append(ulid)
            else:
                sent_at = self._pending.pop(seq, None)
                if sent_at is None:
                    sent_at = self._missing.pop(seq, None)
                    self._missing_unconfirmed.discard(seq)
                    if sent_at is None:
                        # Seen long ago and forgotten, so its first copy's ULID
                        # lies well before the query window: this is another
                        # copy, stamped much later.  Remember it (from now).
                        self.stats.duplicates += 1
                        self._seen[seq] = (now, [ulid])
                        self._seen_order.append(seq)
                        self._place(ulid, seq)
                        continue
                    self.stats.late += 1
                self._unconfirmed.discard(seq)
                self.stats.seen += 1
                latency = max(0.0, now - sent_at)
                latencies.append(latency)
                self.latencies.append(latency)
                self._seen[seq] = (sent_at, [ulid])
                self._seen_order.append(seq)
            self._place(ulid, seq)
        return latencies

    def _place(self, ulid: bytes, seq: int) -> None:
        index = self._by_ulid
        index[ulid] = seq
        at = index.index(ulid)
        if at > 0:
            before = index.peekitem(at - 1)[1]
            if before > seq:
                self._disorder(ulid)
        if at + 1 < len(index):
            after_ulid, after = index.peekitem(at + 1)
            if after < seq:
                self._disorder(after_ulid)

    def _disorder(self, ulid: bytes) -> None:
        if ulid not in self._disordered:
            self._disordered.add(ulid)
            self.stats.out_of_order += 1

    def expire(self, now: float) -> list[int]:
        """Declare missing every pending record sent ``max_wait`` or more
        before ``now``; returns their sequence numbers.  Also forgets seen
        records that have left every future query window."""
        gone: list[int] = []
        order = self._order
        while order and order[0][1] + self.max_wait <= now:
            seq, sent_at = order.popleft()
            if self._pending.pop(seq, None) is None:
                continue  # seen meanwhile
            gone.append(seq)
            self._missing[seq] = sent_at
            self.stats.missing += 1
            if seq in self._unconfirmed:
                self._unconfirmed.discard(seq)
                self._missing_unconfirmed.add(seq)
                self.stats.missing_unconfirmed += 1
        while order and order[0][0] not in self._pending:
            order.popleft()  # seen ones at the front: nothing to wait for
        self._forget(now)
        return gone

    def _forget(self, now: float) -> None:
        # A seen record is kept (to recognise its duplicates and its
        # neighbours' order) until it was sent well before the window.
        horizon = self.window(now)[0] - 2 * self.skew - self.max_wait
        while self._seen_order:
            seq = self._seen_order[0]
            sent_at, ulids = self._seen[seq]
            if sent_at >= horizon:
                break
            self._seen_order.popleft()
            del self._seen[seq]
            for ulid in ulids:
                self._by_ulid.pop(ulid, None)
                self._disordered.discard(ulid)

    # --- what to ask, and the verdict ----------------------------------------------

    def window(self, now: float) -> tuple[float, float]:
        """``(from, to)`` in Unix seconds for the next query: from ``skew``
        before the oldest pending record (or the last send, or ``now``) to
        ``skew`` after ``now`` (the ingester's clock may be ahead of ours)."""
        oldest = self._order[0][1] if self._order else now
        if not self._order and self._last_sent > -math.inf:
            oldest = min(now, self._last_sent)
        return oldest - self.skew, now + self.skew

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def lost(self) -> int:
        """Records declared missing and not seen since."""
        return len(self._missing)

    @property
    def lost_unconfirmed(self) -> int:
        """Of ``lost``, those written to a connection that then broke."""
        return len(self._missing_unconfirmed)

    def settled(self) -> bool:
        """Nothing is pending: every record sent was seen or declared missing."""
        return not self._pending

    def ok(self) -> bool:
        """The verdict: nothing lost and nothing duplicated."""
        return self.lost == 0 and self.stats.duplicates == 0

    def latency_summary(self) -> tuple[float, float, float]:
        """``(p50, p99, max)`` over the recent latencies (NaN if none)."""
        values = sorted(self.latencies)
        return percentile(values, 50), percentile(values, 99), (values[-1] if values else math.nan)

    def _check(self) -> None:
        """Assert the invariants (for tests)."""
        assert not (set(self._pending) & set(self._missing))
        assert not (set(self._pending) & set(self._seen))
        assert not (set(self._missing) & set(self._seen))
        assert self._unconfirmed <= set(self._pending)
        assert self._missing_unconfirmed <= set(self._missing)
        assert set(self._pending) <= {seq for seq, _ in self._order}
        assert all(0 <= s < self.next_seq for s in self._pending)
        assert self.stats.seen + self.pending + self.lost == self.stats.sent
        assert set(self._seen) == set(self._seen_order)
        for seq, (_sent, ulids) in self._seen.items():
            assert all(self._by_ulid[u] == seq for u in ulids)
        assert self._disordered <= set(self._by_ulid)
