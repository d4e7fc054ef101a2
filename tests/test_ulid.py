"""ULIDs: the one codec and the monotonic ingest stamper."""

from __future__ import annotations

import pytest
import ulid as pyulid
from hypothesis import given
from hypothesis import strategies as st

from oklog.ulid import MAX_MS, MAX_ULID, MIN_ULID, Stamper, decode_int, encode_int, is_ulid, ms_of, ulid_for_ms
from oklog.ulid import ms_of as ms_of_ulid


def test_stamper_is_strictly_monotonic_and_parseable():
    s = Stamper()
    ids = s.batch(100_000) + s.batch(1) + s.batch(70_000)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for u in ids[:: 9_999]:
        assert str(pyulid.ULID.from_str(u.decode())) == u.decode()


def test_stamper_survives_a_clock_that_stands_still_or_steps_back():
    times = iter([1000, 1000, 999, 998] + [997] * 10)
    s = Stamper(clock=lambda: next(times))
    ids = s.batch(40_000) + s.batch(5) + s.batch(40_000)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(ms_of(u) >= 1000 for u in ids)


def test_stamper_time_tracks_the_clock():
    now = [5_000]
    s = Stamper(clock=lambda: now[0])
    a = s.one()
    now[0] = 9_000
    b = s.one()
    assert ms_of(a) == 5_000 and ms_of(b) == 9_000


def test_ulid_bounds_helpers():
    assert decode_int(encode_int(123456789, 10)) == 123456789
    assert decode_int(b"zz") == decode_int(b"ZZ") == 1023
    with pytest.raises(ValueError):
        decode_int(b"U")
    lo, hi = ulid_for_ms(42), ulid_for_ms(42, upper=True)
    assert lo < hi and ms_of(lo) == ms_of(hi) == 42
    assert is_ulid(lo) and not is_ulid(b"8" + lo[1:]) and not is_ulid(b"short")
    assert not is_ulid(lo.lower()) and ms_of(lo.lower()) == 42
    assert is_ulid(MIN_ULID) and is_ulid(MAX_ULID) and MIN_ULID <= lo < MAX_ULID
    for junk in (b"", b"8000000000", b"0000000U00", "x"):
        with pytest.raises(ValueError):
            ms_of(junk)
    with pytest.raises(ValueError):
        ulid_for_ms(-1)


def test_ulid_for_ms_bounds_of_a_millisecond() -> None:
    assert ulid_for_ms(0, False) == b"0" * 26
    assert ulid_for_ms(0, True) == b"0" * 10 + b"Z" * 16
    assert ulid_for_ms(MAX_MS, True) == b"7" + b"Z" * 25
    ms = 1_732_190_400_123
    lo, hi = ulid_for_ms(ms, False), ulid_for_ms(ms, True)
    assert lo[:10] == hi[:10] and lo < hi
    assert ms_of_ulid(lo) == ms_of_ulid(hi) == ms
    assert is_ulid(lo) and is_ulid(hi)
    with pytest.raises(ValueError):
        ulid_for_ms(-1, False)
    with pytest.raises(ValueError):
        ulid_for_ms(MAX_MS + 1, False)


@given(st.integers(0, MAX_MS))
def test_ulid_for_ms_agrees_with_python_ulid(ms: int) -> None:
    ours = ulid_for_ms(ms, False)
    assert pyulid.ULID.from_str(ours.decode()).milliseconds == ms
    assert pyulid.ULID.from_str(ulid_for_ms(ms, True).decode()).milliseconds == ms
    assert ms_of_ulid(ours) == ms
    assert ms_of_ulid(ours.decode().lower()) == ms


def test_ms_of_ulid_rejects_garbage() -> None:
    for junk in (b"", b"short", b"8ZZZZZZZZZZZZZZZZZZZZZZZZZ", b"01JD00000U0000000000000000", "é" * 26):
        with pytest.raises(ValueError):
            ms_of_ulid(junk)


# --- from / to -----------------------------------------------------------------


