"""The n-gram block index: exact grams, and never a block dropped that matches."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.segment import ngram
from tests.recordutil import rec


def brute_grams(block: bytes) -> set[int]:
    """Trigrams of every line after its ULID and the space (the index's rule)."""
    out = set()
    for line in block.split(b"\n")[:-1]:
        body = line[ngram.HEADER:]
        for i in range(len(body) - 2):
            g = body[i : i + 3]
            out.add(g[0] | g[1] << 8 | g[2] << 16)
    out.discard(0)
    return out


PAYLOAD = st.lists(st.sampled_from([b"a", b"b", b"ERROR", b" ", b"\x00", b"\xff", b"xyz", b"7f3a"]),
                   max_size=10).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(PAYLOAD, min_size=1, max_size=30))
def test_block_grams_are_the_payload_trigrams(payloads: list[bytes]) -> None:
    block = b"".join(rec(i, p) for i, p in enumerate(payloads))
    got = set(ngram.block_grams(block).tolist())
    want = brute_grams(block)
    # exactly the payloads' trigrams; those holding an LF (never in a query) may be there or not
    has_lf = lambda c: 10 in (c & 0xFF, c >> 8 & 0xFF, c >> 16)  # noqa: E731
    assert {c for c in got if not has_lf(c)} == want


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(PAYLOAD, min_size=1, max_size=8), min_size=1, max_size=12), PAYLOAD, st.booleans())
def test_candidates_keep_every_block_that_holds_the_literal(blocks: list[list[bytes]], literal: bytes,
                                                            fold: bool) -> None:
    n = 0
    data = []
    for payloads in blocks:
        data.append(b"".join(rec(n + i, p) for i, p in enumerate(payloads)))
        n += len(payloads)
    index = ngram.build(data)
    grams = ngram.literal_grams(literal, fold)
    if not grams:
        return
    mask = index.candidates([[grams]])
    for i, block in enumerate(data):
        payloads = [line[ngram.HEADER + 8:] for line in block.split(b"\n")[:-1]]  # after "default "
        hit = any((literal.lower() in p.lower()) if fold else (literal in p) for p in payloads)
        if hit:
            assert mask >> i & 1, (i, literal)


def test_a_rare_token_leaves_only_its_blocks() -> None:
    rng = random.Random(3)
    blocks = []
    for b in range(40):
        lines = [rec(b * 100 + i, b"GET /api/v1/users/%d 200 %08x" % (rng.randrange(10**6), rng.getrandbits(32)))
                 for i in range(100)]
        if b in (7, 31):
            lines[50] = rec(b * 100 + 50, b"GET /x?trace=needle-7f3a9c 200")
        blocks.append(b"".join(lines))
    index = ngram.build(blocks)
    mask = index.candidates([[ngram.literal_grams(b"needle-7f3a9c")]])
    assert [i for i in range(40) if mask >> i & 1] == [7, 31]
    # OR of literals; AND of clauses
    either = index.candidates([[ngram.literal_grams(b"needle"), ngram.literal_grams(b"/api/v1")]])
    assert either == (1 << 40) - 1
    both = index.candidates([[ngram.literal_grams(b"needle")], [ngram.literal_grams(b"trace=")]])
    assert both == mask
    assert index.candidates([[ngram.literal_grams(b"nowhere-zzz")]]) == 0


def test_case_variants() -> None:
    blocks = [rec(1, b"an Error here"), rec(2, b"nothing")]
    index = ngram.build(blocks)
    assert index.candidates([[ngram.literal_grams(b"error", fold=True)]]) == 0b01
    assert index.candidates([[ngram.literal_grams(b"error")]]) == 0


def test_a_block_of_random_bytes_is_not_indexed_but_always_read() -> None:
    rng = random.Random(1)
    noise = b"".join(rec(i, bytes(rng.randrange(32, 127) for _ in range(2000))) for i in range(300))
    plain = rec(1000, b"just words here")
    index = ngram.build([noise, plain])
    assert index.wild == [0] and len(ngram.block_grams(noise)) > ngram.MAX_GRAMS
    assert index.candidates([[ngram.literal_grams(b"just words")]]) == 0b11  # block 0: maybe
    assert index.candidates([[ngram.literal_grams(b"zzzzqqqq-nowhere")]]) == 0b01
    assert len(index.bitmap.serialize()) < 4096  # the noise cost nothing


def test_an_index_is_built_block_by_block_in_bounded_memory() -> None:
    """Building a segment's index keeps one block's grams at a time, not
    every block's until the end (a sidecar rebuilt at start for a 400 MiB
    segment once took ~100 MB more of the node's memory)."""
    import tracemalloc

    rng = random.Random(3)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_./"  # 40 bytes: ~64k trigrams, under MAX_GRAMS

    def block(seed: int) -> bytes:
        r = random.Random(seed)
        return b"".join(rec(i, bytes(r.choices(alphabet, k=1000))) for i in range(300))

    blocks = (block(rng.randrange(1 << 30)) for _ in range(40))  # ~50k distinct grams each
    tracemalloc.start()
    try:
        index = ngram.build(blocks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.blocks == 40 and not index.wild
    # the 16 MiB scratch table and one block's arrays; every block's grams kept
    # (4 bytes each, then 8 more for their codes) came to more than twice that
    assert peak < 28 << 20, peak
