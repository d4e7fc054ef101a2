"""The grep engine against a per-line reference, rule by rule and at random."""

from __future__ import annotations

import bisect
import mmap
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oklog.errors import BadQuery
from oklog.query import scan as scan_mod
from oklog.query.params import Query
from oklog.ulid import ulid_for_ms
from oklog.query.scan import Matcher, compile_regex, scan
from oklog.records.search import bisect as bisect_ulid
from oklog.records.search import line_range

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BASE_MS = 1_795_262_400_000
LO = b"0" * 26
HI = b"7" + b"Z" * 25


def ulid(ms: int, n: int) -> bytes:
    tail = ""
    for _ in range(16):
        tail = CROCKFORD[n % 32] + tail
        n //= 32
    return ulid_for_ms(ms, False)[:10] + tail.encode()


def segment(*records: tuple[bytes, bytes]) -> bytes:
    """Records (topic, payload) one per millisecond from BASE_MS."""
    return b"".join(
        ulid(BASE_MS + i, 7) + b" " + topic + b" " + payload + b"\n"
        for i, (topic, payload) in enumerate(records)
    )


def grep(buf: bytes, q: bytes = b"", regex: bool = False, topic: bytes | None = None,
         lo: bytes = LO, hi: bytes = HI, start: int = 0, end: int | None = None) -> bytes:
    query = Query(lo, hi, q, regex, topic)
    blocks = list(scan(buf, query, start=start, end=end))
    for block in blocks:
        assert isinstance(block, bytes) and block and block.endswith(b"\n")
    return b"".join(blocks)


def reference(buf: bytes, q: bytes, regex: bool, topic: bytes | None,
              lo: bytes = LO, hi: bytes = HI) -> bytes:
    """The obvious per-line implementation of the query semantics."""
    out = []
    for line in buf.split(b"\n")[:-1]:  # only complete lines
        if not lo <= line[:26] <= hi:
            continue
        parts = line.split(b" ", 2)
        if len(parts) < 3 or (topic is not None and parts[1] != topic):
            continue
        payload = parts[2]
        hit = compile_regex(q).search(payload) is not None if regex else q in payload
        if hit:
            out.append(line + b"\n")
    return b"".join(out)


def payloads(result: bytes) -> list[bytes]:
    return [line.split(b" ", 2)[2] for line in result.split(b"\n")[:-1]]


# --- matching rules -------------------------------------------------------------

SEG = segment(
    (b"default", b"hello world"),
    (b"default", b"ERROR connect timeout after 3s"),
    (b"web", b"GET /index.html 200"),
    (b"default", b""),
    (b"web", b"ERROR disk full"),
    (b"default", b"\x00nul\r\n"[:-1] + b"\tcr\xff\xfe not utf-8"),
    (b"default", b"default"),
    (b"api", b"timeout ERROR reversed"),
)


def test_empty_q_matches_everything() -> None:
    assert grep(SEG) == SEG
    assert grep(SEG, b"", regex=True) == SEG
    assert Matcher().strategy == "all"


def test_literal_substring_of_payload() -> None:
    assert payloads(grep(SEG, b"ERROR")) == [
        b"ERROR connect timeout after 3s", b"ERROR disk full", b"timeout ERROR reversed"
    ]
    assert grep(SEG, b"error") == b""  # case-sensitive, like OK Log
    assert grep(SEG, b"hello world") == SEG.split(b"\n")[0] + b"\n"


@pytest.mark.parametrize("regex", [False, True])
def test_header_only_matches_do_not_count(regex: bool) -> None:
    # every ULID starts with the same 10 time chars and ends in ...7
    first = SEG[:26]
    assert grep(SEG, first[:10], regex) == b""
    assert grep(SEG, first, regex) == b""
    assert grep(SEG, first[-5:], regex) == b""
    assert grep(SEG, b"web", regex) == b""
    assert grep(SEG, b" web ", regex) == b""
    assert grep(SEG, b"api", regex) == b""
    # "default" is the topic of most records but the payload of one only
    assert payloads(grep(SEG, b"default", regex)) == [b"default"]
    assert payloads(grep(SEG, b"default ", regex)) == []
    assert payloads(grep(SEG, b" default", regex)) == []


