"""Counting copies of records across stores, for read repair (no IO).

Every record should live on ``replication_factor`` distinct store nodes.
Two places count copies, both over streams that are sorted by ULID:

- **a user query** (``/store/query``): the merge of the stores' answers
  already meets every copy of a ULID in one batch (``merge_records``), so it
  reports the records seen on fewer stores than the factor, line by line or
  block by block, to a :class:`ShortRecords` -- a byte-capped buffer of
  those records (what does not fit is counted, not kept: a later query or
  ``oklog repair`` catches it);
- **a repair check** (``oklog repair``, and the check a query's findings get
  before anything is written): every store answers with the ULIDs alone
  (``/store/_query?ids=true``, lines of ``ULID LF``), and a
  :class:`CopyCounter` merges those streams block by block with numpy,
  knowing *which* stores hold each record, so the records can go to stores
  that lack them.  Memory is one block per store plus the under-replicated
  records found (capped).

Then :func:`plan_targets` picks, for each under-replicated record, the
stores to copy it to (stores that answered and lack it, at random per
holder set so repairs spread), and :func:`fetch_ranges` cuts the records to
fetch from one holder into a few ULID ranges (a few ``_query`` calls, not
one per record, and not the whole step's payloads either).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from ..errors import CorruptSegment
from ..lines import Pieces
from ..records.search import bisect, last_ulid, ulid_of
from ..ulid import ULID_LEN

__all__ = [
    "CopyCounter", "ShortRecords", "Targets", "fetch_ranges", "ids_block", "ids_of_lines",
    "plan_targets", "select",
]

_LF = b"\n"
#: One line of an id-only answer: ``ULID LF`` (27 bytes).
_ID = np.dtype([("u", f"S{ULID_LEN}"), ("n", "S1")])
_KEY = f"S{ULID_LEN}"


# --- id-only answers ---------------------------------------------------------------


def ids_block(block: bytes) -> bytes:
    """``ULID LF`` for every record of a block of whole records (C-level
    split, slice and join; no per-record Python)."""
    if not block:
        return b""
    lines = block.split(_LF)
    lines.pop()
    lines = list(map(ulid_of, lines))
    lines.append(b"")
    return _LF.join(lines)


def ids_of_lines(block: bytes) -> np.ndarray:
    """The ULIDs of an id-only block as a sorted-as-given array of S26.

    ``CorruptSegment`` when the block is not whole ``ULID LF`` lines.
    """
    if len(block) % (ULID_LEN + 1):
        raise CorruptSegment("id-only answer: not whole ULID lines")
    rows = np.frombuffer(block, dtype=_ID)
    if not bool((rows["n"] == _LF).all()):
        raise CorruptSegment("id-only answer: not whole ULID lines")
    return rows["u"]


# --- what a query's merge found --------------------------------------------------------


class ShortRecords:
    """Records a merge saw on too few stores, kept up to ``cap`` bytes.

    ``add`` takes one or more whole records (in output order, so the kept
    records stay sorted).  Once a block does not fit, the buffer keeps the
    records of it that do and is ``full``: it keeps nothing more, counts
    what it is offered (``dropped``), and the merge may stop counting
    altogether.
    """

    __slots__ = ("cap", "pieces", "records", "dropped", "full", "lo", "hi")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.pieces = Pieces()
        self.records = 0
        self.dropped = 0
        self.full = cap <= 0
        self.lo = b""  # first kept ULID
        self.hi = b""  # last kept ULID

    def add(self, block: bytes) -> None:
        if self.full:
            self.dropped += block.count(_LF)
            return
        room = self.cap - self.pieces.size
        if len(block) > room:  # keep the whole records that fit
            self.full = True
            cut = block.rfind(_LF, 0, room) + 1
            self.dropped += block.count(_LF, cut)
            block = block[:cut]
            if not block:
                return
        if not self.pieces:
            self.lo = block[:ULID_LEN]
        self.hi = last_ulid(block)
        self.pieces.add(block)
        self.records += block.count(_LF)

    def __bool__(self) -> bool:
        return self.records > 0

    def take(self) -> bytes:
        """The kept records as one block (the buffer is emptied)."""
        return self.pieces.take()


# --- counting holders from id-only streams --------------------------------------------


@dataclass
class CopyCounter:
    """Streams of sorted ULIDs (one per store) in; per ULID, its holders out.

    The driver feeds each source its next block (``feed(i, block)``, or
    ``None`` at its end) whenever it ``needs`` one, then calls ``count``,
    which settles every ULID up to the smallest last ULID among the sources
    still open (no later block can hold a smaller one, so all its copies
    are in hand) -- the same bound as the query merge.  ``done`` when every
    source ended and everything is counted.

    Results: ``checked`` distinct ULIDs; ``under`` of them on fewer than
    ``rf`` sources; of those, the first ``limit`` are kept in ``keys``
    (sorted S26), ``holders`` (one row per key: source indices, ``-1``
    padded to ``rf - 1`` columns) and ``positions`` (rank among all checked
    ULIDs, for :func:`fetch_ranges`); the rest are counted in ``dropped``.
    A source that repeats a ULID counts once.
    """

    sources: int
    rf: int
    limit: int = 1_000_000
    checked: int = 0
    under: int = 0
    dropped: int = 0
    _current: list[np.ndarray] = field(default_factory=list)
    _open: list[bool] = field(default_factory=list)
    _keys: list[np.ndarray] = field(default_factory=list)
    _holders: list[np.ndarray] = field(default_factory=list)
    _positions: list[np.ndarray] = field(default_factory=list)
    _kept: int = 0

    def __post_init__(self) -> None:
        if self.rf < 2:
            raise ValueError("counting copies needs a replication factor of at least 2")
        self._current = [np.empty(0, _KEY) for _ in range(self.sources)]
        self._open = [True] * self.sources

    def needs(self) -> list[int]:
        """Sources to feed before the next ``count``."""
        return [i for i in range(self.sources) if self._open[i] and not len(self._current[i])]

    def feed(self, i: int, block: bytes | None) -> None:
        """Source ``i``'s next id-only block, or ``None``: it has ended."""
        if block is None:
            self._open[i] = False
            return
        keys = ids_of_lines(block)
        if len(self._current[i]):
            keys = np.concatenate([self._current[i], keys])
        self._current[i] = keys

    @property
    def done(self) -> bool:
        return not any(self._open) and not any(len(c) for c in self._current)

    def count(self) -> None:
        """Settle everything that can be settled now (see the class docstring)."""
        streaming = [c[-1] for c, o in zip(self._current, self._open) if o and len(c)]
        if any(o and not len(c) for c, o in zip(self._current, self._open)):
            return  # a source still owes its next block
        parts: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for i, keys in enumerate(self._current):
            if not len(keys):
                continue
            cut = len(keys) if not streaming else int(np.searchsorted(keys, min(streaming), "right"))
            if cut:
                parts.append(keys[:cut])
                owners.append(np.full(cut, i, np.int32))
                self._current[i] = keys[cut:]
        if parts:
            self._settle(np.concatenate(parts), np.concatenate(owners))

    def finish(self) -> None:
        """Settle what is left once every source ended."""
        for i in range(self.sources):
            self._open[i] = False
        self.count()

    def _settle(self, keys: np.ndarray, src: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, src = keys[order], src[order]
        if len(keys) > 1:  # a source repeating a ULID counts once
            new = np.empty(len(keys), bool)
            new[0] = True
            np.not_equal(keys[1:], keys[:-1], out=new[1:])
            new[1:] |= src[1:] != src[:-1]
            if not new.all():
                keys, src = keys[new], src[new]
        first = np.empty(len(keys), bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, len(keys)))
        short = np.flatnonzero(counts < self.rf)
        base = self.checked
        self.checked += len(starts)
        if not len(short):
            return
        self.under += len(short)
        room = max(0, self.limit - self._kept)
        if len(short) > room:
            self.dropped += len(short) - room
            short = short[:room]
        if not len(short):
            return
        self._kept += len(short)
        width = self.rf - 1
        rows = np.full((len(short), width), -1, np.int32)
        for j in range(width):  # columns, not records: rf - 1 vector steps
            has = counts[short] > j
            rows[has, j] = src[starts[short][has] + j]
        self._keys.append(keys[starts[short]])
        self._holders.append(rows)
        self._positions.append(base + short)

    @property
    def keys(self) -> np.ndarray:
        return np.concatenate(self._keys) if self._keys else np.empty(0, _KEY)

    @property
    def holders(self) -> np.ndarray:
        return (np.concatenate(self._holders) if self._holders
                else np.empty((0, self.rf - 1), np.int32))

    @property
    def positions(self) -> np.ndarray:
        return np.concatenate(self._positions) if self._positions else np.empty(0, np.int64)


