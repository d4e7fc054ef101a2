"""ULIDs: a fast monotonic stamper for ingest, python-ulid for validation.

Theory of operation: a ULID is 10 Crockford base32 characters of Unix
milliseconds followed by 16 of randomness.  Ingest stamps millions of lines a
second, and python-ulid costs ~3.4 µs per ULID, so the stamper builds a
23-character prefix (time + 13 random characters) once per millisecond and
appends a 3-character counter from a precomputed table.  Within one
millisecond the counter climbs; if it runs out (32,768 records in one ms) the
random part is incremented by one.  If the clock steps backwards we keep the
last millisecond.  Every ULID is therefore strictly greater than the one
before it, so a segment written by one process is sorted by ULID.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable

import ulid as _pyulid

ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LEN = 26
TIME_LEN = 10

_COUNTER_CHARS = 3
_COUNTER_SPAN = 32**_COUNTER_CHARS  # 32,768 ULIDs per prefix
_RANDOM_CHARS = 13  # 65 bits; the top bit is kept clear so +1 never overflows
_RANDOM_MAX = 32**_RANDOM_CHARS - 1

ULID_RE = re.compile(rb"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def encode_int(value: int, width: int) -> bytes:
    """Crockford base32 of ``value``, left-padded to ``width`` characters."""
    out = bytearray(width)
    for i in range(width - 1, -1, -1):
        out[i] = ALPHABET[value & 31]
        value >>= 5
    if value:
        raise ValueError("value does not fit")
    return bytes(out)


def decode_int(text: bytes) -> int:
    """Inverse of :func:`encode_int` for valid Crockford characters."""
    value = 0
    for ch in text:
        value = (value << 5) | ALPHABET.index(ch)
    return value


_COUNTERS: list[bytes] = [encode_int(i, _COUNTER_CHARS) for i in range(_COUNTER_SPAN)]


def ms_of(ulid: bytes) -> int:
    """Milliseconds since the epoch encoded in a ULID's first 10 characters."""
    return decode_int(ulid[:TIME_LEN])


def ulid_for_ms(ms: int, upper: bool = False) -> bytes:
    """The smallest (or largest) ULID within millisecond ``ms``."""
    return encode_int(ms, TIME_LEN) + (b"Z" if upper else b"0") * 16


def is_valid(text: bytes) -> bool:
    """True when ``text`` is a canonical (uppercase) ULID python-ulid accepts."""
    if len(text) != ULID_LEN or not ULID_RE.fullmatch(text):
        return False
    try:
        _pyulid.ULID.from_str(text.decode("ascii"))
    except ValueError:
        return False
    return True


class Stamper:
    """Hands out strictly increasing ULIDs in batches.

    ``clock`` returns milliseconds; tests inject a fake one.
    """

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._ms = -1
        self._random = 0
        self._prefix = b""
        self._next = _COUNTER_SPAN  # forces a new prefix on first use

    def _advance(self) -> None:
        """Move to a fresh prefix that sorts after every ULID handed out."""
        now = self._clock()
        if now > self._ms:
            self._ms = now
            self._random = int.from_bytes(os.urandom(9), "big") & (_RANDOM_MAX >> 1)
        else:
            self._random += 1
            if self._random > _RANDOM_MAX:  # unreachable in practice: 2^64 steps
                self._ms += 1
                self._random = 0
        self._prefix = encode_int(self._ms, TIME_LEN) + encode_int(
            self._random, _RANDOM_CHARS
        )
        self._next = 0

    def batch(self, n: int) -> list[bytes]:
        """``n`` ULIDs (as bytes), strictly increasing and above all earlier ones."""
        return self.heads(n, _COUNTERS)

    def heads(self, n: int, table: list[bytes]) -> list[bytes]:
        """``n`` strictly increasing ULIDs, each followed by ``table[counter]``'s tail.

        ``table[i]`` must start with the counter characters for ``i``; record
        stamping passes a table with `` TOPIC `` appended so one string
        concatenation per record builds the whole record head.
        """
        out: list[bytes] = []
        need = n
        # A new millisecond gets a new prefix even if the counter is not used up,
        # so that ULID times track the wall clock.
        if self._next >= _COUNTER_SPAN or self._clock() > self._ms:
            self._advance()
        while need:
            if self._next >= _COUNTER_SPAN:
                self._advance()
            take = min(need, _COUNTER_SPAN - self._next)
            prefix = self._prefix
            out.extend([prefix + c for c in table[self._next : self._next + take]])
            self._next += take
            need -= take
        return out

    def one(self) -> bytes:
        return self.batch(1)[0]
