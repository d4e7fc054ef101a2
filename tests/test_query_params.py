"""Query parameter parsing: every input is a Query or a one-line BadQuery."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.errors import BadQuery, ClientError
from oklog.query.params import Query, parse_query
from oklog.ulid import MAX_MS, is_ulid, ulid_for_ms
from oklog.ulid import ms_of as ms_of_ulid

NOW = 1_795_000_000_000  # 2026-11-18T...; the injected clock
A = "01JD0000000000000000000000"
B = "01JDZZZZZZZZZZZZZZZZZZZZZZ"


def bad(raw: bytes | str, match: str = "") -> str:
    with pytest.raises(BadQuery) as info:
        parse_query(raw, now_ms=NOW)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    assert msg.isascii()
    assert re.search(match, msg), msg
    return msg


def test_ulid_bounds_case_insensitive_keep_original_text() -> None:
    q = parse_query(f"from={A.lower()}&to={B}")
    assert q.lo == A.encode() and q.hi == B.encode()
    assert q.from_text == A.lower() and q.to_text == B
    assert q.q == b"" and q.regex is False and q.topic is None


@pytest.mark.parametrize(
    "text, ms",
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-21T12:00:00Z", 1_795_262_400_000),
        ("2026-11-21t12:00:00z", 1_795_262_400_000),
        ("2026-11-21T12:00:00.123Z", 1_795_262_400_123),
        ("2026-11-21T12:00:00.1Z", 1_795_262_400_100),
        ("2026-11-21T12:00:00.123456789Z", 1_795_262_400_123),
        ("2026-11-21T12:00:00.999999999999Z", 1_795_262_400_999),
        ("2026-11-21T13:00:00+01:00", 1_795_262_400_000),
        ("2026-11-21T13:00:00.5%2B01:00", 1_795_262_400_500),
        ("2026-11-21T13:00:00+01:00", 1_795_262_400_000),  # '+' arrives as a space
        ("2026-11-21T11:30:00-00:30", 1_795_262_400_000),
        ("2026-11-21 12:00:00Z", 1_795_262_400_000),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000),
        ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
    ],
)
def test_rfc3339_bounds(text: str, ms: int) -> None:
    q = parse_query(f"from={text}&to={text}")
    assert q.lo == ulid_for_ms(ms, False)
    assert q.hi == ulid_for_ms(ms, True)
    assert q.lo.endswith(b"0" * 16) and q.hi.endswith(b"Z" * 16)


def test_from_equal_to_is_one_millisecond() -> None:
    q = parse_query("from=2026-11-21T12:00:00.007Z&to=2026-11-21T12:00:00.007Z")
    assert ms_of_ulid(q.lo) == ms_of_ulid(q.hi)
    assert q.lo < q.hi


def test_relative_bounds_use_the_injected_clock() -> None:
    q = parse_query("from=1h30m&to=now", now_ms=NOW)
    assert ms_of_ulid(q.lo) == NOW - 90 * 60_000
    assert ms_of_ulid(q.hi) == NOW
    q = parse_query("from=1.5h&to=250ms", now_ms=NOW)
    assert ms_of_ulid(q.lo) == NOW - 90 * 60_000
    assert ms_of_ulid(q.hi) == NOW - 250
    q = parse_query("from=30d&to=1w", now_ms=NOW)
    assert ms_of_ulid(q.lo) == NOW - 30 * 86_400_000
    assert ms_of_ulid(q.hi) == NOW - 7 * 86_400_000
    assert q.from_text == "30d" and q.to_text == "1w"


def test_relative_bounds_default_to_the_system_clock() -> None:
    q = parse_query("from=5m&to=NOW")
    assert 0 < ms_of_ulid(q.hi) - ms_of_ulid(q.lo) <= 5 * 60_000


@pytest.mark.parametrize(
    "raw, match",
    [
        ("to=now", 'missing "from"'),
        ("from=now", 'missing "to"'),
        ("from=&to=now", 'missing "from"'),
        ("from=yesterday&to=now", 'invalid "from": not a ULID, an RFC3339 time or a duration such as 5m, 1h30m, 1w: "yesterday"'),
        ("from=now&to=2026-11-21", 'invalid "to": not a ULID'),
        ("from=2026-11-21T12:00:00&to=now", "not a ULID"),  # no offset
        ("from=2026-13-01T00:00:00Z&to=now", "month must be in 1..12"),
        ("from=2026-02-30T00:00:00Z&to=now", "day is out of range for month"),
        ("from=2026-02-01T24:00:00Z&to=now", "time of day out of range"),
        ("from=2026-02-01T23:60:00Z&to=now", "time of day out of range"),
        ("from=2026-02-01T23:59:60Z&to=now", "time of day out of range"),
        ("from=2026-02-01T23:59:00%2B24:00&to=now", "bad UTC offset"),
        ("from=0000-01-01T00:00:00Z&to=now", 'invalid "from"'),
        ("from=1969-12-31T23:59:59.999Z&to=now", "before 1970"),
        ("from=1970-01-01T00:30:00%2B01:00&to=now", "before 1970"),
        ("from=99999d&to=now", "before 1970"),
        ("from=8ZZZZZZZZZZZZZZZZZZZZZZZZZ&to=now", "not a ULID"),
        ("from=01JD00000U0000000000000000&to=now", "not a ULID"),
        (f"from={B}&to={A}", '"from" is after "to"'),
        ("from=now&to=1h", '"from" is after "to"'),
        ("from=%FF%00%0A&to=now", r'"\\\\xff\\u0000\\n"'),
    ],
)
def test_bad_bounds(raw: str, match: str) -> None:
    bad(raw, match)


def test_bad_query_is_a_client_error() -> None:
    with pytest.raises(ClientError) as info:
        parse_query("")
    assert info.value.status_hint == 400


def test_long_values_are_shortened_in_messages() -> None:
    msg = bad("from=" + "x" * 10_000 + "&to=now")
    assert len(msg) < 200 and msg.endswith('..."')


# --- q, regex, topic ---------------------------------------------------------


def test_q_is_percent_decoded_to_bytes() -> None:
    q = parse_query(f"from={A}&to={B}&q=%FF%00a+b%2Bc%0D%09%zz")
    assert q.q == b"\xff\x00a b+c\r\t%zz"
    assert parse_query(f"q=&from={A}&to={B}").q == b""
    assert parse_query(f"from={A}&to={B}&q").q == b""


def test_str_and_bytes_queries_agree() -> None:
    raw = f"from={A}&to={B}&q=h%C3%A9llo&regex=1&topic=web"
    assert parse_query(raw) == parse_query(raw.encode())
    assert parse_query(f"from={A}&to={B}&q=héllo").q == "héllo".encode()


@pytest.mark.parametrize("value", ["", "=", "=true", "=TRUE", "=1", "=yes", "=on"])
def test_regex_true(value: str) -> None:
    assert parse_query(f"from={A}&to={B}&q=a.b&regex{value}").regex is True


@pytest.mark.parametrize("value", ["=false", "=0", "=no", "=Off"])
def test_regex_false(value: str) -> None:
    q = parse_query(f"from={A}&to={B}&q=a(b&regex{value}")
    assert q.regex is False and q.q == b"a(b"


def test_regex_bad_value() -> None:
    bad(f"from={A}&to={B}&regex=maybe", 'invalid "regex": want true or false, got "maybe"')


@pytest.mark.parametrize("pattern, reason", [
    ("a(b", "missing )"),
    ("*", "no argument for repetition operator"),
    ("[z-a]", "invalid character class range"),
    ("(?P<x", "invalid named capture group"),
    ("a{3,2}", "invalid repetition size"),
    ("\\", "trailing \\"),
    ("(a)\\1", "invalid escape sequence: \\1 (RE2 syntax, as Go's regexp: no backreferences"),
    ("(?<=a+)b", "invalid perl operator: (?<"),
    ("(?=a)", "invalid perl operator: (?="),
])
def test_invalid_regex(pattern: str, reason: str) -> None:
    """RE2's reason, in one line: Go's syntax, so no backreferences or lookarounds."""
    from urllib.parse import quote

    msg = bad(f"from={A}&to={B}&regex&q={quote(pattern)}", 'invalid "q": bad regex: ')
    assert reason in msg


def test_invalid_regex_spanning_lines_is_one_line() -> None:
    bad(f"from={A}&to={B}&regex&q=a%0A(b", r"bad regex: missing \): a \(b")


def test_a_pattern_that_is_not_utf8_is_refused() -> None:
    bad(f"from={A}&to={B}&regex&q=%FF", "bad regex: invalid UTF-8")


def test_topic() -> None:
    assert parse_query(f"from={A}&to={B}&topic=web-1_x").topic == b"web-1_x"
    assert parse_query(f"from={A}&to={B}&topic=").topic is None
    for junk in ("-web", "_x", "a b", "a%00", "%C3%A9", "a.b"):
        bad(f"from={A}&to={B}&topic={junk}", 'invalid "topic"')


def test_unknown_parameters_ignored_and_first_value_wins() -> None:
    q = parse_query(f"&&stats&x=1&from={A}&to={B}&q=one&q=two&regex=no&regex=yes&&")
    assert q.q == b"one" and q.regex is False
    # encoded names are decoded before comparison
    assert parse_query(f"%66rom={A}&to={B}").lo == A.encode()


# --- the value -------------------------------------------------------------


def test_query_is_a_frozen_value_with_a_matcher() -> None:
    q = parse_query(f"from={A}&to={B}&q=x.y&regex")
    assert q.matcher.pattern is not None and q.matcher.regex
    with pytest.raises(AttributeError):
        q.q = b"z"  # type: ignore[misc]
    assert q == Query(A.encode(), B.encode(), b"x.y", True, None, A, B)
    assert hash(q) == hash(Query(A.encode(), B.encode(), b"x.y", True, None, A, B))


def test_direct_construction_is_validated() -> None:
    assert Query(A.encode(), B.encode()).from_text == A
    with pytest.raises(BadQuery, match="not a ULID"):
        Query(b"nope", B.encode())
    with pytest.raises(BadQuery, match="not a ULID"):
        Query(A.lower().encode(), B.encode())
    with pytest.raises(BadQuery, match="after"):
        Query(B.encode(), A.encode())
    with pytest.raises(BadQuery, match="topic"):
        Query(A.encode(), B.encode(), topic=b"")
    with pytest.raises(BadQuery, match="bad regex"):
        Query(A.encode(), B.encode(), q=b"(", regex=True)


def test_encode_round_trips_with_absolute_bounds() -> None:
    q = parse_query("from=1h&to=now&q=%C3%A9+%26%3D%25&regex&topic=web", now_ms=NOW)
    again = parse_query(q.encode(), now_ms=0)
    assert (again.lo, again.hi, again.q, again.regex, again.topic) == (
        q.lo, q.hi, q.q, q.regex, q.topic,
    )
    plain = parse_query(f"from={A}&to={B}")
    assert plain.encode() == f"from={A}&to={B}&q="


# --- fuzz ---------------------------------------------------------------------


def parses_or_bad_query(raw: bytes | str) -> None:
    try:
        q = parse_query(raw, now_ms=NOW)
    except BadQuery as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg and msg.isascii()
    else:
        assert is_ulid(q.lo) and is_ulid(q.hi) and q.lo <= q.hi


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_any_bytes(raw: bytes) -> None:
    parses_or_bad_query(raw)


@settings(max_examples=300)
@given(st.text(max_size=100))
def test_fuzz_any_text(raw: str) -> None:
    parses_or_bad_query(raw)


_names = st.sampled_from([b"from", b"to", b"q", b"regex", b"topic", b"x", b"fr%6Fm", b""])
_values = st.one_of(
    st.sampled_from(
        [
            A.encode(), B.encode(), b"now", b"5m", b"1.5h", b"2026-11-21T12:00:00Z",
            b"2026-11-21T12:00:00.123456789+01:00", b"1969-12-31T23:59:59Z", b"true",
            b"off", b"(", b"a.*b", b"[", b"%FF", b"%0A", b"web", b"", b"9999999999999d",
            b"\\", b"(?<=a*)", b"a{99999999999}", b"(" * 200,
        ]
    ),
    st.binary(max_size=30),
    st.from_regex(rb"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[-+][0-9]{2}:[0-9]{2})\Z"),
    st.from_regex(rb"\A[0-9A-Za-z]{26}\Z"),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(_names, st.booleans(), _values), max_size=6))
def test_fuzz_structured(pairs: list[tuple[bytes, bool, bytes]]) -> None:
    raw = b"&".join(name + (b"=" + value if eq else b"") for name, eq, value in pairs)
    parses_or_bad_query(raw)
