"""Records for tests: ULIDs whose order follows an integer."""

from __future__ import annotations

from oklog.ulid import ULID_LEN, encode_int


def ulid(n: int) -> bytes:
    """A valid 26-char ULID whose order follows the integer ``n``."""
    return encode_int(n, ULID_LEN)


def rec(n: int, payload: bytes = b"p") -> bytes:
    """One record line (LF included) with ULID ``ulid(n)``."""
    return ulid(n) + b" default " + payload + b"\n"
