"""Every error oklog raises on purpose, in one tree.

Who is at fault decides what happens next:

- ``ClientError`` — the caller sent something bad (a malformed query, a
  corrupt replicate body, an unknown segment id).  The API edge maps it to a
  4xx with a one-line reason; nothing else is affected.
- ``PeerError`` — another node failed us (refused, timed out, answered
  nonsense).  Callers retry elsewhere or report a partial result.
- ``LocalError`` — this node cannot do its job (data directory locked, disk
  full, Serf agent died).  Fatal at start-up, logged otherwise.

Each class carries ``status_hint``, the HTTP status the API edge uses (like
h11's ``error_status_hint``).  Library errors (httpx, OSError) are converted
into these at the boundary that calls the library, never deeper.
"""

from __future__ import annotations


class OklogError(Exception):
    """Base of every error raised on purpose."""

    status_hint: int = 500


# --- the caller's fault ------------------------------------------------------


class ClientError(OklogError):
    """Bad input from whoever called us; answered with a 4xx."""

    status_hint = 400


class CorruptSegment(ClientError):
    """A segment body (replicate upload or file) or a record in it does not parse."""


class SegmentChanged(OklogError):
    """A segment file was replaced while a query was reading it (its answer
    is cut short: never a mix of two files)."""


class BadQuery(ClientError):
    """Query parameters are missing, unparsable or contradictory."""


class ClientGone(ClientError):
    """The client disconnected before its request was read whole."""


class RequestTimeout(ClientError):
    """The client stopped sending its request body (``-api.idle-timeout``)."""

    status_hint = 408


class UnknownSegment(ClientError):
    """No segment with that id is in a state that allows the operation."""

    status_hint = 404


class SegmentNotRead(ClientError):
    """Commit before read: the store has not proved it holds the data."""

    status_hint = 428


class UploadTooLarge(ClientError):
    """A bulk upload went beyond ``-ingest.bulk-max-size``: nothing of it is kept."""

    status_hint = 413


class IllegalTransition(OklogError):
    """A lifecycle state machine was asked for a move it does not allow.

    This is a programming error inside oklog, hence a 500.
    """


# --- a peer's fault ----------------------------------------------------------


class PeerError(OklogError):
    """Another node failed to answer properly."""

    status_hint = 502

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


class PeerUnavailable(PeerError):
    """Could not connect, or the connection broke, or it timed out."""


class PeerRejected(PeerError):
    """The peer answered with an unexpected HTTP status."""

    def __init__(self, peer: str, status: int, body: str = "") -> None:
        super().__init__(peer, f"HTTP {status} {body}".strip())
        self.status = status


class ReplicationShortfall(OklogError):
    """Fewer store nodes accepted a segment than the replication factor."""

    status_hint = 503

    def __init__(self, want: int, have: int) -> None:
        super().__init__(f"replicated to {have} of {want} store nodes")
        self.want = want
        self.have = have


class QueryTimeout(OklogError):
    """A query ran past ``-store.query-timeout`` (``oklog.query.limits``)."""

    status_hint = 503


class BodyLengthError(OklogError):
    """A streamed answer longer or shorter than the ``Content-Length`` it
    declared (``oklog.http``): its connection is broken, never ended."""


# --- this node's fault ---------------------------------------------------------


class LocalError(OklogError):
    """This node cannot do its job."""


class DirectoryLocked(LocalError):
    """Another process holds the data directory's LOCK file."""


class ListenError(LocalError):
    """A listening socket cannot be bound (the message names the address)."""


class ConfigError(LocalError):
    """A command-line value makes no sense (bad address, bad duration)."""


class ClusterError(LocalError):
    """Membership is broken: the Serf agent died or cannot be reached."""
