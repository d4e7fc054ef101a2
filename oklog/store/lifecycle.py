"""The store segment lifecycle, as an IO-free state machine.

Theory of operation: a store segment file moves

    active ──install──▶ flushed ──claim──▶ reading ──retire──▶ trashed ──purge──▶ purged
                         │   ▲                │                   ▲
                         │   └────release─────┘                   │
                         └──────────────────expire────────────────┘

``active`` is being written (a replicate upload, a compaction output);
``flushed`` is complete, synced and queryable; ``reading`` is the input of
a running compaction job (still queryable: the job's outputs are not
installed yet, or are installed next to it and de-duplicated at read
time); ``release`` gives it back as ``flushed`` when a job fails.
``retire`` ends a successful job (its records are in the outputs), and
``expire`` is retention (too old, or beyond the disk budget).  A
``trashed`` segment is never planned by a query again; it is removed
(``purged``) once its purge time has come and no running query still reads
it.  The file's extension is its state; the file layer
(``oklog.store.log``) asks ``next_state`` before each claim, release,
retire, expire and purge, so an illegal move raises ``IllegalTransition``
instead of touching the disk (purge, which works through the whole trash,
leaves such a file alone, logs it and goes on; installing a new file is
the one way into ``flushed`` from ``active``, written out in
``StoreLog._install``).
"""

from __future__ import annotations

import enum

from ..errors import IllegalTransition

__all__ = ["State", "TRANSITIONS", "next_state", "state_of"]


class State(enum.Enum):
    ACTIVE = "active"
    FLUSHED = "flushed"
    READING = "reading"
    TRASHED = "trashed"
    PURGED = "purged"


# (event, from-state) -> to-state.  Anything else is illegal.
TRANSITIONS: dict[tuple[str, State], State] = {
    ("install", State.ACTIVE): State.FLUSHED,
    ("claim", State.FLUSHED): State.READING,
    ("release", State.READING): State.FLUSHED,
    ("retire", State.READING): State.TRASHED,
    ("expire", State.FLUSHED): State.TRASHED,
    ("purge", State.TRASHED): State.PURGED,
}


def next_state(event: str, state: State) -> State:
    """The state ``event`` leads to from ``state``; ``IllegalTransition`` if none."""
    try:
        return TRANSITIONS[(event, state)]
    except KeyError:
        raise IllegalTransition(f"cannot {event} a store segment that is {state.value}") from None


def state_of(suffix: str) -> State:
    """The state a file extension (``.flushed``, ``flushed``) stands for."""
    try:
        return State(suffix.lstrip("."))
    except ValueError:
        raise IllegalTransition(f"{suffix!r} is not a store segment state") from None
