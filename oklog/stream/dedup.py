"""De-duplication of a live stream by ULID, within a time window.

Every record reaches a cluster stream once per store that wrote it (the
replication factor, and more after a retried consume), at about the same
time.  ``Deduper`` passes the first copy of each ULID through at once and
drops every copy that arrives within ``window`` seconds after it.  Unlike
OK Log, which held every record back for the whole window to sort it
(so the tail always lagged by the window), records are not delayed: they
come out in the order they arrive, which is the order the stores wrote
them.

Memory is bounded: ULIDs are remembered for ``window`` seconds, and at most
``max_entries`` of them (beyond that the oldest are forgotten early, so a
very late duplicate of a very busy stream may get through).  ``clock`` is
injected (seconds, monotonic); IO-free.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

__all__ = ["Deduper", "MAX_ENTRIES"]

MAX_ENTRIES = 1 << 20
_ULID = 26


class Deduper:
    """Drops records whose ULID was seen in the last ``window`` seconds."""

    def __init__(self, window: float, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        if window < 0:
            raise ValueError("window must not be negative")
        self.window = window
        self.clock = clock
        self.max_entries = max_entries
        self.duplicates = 0  # records dropped, in all
        self._seen: set[bytes] = set()
        self._batches: deque[tuple[float, list[bytes]]] = deque()  # (when seen, ULIDs), oldest first

    def __len__(self) -> int:
        """ULIDs remembered now."""
        return len(self._seen)

    def filter(self, block: bytes) -> bytes:
        """The records of ``block`` (whole lines) not seen within the
        window, in order, as one block (``b""`` if none)."""
        if not block:
            return b""
        now = self.clock()
        self._expire(now)
        lines = block.split(b"\n")
        lines.pop()  # after the final LF
        ulids = [line[:_ULID] for line in lines]
        seen = self._seen
        if seen.isdisjoint(ulids) and len(set(ulids)) == len(ulids):
            kept, fresh = block, ulids  # the common case: no per-record work
        else:
            keep: list[bytes] = []
            fresh = []
            for line, u in zip(lines, ulids):
                if u in seen:
                    continue
                seen.add(u)
                fresh.append(u)
                keep.append(line)
            kept = b"\n".join(keep) + b"\n" if keep else b""
        self.duplicates += len(lines) - len(fresh)
        if self.window > 0 and fresh:
            seen.update(fresh)
            self._batches.append((now, fresh))
            self._bound()
        elif not self.window:
            seen.clear()
        return kept

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        batches, seen = self._batches, self._seen
        while batches and batches[0][0] < horizon:
            seen.difference_update(batches.popleft()[1])

    def _bound(self) -> None:
        batches, seen = self._batches, self._seen
        while len(seen) > self.max_entries and len(batches) > 1:
            seen.difference_update(batches.popleft()[1])
