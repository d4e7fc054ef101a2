"""Durations and time specs: one grammar for the CLI, the HTTP API and flags.

A **duration** is Go's ``time.ParseDuration`` syntax plus days and weeks:
one or more ``NUMBER UNIT`` parts (``500ms``, ``30s``, ``1h30m``, ``1.5h``,
``7d``, ``2w``), units ``ns us µs μs ms s m h d w``, an optional leading
sign, or a bare ``0``.

A **time spec** (``-from``/``-to`` on the command line, ``from=``/``to=`` in
a query string) is one of:

- ``now``;
- a duration, meaning that long before now (the sign is ignored: ``5m`` and
  ``-5m`` both mean five minutes ago, as OK Log's CLI took them);
- an RFC3339 / RFC3339Nano time: ``2026-11-21T12:00:00Z``,
  ``2026-11-21T12:00:00.123456789+01:00`` (lowercase ``t``/``z`` too, and,
  because URLs mangle them, a space for ``T`` and a space for ``+`` before
  the offset); fractions below the millisecond are truncated;
- a ULID (26 Crockford base32 characters, any case).

Everything here is pure and raises ``ValueError`` with a one-line message;
callers turn it into their own error (``ConfigError`` for a flag,
``BadQuery`` for a query parameter).  ``resolve`` does not repeat the value
in its messages: each caller shows it its own way (quoted, shortened).
"""

from __future__ import annotations

import datetime
import re
from fractions import Fraction

from .ulid import MAX_MS, ULID_LEN, is_ulid, ulid_for_ms

__all__ = ["format_rfc3339", "parse_duration", "resolve", "to_ulid"]

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
_NUMBER = r"(?:\d{1,15}(?:\.\d{0,15})?|\.\d{1,15})"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h|d|w)")
_DURATION = re.compile(rf"[-+]?(?:{_NUMBER}(?:ns|us|µs|μs|ms|s|m|h|d|w))+|[-+]?0")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([-+ ])(\d{2}):(\d{2}))"
)
_EPOCH_DAYS = datetime.date(1970, 1, 1).toordinal()


def _duration_ns(text: str) -> int | None:
    """Signed nanoseconds of a duration, or None if ``text`` is not one."""
    if not _DURATION.fullmatch(text):
        return None
    sign = -1 if text.startswith("-") else 1
    total = sum(Fraction(n) * _UNIT_NS[unit] for n, unit in _PART.findall(text))
    return sign * int(total)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``3s``, ``1h30m``, ``500ms``, ``7d``, ``0``."""
    ns = _duration_ns(text.strip())
    if ns is None:
        if re.fullmatch(rf"[-+]?{_NUMBER}", text.strip()):
            raise ValueError(f"invalid duration {text!r}: missing unit (e.g. 5m, 1h, 30s)")
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 30s, 5m, 1h30m, 7d, 2w)")
    return ns / 1e9


def _rfc3339_ms(m: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, sign, off_h, off_m = m.group(7, 8, 9, 10)
    try:
        days = datetime.date(year, month, day).toordinal() - _EPOCH_DAYS
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError("time of day out of range")
    offset = 0
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise ValueError("bad UTC offset")
        offset = (oh * 60 + om) * 60 * (-1 if sign == "-" else 1)
    ms = (days * 86400 + hour * 3600 + minute * 60 + second - offset) * 1000
    if frac:
        ms += int(frac[:3].ljust(3, "0"))  # truncated to the millisecond
    return ms


def resolve(text: str | bytes, now_ms: int) -> int | bytes:
    """A time spec as absolute Unix milliseconds, or as the ULID it names.

    ``now_ms`` is the clock for ``now`` and durations.  ValueError if ``text``
    is none of the forms in the module docstring, or lies outside what a
    ULID can hold (before 1970, after the year 10889).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    spec = text.strip()
    if len(spec) == ULID_LEN and is_ulid(spec.upper().encode("ascii", "replace")):
        return spec.upper().encode("ascii")
    m = _RFC3339.fullmatch(spec)
    if m is not None:
        ms = _rfc3339_ms(m)
    elif spec.lower() == "now":
        ms = now_ms
    else:
        ns = _duration_ns(spec)
        if ns is None:
            raise ValueError("not a ULID, an RFC3339 time or a duration such as 5m, 1h30m, 1w")
        ms = now_ms - abs(ns) // 1_000_000
    if ms < 0:
        raise ValueError("time before 1970")
    if ms > MAX_MS:
        raise ValueError("time beyond the ULID range")
    return ms


def to_ulid(text: str | bytes, now_ms: int, *, upper: bool) -> bytes:
    """A time spec as an inclusive ULID bound: the smallest ULID of its
    millisecond for a lower bound, the largest (``upper``) for an upper one."""
    value = resolve(text, now_ms)
    return value if isinstance(value, bytes) else ulid_for_ms(value, upper)


def format_rfc3339(ms: int) -> str:
    """``2026-11-21T12:00:00.123Z`` for Unix milliseconds ``ms``."""
    d = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
