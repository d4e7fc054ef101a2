"""Store segment names: ``FROMULID-TOULID.STATE``.

A store segment file is named after the smallest and the largest ULID
inside and its lifecycle state (``flushed``, ``reading``, ...).
:class:`SegmentName` is that ``[lo, hi]`` pair as a value; the state is not
part of it (a rename changes the state, not the segment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from oklog.errors import CorruptSegment
from oklog.records.search import first_ulid, last_ulid
from oklog.ulid import ULID_LEN, ULID_PATTERN

__all__ = ["SegmentName"]

_NAME_RE = re.compile(
    rb"(" + ULID_PATTERN + rb")-(" + ULID_PATTERN + rb")\.([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)"
)


@dataclass(frozen=True, order=True, slots=True)
class SegmentName:
    """The ``[lo, hi]`` ULID range of a store segment (both inclusive).

    ``lo`` and ``hi`` are the 26-byte ASCII ULIDs of the first and last record.
    Ordering is by ``(lo, hi)``.
    """

    lo: bytes
    hi: bytes

    def __post_init__(self) -> None:
        if len(self.lo) != ULID_LEN or len(self.hi) != ULID_LEN:
            raise CorruptSegment(f"a segment name needs two {ULID_LEN}-byte ULIDs: {self!r}")
        if self.lo > self.hi:
            raise CorruptSegment(f"a segment name with FROM > TO: {self!r}")

    def filename(self, state: str) -> str:
        """The file name for this segment in ``state``: ``LO-HI.state``."""
        return f"{self.lo.decode('ascii')}-{self.hi.decode('ascii')}.{state}"

    @classmethod
    def parse(cls, filename: str) -> tuple[SegmentName, str]:
        """Split a file name (no directory) into its name and state.

        ``"01H...-01H....flushed"`` gives ``(SegmentName(...), "flushed")``.
        The state is everything after the first dot (``"flushed.zst"`` is a
        valid state); which states exist is the caller's business.  Anything
        else -- wrong length, lowercase or non-Crockford characters, ``lo >
        hi``, no state -- raises :class:`~oklog.errors.CorruptSegment`.
        """
        try:
            raw = filename.encode("ascii")
        except UnicodeEncodeError:
            raise CorruptSegment(f"not a segment file name: {filename!r}") from None
        m = _NAME_RE.fullmatch(raw)
        if m is None:
            raise CorruptSegment(f"not a segment file name: {filename!r}")
        lo, hi, state = m.groups()
        if lo > hi:
            raise CorruptSegment(f"segment file name with FROM > TO: {filename!r}")
        return cls(lo, hi), state.decode("ascii")

    @classmethod
    def of_block(cls, block: bytes) -> SegmentName:
        """The name of a non-empty, sorted block of records (``LF``-ended).

        Reads the first ULID and the last line's ULID; does not check the
        lines in between.  Raises :class:`~oklog.errors.CorruptSegment` if
        the block is empty or its first/last line is too short.
        """
        if not block.endswith(b"\n"):
            raise CorruptSegment("segment block is empty or does not end with LF")
        lo, hi = first_ulid(block), last_ulid(block)
        if b"\n" in lo or b"\n" in hi or len(lo) != ULID_LEN or len(hi) != ULID_LEN:
            raise CorruptSegment("segment block line too short to hold a ULID")
        if lo > hi:
            raise CorruptSegment("segment block is not sorted (first ULID > last)")
        return cls(lo, hi)

    def overlaps(self, lo: bytes, hi: bytes) -> bool:
        """Whether this range shares at least one ULID with ``[lo, hi]``."""
        return self.lo <= hi and lo <= self.hi

    def contains(self, ulid: bytes) -> bool:
        """Whether ``ulid`` falls inside ``[lo, hi]``."""
        return self.lo <= ulid <= self.hi
