"""The one grammar for durations and time specs (CLI, HTTP API, flags)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oklog import timespec
from oklog.ulid import MAX_MS, ms_of, ulid_for_ms

NOW = 1_800_000_000_500  # ms: 2027-01-15T08:00:00.500Z


@pytest.mark.parametrize(
    "s, want",
    [
        ("0", 0.0),
        ("3s", 3.0),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("7d", 7 * 86400.0),
        ("1w", 7 * 86400.0),
        ("2w3d", 17 * 86400.0),
        ("1.5h", 5400.0),
        ("1h0.5m", 3630.0),
        ("2h45m30.5s", 2 * 3600 + 45 * 60 + 30.5),
        ("10us", 1e-5),
        ("10µs", 1e-5),
        ("10μs", 1e-5),
        ("100ns", 1e-7),
        (".5s", 0.5),
        ("-5m", -300.0),
        ("+5m", 300.0),
        ("30d", 30 * 86400.0),
    ],
)
def test_parse_duration_ok(s: str, want: float) -> None:
    assert timespec.parse_duration(s) == pytest.approx(want)


@pytest.mark.parametrize("s", ["", "5", "1.5", "h", "5x", "1h 30m", "now", "5m3", "--5m", "1y", "m5"])
def test_parse_duration_bad(s: str) -> None:
    with pytest.raises(ValueError) as e:
        timespec.parse_duration(s)
    assert repr(s) in str(e.value)


def test_missing_unit_is_named() -> None:
    with pytest.raises(ValueError, match="missing unit"):
        timespec.parse_duration("5")


@pytest.mark.parametrize(
    "spec, ms",
    [
        ("now", NOW),
        ("NOW", NOW),
        ("5m", NOW - 300_000),
        ("-5m", NOW - 300_000),
        ("1h30m", NOW - 5_400_000),
        ("1w", NOW - 7 * 86_400_000),
        ("250ms", NOW - 250),
        ("2026-11-21T12:00:00Z", 1_795_262_400_000),
        ("2026-11-21t12:00:00.123456789z", 1_795_262_400_123),
        ("2026-11-21T13:00:00+01:00", 1_795_262_400_000),
        ("2026-11-21T11:30:00-00:30", 1_795_262_400_000),
        ("2026-11-21 12:00:00 00:00", 1_795_262_400_000),  # URL-mangled T and +
    ],
)
def test_resolve(spec: str, ms: int) -> None:
    assert timespec.resolve(spec, NOW) == ms
    assert timespec.resolve(spec.encode(), NOW) == ms


def test_resolve_ulid_any_case() -> None:
    u = b"01JD5ZQH1XQ1XQ1XQ1XQ1XQ1XQ"
    assert timespec.resolve(u.decode().lower(), NOW) == u
    assert timespec.to_ulid(u, NOW, upper=True) == u


@pytest.mark.parametrize(
    "spec",
    ["", "yesterday", "5", "2026-13-01T00:00:00Z", "2026-11-21T24:00:00Z", "2026-11-21",
     "2026-11-21T12:00:00", "2026-11-21T12:00:00+25:00", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "x" * 26,
     "100000w", "\xff"],
)
def test_resolve_bad(spec: str) -> None:
    with pytest.raises(ValueError):
        timespec.resolve(spec, NOW)


def test_bounds_are_inclusive_milliseconds() -> None:
    lo = timespec.to_ulid("2026-11-21T12:00:00.5Z", NOW, upper=False)
    hi = timespec.to_ulid("2026-11-21T12:00:00.5Z", NOW, upper=True)
    assert lo == ulid_for_ms(1_795_262_400_500) and hi == ulid_for_ms(1_795_262_400_500, upper=True)
    assert ms_of(lo) == ms_of(hi)


@given(st.integers(0, 253402300799999))  # up to the year 9999
def test_format_and_resolve_round_trip(ms: int) -> None:
    text = timespec.format_rfc3339(ms)
    assert timespec.resolve(text, NOW) == ms
    assert text == dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@given(st.text(max_size=40))
def test_resolve_never_raises_anything_else(spec: str) -> None:
    try:
        value = timespec.resolve(spec, NOW)
    except ValueError:
        return
    assert isinstance(value, bytes) or 0 <= value <= MAX_MS
