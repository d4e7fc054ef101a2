"""Parameters of a live stream: ``q``, ``regex``, ``topic``, ``window``.

``q``/``regex``/``topic`` mean what they mean for a query
(``oklog.query.params``); a stream has no time range (it starts now and
runs until the client leaves), so ``from``/``to`` are not taken.
``window`` is the de-duplication window, a duration (``3s``, ``500ms``,
OK Log's default 3s), at most ``MAX_WINDOW``; ``0`` turns
de-duplication off.  Bad input raises ``BadQuery`` with a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote_from_bytes

from oklog import timespec
from oklog.errors import BadQuery
from oklog.query.params import Query, regex_param, split_params
from oklog.ulid import MAX_ULID, MIN_ULID

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "StreamQuery", "parse_stream"]

DEFAULT_WINDOW = 3.0
MAX_WINDOW = 600.0


@dataclass(frozen=True)
class StreamQuery:
    """A validated stream request; ``query.matcher`` matches its records."""

    query: Query  # over all time: only q, regex and topic matter
    window: float = DEFAULT_WINDOW

    def encode(self) -> bytes:
        """The parameters as a URL query string, for a store's ``/store/_stream``."""
        q = self.query
        parts = ["q=" + quote_from_bytes(q.q, safe="")]
        if q.regex:
            parts.append("regex=true")
        if q.topic is not None:
            parts.append("topic=" + q.topic.decode("ascii"))
        parts.append(f"window={self.window:g}s")
        return "&".join(parts).encode("ascii")


def parse_stream(raw_query: bytes | str) -> StreamQuery:
    """Parse a raw URL query string (without ``?``) into a ``StreamQuery``."""
    params = split_params(raw_query)
    window = DEFAULT_WINDOW
    if params.get(b"window"):
        text = params[b"window"].decode("ascii", "replace")
        try:
            window = timespec.parse_duration(text)
        except ValueError as exc:
            raise BadQuery(f'invalid "window": {exc}') from None
        if not 0 <= window <= MAX_WINDOW:
            raise BadQuery(f'invalid "window": {text!r} must be between 0s and {MAX_WINDOW:g}s')
    query = Query(MIN_ULID, MAX_ULID, params.get(b"q", b""), regex_param(params),
                  params.get(b"topic") or None)
    return StreamQuery(query, window)
