"""The record format: ``ULID SP TOPIC SP PAYLOAD LF``.

Payload bytes are opaque: anything but LF, never decoded, never altered.
Everything here works on whole blocks (split once, join once); the only
per-record work is a C-level ``map`` or a list comprehension.

``stamp`` turns producer lines into records; ``validate_block`` checks a
block (a replicate body, a segment) in one regex pass; ``salvage`` keeps
the well-formed records of a damaged block and counts the rest.
"""

from __future__ import annotations

import re
from functools import lru_cache

from oklog.errors import CorruptSegment
from oklog.ulid import _COUNTERS, ULID_PATTERN, Stamper

DEFAULT_TOPIC = b"default"
DEFAULT_MAX_RECORD_SIZE = 1 << 20
#: The longest producer line (payload) any ingester accepts:
#: ``-ingest.max-record-size`` cannot go beyond it.
RECORD_SIZE_LIMIT = 64 << 20
#: The longest record line a store accepts: the longest payload plus room
#: for its header (bounds what one line of an upload costs in memory).
MAX_LINE = RECORD_SIZE_LIMIT + 1024

TOPIC_PATTERN = rb"[a-zA-Z0-9][a-zA-Z0-9_-]*"
TOPIC_RE = re.compile(TOPIC_PATTERN)
_RECORD = ULID_PATTERN + rb" " + TOPIC_PATTERN + rb" [^\n]*\n"
_BLOCK_RE = re.compile(rb"(?:" + _RECORD + rb")*")
_ONE_RE = re.compile(_RECORD)


@lru_cache(maxsize=1024)
def _heads_table(topic: bytes) -> list[bytes]:
    """Counter suffixes with `` TOPIC `` appended, built once per topic."""
    suffix = b" " + topic + b" "
    return [c + suffix for c in _COUNTERS]


def stamp(lines: list[bytes], stamper: Stamper, topic: bytes = DEFAULT_TOPIC) -> bytes:
    """Turn producer lines into one block of records with fresh ULIDs."""
    if not lines:
        return b""
    heads = stamper.heads(len(lines), _heads_table(topic))
    return b"\n".join(map(bytes.__add__, heads, lines)) + b"\n"


def is_valid_block(block: bytes) -> bool:
    """Whether ``block`` is whole, well-formed records (one regex pass)."""
    return _BLOCK_RE.match(block).end() == len(block)  # type: ignore[union-attr]


def validate_block(block: bytes) -> None:
    """Raise ``CorruptSegment`` unless ``block`` is whole, well-formed records."""
    m = _BLOCK_RE.match(block)
    if m is None or m.end() != len(block):
        end = 0 if m is None else m.end()
        line_no = block.count(b"\n", 0, end) + 1
        bad = block[end : block.find(b"\n", end) if b"\n" in block[end:] else len(block)]
        raise CorruptSegment(
            f"line {line_no} is not a record (ULID SP TOPIC SP PAYLOAD): {bad[:60]!r}"
        )


def salvage(block: bytes) -> tuple[bytes, int]:
    """The well-formed records of a damaged block, and how many lines were
    dropped (garbage lines, and a partial last line without LF).

    Runs of valid records are kept as slices found by the block regex; only
    the bad lines themselves are looked at one by one.
    """
    parts: list[bytes] = []
    dropped = pos = 0
    size = len(block)
    match, find = _BLOCK_RE.match, block.find
    while pos < size:
        end = match(block, pos).end()  # type: ignore[union-attr]  # (...)* always matches
        if end > pos:
            parts.append(block[pos:end])
        if end == size:
            break
        dropped += 1
        nl = find(b"\n", end)
        if nl < 0:
            break  # a torn tail
        pos = nl + 1
    if dropped == 0:
        return block, 0
    return b"".join(parts), dropped