def test_header_only_regex_matches_do_not_count() -> None:
    assert grep(SEG, rb"[0-9A-Z]{26}", True) == b""
    assert grep(SEG, rb"^[0-9A-Z]{10}", True) == b""
    assert grep(SEG, rb"\d{4}", True) == b""
    assert payloads(grep(SEG, rb"[a-z]+ [a-z]+", True)) == [
        b"hello world", b"ERROR connect timeout after 3s", b"ERROR disk full",
        b"\x00nul\r\tcr\xff\xfe not utf-8",
    ]


def test_anchors_refer_to_the_payload() -> None:
    assert payloads(grep(SEG, b"^ERROR", True)) == [b"ERROR connect timeout after 3s", b"ERROR disk full"]
    assert payloads(grep(SEG, rb"\AERROR", True)) == [b"ERROR connect timeout after 3s", b"ERROR disk full"]
    assert payloads(grep(SEG, b"(?m)^ERROR", True)) == [b"ERROR connect timeout after 3s", b"ERROR disk full"]
    assert payloads(grep(SEG, b"full$", True)) == [b"ERROR disk full"]
    assert payloads(grep(SEG, rb"full\z", True)) == [b"ERROR disk full"]
    assert payloads(grep(SEG, b"^default$", True)) == [b"default"]
    assert payloads(grep(SEG, b"^$", True)) == [b""]
    assert payloads(grep(SEG, b"^", True)) == payloads(SEG)
    assert payloads(grep(SEG, b"^h", True)) == [b"hello world"]
    assert grep(SEG, b"^[0-9]", True) == b""  # the ULID is not the payload's start
    assert grep(SEG, b"^(?:web|default) ", True) == b""
    with pytest.raises(BadQuery, match="no backreferences or lookarounds"):
        Matcher(rb"(?<=ERROR )disk", True)  # RE2, as Go: no lookarounds


def test_regex_and_literal_find_the_same_records() -> None:
    assert payloads(grep(SEG, b"ERROR.*timeout", True)) == [b"ERROR connect timeout after 3s"]
    assert payloads(grep(SEG, b"timeout|disk", True)) == [
        b"ERROR connect timeout after 3s", b"ERROR disk full", b"timeout ERROR reversed"
    ]
    assert payloads(grep(SEG, b"(?i)error.*TIMEOUT", True)) == [b"ERROR connect timeout after 3s"]
    assert payloads(grep(SEG, b"a.b", False)) == []
    assert payloads(grep(SEG, rb"\bdisk\b", True)) == [b"ERROR disk full"]


def test_case_insensitive_matching_folds_as_re2_does() -> None:
    seg = segment((b"default", b"x DeadBEEF y"), (b"DEADBEEF", b"nope"), (b"default", "été".encode()),
                  (b"default", "ÉTÉ deadbee".encode()), (b"default", b"deadbeef"),
                  (b"default", "\u212a kelvin".encode()))
    assert payloads(grep(seg, b"(?i)deadbeef", True)) == [b"x DeadBEEF y", b"deadbeef"]
    assert payloads(grep(seg, b"(?i)^deadbeef", True)) == [b"deadbeef"]
    # Unicode case folding (RE2, as Go): no ASCII-only prefilter may drop these
    assert payloads(grep(seg, "(?i)ÉTÉ".encode(), True)) == ["été".encode(), "ÉTÉ deadbee".encode()]
    assert payloads(grep(seg, b"(?i)k kelvin", True)) == ["\u212a kelvin".encode()]
    assert Matcher(b"(?i)k kelvin", True).required.clauses == ((b" ",), (b"elvin",))  # no k


def test_odd_payload_bytes() -> None:
    odd = b"\x00nul\r\tcr\xff\xfe not utf-8"
    for q, regex in [(b"\x00", False), (b"\r", False), (b"\t", False), (b"\xff\xfe", False),
                     (rb"\x00nul\r", True), (rb"nul\r\tcr", True),
                     (rb"\t", True), (rb"^\x00", True), (rb"utf-8$", True)]:
        assert payloads(grep(SEG, q, regex)) == [odd], (q, regex)
    with pytest.raises(BadQuery, match="invalid UTF-8"):
        Matcher(b"[\x80-\xff]+", True)  # a pattern is UTF-8 (Go's regexp syntax)


