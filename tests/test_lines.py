"""The one line splitter (oklog.lines): any chunking in, whole lines out."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.errors import CorruptSegment
from oklog.lines import LineSplitter, aiter_blocks, iter_blocks
from tests.recordutil import rec, ulid


# --- LineSplitter / iter_blocks / aiter_blocks --------------------------------------------

STREAM = rec(1, b"alpha") + rec(2, b"") + b"\n" + rec(3, b"\r\x00\xff") + rec(4, b"z" * 300)


def all_splits(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    yield [bytes([c]) for c in data]
    for i in range(0, len(data) + 1, 7):
        yield [data[:i], data[i:]]
    rng = random.Random(3)
    for _ in range(30):
        cuts = sorted(rng.sample(range(len(data) + 1), 5))
        yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@pytest.mark.parametrize("min_size", [0, 1, 100, 10**6])
def test_iter_blocks_whole_lines(min_size: int) -> None:
    for chunks in all_splits(STREAM):
        blocks = list(iter_blocks(chunks, min_size=min_size))
        assert b"".join(blocks) == STREAM
        for b in blocks:
            assert b and b.endswith(b"\n")
        for b in blocks[:-1]:
            assert len(b) >= min_size


@pytest.mark.parametrize("policy", ["error", "keep", "drop"])
def test_iter_blocks_tail_policies(policy: str) -> None:
    data = STREAM + b"partial"
    for chunks in all_splits(data):
        if policy == "error":
            got: list[bytes] = []
            with pytest.raises(CorruptSegment):
                for b in iter_blocks(chunks, final_tail="error"):
                    got.append(b)
            assert b"".join(got) == STREAM  # whole lines came out first
        elif policy == "keep":
            assert b"".join(iter_blocks(chunks, final_tail="keep")) == data + b"\n"
            assert list(iter_blocks(chunks, final_tail="keep"))[-1].endswith(b"partial\n")
        else:
            assert b"".join(iter_blocks(chunks, final_tail="drop")) == STREAM


def test_iter_blocks_no_copy_when_aligned() -> None:
    chunks = [rec(1), rec(2) + rec(3)]
    out = list(iter_blocks(chunks))
    assert out[0] is chunks[0] and out[1] is chunks[1]


def test_iter_blocks_only_tail_and_empty() -> None:
    assert list(iter_blocks([])) == []
    assert list(iter_blocks([b"", b""])) == []
    assert list(iter_blocks([b"abc", b"def"], final_tail="keep")) == [b"abcdef\n"]
    assert list(iter_blocks([b"abc"], final_tail="drop")) == []
    with pytest.raises(CorruptSegment):
        list(iter_blocks([b"abc"]))


def test_iter_blocks_accepts_bytearray_and_memoryview() -> None:
    buf = bytearray(rec(1) + b"par")
    out = list(iter_blocks([buf, memoryview(b"tial\n")]))
    assert out == [rec(1), b"partial\n"]
    assert all(type(b) is bytes for b in out)


def test_max_line_error() -> None:
    sp = LineSplitter(max_line=10)
    assert sp.feed(b"12345") == b""
    assert sp.pending_tail == 5
    with pytest.raises(CorruptSegment):
        sp.feed(b"678901")
    sp = LineSplitter(max_line=10)
    with pytest.raises(CorruptSegment):
        sp.feed(b"ok\n" + b"x" * 11)
    sp = LineSplitter(max_line=10)
    with pytest.raises(CorruptSegment):
        sp.feed(b"x" * 50 + b"\n")  # a whole line in one chunk is bounded too
    sp = LineSplitter(max_line=10)
    assert sp.feed(b"x" * 10 + b"\n") == b"x" * 10 + b"\n"  # the limit excludes the LF


def test_line_splitter_bad_policy() -> None:
    with pytest.raises(ValueError):
        LineSplitter(final_tail="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["error", "keep", "drop"])
def test_aiter_blocks(policy: str) -> None:
    async def agen(chunks: list[bytes]) -> AsyncIterator[bytes]:
        for c in chunks:
            await trio.sleep(0)
            yield c

    async def collect(chunks: list[bytes], **kw: object) -> list[bytes]:
        return [b async for b in aiter_blocks(agen(chunks), **kw)]  # type: ignore[arg-type]

    for chunks in all_splits(STREAM):
        assert b"".join(trio.run(collect, chunks)) == STREAM
        assert trio.run(lambda: collect(chunks, min_size=10**6)) == [STREAM]
    data = STREAM + b"partial"
    for chunks in all_splits(data):
        if policy == "error":
            with pytest.raises(CorruptSegment):
                trio.run(lambda: collect(chunks, final_tail="error"))
        elif policy == "keep":
            assert b"".join(trio.run(lambda: collect(chunks, final_tail="keep"))) == data + b"\n"
        else:
            assert b"".join(trio.run(lambda: collect(chunks, final_tail="drop", min_size=50))) == STREAM


# --- over-long lines dropped (the ingest servers, the forwarder) --------------------------


def feed_all(sp: LineSplitter, chunks: list[bytes]) -> list[bytes]:
    out = b"".join(sp.feed(c) for c in chunks) + b"".join(sp.finish())
    lines = out.split(b"\n")
    assert lines.pop() == b""
    return lines


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
       st.integers(min_value=1, max_value=17), st.booleans())
@settings(max_examples=200)
def test_keep_any_chunking(lines, step, trailing_newline):
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")

    def new() -> LineSplitter:
        return LineSplitter(final_tail="keep", max_line=1 << 20, too_long="drop")

    whole = feed_all(new(), [data])
    bytewise = feed_all(new(), [data[i:i + 1] for i in range(len(data))])
    stepped = feed_all(new(), [data[i:i + step] for i in range(0, len(data), step)])
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert whole == bytewise == stepped == expected


@pytest.mark.parametrize("step", [1, 3, 7, 64, 10_000])
def test_long_lines_are_dropped_alone(step):
    sp = LineSplitter(final_tail="keep", max_line=5, too_long="drop")
    data = b"ok\n" + b"x" * 50 + b"\nfine\n12345\n123456\nlast"
    lines = feed_all(sp, [data[i:i + step] for i in range(0, len(data), step)])
    assert lines == [b"ok", b"fine", b"12345", b"last"]
    assert sp.rejected == 2


def test_long_final_line_is_dropped():
    sp = LineSplitter(final_tail="keep", max_line=3, too_long="drop")
    assert feed_all(sp, [b"a\nbcdefg"]) == [b"a"]
    assert sp.rejected == 1


@given(st.lists(st.integers(0, 30), max_size=40), st.integers(1, 40), st.integers(0, 12))
def test_drop_policy_against_a_reference(lengths, step, limit):
    data = b"".join(b"%c" % (97 + i % 26) * n + b"\n" for i, n in enumerate(lengths))
    sp = LineSplitter(final_tail="error", max_line=limit, too_long="drop")
    got = b"".join(sp.feed(data[i:i + step]) for i in range(0, len(data), step)) + b"".join(sp.finish())
    want = [line for line in data.split(b"\n")[:-1] if len(line) <= limit]
    assert got == b"".join(line + b"\n" for line in want)
    assert sp.rejected == len(lengths) - len(want)