# --- where copies go, where they come from ----------------------------------------------


@dataclass
class Targets:
    """The plan for one batch of under-replicated records (``keys`` order).

    ``source[k]``: the store to fetch record ``k`` from (a holder);
    ``to[t]``: a boolean mask of the records that go to store ``t``;
    ``short_after[k]``: still fewer than ``rf`` copies even if every copy
    succeeds (too few live stores lack it).
    """

    source: np.ndarray
    to: dict[int, np.ndarray]
    short_after: np.ndarray


def plan_targets(holders: np.ndarray, stores: int, rf: int, rng: random.Random,
                 eligible: set[int] | None = None) -> Targets:
    """Pick stores for each under-replicated record (rows of ``holders``).

    Records with the same holders go to the same randomly chosen stores
    among those that lack them (``eligible``: the stores that may receive,
    default all ``stores``), so one repair writes few segments and repairs
    spread over the cluster across runs.
    """
    n = len(holders)
    eligible = set(range(stores)) if eligible is None else eligible
    to: dict[int, np.ndarray] = {}
    short_after = np.zeros(n, bool)
    if not n:
        return Targets(np.empty(0, np.int32), to, short_after)
    sets, inverse = np.unique(holders, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    for g, row in enumerate(sets):
        have = {int(h) for h in row if h >= 0}
        lacking = sorted(eligible - have)
        chosen = rng.sample(lacking, min(len(lacking), rf - len(have)))
        members = inverse == g
        if len(have) + len(chosen) < rf:
            short_after |= members
        for t in chosen:
            to[t] = to[t] | members if t in to else members
    return Targets(holders[:, 0].copy(), to, short_after)


def fetch_ranges(keys: np.ndarray, positions: np.ndarray, *, gap: int = 64,
                 max_ranges: int = 32) -> list[tuple[bytes, bytes]]:
    """Inclusive ULID ranges covering ``keys`` (sorted), for ``_query`` calls.

    ``positions`` are the keys' ranks among every record checked: two keys
    closer than ``gap`` records share a range (fetching a few healthy
    records in between is cheaper than another request); the gap doubles
    until there are at most ``max_ranges`` ranges.
    """
    if not len(keys):
        return []
    while True:
        breaks = np.flatnonzero(np.diff(positions) > gap) + 1
        if len(breaks) < max_ranges:
            break
        gap *= 2
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(keys)])) - 1
    return [(bytes(keys[s]), bytes(keys[e])) for s, e in zip(starts, ends)]


def select(block: bytes, keys: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """The lines of ``block`` (whole records) whose ULID is in ``keys``
    (sorted S26), and each kept line's index in ``keys``."""
    if not block or not len(keys):
        return [], np.empty(0, np.int64)
    lines = block.split(_LF)
    lines.pop()
    ulids = np.array(list(map(ulid_of, lines)), dtype=_KEY)
    at = np.searchsorted(keys, ulids)
    np.minimum(at, len(keys) - 1, out=at)
    hit = keys[at] == ulids
    kept = [line for line, h in zip(lines, hit.tolist()) if h]
    return kept, at[hit]


def lines_to(lines: list[bytes], mask: np.ndarray) -> bytes:
    """The ``lines`` whose ``mask`` entry is set, as one block of records."""
    chosen = [line for line, m in zip(lines, mask.tolist()) if m]
    if not chosen:
        return b""
    chosen.append(b"")
    return _LF.join(chosen)


def clip_block(block: bytes, hi: bytes) -> bytes:
    """The records of a sorted block with a ULID ``<= hi``."""
    if not block or block[:ULID_LEN] > hi:
        return b""
    if last_ulid(block) <= hi:
        return block
    return block[: bisect(block, hi, after=True)]