def test_whitespace_classes_never_cross_records() -> None:
    # \s and [^x] can match LF: whole-buffer search could glue two records
    seg = segment((b"default", b"ends with x"), (b"default", b"y starts"))
    assert grep(seg, rb"x\s+\S*y", True) == b""
    assert grep(seg, rb"x[^q]+y", True) == b""
    assert grep(seg, rb"x(?s:.)*y", True) == b""
    assert grep(seg, rb"x\W+y", True) == b""
    assert grep(seg, b"x\ny", False) == b""
    assert grep(seg, rb"x\n", True) == b""
    assert grep(seg, rb"x\s", True) == b""
    assert payloads(grep(seg, rb"x\s*$", True)) == [b"ends with x"]


def test_empty_payloads() -> None:
    seg = segment((b"default", b""), (b"web", b"x"), (b"web", b""))
    assert grep(seg, b"x") == seg.split(b"\n")[1] + b"\n"
    assert payloads(grep(seg, b"^$", True)) == [b"", b""]
    assert payloads(grep(seg, b"x*", True)) == [b"", b"x", b""]
    # re.search(rb"\B", b"") is None, though between " " and "\n" \B holds
    assert grep(seg, rb"\B", True) == reference(seg, rb"\B", True, None)
    assert grep(seg, rb"x*\B", True) == reference(seg, rb"x*\B", True, None)
    assert payloads(grep(seg, b"", topic=b"web")) == [b"x", b""]


def test_topic_filter() -> None:
    assert payloads(grep(SEG, topic=b"web")) == [b"GET /index.html 200", b"ERROR disk full"]
    assert payloads(grep(SEG, b"ERROR", topic=b"web")) == [b"ERROR disk full"]
    assert payloads(grep(SEG, b"^ERROR", True, topic=b"default")) == [b"ERROR connect timeout after 3s"]
    assert payloads(grep(SEG, b"ERROR.*", True, topic=b"api")) == [b"timeout ERROR reversed"]
    assert payloads(grep(SEG, b".*", True, topic=b"api")) == [b"timeout ERROR reversed"]
    assert payloads(grep(SEG, rb"\s", True, topic=b"web")) == [b"GET /index.html 200", b"ERROR disk full"]
    assert grep(SEG, topic=b"nope") == b""
    assert grep(SEG, topic=b"de") == b""  # a prefix of "default" is not "default"
    assert grep(SEG, topic=b"defaul") == b""
    assert grep(SEG, b"hello", topic=b"web") == b""


def test_topic_runs_are_taken_whole() -> None:
    recs = [(b"web" if i % 100 < 60 else b"default", b"p%d" % i) for i in range(1000)]
    seg = segment(*recs)
    assert grep(seg, topic=b"web") == reference(seg, b"", False, b"web")
    assert grep(seg, topic=b"default") == reference(seg, b"", False, b"default")


def test_malformed_lines_are_skipped_by_filters() -> None:
    seg = (
        ulid(BASE_MS, 1) + b" default ok x\n"
        + ulid(BASE_MS, 2) + b" nospace-x\n"
        + ulid(BASE_MS, 3) + b"x\n"
        + b"\n"
        + ulid(BASE_MS, 4) + b"  x empty topic\n"
        + ulid(BASE_MS, 5) + b" default x\n"
        + ulid(BASE_MS, 6) + b" default partial x"  # no LF: ignored
    )
    for q, regex, topic in [(b"x", False, None), (b"x", True, None), (b"^x", True, None),
                            (rb"x\s*", True, None), (b"x", False, b"default"),
                            (b"", False, b"default"), (b"[", False, None)]:
        assert grep(seg, q, regex, topic) == reference(seg, q, regex, topic), (q, regex, topic)
    # the match-all path passes complete lines through unchecked
    assert grep(seg) == seg[: seg.rindex(b"\n") + 1]


def test_q_with_newline_never_matches() -> None:
    assert Matcher(b"a\nb").strategy == "none"
    assert Matcher(rb"a\nb", True).strategy == "none"
    assert grep(SEG + SEG, b"3s\n") == b""


