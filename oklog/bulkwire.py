"""The bulk ingest wire protocol (``-ingest.bulk``, port 7653), both ends.

A client connects, sends producer lines (``LF``-terminated, as on the line
ports) and half-closes its side.  The ingester writes them as one segment
of their own and answers exactly one line, then closes:

- ``OK <records>\\n`` once a store node has committed that segment, i.e.
  once it is replicated to the replication factor: ``<records>`` is how
  many records it held (lines longer than ``-ingest.max-record-size`` are
  rejected, counted and left out, as on the line ports);
- ``ERR <reason>\\n`` on any failure: the upload was too large, the
  ingester is shutting down, or no store committed the segment within
  ``-ingest.bulk-timeout``.  After a timeout the segment is still kept and
  consumed; a client that sends it again makes duplicates, which is fine.

An ``ERR`` may come before the client has finished sending (too large);
the ingester then reads and discards the rest up to the client's EOF, so
the answer is not lost to a reset connection.

IO-free: formatting and parsing only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PeerError

__all__ = ["MAX_REPLY", "Reply", "ReplyReader", "err_line", "ok_line"]

#: The longest reply line, LF included; a longer one is not ours.
MAX_REPLY = 512

_OK = re.compile(rb"OK (0|[1-9][0-9]{0,17})\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def ok_line(records: int) -> bytes:
    return b"OK %d\n" % records


def err_line(reason: str) -> bytes:
    """``ERR <reason>`` on one line (control characters become spaces, cut
    to fit ``MAX_REPLY``)."""
    text = _CONTROL.sub(" ", reason).strip() or "failed"
    data = text.encode("utf-8", "replace")[: MAX_REPLY - 5]
    return b"ERR " + data.decode("utf-8", "ignore").encode() + b"\n"


@dataclass(frozen=True)
class Reply:
    """An ingester's answer to one upload."""

    ok: bool
    records: int = 0  #: with ``ok``: records in the committed segment
    reason: str = ""  #: without ``ok``: why not

    @property
    def too_large(self) -> bool:
        return not self.ok and self.reason.startswith("too large")


def parse_reply(line: bytes) -> Reply | None:
    """The reply in ``line`` (LF included), or None when it is not one."""
    m = _OK.fullmatch(line)
    if m:
        return Reply(True, int(m.group(1)))
    if line.startswith(b"ERR ") and line.endswith(b"\n") and line.count(b"\n") == 1:
        return Reply(False, reason=line[4:-1].decode("utf-8", "replace"))
    return None


class ReplyReader:
    """Bytes from the ingester → its one reply (sans-IO).

    ``feed(chunk)`` returns the ``Reply`` once its line is complete, else
    None; ``eof()`` says the connection ended.  Anything that is not a
    reply -- garbage, a line longer than ``MAX_REPLY``, EOF before the line
    ended -- raises ``PeerError`` naming ``peer``.
    """

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self._buf = b""

    def feed(self, chunk: bytes) -> Reply | None:
        self._buf += chunk
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) >= MAX_REPLY:
                raise PeerError(self.peer, f"reply longer than {MAX_REPLY} bytes: not a bulk ingester?")
            return None
        line = self._buf[: nl + 1]
        reply = parse_reply(line)
        if reply is None:
            raise PeerError(self.peer, f"not a bulk reply: {line[:60]!r}")
        return reply

    def eof(self) -> None:
        if self._buf:
            raise PeerError(self.peer, f"connection closed inside the reply: {self._buf[:60]!r}")
        raise PeerError(self.peer, "connection closed without a reply")
