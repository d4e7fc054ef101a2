"""Topics at ingest: static (one topic per ingester) or dynamic (per line).

A record is ``ULID SP TOPIC SP PAYLOAD LF`` with ``TOPIC`` matching
``[a-zA-Z0-9][a-zA-Z0-9_-]*`` (``oklog.records.format.TOPIC_PATTERN``).

``static`` (OK Log's default): every line of the ingester gets the topic of
``-ingest.topic`` (``default``); stamping is ``oklog.records.format.stamp``,
one string concatenation per line.

``dynamic``: each producer line is ``TOPIC SP PAYLOAD``: its first
space-delimited field is its topic and everything after that first space,
byte for byte, is the payload (which may be empty, and may start with more
spaces).  A line whose first field is not a valid topic -- an empty line, a
line without a space, a leading space, a field with other bytes (``a/b``,
``a.b``, a tab) -- is rejected: not stored, counted by the caller, and the
connection goes on with the next line.  Because the producer line already
reads ``TOPIC SP PAYLOAD``, a record is just ``ULID SP`` + the line: the
stamper hands out heads ``ULID SP`` and the only extra work over the static
path is one C-level regex ``match`` per line (``filter``), no per-line
Python code.
"""

from __future__ import annotations

import re

from oklog.records.format import TOPIC_PATTERN, TOPIC_RE
from oklog.ulid import _COUNTERS, Stamper

__all__ = ["MODES", "check_topic", "stamp_dynamic"]

MODES = ("static", "dynamic")

#: A producer line that starts with a valid topic and its space.
_TOPIC_HEAD = re.compile(TOPIC_PATTERN + rb" ")
#: Counter suffixes followed by the one space between ULID and topic.
_SPACED = [c + b" " for c in _COUNTERS]


def check_topic(topic: bytes) -> bool:
    """Is ``topic`` a valid topic name?"""
    return TOPIC_RE.fullmatch(topic) is not None


def stamp_dynamic(lines: list[bytes], stamper: Stamper) -> tuple[bytes, int]:
    """Dynamic mode: turn ``TOPIC SP PAYLOAD`` producer lines into one block
    of records, in order; returns the block and how many lines were rejected
    (no valid topic field; see the module docstring)."""
    if not lines:
        return b"", 0
    good = list(filter(_TOPIC_HEAD.match, lines))
    rejected = len(lines) - len(good)
    if not good:
        return b"", rejected
    heads = stamper.heads(len(good), _SPACED)
    return b"\n".join(map(bytes.__add__, heads, good)) + b"\n", rejected