def test_invalid_regex_is_bad_query() -> None:
    with pytest.raises(BadQuery, match="bad regex"):
        Matcher(b"(", True)
    assert Matcher(b"(").strategy == "literal"


# --- strategies ----------------------------------------------------------------


@pytest.mark.parametrize(
    "q, regex, topic, strategy",
    [
        (b"", False, None, "all"),
        (b"", True, None, "all"),
        (b".*", True, None, "all"),
        (b"x?", True, None, "all"),
        (b"", False, b"web", "topic"),
        (b"ERROR", False, None, "literal"),
        (b"ERROR", False, b"web", "literal"),
        (b"ERROR.*timeout", True, None, "regex"),
        (b"(?i)er", True, None, "regex"),
        (b"(ERR)OR.*x", True, None, "prefilter"),
        (b"(?i)error", True, None, "prefilter"),
        (rb"\bERROR\b", True, None, "prefilter"),
        (rb"x?deadbeef", True, None, "prefilter"),
        (rb"\d+ms timeout", True, None, "prefilter"),
        (rb"\d+ms", True, None, "regex"),
        (rb"[^\n]+", True, None, "regex"),
        (b"^ERROR", True, None, "prefilter"),
        (b"timeout$", True, None, "prefilter"),
        (rb"ERROR\s+timeout", True, None, "prefilter"),
        (rb"(ERR)OR[^x]", True, None, "prefilter"),
        (b"^E", True, None, "lines"),
        (rb"\s", True, None, "lines"),
        (rb"(?i)^error", True, None, "prefilter"),
        (rb"(?i)^e", True, None, "lines"),
        (rb"(?s)a.b", True, None, "lines"),
        (rb"a\nb", True, None, "none"),
    ],
)
def test_strategy_choice(q: bytes, regex: bool, topic: bytes | None, strategy: str) -> None:
    assert Matcher(q, regex, topic).strategy == strategy


@pytest.mark.parametrize(
    "q, topic, payload_only",
    [
        (b"HTTP/1.1", None, True),  # "/" before any space: cannot begin in a header
        (b"/", None, True),
        (b".x", None, True),
        (b"\xff", None, True),
        (b"\r", None, True),
        (b"\x00", None, True),
        (b"a.b c", None, True),
        (b"HTTP/1.1", b"web", False),  # the topic path checks the topic field anyway
        (b"GET /", None, False),  # "x GET /" could be "... TOPIC SP /..."
        (b" /", None, False),
        (b"t /", None, False),
        (b"Mozilla", None, False),  # header bytes only: could be a ULID or topic part
        (b"a-b_c", None, False),
        (b"7 ", None, False),
        (b" ", None, False),
    ],
)
def test_payload_only_literals(q: bytes, topic: bytes | None, payload_only: bool) -> None:
    m = Matcher(q, False, topic)
    assert m.strategy == "literal"
    assert m._payload_only is payload_only


def test_hits_across_the_header_end_do_not_count() -> None:
    # q starting in the topic and ending in the payload: the header check stays
    seg = segment((b"default", b"/x"), (b"web", b"/x"), (b"default", b"default /x"))
    for q in [b"default /", b"t /x", b" /x", b"web /"]:
        assert not Matcher(q)._payload_only
        assert grep(seg, q) == reference(seg, q, False, None), q
    assert payloads(grep(seg, b"default /")) == [b"default /x"]
    assert payloads(grep(seg, b"/x")) == [b"/x", b"/x", b"default /x"]


def test_alnum_literals_also_in_ulids_and_topics() -> None:
    # q made of header bytes: hits in ULIDs/topics of adjacent lines must not
    # extend a run of matches; the payload of the same line is searched instead
    recs = [(b"web", b"x web"), (b"web", b"y"), (b"default", b"web"), (b"web", b"web web"),
            (b"web", b""), (b"a", b"web"), (b"web", b"w e b")]
    seg = segment(*recs)
    first = seg[:10]  # every ULID starts with these
    for q in [b"web", b"we", b"eb", first, first[:3], b"7", b"0", b"default", b"a"]:
        assert not Matcher(q)._payload_only
        assert grep(seg, q) == reference(seg, q, False, None), q
    assert payloads(grep(seg, b"web")) == [b"x web", b"web", b"web web", b"web"]
    assert grep(seg, first) == b""
    seg2 = segment((b"default", b"01" + first), (b"default", b"none"), (b"x", first))
    assert payloads(grep(seg2, first)) == [b"01" + first, first]


