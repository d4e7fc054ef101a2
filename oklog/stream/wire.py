"""What a stream body holds: record lines and notice lines.

A live stream (``/store/_stream``, ``/store/stream``) is a sequence of LF
terminated lines.  A *record* line is ``ULID SP TOPIC SP PAYLOAD``, so it
always starts with a ULID character (``0``-``7``).  A *notice* line starts
with ``#``, which no record ever does, so the two cannot be confused:

- ``#`` alone: a heartbeat, sent when a stream has been idle for
  ``HEARTBEAT`` seconds (clients notice a dead connection by its absence)
  and once when a stream opens (so its headers go out at once);
- ``#dropped N ...``: N matching records were discarded because a reader
  on the way fell behind (the rest of the line says so in words).

Clients print records and handle or skip notices; ``oklog stream`` prints a
drop notice as a warning on stderr.
"""

from __future__ import annotations

import re

__all__ = ["HEARTBEAT", "HEARTBEAT_LINE", "IDLE_TIMEOUT", "dropped_notice", "parse_dropped", "split_notices"]

#: Seconds of silence after which a stream sends a heartbeat line.
HEARTBEAT = 10.0
#: A reader that hears nothing (not even a heartbeat) for this long
#: takes the connection for dead.
IDLE_TIMEOUT = 3 * HEARTBEAT + 5.0
HEARTBEAT_LINE = b"#\n"

_DROPPED = re.compile(rb"#dropped (\d+)(?: |$)")


def dropped_notice(count: int) -> bytes:
    """The notice line for ``count`` records dropped."""
    return b"#dropped %d records: a reader of this stream fell behind and the oldest " \
           b"queued records were discarded\n" % count


def parse_dropped(notice: bytes) -> int:
    """Records a notice line (without its LF) says were dropped (0 if none)."""
    m = _DROPPED.match(notice)
    return int(m.group(1)) if m else 0


def split_notices(block: bytes) -> tuple[bytes, list[bytes]]:
    """Separate a block of whole lines into its record lines (a block, maybe
    empty) and its notice lines (each without its LF)."""
    if not block.startswith(b"#") and b"\n#" not in block:
        return block, []
    records: list[bytes] = []
    notices: list[bytes] = []
    lines = block.split(b"\n")
    tail = lines.pop()  # after the final LF: b"" for a block of whole lines
    for line in lines:
        (notices if line.startswith(b"#") else records).append(line)
    if tail:
        (notices if tail.startswith(b"#") else records).append(tail)
    return (b"\n".join(records) + b"\n" if records else b""), notices
