"""The store's live-tail tap: newly written records → stream subscribers.

Theory of operation
-------------------
Each store node has one ``Hub``.  A live stream subscribes with a filter
(the query's matcher) and gets a ``DropQueue`` of matching records.  The
store's write path (``StoreLog.write_segment``, every replicate upload,
over HTTP or from this node itself) asks the hub for a ``Tap`` when an
upload starts: ``None`` when nobody subscribes, so the write path pays one
attribute lookup per upload and nothing per block.  Otherwise the tap sees
every validated block (in the upload's worker thread, next to compression:
matching never runs on the event loop) and keeps each subscriber's matches;
once the segment is installed -- its records are queryable from now on --
``publish`` hands them to the subscribers' queues (on the event loop).  A
failed upload publishes nothing; its records come again with the retry.

Nothing here ever waits for a subscriber: what a tap holds per subscriber is
bounded like the subscriber's queue (oldest matches dropped and counted),
and queues drop their oldest records when full (``oklog.stream.queue``).
A subscriber that joins during an upload sees the next one.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

from oklog.stream.queue import QUEUE_BYTES, DropQueue

__all__ = ["Filter", "Hub", "Subscription", "Tap"]


class Filter(Protocol):
    """What a subscription matches records with (``oklog.query.scan.Matcher``)."""

    def grep(self, blocks: list[bytes]) -> bytes:
        """The matching records of ``blocks`` (each whole records), joined."""
        ...


class Subscription:
    """One live stream on this store: its filter and its queue."""

    def __init__(self, matcher: Filter, queue: DropQueue) -> None:
        self.matcher = matcher
        self.queue = queue


class Hub:
    """The subscribers of one store's newly written records."""

    def __init__(self, *, queue_bytes: int = QUEUE_BYTES,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.queue_bytes = queue_bytes
        self.on_drop = on_drop
        self._subscribers: dict[Subscription, None] = {}  # in subscription order

    def __len__(self) -> int:
        return len(self._subscribers)

    def add(self, matcher: Filter) -> Subscription:
        """Receive the matching records of every upload that starts from
        now on, until ``remove``."""
        sub = Subscription(matcher, DropQueue(self.queue_bytes, on_drop=self.on_drop))
        self._subscribers[sub] = None
        return sub

    def remove(self, sub: Subscription) -> None:
        """End a subscription (its queue is closed; idempotent)."""
        self._subscribers.pop(sub, None)
        sub.queue.close()

    @contextmanager
    def subscribe(self, matcher: Filter) -> Iterator[Subscription]:
        """``add`` for the duration of a ``with`` block."""
        sub = self.add(matcher)
        try:
            yield sub
        finally:
            self.remove(sub)

    def close(self) -> None:
        """End every subscription's stream (node shutdown): their queues
        hand out what is left, then end."""
        for sub in list(self._subscribers):
            sub.queue.close()

    def tap(self) -> "Tap | None":
        """A tap for one upload; None (nothing to do) without subscribers."""
        if not self._subscribers:
            return None
        return Tap(list(self._subscribers), self.queue_bytes, self.on_drop)


class Tap:
    """The matches of one upload, per subscriber present when it began."""

    def __init__(self, subscribers: list[Subscription], max_bytes: int,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self._held: list[tuple[Subscription, deque[bytes], list[int]]] = [
            (sub, deque(), [0, 0]) for sub in subscribers]  # [bytes held, records dropped]

    def see(self, block: bytes) -> None:
        """Match one block of written records (any thread; touches only
        this tap)."""
        for sub, held, counts in self._held:
            if sub.queue.closed:
                continue
            matched = sub.matcher.grep([block])
            if not matched:
                continue
            held.append(matched)
            counts[0] += len(matched)
            while counts[0] > self.max_bytes and len(held) > 1:
                old = held.popleft()
                counts[0] -= len(old)
                counts[1] += old.count(b"\n")

    def publish(self) -> None:
        """The upload is stored: hand every subscriber its matches (event
        loop; never waits)."""
        for sub, held, counts in self._held:
            if counts[1]:
                if self.on_drop is not None:
                    self.on_drop(counts[1])
                sub.queue.report_dropped(counts[1])
            for block in held:
                sub.queue.put(block)
        self._held = []