@pytest.mark.parametrize("chunk", [1, 40, 60, 97, 200, 1 << 20])
@pytest.mark.parametrize("q", [b"/", b"HTTP/1.1", b"\r", b"\x00", b"1", b"web", b"ab", b"a/"])
def test_runs_of_adjacent_matches(monkeypatch: pytest.MonkeyPatch, chunk: int, q: bytes) -> None:
    # patterns of matching lines: all, none, first/last only, alternating,
    # runs of 2-3; payloads with CR and NUL; chunks cut inside runs
    monkeypatch.setattr(scan_mod, "CHUNK", chunk)
    monkeypatch.setattr(scan_mod, "BATCH", 50)
    hit = b"a\r GET /x HTTP/1.1 \x00 1 web"
    miss = [b"", b"a", b"\rb\x00", b"w e b", b"HTTP 2", b"ab-1"]
    patterns = ["1111111", "0000000", "1000000", "0000001", "1000001", "0101010", "1010101",
                "1100110", "0111011", "1", "0", "11", "10", "01"]
    for pat in patterns:
        recs = [(b"web" if k % 3 else b"default",
                 (b"%d " % k + hit) if c == "1" else miss[k % len(miss)])
                for k, c in enumerate(pat)]
        seg = segment(*recs)
        want = reference(seg, q, False, None)
        assert grep(seg, q) == want, (pat, q)
        for block in scan(seg, Query(LO, HI, q)):
            assert block.endswith(b"\n")
        # a partial last line and sub-ranges that start or end inside a run
        assert grep(seg + b"01ABC web x/1", q) == want
        lines = seg.split(b"\n")[:-1]
        for a in range(len(lines) + 1):
            start = sum(len(x) + 1 for x in lines[:a])
            assert grep(seg, q, start=start) == reference(seg[start:], q, False, None)
            assert grep(seg, q, end=start) == reference(seg[:start], q, False, None)


def test_payload_only_literal_trusts_store_validation() -> None:
    # Like the match-all path, the payload-only literal path relies on store
    # segments being validated when written (ULID SP TOPIC SP): it does not
    # re-check headers, so a malformed line (never stored) with q in its
    # first fields is kept.  Valid lines are exact (the property tests).
    bad = ulid(BASE_MS + 5, 1) + b"/x\n" + ulid(BASE_MS + 6, 1) + b" a/x b\n"
    seg = segment((b"default", b"x")) + bad
    assert Matcher(b"/x")._payload_only
    assert grep(seg, b"/x") == bad
    assert reference(seg, b"/x", False, None) == b""


# --- bounds ----------------------------------------------------------------------


