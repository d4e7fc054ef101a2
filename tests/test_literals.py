"""Required literals of a regex, checked against RE2 itself as the reference:
whatever RE2 matches must contain every clause's literal."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oklog.errors import BadQuery
from oklog.query.literals import Required, required, whitelisted
from oklog.query.scan import compile_regex


@pytest.mark.parametrize("pattern, clauses, fold", [
    (b"ERROR.*status=500", ((b"ERROR",), (b"status=500",)), False),
    (b"(WARN|ERROR) db", ((b"WARN", b"ERROR"), (b" db",)), False),
    (b"myservice.*(WARN|ERROR)", ((b"myservice",), (b"WARN", b"ERROR")), False),
    (b"a+bc", ((b"a",), (b"bc",)), False),
    (b"(?:abc)x", ((b"abcx",),), False),  # a plain group continues the run
    (b"(?:abc)+x", ((b"abc",), (b"x",)), False),
    (b"(abc)*x", ((b"x",),), False),  # may not occur at all
    (b"x?deadbeef", ((b"deadbeef",),), False),
    (b"(?i)ERROR", ((b"error",),), True),
    (b"(?i)k kelvin", ((b" ",), (b"elvin",)), True),  # RE2 folds k to the Kelvin sign too
    (b"(a|b.*)c", ((b"c",),), False),  # one branch has no literal of its own... but "b" it has
    (b"(ab|)c", ((b"c",),), False),  # an empty branch promises nothing
    (rb"\d+ms", ((b"ms",),), False),
    (b".*", (), False),
    (b"[[:alpha:]]+x", (), False),  # not whitelisted: unknown, so nothing
    (rb"\pLfoo", (), False),
    (b"a{,3}b", (), False),  # RE2 reads {,3} as text
    (rb"foo\z", (), False),
])
def test_examples(pattern: bytes, clauses: tuple, fold: bool) -> None:
    got = required(pattern)
    if pattern == b"(a|b.*)c":
        assert got.clauses == ((b"a", b"b"), (b"c",))
        return
    assert got == Required(clauses, fold if clauses else got.fold)


def test_longest_single_literal() -> None:
    assert required(b"ab.*status=500.*(x|y)").longest() == b"status=500"
    assert Required().longest() == b""


def test_whitelist() -> None:
    assert whitelisted(rb"a\.b[^\n]\d+(?i:x)(?P<n>y){2,3}\x41")
    for bad in (b"[[:digit:]]", rb"\pN", rb"\Qa.b\E", rb"\z", b"a{,2}", b"(?U)a", rb"\C", rb"[\b]",
                b"(?<n>a)", rb"\x{41}", b"[a"):
        assert not whitelisted(bad), bad


ATOMS = [b"a", b"b", b"ab", b"ERROR", b"err", b"x", b" ", b".", rb"\d", rb"\w", rb"\s", b"[a-c]",
         b"[^a]", b"^", b"$", rb"\b", b"K", b"s", b"(?i:ab)", "é".encode(), "xé?".encode()]
QUANTS = [b"", b"", b"*", b"+", b"?", b"{2}", b"{1,3}", b"*?"]


@st.composite
def patterns(draw: st.DrawFn) -> bytes:
    def seq() -> bytes:
        parts = []
        for atom in draw(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=5)):
            quant = draw(st.sampled_from(QUANTS))
            parts.append(b"(?:" + atom + b")" + quant if quant else atom)
        return b"".join(parts)
    body = seq()
    for _ in range(draw(st.integers(0, 2))):
        body = body + b"|" + seq()
        if draw(st.booleans()):
            body = b"(" + body + b")" + seq()
    return draw(st.sampled_from([b"", b"", b"(?i)", b"(?s)"])) + body


TEXT = st.lists(st.sampled_from([b"a", b"b", b"ab", b"ERROR", b"error", b"Err", b"x", b" ", b"7", b"K",
                                 "\u212a".encode(), b"s", "\u017f".encode(), "é".encode(), "É".encode()]),
                max_size=12).map(b"".join)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(patterns(), st.lists(TEXT, min_size=1, max_size=8))
def test_every_match_holds_every_clause(pattern: bytes, texts: list[bytes]) -> None:
    try:
        compiled = compile_regex(pattern)
    except BadQuery:
        assume(False)
    req = required(pattern)
    for text in texts:
        if compiled.search(text) is None:
            continue
        hay = text.lower() if req.fold else text
        for clause in req.clauses:
            assert any(lit in hay for lit in clause), (pattern, text, req)


def test_non_ascii_characters_end_a_literal() -> None:
    """RE2 sees UTF-8 characters where Python's parser sees bytes."""
    assert required("abcé?d".encode()).clauses == ((b"abc",), (b"d",))
    assert required("café".encode()).clauses == ((b"caf",),)
    assert not whitelisted(rb"caf\xe9")  # U+00E9 to RE2, the byte E9 to Python
    assert compile_regex("abcé?d".encode()).search(b"abcd")


def test_three_nul_bytes_are_never_looked_up() -> None:
    from oklog.segment import ngram
    from tests.recordutil import rec

    index = ngram.build([rec(1, b"a\x00\x00\x00b")])
    grams = ngram.literal_grams(b"\x00\x00\x00")
    assert grams == [] or index.candidates([[grams]]) == 1
    assert index.candidates([[ngram.literal_grams(b"a\x00\x00\x00b")]]) == 1
