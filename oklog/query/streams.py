"""Merging sorted streams of record blocks, without holding them whole."""

from __future__ import annotations

from typing import AsyncGenerator, AsyncIterator, Protocol

from ..records.merge import merge_records
from ..records.search import bisect, last_ulid

__all__ = ["ShortSink", "merge_streams"]


class ShortSink(Protocol):
    """Where a counting merge puts records seen in too few sources
    (``oklog.query.copies.ShortRecords``); ``full``: stop counting."""

    full: bool

    def add(self, block: bytes) -> None: ...


async def merge_streams(sources: list[AsyncIterator[bytes]], *, trusted: bool = False, copies: int = 0,
                        short: ShortSink | None = None) -> AsyncGenerator[bytes, None]:
    """Block-level k-way merge of sorted record streams, de-duplicated.

    ``trusted``: no source repeats a ULID (``merge_records``'
    ``trusted_unique``; true of every store's answer), which spares the
    intra-source duplicate checks.

    ``copies``/``short`` (read repair): records found in fewer than
    ``copies`` of the sources go to ``short`` as well, until it is ``full``.
    Every copy of a ULID is in the same round (each round takes every line
    up to the smallest last ULID of the sources still streaming), so the
    count is exact; a part only one source has is reported whole, and the
    counting itself stays inside ``merge_records`` (C-level on the happy
    path, where every record has its copies).
    """
    if len(sources) == 1 and short is None:  # one store: nothing to merge, blocks pass through
        async for block in sources[0]:
            yield block
        return
    current: list[bytes] = [b""] * len(sources)
    open_: list[bool] = [True] * len(sources)
    while True:
        for i, src in enumerate(sources):
            while open_[i] and not current[i]:
                try:
                    current[i] = await src.__anext__()
                except StopAsyncIteration:
                    open_[i] = False
        if not any(current):
            return
        streaming = [last_ulid(current[i]) for i in range(len(sources)) if open_[i]]
        bound = min(streaming) if streaming else b"\xff"  # above any line
        parts: list[bytes] = []
        for i, block in enumerate(current):
            if not block:
                continue
            cut = bisect(block, bound, after=True)
            parts.append(block[:cut])
            current[i] = block[cut:]
        parts = [p for p in parts if p]
        if not parts:
            # Only a peer's unsorted block gets here (its last line is not
            # its largest): take the whole block that set the bound, so the
            # merge always moves (unsorted in, unsorted out, never a hang).
            i = min((i for i in range(len(sources)) if current[i]),
                    key=lambda i: last_ulid(current[i]) if open_[i] else b"\xff")
            parts, current[i] = [current[i]], b""
        counting = short is not None and copies > 1 and not short.full
        if len(parts) == 1:
            if counting:
                assert short is not None
                short.add(parts[0])
            yield parts[0]
        elif counting:
            assert short is not None
            for out in merge_records([[p] for p in parts], trusted_unique=trusted, copies_needed=copies,
                                     on_short=short.add):
                yield out
        else:
            for out in merge_records([[p] for p in parts], trusted_unique=trusted):
                yield out