def many(n: int, per_ms: int = 3) -> tuple[bytes, list[bytes]]:
    ids = [ulid(BASE_MS + i // per_ms, i % per_ms) for i in range(n)]
    return b"".join(u + b" default line %d\n" % i for i, u in enumerate(ids)), ids


def test_bisect_ulid_matches_list_bisect() -> None:
    buf, ids = many(500)
    offsets = [0]
    for line in buf.split(b"\n")[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    probes = ids + [LO, HI, ulid_for_ms(BASE_MS + 50, False), ulid_for_ms(BASE_MS + 50, True),
                    ulid_for_ms(BASE_MS - 1, True), ulid_for_ms(BASE_MS + 10**6, False)]
    for probe in probes:
        assert bisect_ulid(buf, probe) == offsets[bisect.bisect_left(ids, probe)]
        assert bisect_ulid(buf, probe, after=True) == offsets[bisect.bisect_right(ids, probe)]
    assert bisect_ulid(b"", LO) == 0
    assert bisect_ulid(buf, ids[10], offsets[20], offsets[30]) == offsets[20]
    assert bisect_ulid(buf, ids[40], offsets[20], offsets[30]) == offsets[30]


def test_first_last_and_single_record_bounds() -> None:
    buf, ids = many(30)
    lines = buf.split(b"\n")[:-1]
    assert grep(buf, lo=ids[0], hi=ids[0]) == lines[0] + b"\n"
    assert grep(buf, lo=ids[-1], hi=ids[-1]) == lines[-1] + b"\n"
    assert grep(buf, lo=ids[0], hi=ids[-1]) == buf
    assert grep(buf, lo=ids[5], hi=ids[7]) == b"".join(x + b"\n" for x in lines[5:8])
    assert grep(buf, b"line 6", lo=ids[5], hi=ids[7]) == lines[6] + b"\n"
    assert grep(buf, b"line 8", lo=ids[5], hi=ids[7]) == b""


def test_from_equal_to_is_one_millisecond() -> None:
    buf, ids = many(30, per_ms=3)
    lo, hi = ulid_for_ms(BASE_MS + 4, False), ulid_for_ms(BASE_MS + 4, True)
    assert payloads(grep(buf, lo=lo, hi=hi)) == [b"line 12", b"line 13", b"line 14"]
    assert payloads(grep(buf, b"13", lo=lo, hi=hi)) == [b"line 13"]


def test_ranges_outside_the_segment() -> None:
    buf, ids = many(30)
    before = ulid_for_ms(BASE_MS - 5, False), ulid_for_ms(BASE_MS - 1, True)
    after = ulid_for_ms(BASE_MS + 10, False), ulid_for_ms(BASE_MS + 99, True)
    for lo, hi in (before, after):
        for q, regex in [(b"", False), (b"line", False), (b"line", True), (b"^line", True)]:
            assert grep(buf, q, regex, lo=lo, hi=hi) == b""
    gap = segment((b"default", b"a")) + b"".join(
        ulid(BASE_MS + 100, i) + b" default b\n" for i in range(3)
    )
    assert grep(gap, lo=ulid_for_ms(BASE_MS + 1, False), hi=ulid_for_ms(BASE_MS + 99, True)) == b""
    assert grep(b"", b"x") == b"" and grep(b"") == b""
    assert grep(b"no newline at all") == b""


def test_start_end_restrict_the_scan() -> None:
    buf, ids = many(30)
    lines = [x + b"\n" for x in buf.split(b"\n")[:-1]]
    s, e = len(b"".join(lines[:3])), len(b"".join(lines[:9]))
    assert grep(buf, start=s, end=e) == b"".join(lines[3:9])
    assert grep(buf, b"line", start=s + 4, end=e + 4) == b"".join(lines[4:9])  # snapped
    assert line_range(buf, s + 4, e + 4) == (len(b"".join(lines[:4])), e)
    assert line_range(buf, -5, 10**9) == (0, len(buf))
    assert line_range(buf, e, s) == (s, s)


# --- blocks, buffers -------------------------------------------------------------


def test_blocks_are_cut_at_line_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_mod, "CHUNK", 100)
    monkeypatch.setattr(scan_mod, "BATCH", 64)
    buf, _ = many(200)
    for q, regex, topic in [(b"", False, None), (b"line", False, None), (b"line 1", False, None),
                            (b"line", True, None), (b"^line", True, None), (b"^l", True, None),
                            (b"", False, b"default"), (b"0", False, b"default")]:
        query = Query(LO, HI, q, regex, topic)
        blocks = list(scan(buf, query))
        assert b"".join(blocks) == reference(buf, q, regex, topic)
        assert len(blocks) > 3
        for block in blocks:
            assert block.endswith(b"\n") and len(block) <= 200
            assert all(len(line) > 30 for line in block.split(b"\n")[:-1])


def test_a_record_longer_than_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_mod, "CHUNK", 16)
    buf = segment((b"default", b"x" * 100), (b"default", b"y"), (b"default", b"z" * 50))
    assert list(scan(buf, Query(LO, HI))) == [x + b"\n" for x in buf.split(b"\n")[:-1]]


def test_mmap_and_bytearray_buffers(tmp_path: Path) -> None:
    buf, ids = many(300)
    path = tmp_path / "seg"
    path.write_bytes(buf)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for q, regex, topic in [(b"", False, None), (b"line 1", False, None), (b"7$", True, None),
                                (rb"line \d+5", True, None), (rb"\s2", True, None), (b"", False, b"default")]:
            query = Query(ids[10], ids[250], q, regex, topic)
            want = reference(buf, q, regex, topic, ids[10], ids[250])
            assert b"".join(scan(mm, query)) == want
            assert b"".join(scan(bytearray(buf), query)) == want
            assert all(type(b) is bytes for b in scan(bytearray(buf), query))
        assert bisect_ulid(mm, ids[123]) == bisect_ulid(buf, ids[123])


def test_explicit_matcher_overrides_query() -> None:
    query = Query(LO, HI, b"hello")
    assert payloads(b"".join(scan(SEG, query, Matcher(b"disk")))) == [b"ERROR disk full"]


# --- properties ----------------------------------------------------------------

TOKENS = [b"a", b"b", b"ab", b" ", b"  ", b"\t", b"\r", b"\x00", b"\xff", b"default", b"web",
          b"0", b"Z", b"7", b"ERROR", b"timeout", b"x", b"-", b"_", b".", b"\\"]
TOPICS = [b"default", b"web", b"a", b"ab-c", b"x_1"]

payload_st = st.lists(st.sampled_from(TOKENS), max_size=8).map(b"".join)
record_st = st.tuples(st.integers(0, 20), st.integers(0, 40), st.sampled_from(TOPICS), payload_st)


@st.composite
def segments(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    recs = draw(st.lists(record_st, max_size=40, unique_by=lambda r: (r[0], r[1])))
    recs.sort(key=lambda r: (r[0], r[1]))
    ids = [ulid(BASE_MS + ms, n) for ms, n, _, _ in recs]
    buf = b"".join(u + b" " + t + b" " + p + b"\n" for u, (_, _, t, p) in zip(ids, recs))
    return buf, ids


@st.composite
def bounds(draw: st.DrawFn, ids: list[bytes]) -> tuple[bytes, bytes]:
    def one() -> bytes:
        choices = [st.just(LO), st.just(HI),
                   st.builds(lambda ms, up: ulid_for_ms(BASE_MS + ms, up),
                             st.integers(-2, 22), st.booleans())]
        if ids:
            choices.append(st.sampled_from(ids))
        return draw(st.one_of(choices))
    a, b = one(), one()
    return min(a, b), max(a, b)


literal_st = st.one_of(
    st.lists(st.sampled_from(TOKENS + [b"7 ", b" d", b"t d", b"\n"]), min_size=0, max_size=3).map(b"".join),
    st.binary(max_size=3),
)

ATOMS = [b"a", b"b", b"ab", b"ERROR", b"default", b"web", b"7", b"0", b" ", rb"\t", rb"\x00",
         rb"\xff", b".", b"[^a]", rb"\s", rb"\S", rb"\d", rb"\D", rb"\w", rb"\W", b"[a-c]",
         b"[^\\n]", rb"\b", rb"\B", b"^", b"$", rb"\A", rb"\z", b"(?=a)", b"(?!b)", b"(?<=a)",
         b"(?<! )", rb"\n"]
QUANTS = [b"", b"", b"", b"*", b"+", b"?", b"{1,2}", b"*?"]


@st.composite
def regexes(draw: st.DrawFn) -> bytes:
    def seq() -> bytes:
        parts = []
        for atom in draw(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=4)):
            quant = draw(st.sampled_from(QUANTS))
            parts.append(b"(?:" + atom + b")" + quant if quant else atom)
        return b"".join(parts)
    body = seq()
    if draw(st.booleans()):
        body = body + b"|" + seq()
    if draw(st.booleans()):
        body = b"(" + body + b")"
    flags = draw(st.sampled_from([b"", b"", b"(?i)", b"(?s)", b"(?m)"]))
    return flags + body


@st.composite
def literal_regexes(draw: st.DrawFn) -> bytes:
    """Patterns with a required literal that does not lead them."""
    around = [b"", b"^", b"\\b", b"\\B", b"(?<= )", b"x?", b"\\s*", b"[^a]", b".", b"\\W?", b"(?!b)"]
    after = [b"", b"$", b"\\b", b"\\s", b"[^b]*", b".*", b"(?=a)", b"\\z", b"|b"]
    lit = draw(st.sampled_from([b"default", b"ERROR", b"web", b"error", b"ab", b"tim", b"a b", b"\\x00a"]))
    flags = draw(st.sampled_from([b"", b"(?i)", b"(?s)", b"(?m)"]))
    return flags + draw(st.sampled_from(around)) + lit + draw(st.sampled_from(after))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_literal_scan_equals_reference(data: st.DataObject) -> None:
    buf, ids = data.draw(segments())
    lo, hi = data.draw(bounds(ids))
    q = data.draw(literal_st)
    topic = data.draw(st.one_of(st.none(), st.sampled_from(TOPICS)))
    assert grep(buf, q, False, topic, lo, hi) == reference(buf, q, False, topic, lo, hi)


DENSE_TOKENS = [b"/", b"a/b", b".", b" ", b"\r", b"\x00", b"web", b"x", b"7", b"-", b"HTTP/1.1"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_dense_literal_scan_equals_reference(data: st.DataObject) -> None:
    # many adjacent hits, chunks and blocks cut anywhere
    recs = data.draw(st.lists(st.tuples(st.sampled_from(TOPICS),
                                        st.lists(st.sampled_from(DENSE_TOKENS), max_size=4).map(b"".join)),
                              max_size=30))
    buf = segment(*recs)
    q = data.draw(st.one_of(st.sampled_from(DENSE_TOKENS[:-1] + [b"/b", b"a/", b". ", b"b.", b"\r\x00"]),
                            st.binary(min_size=1, max_size=2)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_mod, "CHUNK", data.draw(st.integers(1, 300)))
        mp.setattr(scan_mod, "BATCH", data.draw(st.integers(1, 300)))
        assert grep(buf, q) == reference(buf, q, False, None), Matcher(q)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_regex_scan_equals_reference(data: st.DataObject) -> None:
    buf, ids = data.draw(segments())
    lo, hi = data.draw(bounds(ids))
    q = data.draw(st.one_of(regexes(), literal_regexes()))
    try:
        Matcher(q, True)
    except BadQuery:
        assume(False)
    topic = data.draw(st.one_of(st.none(), st.sampled_from(TOPICS)))
    assert grep(buf, q, True, topic, lo, hi) == reference(buf, q, True, topic, lo, hi), Matcher(q, True)


@settings(max_examples=300)
@given(st.data())
def test_matcher_match_equals_reference(data: st.DataObject) -> None:
    buf, _ = data.draw(segments())
    regex = data.draw(st.booleans())
    q = data.draw(regexes() if regex else literal_st)
    try:
        m = Matcher(q, regex)
    except BadQuery:
        assume(False)
    for line in buf.split(b"\n")[:-1]:
        assert m.match(line) == bool(reference(line + b"\n", q, regex, None))
        assert m.match(line + b"\n") == m.match(line)


@settings(max_examples=300)
@given(st.binary(max_size=300), literal_st, st.booleans(), st.one_of(st.none(), st.sampled_from(TOPICS)),
       st.integers(-5, 400), st.integers(-5, 400))
def test_garbage_buffers_never_crash(buf: bytes, q: bytes, regex: bool, topic: bytes | None,
                                     start: int, end: int) -> None:
    try:
        query = Query(LO, HI, q, regex, topic)
    except BadQuery:
        return
    out = b""
    for block in scan(buf, query, start=start, end=end):
        assert block.endswith(b"\n")
        out += block
    # whatever comes out is whole lines of the buffer, in buffer order
    lines = iter(buf.split(b"\n")[:-1])
    assert all(any(got == line for line in lines) for got in out.split(b"\n")[:-1])
    bisect_ulid(buf, b"0" * 26)



def test_a_dense_literal_in_big_chunks_equals_reference() -> None:
    """More than a third of the lines hit: the split-and-filter path."""
    import random as _random

    rng = _random.Random(5)
    lines = [(b"default", b"GET /x HTTP/1.1 %d" % i if rng.random() < 0.8 else b"GET /y HTTP/2.0 %d" % i)
             for i in range(20000)]
    seg = segment(*lines)
    assert len(seg) > 4 * scan_mod._SAMPLE
    assert Matcher(b"HTTP/1.1")._payload_only
    assert grep(seg, b"HTTP/1.1") == reference(seg, b"HTTP/1.1", False, None)
    assert Matcher(b"HTTP/1.1").grep([seg]) == reference(seg, b"HTTP/1.1", False, None)
