"""Records for tests: ULIDs whose order follows an integer."""

from __future__ import annotations

from oklog.ulid import ULID_LEN, encode_int


def ulid(n: int) -> bytes:
    """A valid 26-char ULID whose order follows the integer ``n``."""
    return encode_int(n, ULID_LEN)


def rec(n: int, payload: bytes = b"p") -> bytes:
    """One record line (LF included) with ULID ``ulid(n)``."""
    return ulid(n) + b" default " + payload + b"\n"


def segment_bytes(path) -> bytes:  # type: ignore[no-untyped-def]
    """The records in a store segment file, compressed or not (what
    ``zstdcat`` or ``cat`` print)."""
    from oklog.segment.blocked import frames

    out = []
    for frame in frames(path):
        assert frame.data is not None, f"undecodable bytes in {path} at {frame.offset}"
        out.append(frame.data)
    return b"".join(out)
