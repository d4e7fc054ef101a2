"""The bounded queue between a stream's producer and its reader.

Theory of operation
-------------------
A live stream must never slow down what feeds it: the store's write path
(a replicate upload) or the fan-out reading every store.  So ``put`` never
waits.  The queue holds at most ``max_bytes`` of record blocks; when a put
would exceed that, the *oldest* queued records are dropped (whole lines),
counted, and reported to the reader before anything else it gets, as a
``#dropped N`` notice line (``oklog.stream.wire``).

Why the oldest: a live tail is for watching what happens now; a reader that
fell behind and catches up again sees the most recent records rather than a
stale backlog, and the notice tells it exactly how many it missed (the same
policy as ``oklog forward -drop``).

``get`` waits until there is something to hand out: a drop notice, queued
records (all of them, joined once, up to ``max_chunk`` bytes), or ``b""``
once the queue is closed and empty.  Everything runs in one trio thread.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import trio

from oklog.stream.wire import dropped_notice

__all__ = ["DropQueue", "QUEUE_BYTES"]

#: Default bound of one stream client's queue.
QUEUE_BYTES = 4 << 20
_CHUNK = 256 << 10


class DropQueue:
    """A FIFO of record blocks that drops its oldest records when full."""

    def __init__(self, max_bytes: int = QUEUE_BYTES, *, max_chunk: int = _CHUNK,
                 on_drop: Callable[[int], None] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.max_chunk = max_chunk
        self.on_drop = on_drop
        self.dropped = 0  # records dropped here, in all
        self._unreported = 0  # dropped here or upstream, not told to the reader yet
        self._items: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._wake = trio.Event()

    def __len__(self) -> int:
        """Bytes queued."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, block: bytes) -> int:
        """Queue a block of whole records, never waiting; returns how many
        records were dropped to make room (oldest first)."""
        if self._closed or not block:
            return 0
        dropped = 0
        if len(block) > self.max_bytes:  # keep only its newest whole lines
            cut = block.find(b"\n", len(block) - self.max_bytes - 1) + 1
            dropped += block.count(b"\n", 0, cut)
            block = block[cut:]
        if block:
            self._items.append(block)
            self._size += len(block)
        while self._size > self.max_bytes:
            old = self._items.popleft()
            self._size -= len(old)
            dropped += old.count(b"\n")
        if dropped:
            self.dropped += dropped
            self._unreported += dropped
            if self.on_drop is not None:
                self.on_drop(dropped)
        self._wake.set()
        return dropped

    def report_dropped(self, count: int) -> None:
        """Records dropped before they reached this queue (upstream): the
        reader is told with this queue's own drops."""
        if count > 0 and not self._closed:
            self._unreported += count
            self._wake.set()

    def close(self) -> None:
        """No more puts; ``get`` hands out what is left, then ``b""``."""
        self._closed = True
        self._wake.set()

    async def get(self) -> bytes:
        """The next chunk for the reader: a drop notice, queued records, or
        ``b""`` once closed and drained."""
        while not self._items and not self._unreported and not self._closed:
            self._wake = trio.Event()
            await self._wake.wait()
        if self._unreported:
            count, self._unreported = self._unreported, 0
            return dropped_notice(count)
        if not self._items:
            return b""
        parts = [self._items.popleft()]
        size = len(parts[0])
        while self._items and size + len(self._items[0]) <= self.max_chunk:
            parts.append(self._items.popleft())
            size += len(parts[-1])
        self._size -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)
