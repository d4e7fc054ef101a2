"""The ingest segment lifecycle, as an IO-free state machine.

Theory of operation: an ingester's segment moves

    active ──flush──▶ flushed ──claim──▶ pending ──commit──▶ deleted
                        ▲                   │
                        └──fail / expire────┘

``active`` is being written (by the line ports, or by one bulk upload,
which is discarded if the upload does not complete: ``active ──discard──▶
deleted``); ``flushed`` is complete and waits for a store node;
``pending`` has been handed to one store node by ``/ingest/next`` and must
be read and committed before ``deadline``, else it returns to ``flushed``
for another store node.  A commit before the segment was read
whole is refused (``SegmentNotRead``): the API marks it read only once its
last byte went out, so a store that lost the stream half-way cannot commit
(and delete) data it does not hold.

``IngestBook`` only keeps the books; the file layer (``oklog.ingest.log``)
performs the renames it is told to and calls back here.  Time is passed in,
so tests need no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sortedcontainers import SortedSet

from ..errors import IllegalTransition, SegmentNotRead, UnknownSegment


class State(enum.Enum):
    ACTIVE = "active"
    FLUSHED = "flushed"
    PENDING = "pending"
    DELETED = "deleted"


# (event, from-state) -> to-state.  Anything else is illegal.
TRANSITIONS: dict[tuple[str, State], State] = {
    ("flush", State.ACTIVE): State.FLUSHED,
    ("discard", State.ACTIVE): State.DELETED,
    ("claim", State.FLUSHED): State.PENDING,
    ("commit", State.PENDING): State.DELETED,
    ("fail", State.PENDING): State.FLUSHED,
    ("expire", State.PENDING): State.FLUSHED,
}


def next_state(event: str, state: State) -> State:
    try:
        return TRANSITIONS[(event, state)]
    except KeyError:
        raise IllegalTransition(f"cannot {event} a segment that is {state.value}") from None


@dataclass
class Entry:
    state: State
    size: int = 0
    read: bool = False
    deadline: float = 0.0


class IngestBook:
    """Which segment is in which state; picks the next one for a store."""

    def __init__(self, pending_timeout: float) -> None:
        self.pending_timeout = pending_timeout
        self._entries: dict[str, Entry] = {}
        self._flushed: SortedSet = SortedSet()  # oldest first: ids are ULIDs

    # -- transitions ----------------------------------------------------------

    def activate(self, seg_id: str) -> None:
        if seg_id in self._entries:
            raise IllegalTransition(f"segment {seg_id} already exists")
        self._entries[seg_id] = Entry(State.ACTIVE)

    def flushed(self, seg_id: str, size: int) -> None:
        """An active segment was closed and renamed ``.flushed``."""
        entry = self._entries[seg_id]
        entry.state = next_state("flush", entry.state)
        entry.size = size
        self._flushed.add(seg_id)

    def discard(self, seg_id: str) -> None:
        """An active segment was abandoned (an incomplete bulk upload) and removed."""
        entry = self._entries.get(seg_id)
        if entry is None:
            raise UnknownSegment(f"no segment {seg_id!r}")
        entry.state = next_state("discard", entry.state)
        del self._entries[seg_id]

    def recovered(self, seg_id: str, size: int) -> None:
        """A ``.flushed`` file found at start-up (crash recovery)."""
        self._entries[seg_id] = Entry(State.FLUSHED, size=size)
        self._flushed.add(seg_id)

    def claim(self, now: float) -> str | None:
        """Hand out the oldest flushed segment, or None when there is none."""
        if not self._flushed:
            return None
        seg_id = self._flushed.pop(0)
        entry = self._entries[seg_id]
        entry.state = next_state("claim", entry.state)
        entry.read = False
        entry.deadline = now + self.pending_timeout
        return seg_id

    def pending(self, seg_id: str) -> None:
        """Raise ``UnknownSegment`` unless ``seg_id`` is pending."""
        self._pending(seg_id)

    def mark_read(self, seg_id: str) -> None:
        entry = self._pending(seg_id)
        entry.read = True

    def commit(self, seg_id: str) -> None:
        entry = self._pending(seg_id)
        if not entry.read:
            raise SegmentNotRead(f"segment {seg_id} has not been read")
        entry.state = next_state("commit", entry.state)
        del self._entries[seg_id]

    def fail(self, seg_id: str) -> None:
        entry = self._pending(seg_id)
        entry.state = next_state("fail", entry.state)
        self._flushed.add(seg_id)

    def expire(self, now: float) -> list[str]:
        """Pending segments past their deadline go back to flushed."""
        expired = [
            seg_id
            for seg_id, e in self._entries.items()
            if e.state is State.PENDING and e.deadline <= now
        ]
        for seg_id in expired:
            entry = self._entries[seg_id]
            entry.state = next_state("expire", entry.state)
            self._flushed.add(seg_id)
        return expired

    # -- queries --------------------------------------------------------------

    def state_of(self, seg_id: str) -> State | None:
        entry = self._entries.get(seg_id)
        return entry.state if entry else None

    def _pending(self, seg_id: str) -> Entry:
        entry = self._entries.get(seg_id)
        if entry is None or entry.state is not State.PENDING:
            raise UnknownSegment(f"no pending segment {shown_id(seg_id)}")
        return entry

    def counts(self) -> dict[str, dict[str, int]]:
        out = {s.value: {"segments": 0, "bytes": 0} for s in State if s is not State.DELETED}
        for e in self._entries.values():
            out[e.state.value]["segments"] += 1
            out[e.state.value]["bytes"] += e.size
        return out

    def oldest(self) -> dict[str, str | None]:
        """The oldest segment id (a ULID: its creation time) in each state."""
        out: dict[str, str | None] = {s.value: None for s in State if s is not State.DELETED}
        for seg_id, e in self._entries.items():
            current = out[e.state.value]
            if current is None or seg_id < current:
                out[e.state.value] = seg_id
        return out

    def unconsumed(self) -> int:
        """Flushed plus pending segments: what a draining ingester waits for."""
        return sum(1 for e in self._entries.values() if e.state in (State.FLUSHED, State.PENDING))

    def _check(self) -> None:
        flushed = {k for k, e in self._entries.items() if e.state is State.FLUSHED}
        assert flushed == set(self._flushed), "flushed set out of sync"
        assert list(self._flushed) == sorted(self._flushed)


def shown_id(seg_id: str, limit: int = 64) -> str:
    """A segment id for an error message: quoted, a long one cut short."""
    return repr(seg_id) if len(seg_id) <= limit else repr(seg_id[:limit]) + f"... ({len(seg_id)} chars)"
