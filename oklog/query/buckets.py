"""Time buckets of a histogram, and counting records into them (no IO).

A histogram over the inclusive millisecond range ``[from_ms, to_ms]``
uses buckets of one *step*, a round duration (1 ms, 2 ms, 5 ms, ... 1 s,
2 s, 5 s, 10 s, 15 s, 30 s, 1 m, ... 1 h, 2 h, 3 h, 6 h, 12 h, 1 d, 2 d,
7 d, then doublings of 7 d): the smallest step that needs no more than the
requested number of buckets.  Bucket boundaries are multiples of the step
since the Unix epoch (UTC), so a bucket of 1 m starts on a whole minute and
two histograms with the same step line up.  Bucket ``i`` starts at
``start(i)``; the first and the last bucket may reach outside the range
(only records inside it are counted).  Everything is integer arithmetic,
so every node computes the same layout from the same ``(from, to, n)``.

``count_block`` counts a block of whole record lines (or of bare ULIDs, one
a line) into the buckets with numpy: the time prefix of every line is
decoded at once, no per-record Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oklog.errors import BadQuery
from oklog.ulid import ALPHABET, TIME_LEN

__all__ = ["DEFAULT_BUCKETS", "MAX_BUCKETS", "Buckets", "parse_buckets"]

DEFAULT_BUCKETS = 60
MAX_BUCKETS = 1000

_S, _M, _H, _D = 1000, 60_000, 3_600_000, 86_400_000
STEPS: tuple[int, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500,
    _S, 2 * _S, 5 * _S, 10 * _S, 15 * _S, 30 * _S,
    _M, 2 * _M, 5 * _M, 10 * _M, 15 * _M, 30 * _M,
    _H, 2 * _H, 3 * _H, 6 * _H, 12 * _H,
    _D, 2 * _D, 7 * _D,
)

# Crockford base32 character -> digit (uppercase only: stored ULIDs are canonical)
_DIGIT = np.zeros(256, np.int64)
for _i, _c in enumerate(ALPHABET):
    _DIGIT[_c] = _i
_SHIFTS = np.array([5 * (TIME_LEN - 1 - k) for k in range(TIME_LEN)], np.int64)
_COLUMNS = np.arange(TIME_LEN)


@dataclass(frozen=True)
class Buckets:
    """The bucket layout of one histogram (see the module docstring)."""

    from_ms: int  # inclusive
    to_ms: int  # inclusive
    step_ms: int

    @classmethod
    def plan(cls, from_ms: int, to_ms: int, n: int) -> "Buckets":
        """The layout of at most ``n`` buckets over ``[from_ms, to_ms]``."""
        if n < 1:
            raise ValueError("at least one bucket")
        if from_ms > to_ms:
            raise ValueError("from is after to")
        for step in _steps():
            if to_ms // step - from_ms // step + 1 <= n:
                return cls(from_ms, to_ms, step)
        raise AssertionError("unreachable: the steps grow without bound")

    def __len__(self) -> int:
        return self.to_ms // self.step_ms - self.from_ms // self.step_ms + 1

    @property
    def first_ms(self) -> int:
        """Where bucket 0 starts (at or before ``from_ms``)."""
        return self.from_ms - self.from_ms % self.step_ms

    def start(self, i: int) -> int:
        return self.first_ms + i * self.step_ms

    def index(self, ms: int) -> int:
        """The bucket of millisecond ``ms`` (inside the range)."""
        return ms // self.step_ms - self.from_ms // self.step_ms

    def zeros(self) -> np.ndarray:
        return np.zeros(len(self), np.int64)

    def count_block(self, block: bytes, counts: np.ndarray, only: np.ndarray | None = None) -> int:
        """Add the lines of ``block`` (whole lines, each starting with a ULID)
        to ``counts`` by the millisecond of their ULID; lines outside the
        range are not counted, nor (``only``: a boolean mask per bucket)
        lines of buckets not in ``only``.  Returns the lines counted."""
        if not block:
            return 0
        data = np.frombuffer(block, np.uint8)
        ends = np.flatnonzero(data == 10)
        if not len(ends):
            return 0
        starts = np.empty(len(ends), np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        starts = starts[ends - starts >= TIME_LEN]  # a line too short holds no time (never in a store)
        heads = data[starts[:, None] + _COLUMNS]  # (lines, 10) characters
        ms = (_DIGIT[heads] << _SHIFTS).sum(axis=1)
        keep = (ms >= self.from_ms) & (ms <= self.to_ms)
        idx = ms[keep] // self.step_ms - self.from_ms // self.step_ms
        if only is not None:
            idx = idx[only[idx]]
        counts += np.bincount(idx, minlength=len(counts))[: len(counts)]
        return int(len(idx))

    def layout(self) -> dict[str, int]:
        return {"from_ms": self.from_ms, "to_ms": self.to_ms, "bucket_ms": self.step_ms,
                "first_ms": self.first_ms, "count": len(self)}


def _steps():  # type: ignore[no-untyped-def]
    yield from STEPS
    step = STEPS[-1]
    while True:
        step *= 2
        yield step


def parse_buckets(raw: str | None) -> int:
    """The ``buckets`` parameter: an integer in ``1..MAX_BUCKETS`` (default
    ``DEFAULT_BUCKETS``); ``BadQuery`` otherwise."""
    if raw is None or raw == "":
        return DEFAULT_BUCKETS
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= MAX_BUCKETS:
        shown = raw if len(raw) <= 32 else raw[:32] + "..."
        raise BadQuery(f'invalid "buckets": want an integer from 1 to {MAX_BUCKETS}, got {shown!r}')
    return int(text)
