"""Records: producer lines in, ``ULID SP TOPIC SP PAYLOAD LF`` out.

Payload bytes are opaque: anything but LF, never decoded, never altered.
Everything here works on whole blocks (split once, join once); the only
per-record work is a C-level ``map`` or a list comprehension.

``LineReader`` is the sans-IO half of the ingest TCP servers: feed it whatever
``receive_some`` returned, get back the complete lines, with over-long lines
dropped and counted.  ``stamp`` turns those lines into records.
``validate_block`` checks an upload (a replicate body) line by line in one
regex pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .blocks import Pieces
from .errors import CorruptSegment
from .ulid import _COUNTERS, Stamper

DEFAULT_TOPIC = b"default"
DEFAULT_MAX_RECORD_SIZE = 1 << 20

TOPIC_RE = re.compile(rb"[a-zA-Z0-9][a-zA-Z0-9_-]*")
_RECORD = rb"[0-7][0-9A-HJKMNP-TV-Z]{25} [a-zA-Z0-9][a-zA-Z0-9_-]* [^\n]*\n"
_BLOCK_RE = re.compile(rb"(?:" + _RECORD + rb")*")
_ONE_RE = re.compile(_RECORD)


def valid_topic(topic: bytes) -> bool:
    return TOPIC_RE.fullmatch(topic) is not None


@dataclass
class LineReader:
    """Splits a byte stream into lines, rejecting lines over ``max_size``.

    ``feed`` returns the complete lines (without LF) accepted so far;
    ``close`` returns the last line if the stream ended without an LF.
    ``rejected`` counts dropped over-long lines.  A long line is dropped as
    soon as it exceeds the limit, so memory stays bounded by ``max_size``.
    """

    max_size: int = DEFAULT_MAX_RECORD_SIZE
    rejected: int = 0
    _tail: Pieces = field(default_factory=Pieces)  # the partial last line
    _discarding: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return []
            self._discarding = False
            data = data[nl + 1 :]
        last = data.rfind(b"\n")
        if last < 0:
            self._keep_tail(data)
            return []
        if self._tail:
            self._tail.add(data[: last + 1])
            lines = self._tail.take()[:-1].split(b"\n")
        else:
            lines = data[:last].split(b"\n")
        self._keep_tail(data[last + 1 :])
        if max(map(len, lines)) > self.max_size:
            before = len(lines)
            lines = [line for line in lines if len(line) <= self.max_size]
            self.rejected += before - len(lines)
        return lines

    def _keep_tail(self, piece: bytes) -> None:
        if not piece:
            return
        self._tail.add(piece)
        if self._tail.size > self.max_size:
            self.rejected += 1
            self._tail.clear()
            self._discarding = True

    def close(self) -> list[bytes]:
        """End of stream: a final line without LF still counts as a record."""
        if self._discarding or not self._tail:
            return []
        return [self._tail.take()]


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
    """The well-formed records of a possibly torn block, and how many lines
    were dropped (a partial last line, garbage after a crash)."""
    m = _BLOCK_RE.match(block)
    if m is not None and m.end() == len(block):
        return block, 0
    lines = block.split(b"\n")
    tail = lines.pop()  # bytes after the last LF: a partial record at best
    good = [line + b"\n" for line in lines if _ONE_RE.fullmatch(line + b"\n")]
    dropped = len(lines) - len(good) + (1 if tail else 0)
    return b"".join(good), dropped
