"""Query parameters: the raw URL query string of ``/store/query`` → ``Query``.

Parsing is done by hand on bytes (split on ``&`` and ``=``, ``+`` → space,
percent-decoding to *bytes*) so that a ``q`` which is not UTF-8 reaches the
matcher intact.  Every malformed input raises ``BadQuery`` with a one-line,
ASCII-only reason; nothing else escapes (fuzzed in the tests).

Parameters (unknown names are ignored; a repeated name: the first wins):

- ``from``, ``to`` (required): time specs in the one grammar of
  ``oklog.timespec`` (a ULID, an RFC3339 time, a duration ago such as
  ``1h30m`` or ``1w``, or ``now``; relative to ``now_ms``).  A time ``from``
  is the smallest ULID of its millisecond, a time ``to`` the largest, so
  both bounds are inclusive.
- ``q``: bytes matched against the payload; empty matches everything.
- ``regex``: present means true (``""``, ``true``, ``1``, ``yes``, ``on``);
  ``false``, ``0``, ``no``, ``off`` mean false.
- ``topic``: only records of exactly this topic; empty means any topic.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes, unquote_to_bytes

from oklog import timespec
from oklog.errors import BadQuery
from oklog.query.scan import Matcher
from oklog.records.format import TOPIC_RE
from oklog.ulid import is_ulid

__all__ = ["Query", "flag_param", "parse_query", "regex_param", "split_params"]

_TRUE = {b"", b"true", b"1", b"yes", b"on"}
_FALSE = {b"false", b"0", b"no", b"off"}


# --- the value -------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One validated query; ``matcher`` is compiled once at construction.

    ``lo``/``hi`` are inclusive ULID bounds (uppercase, 26 bytes).
    ``from_text``/``to_text`` are the bounds as the user wrote them (for the
    ``X-Oklog-From``/``-To`` headers); they default to ``lo``/``hi``.
    Constructing a ``Query`` directly validates it too (``BadQuery``).
    """

    lo: bytes
    hi: bytes
    q: bytes = b""
    regex: bool = False
    topic: bytes | None = None
    from_text: str = ""
    to_text: str = ""
    matcher: Matcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in (("from", self.lo), ("to", self.hi)):
            if not isinstance(value, bytes) or not is_ulid(value):
                raise BadQuery(f'invalid "{name}": not a ULID: {_show(value)}')
        if not self.from_text:
            object.__setattr__(self, "from_text", self.lo.decode("ascii"))
        if not self.to_text:
            object.__setattr__(self, "to_text", self.hi.decode("ascii"))
        if self.lo > self.hi:
            raise BadQuery(
                f'"from" is after "to": {_show(self.from_text)} > {_show(self.to_text)}'
            )
        if self.topic is not None and (
            not isinstance(self.topic, bytes) or not TOPIC_RE.fullmatch(self.topic)
        ):
            raise BadQuery(
                f'invalid "topic": want [a-zA-Z0-9][a-zA-Z0-9_-]*, got {_show(self.topic)}'
            )
        object.__setattr__(self, "matcher", Matcher(self.q, self.regex, self.topic))

    def encode(self) -> str:
        """This query as a URL query string with absolute ULID bounds.

        Use it to forward a query to peers: relative bounds (``5m``) were
        resolved against this node's clock, so every node scans the same range.
        """
        parts = [
            "from=" + self.lo.decode("ascii"),
            "to=" + self.hi.decode("ascii"),
            "q=" + quote_from_bytes(self.q, safe=""),
        ]
        if self.regex:
            parts.append("regex=true")
        if self.topic is not None:
            parts.append("topic=" + self.topic.decode("ascii"))
        return "&".join(parts)


# --- parsing -----------------------------------------------------------------


def parse_query(raw_query: bytes | str, *, now_ms: int | None = None) -> Query:
    """Parse a raw URL query string (without ``?``) into a ``Query``.

    ``now_ms`` is the clock for relative bounds (``5m``, ``now``); it defaults
    to the system clock, read once for both bounds.
    Raises ``BadQuery`` (one line) on any bad input, and nothing else.
    """
    params = split_params(raw_query)
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    lo, from_text = _bound(params, b"from", now, upper=False)
    hi, to_text = _bound(params, b"to", now, upper=True)
    return Query(
        lo=lo,
        hi=hi,
        q=params.get(b"q", b""),
        regex=regex_param(params),
        topic=params.get(b"topic") or None,
        from_text=from_text,
        to_text=to_text,
    )


def split_params(raw_query: bytes | str) -> dict[bytes, bytes]:
    """A raw URL query string as name → value, both percent-decoded to
    bytes (``+`` is a space; a repeated name: the first wins)."""
    if isinstance(raw_query, str):
        raw_query = raw_query.encode("utf-8", "surrogatepass")
    params: dict[bytes, bytes] = {}
    for piece in raw_query.split(b"&"):
        if not piece:
            continue
        key, _, value = piece.partition(b"=")
        key = unquote_to_bytes(key.replace(b"+", b" "))
        params.setdefault(key, unquote_to_bytes(value.replace(b"+", b" ")))
    return params


def regex_param(params: dict[bytes, bytes]) -> bool:
    """The ``regex`` flag (see ``flag_param``)."""
    return flag_param(params, "regex")


def flag_param(params: dict[bytes, bytes], name: str) -> bool:
    """A present-means-true flag (``regex``, ``ids``, ``dry-run``);
    ``BadQuery`` on a value that is neither true nor false."""
    raw = params.get(name.encode())
    if raw is None:
        return False
    value = raw.lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        raise BadQuery(f'invalid "{name}": want true or false, got {_show(raw)}')
    return False


def _bound(
    params: dict[bytes, bytes], name: bytes, now_ms: int, *, upper: bool
) -> tuple[bytes, str]:
    label = name.decode()
    raw = params.get(name, b"")
    if not raw:
        raise BadQuery(f'missing "{label}"')
    text = raw.decode("ascii", "replace")
    try:
        return timespec.to_ulid(raw, now_ms, upper=upper), text
    except ValueError as exc:
        raise BadQuery(f'invalid "{label}": {exc}: {_show(raw)}') from None


def _show(value: object, limit: int = 64) -> str:
    """A value quoted for an error message: one line, ASCII, bounded."""
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text)
