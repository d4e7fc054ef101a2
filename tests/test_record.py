"""Records: the stamper, the line reader, stamping and block validation."""

import pytest
import ulid as pyulid
from hypothesis import given, settings, strategies as st

from oklog.errors import CorruptSegment
from oklog.record import LineReader, salvage, stamp, validate_block
from oklog.ulid import Stamper, decode_int, encode_int, is_valid, ms_of, ulid_for_ms


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
    lo, hi = ulid_for_ms(42), ulid_for_ms(42, upper=True)
    assert lo < hi and ms_of(lo) == ms_of(hi) == 42
    assert is_valid(lo) and not is_valid(b"8" + lo[1:]) and not is_valid(b"short")


def test_stamp_builds_records_and_keeps_bytes():
    lines = [b"hello", b"", b"\x00\xff\r\t%s %d", b"caf\xc3\xa9"]
    block = stamp(lines, Stamper())
    out = block.split(b"\n")[:-1]
    assert len(out) == 4
    for line, rec in zip(lines, out):
        ulid, topic, payload = rec[:26], rec[27:34], rec[35:]
        assert rec[26:27] == rec[34:35] == b" "
        assert topic == b"default" and payload == line and is_valid(ulid)
    validate_block(block)


def test_stamp_with_a_topic():
    block = stamp([b"x"], Stamper(), topic=b"web-1")
    assert block[27:] == b"web-1 x\n"


def feed_all(reader, chunks):
    lines = []
    for c in chunks:
        lines += reader.feed(c)
    return lines + reader.close()


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
       st.integers(min_value=1, max_value=17), st.booleans())
@settings(max_examples=200)
def test_line_reader_any_chunking(lines, step, trailing_newline):
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    whole = feed_all(LineReader(max_size=1 << 20), [data])
    bytewise = feed_all(LineReader(max_size=1 << 20), [data[i:i + 1] for i in range(len(data))])
    stepped = feed_all(LineReader(max_size=1 << 20), [data[i:i + step] for i in range(0, len(data), step)])
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert whole == bytewise == stepped == expected


def test_line_reader_rejects_long_lines_alone():
    r = LineReader(max_size=5)
    data = b"ok\n" + b"x" * 50 + b"\nfine\n12345\n123456\nlast"
    lines = feed_all(r, [data[i:i + 7] for i in range(0, len(data), 7)])
    assert lines == [b"ok", b"fine", b"12345", b"last"]
    assert r.rejected == 2


def test_line_reader_long_final_line_is_rejected():
    r = LineReader(max_size=3)
    assert feed_all(r, [b"a\nbcdefg"]) == [b"a"]
    assert r.rejected == 1


def test_validate_block_rejects_garbage_with_line_number():
    good = stamp([b"a", b"b"], Stamper())
    validate_block(b"")
    for bad in (good + b"garbage\n", good[:-1], b"01ARZ3NDEKTSV4RRFFQ69G5FAV default x\n" + b"\n",
                good.replace(b" default ", b" -bad ", 1), good + b"u" * 26 + b" t p\n"):
        with pytest.raises(CorruptSegment) as info:
            validate_block(bad)
        assert "line" in str(info.value)


def test_salvage_keeps_only_whole_records():
    good = stamp([b"a", b"b\x00c"], Stamper())
    assert salvage(good) == (good, 0)
    assert salvage(good + b"partial") == (good, 1)
    assert salvage(b"junk\n" + good + b"\x00\x00") == (good, 2)
    assert salvage(b"") == (b"", 0)
