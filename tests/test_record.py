"""The record format: stamping, block validation, salvage."""

import pytest
from hypothesis import given, settings, strategies as st

from oklog.errors import CorruptSegment
from oklog.records.format import is_valid_block, salvage, stamp, validate_block
from oklog.ulid import Stamper, is_ulid


def test_stamp_builds_records_and_keeps_bytes():
    lines = [b"hello", b"", b"\x00\xff\r\t%s %d", b"caf\xc3\xa9"]
    block = stamp(lines, Stamper())
    out = block.split(b"\n")[:-1]
    assert len(out) == 4
    for line, rec in zip(lines, out):
        ulid, topic, payload = rec[:26], rec[27:34], rec[35:]
        assert rec[26:27] == rec[34:35] == b" "
        assert topic == b"default" and payload == line and is_ulid(ulid)
    validate_block(block)


def test_stamp_with_a_topic():
    block = stamp([b"x"], Stamper(), topic=b"web-1")
    assert block[27:] == b"web-1 x\n"


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
    assert salvage(good) [0] is good
    assert salvage(good + b"partial") == (good, 1)
    assert salvage(b"junk\n" + good + b"\x00\x00") == (good, 2)
    assert salvage(b"") == (b"", 0)
    assert salvage(b"\n\n") == (b"", 2)


@given(st.lists(st.sampled_from(["good", "junk", "empty", "short"]), max_size=30), st.booleans())
def test_salvage_against_a_line_by_line_reference(kinds, torn):
    stamper = Stamper()
    lines = []
    for kind in kinds:
        if kind == "good":
            lines.append(stamp([b"payload %d" % len(lines)], stamper))
        elif kind == "junk":
            lines.append(b"\xff garbage line\n")
        elif kind == "empty":
            lines.append(b"\n")
        else:
            lines.append(stamp([b"x"], stamper)[:20] + b"\n")
    block = b"".join(lines) + (b"01ARZ3NDEKTSV4RRFFQ69G5FAV default torn" if torn else b"")
    good, dropped = salvage(block)
    want = [line for line in lines if is_valid_block(line)]
    assert good == b"".join(want)
    assert dropped == len(lines) - len(want) + torn
    assert is_valid_block(good)
