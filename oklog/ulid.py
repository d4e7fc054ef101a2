"""ULIDs: the one codec (alphabet, pattern, time part) and the ingest stamper.

Every module that reads or makes a ULID uses the helpers here.

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

ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
ULID_LEN = 26
TIME_LEN = 10
MAX_MS = (1 << 48) - 1  # the largest timestamp a ULID can carry

#: A canonical ULID: 26 uppercase Crockford characters, the first one 0-7
#: (a ULID is 128 bits; 26 characters hold 130).
ULID_PATTERN = rb"[0-7][0-9A-HJKMNP-TV-Z]{25}"
ULID_RE = re.compile(ULID_PATTERN)

#: Below / above every ULID, as byte strings (open query bounds).
MIN_ULID = b"0" * ULID_LEN
MAX_ULID = b"7" + b"Z" * (ULID_LEN - 1)

_DECODE = {c: i for i, c in enumerate(ALPHABET)} | {
    c: i for i, c in enumerate(ALPHABET.lower()) if chr(c).isalpha()
}

_COUNTER_CHARS = 3
_COUNTER_SPAN = 32**_COUNTER_CHARS  # 32,768 ULIDs per prefix
_RANDOM_CHARS = 13  # 65 bits; the top bit is kept clear so +1 never overflows
_RANDOM_MAX = 32**_RANDOM_CHARS - 1


# --- the codec -------------------------------------------------------------------


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
    """Inverse of :func:`encode_int` (case-insensitive); ValueError on a
    character outside the alphabet."""
    value = 0
    for ch in text:
        digit = _DECODE.get(ch)
        if digit is None:
            raise ValueError(f"not a Crockford base32 character: {chr(ch)!r}")
        value = (value << 5) | digit
    return value


def is_ulid(text: bytes) -> bool:
    """True when ``text`` is a canonical (uppercase) ULID."""
    return len(text) == ULID_LEN and ULID_RE.fullmatch(text) is not None


def ms_of(ulid: bytes | str) -> int:
    """Unix milliseconds in a ULID's first 10 characters (case-insensitive).

    ValueError when those are not a ULID's time part.
    """
    if isinstance(ulid, str):
        ulid = ulid.encode("ascii", "replace")
    head = ulid[:TIME_LEN]
    if len(head) != TIME_LEN or head[0] > ord("7"):
        raise ValueError(f"not a ULID: {ulid!r}")
    try:
        return decode_int(head)
    except ValueError:
        raise ValueError(f"not a ULID: {ulid!r}") from None


def ulid_for_ms(ms: int, upper: bool = False) -> bytes:
    """The smallest (or, ``upper``, the largest) ULID of millisecond ``ms``."""
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"timestamp out of ULID range: {ms}")
    return encode_int(ms, TIME_LEN) + (b"Z" if upper else b"0") * (ULID_LEN - TIME_LEN)


_COUNTERS: list[bytes] = [encode_int(i, _COUNTER_CHARS) for i in range(_COUNTER_SPAN)]


# --- the stamper -----------------------------------------------------------------


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
