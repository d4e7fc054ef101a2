"""Cutting record headers off a block: the vectorised path against the
per-line reference of ``oklog query``."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.payloads import fixed_width

ULID = "01HZX3J8Q2W5E7R9T1Y3U5I7O9"[:26].replace("I", "J").replace("O", "P")


def reference(block: bytes, keep_ulid: bool = False) -> bytes:
    """Per line: ``ULID SP TOPIC SP PAYLOAD`` -> ``PAYLOAD`` (``keep_ulid``:
    ``ULID SP PAYLOAD``); other lines unchanged."""
    out = []
    for line in block.split(b"\n")[:-1]:
        m = re.fullmatch(rb"([0-9A-Z]{26} )[^ \n]* ([^\n]*)", line)
        out.append((m.group(1) if keep_ulid else b"") + m.group(2) if m else line)
    return b"\n".join(out) + b"\n"


payload = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"."))


@st.composite
def records(draw, topic: bytes = b"default") -> bytes:
    ulid = draw(st.text("0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=26, max_size=26)).encode()
    return ulid + b" " + topic + b" " + draw(payload) + b"\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(records(), min_size=1, max_size=30))
def test_one_topic_is_cut_exactly(lines):
    block = b"".join(lines)
    assert fixed_width(block) == reference(block)
    assert fixed_width(block, keep_ulid=True) == reference(block, keep_ulid=True)


odd_line = st.one_of(
    st.just(b"not a record at all\n"),
    st.just(b"short\n"),
    st.just(b"\n"),
    st.just(ULID.encode() + b" topic-only-no-space\n"),
    st.just(ULID.lower().encode() + b" default lower-case ulid\n"),
    st.just(ULID.encode() + b" other topic of another length\n"),
    st.just(ULID.encode() + b" deflt x\n"),  # same header length, other topic: still a header
    st.just(ULID.encode() + b"  empty topic\n"),
    st.just(ULID.encode() + b" default \n"),  # empty payload
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(records(), odd_line), min_size=1, max_size=30))
def test_anything_else_is_exact_or_declined(lines):
    block = b"".join(lines)
    got = fixed_width(block)
    assert got is None or got == reference(block)
    got = fixed_width(block, keep_ulid=True)
    assert got is None or got == reference(block, keep_ulid=True)


def test_declines_what_it_cannot_do_and_cuts_mixed_topics_of_one_length():
    u = ULID.encode()
    assert fixed_width(b"") is None
    assert fixed_width(u + b" default no final LF") is None
    assert fixed_width(u + b" default a\nshort\n") is None
    assert fixed_width(u + b" default a\n" + u + b" topic-xyz b\n") is None  # lengths differ
    assert fixed_width(u + b" default a\n" + u + b" de ault b\n") is None  # a space in the topic
    block = u + b" default a\n" + u + b" deflt_x \n"
    assert fixed_width(block) == b"a\n\n" == reference(block)
