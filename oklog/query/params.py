"""Query parameters: the raw URL query string of ``/store/query`` → ``Query``.

Parsing is done by hand on bytes (split on ``&`` and ``=``, ``+`` → space,
percent-decoding to *bytes*) so that a ``q`` which is not UTF-8 reaches the
matcher intact.  Every malformed input raises ``BadQuery`` with a one-line,
ASCII-only reason; nothing else escapes (fuzzed in the tests).

Parameters (unknown names are ignored; a repeated name: the first wins):

- ``from``, ``to`` (required): a ULID (26 Crockford base32 chars,
  case-insensitive), an RFC3339/RFC3339Nano time (``2026-11-21T12:00:00Z``,
  ``2026-11-21t12:00:00.123456789+01:00``), a duration ago (``5m``, ``1h30m``,
  ``1.5h``, ``30d``; units ``ms s m h d w``, relative to ``now_ms``) or ``now``.
  A time ``from`` is the smallest ULID of its millisecond, a time ``to`` the
  largest, so both bounds are inclusive.  Tolerated because URLs mangle them:
  a space instead of ``T``, and a space instead of ``+`` before the offset
  (an unencoded ``+01:00`` arrives as `` 01:00``).
- ``q``: bytes matched against the payload; empty matches everything.
- ``regex``: present means true (``""``, ``true``, ``1``, ``yes``, ``on``);
  ``false``, ``0``, ``no``, ``off`` mean false.
- ``topic``: only records of exactly this topic; empty means any topic.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from urllib.parse import quote_from_bytes, unquote_to_bytes

from oklog.errors import BadQuery
from oklog.query.scan import Matcher, compile_matcher

__all__ = [
    "MAX_MS",
    "Query",
    "is_ulid",
    "ms_of_ulid",
    "parse_query",
    "ulid_for_ms",
]

CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(CROCKFORD)}
MAX_MS = (1 << 48) - 1  # the largest timestamp a ULID can carry

_ULID_RE = re.compile(rb"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_TOPIC_RE = re.compile(rb"[a-zA-Z0-9][a-zA-Z0-9_-]*")
_TIME_RE = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    rb"(?:[Zz]|([-+ ])(\d{2}):(\d{2}))"
)
_DURATION_RE = re.compile(rb"(?:\d{1,12}(?:\.\d{1,9})?(?:ms|s|m|h|d|w))+")
_DURATION_PART_RE = re.compile(rb"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {
    b"ms": 1,
    b"s": 1_000,
    b"m": 60_000,
    b"h": 3_600_000,
    b"d": 86_400_000,
    b"w": 7 * 86_400_000,
}
_TRUE = {b"", b"true", b"1", b"yes", b"on"}
_FALSE = {b"false", b"0", b"no", b"off"}
_EPOCH_DAYS = datetime.date(1970, 1, 1).toordinal()


# --- ULID helpers ------------------------------------------------------------


def is_ulid(value: bytes) -> bool:
    """True for a canonical (uppercase) 26-char ULID."""
    return _ULID_RE.fullmatch(value) is not None


def ulid_for_ms(ms: int, upper: bool) -> bytes:
    """The smallest (``upper=False``) or largest ULID of millisecond ``ms``."""
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"timestamp out of ULID range: {ms}")
    chars = bytearray(10)
    for i in range(9, -1, -1):
        chars[i] = CROCKFORD[ms & 31]
        ms >>= 5
    return bytes(chars) + (b"Z" if upper else b"0") * 16


def ms_of_ulid(ulid: bytes | str) -> int:
    """The Unix milliseconds in a ULID's first 10 chars (case-insensitive)."""
    if isinstance(ulid, str):
        ulid = ulid.encode("ascii", "replace")
    head = ulid[:10].upper()
    if len(head) != 10 or head[0] > ord("7"):
        raise ValueError(f"not a ULID: {ulid!r}")
    ms = 0
    for c in head:
        digit = _DECODE.get(c)
        if digit is None:
            raise ValueError(f"not a ULID: {ulid!r}")
        ms = (ms << 5) | digit
    return ms


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
            not isinstance(self.topic, bytes) or not _TOPIC_RE.fullmatch(self.topic)
        ):
            raise BadQuery(
                f'invalid "topic": want [a-zA-Z0-9][a-zA-Z0-9_-]*, got {_show(self.topic)}'
            )
        object.__setattr__(self, "matcher", compile_matcher(self))

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
    to the system clock and is only read when a bound is relative.
    Raises ``BadQuery`` (one line) on any bad input, and nothing else.
    """
    if isinstance(raw_query, str):
        raw_query = raw_query.encode("utf-8", "surrogatepass")
    params: dict[bytes, bytes] = {}
    for piece in raw_query.split(b"&"):
        if not piece:
            continue
        key, _, value = piece.partition(b"=")
        key = unquote_to_bytes(key.replace(b"+", b" "))
        params.setdefault(key, unquote_to_bytes(value.replace(b"+", b" ")))

    clock = _Clock(now_ms)
    lo, from_text = _bound(params, b"from", clock, upper=False)
    hi, to_text = _bound(params, b"to", clock, upper=True)

    regex = False
    if b"regex" in params:
        value = params[b"regex"].lower()
        if value in _TRUE:
            regex = True
        elif value not in _FALSE:
            raise BadQuery(
                f'invalid "regex": want true or false, got {_show(params[b"regex"])}'
            )

    topic = params.get(b"topic") or None
    return Query(
        lo=lo,
        hi=hi,
        q=params.get(b"q", b""),
        regex=regex,
        topic=topic,
        from_text=from_text,
        to_text=to_text,
    )


class _Clock:
    """Reads the wall clock at most once, and only if a bound needs it."""

    def __init__(self, now_ms: int | None) -> None:
        self._now = now_ms

    def now(self) -> int:
        if self._now is None:
            self._now = time.time_ns() // 1_000_000
        return self._now


def _bound(
    params: dict[bytes, bytes], name: bytes, clock: _Clock, *, upper: bool
) -> tuple[bytes, str]:
    label = name.decode()
    raw = params.get(name, b"")
    if not raw:
        raise BadQuery(f'missing "{label}"')
    text = raw.decode("ascii", "replace")

    if len(raw) == 26:
        ulid = raw.upper()
        if is_ulid(ulid):
            return ulid, text

    m = _TIME_RE.fullmatch(raw)
    if m is not None:
        ms = _rfc3339_ms(m, label, raw)
    elif raw.lower() == b"now":
        ms = clock.now()
    elif _DURATION_RE.fullmatch(raw):
        ago = sum(
            Fraction(n.decode()) * _UNIT_MS[unit]
            for n, unit in _DURATION_PART_RE.findall(raw)
        )
        ms = clock.now() - int(ago)
    else:
        raise BadQuery(
            f'invalid "{label}": not a ULID, RFC3339 time or duration: {_show(raw)}'
        )
    if ms < 0:
        raise BadQuery(f'invalid "{label}": time before 1970: {_show(raw)}')
    if ms > MAX_MS:
        raise BadQuery(f'invalid "{label}": time beyond the ULID range: {_show(raw)}')
    return ulid_for_ms(ms, upper), text


def _rfc3339_ms(m: re.Match[bytes], label: str, raw: bytes) -> int:
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, sign, off_h, off_m = m.group(7, 8, 9, 10)
    try:
        days = datetime.date(year, month, day).toordinal() - _EPOCH_DAYS
    except ValueError as exc:
        raise BadQuery(f'invalid "{label}": {exc}: {_show(raw)}') from None
    if hour > 23 or minute > 59 or second > 59:
        raise BadQuery(f'invalid "{label}": time of day out of range: {_show(raw)}')
    offset = 0
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise BadQuery(f'invalid "{label}": bad UTC offset: {_show(raw)}')
        offset = (oh * 60 + om) * 60 * (-1 if sign == b"-" else 1)
    ms = ((days * 86400 + hour * 3600 + minute * 60 + second - offset) * 1000)
    if frac:
        ms += int(frac[:3].ljust(3, b"0"))  # truncate to the millisecond
    return ms


def _show(value: object, limit: int = 64) -> str:
    """A value quoted for an error message: one line, ASCII, bounded."""
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text)
