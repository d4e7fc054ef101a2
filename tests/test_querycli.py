"""oklog.querycli against a tiny canned HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from oklog.errors import ConfigError
from oklog.querycli import (
    RecordStripper,
    human_bytes,
    query_url,
    resolve_time,
    run_query,
)
from oklog.timespec import format_rfc3339


def format_time(t: float) -> str:
    return format_rfc3339(int(t * 1000))

NOW = 1_800_000_000.5  # 2027-01-15T08:00:00.5Z
U1 = "01JD5ZQH1XQ1XQ1XQ1XQ1XQ1XQ"
U2 = "01JD5ZQH1XQ1XQ1XQ1XQ1XQ1XR"
U3 = "01JD5ZQH1XQ1XQ1XQ1XQ1XQ1XS"

RECORDS = (
    f"{U1} default hello %s %d world\n".encode()
    + f"{U2} app-1 ".encode() + b"non-utf8 \xff\xfe\x00 nul\tand\r cr\n"
    + f"{U3} default ".encode() + b"  leading spaces and trailing  \n"
)
PAYLOADS = b"hello %s %d world\nnon-utf8 \xff\xfe\x00 nul\tand\r cr\n  leading spaces and trailing  \n"
WITH_ULID = (
    f"{U1} hello %s %d world\n".encode()
    + f"{U2} ".encode() + b"non-utf8 \xff\xfe\x00 nul\tand\r cr\n"
    + f"{U3} ".encode() + b"  leading spaces and trailing  \n"
)

STATS_HEADERS = {
    "X-Oklog-From": "2027-01-15T07:55:00.5Z",
    "X-Oklog-To": "2027-01-15T08:00:00.5Z",
    "X-Oklog-Q": "a+b",
    "X-Oklog-Regex": "true",
    "X-Oklog-Nodes-Queried": "2",
    "X-Oklog-Segments-Queried": "7",
    "X-Oklog-Max-Data-Set-Size": "1048576",
    "X-Oklog-Error-Count": "0",
    "X-Oklog-Duration": "1.5ms",
}


class Canned:
    """What the fake store answers, and what it was asked."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body = b""
        self.chunks: list[int] | None = None  # write the body in these pieces
        self.requests: list[tuple[str, str]] = []  # (method, raw path)
        self.delay = 0.0  # seconds between body chunks


@pytest.fixture
def store():
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, head: bool) -> None:
            canned.requests.append((self.command, self.path))
            self.send_response(canned.status)
            for k, v in canned.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(canned.body)))
            self.end_headers()
            if head:
                return
            pos = 0
            for n in canned.chunks or []:
                self.wfile.write(canned.body[pos : pos + n])
                self.wfile.flush()
                pos += n
                time.sleep(canned.delay)
            self.wfile.write(canned.body[pos:])

        def do_GET(self):
            self._answer(head=False)

        def do_HEAD(self):
            self._answer(head=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    canned.addr = f"127.0.0.1:{server.server_address[1]}"
    yield canned
    server.shutdown()
    server.server_close()


def query(store: Canned, **kw):
    out = io.BytesIO()
    err = io.StringIO()
    kw.setdefault("now", NOW)
    kw.setdefault("from_", "5m")
    code = run_query(store.addr, out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def params(store: Canned) -> dict[str, list[str]]:
    return parse_qs(urlsplit(store.requests[-1][1]).query, keep_blank_values=True)


# --- happy paths --------------------------------------------------------------


def test_prints_payloads(store):
    store.body = RECORDS
    code, out, err = query(store, q="hello")
    assert (code, out, err) == (0, PAYLOADS, "")
    method, path = store.requests[-1]
    assert method == "GET" and path.startswith("/store/query?")
    assert params(store) == {
        "from": ["2027-01-15T07:55:00.500Z"],
        "to": ["2027-01-15T08:00:00.500Z"],
        "q": ["hello"],
    }


def test_with_ulid(store):
    store.body = RECORDS
    code, out, _ = query(store, with_ulid=True)
    assert code == 0
    assert out == WITH_ULID


@pytest.mark.parametrize("with_ulid", [False, True])
def test_stream_cut_anywhere(store, with_ulid):
    rnd = random.Random(3)
    recs = []
    for i in range(20_000):
        payload = bytes(rnd.choice(b"ab %\xff\t") for _ in range(rnd.randrange(0, 60)))
        recs.append((f"01JD5ZQH1XQ1XQ1XQ1XQ{i:06d}".encode(), b"t%d" % (i % 3), payload))
    store.body = b"".join(u + b" " + t + b" " + p + b"\n" for u, t, p in recs)
    store.chunks = [rnd.choice([1, 2, 26, 27, 100, 5000]) for _ in range(300)]
    code, out, _ = query(store, with_ulid=with_ulid)
    assert code == 0
    if with_ulid:
        assert out == b"".join(u + b" " + p + b"\n" for u, _, p in recs)
    else:
        assert out == b"".join(p + b"\n" for _, _, p in recs)


def test_empty_result(store):
    code, out, err = query(store)
    assert (code, out, err) == (0, b"", "")


def test_partial_results_206(store):
    store.status = 206
    store.headers = {"X-Oklog-Error-Count": "2"}
    store.body = RECORDS
    code, out, err = query(store)
    assert code == 0
    assert out == PAYLOADS
    assert err == "warning: partial results: 2 store node(s) failed to answer\n"


# --- errors ---------------------------------------------------------------------


def test_bad_request_400(store):
    store.status = 400
    store.body = b"error parsing regexp: missing closing ): `(a`\nsecond line\n"
    code, out, err = query(store, q="(a", regex=True)
    assert code == 1
    assert out == b""
    assert err == "error: bad query: error parsing regexp: missing closing ): `(a`\n"


@pytest.mark.parametrize("status", [404, 500, 503])
def test_other_statuses(store, status):
    store.status = status
    store.body = b"boom\n"
    code, out, err = query(store)
    assert code == 1 and out == b""
    assert err.count("\n") == 1
    assert f"HTTP {status}: boom" in err


def test_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out, err = io.BytesIO(), io.StringIO()
    code = run_query(f"127.0.0.1:{port}", out=out, err=err, now=NOW)
    assert code == 1
    assert err.getvalue() == f"error: cannot connect to store at http://127.0.0.1:{port}: connection refused\n"


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"from_": "yesterday"}, "couldn't parse -from 'yesterday'"),
        ({"to": "5"}, "couldn't parse -to '5'"),
        ({"from_": "2026-13-01T00:00:00Z"}, "month must be in 1..12"),
        ({"from_": "x" * 500}, "xxx...'"),
        ({"timeout": "soon"}, "-timeout"),
        ({"timeout": "-1s"}, "-timeout: '-1s': must be more than 0"),
        ({"timeout": 0}, "-timeout: 0: must be more than 0"),
    ],
)
def test_bad_times(store, kw, msg):
    code, out, err = query(store, **kw)
    assert code == 1 and out == b""
    assert msg in err and err.count("\n") == 1
    assert store.requests == []


def test_bad_store_address():
    err = io.StringIO()
    assert run_query("udp://x:1", out=io.BytesIO(), err=err) == 1
    assert err.getvalue().startswith("error: ")


# --- parameters ------------------------------------------------------------------


def test_q_percent_encoding(store):
    q = "a b+c&d%e=f/é?#ü"
    code, _, _ = query(store, q=q, regex=True, topic="app-1")
    assert code == 0
    raw = store.requests[-1][1]
    assert "%2B" in raw and "%26" in raw and "%25" in raw and "%C3%A9" in raw and " " not in raw
    p = params(store)
    assert p["q"] == [q]
    assert p["regex"] == ["true"]
    assert p["topic"] == ["app-1"]


def test_rfc3339_is_sent_in_utc_and_ulid_as_is(store):
    query(store, from_="2026-11-21T12:00:00.123456789+01:00", to=U3.lower())
    p = params(store)
    assert p["from"] == ["2026-11-21T11:00:00.123Z"]
    assert p["to"] == [U3]


def test_relative_times(store):
    query(store, from_="2h", to="1h")
    p = params(store)
    assert p["from"] == [format_time(NOW - 7200)]
    assert p["to"] == [format_time(NOW - 3600)]


def test_stats_head(store):
    store.headers = STATS_HEADERS
    code, out, err = query(store, stats=True, q="a+b", regex=True)
    assert code == 0 and out == b""
    assert store.requests[-1][0] == "HEAD"
    lines = err.splitlines()
    assert lines[0] == "-from 2027-01-15T07:55:00.500Z -to 2027-01-15T08:00:00.500Z"
    assert lines[1].startswith("Response in ")
    assert lines[2:] == [
        "Queried from 2027-01-15T07:55:00.5Z",
        "Queried to 2027-01-15T08:00:00.5Z",
        'Queried regular expression "a+b"',
        "2 node(s) queried",
        "7 segment(s) queried",
        "1048576B (1.0MiB) maximum data set size",
        "0 error(s)",
        "1.5ms server-reported duration",
    ]


def test_stats_206_warns(store):
    store.status = 206
    store.headers = dict(STATS_HEADERS, **{"X-Oklog-Error-Count": "1"})
    code, _, err = query(store, stats=True)
    assert code == 0
    assert err.endswith("warning: partial results: 1 store node(s) failed to answer\n")


def test_verbose(store):
    store.headers = STATS_HEADERS
    store.body = RECORDS
    code, out, err = query(store, verbose=True, q="x y")
    assert code == 0 and out == PAYLOADS
    assert f"GET http://{store.addr}/store/query?from=" in err
    assert "&q=x%20y" in err
    assert "HTTP 200 OK" in err
    assert "X-Oklog-Nodes-Queried: 2" in err
    assert "X-Oklog-Duration: 1.5ms" in err


def test_mock_transport():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=RECORDS)

    out = io.BytesIO()
    code = run_query("h:1", out=out, err=io.StringIO(), now=NOW, transport=httpx.MockTransport(handler))
    assert code == 0 and out.getvalue() == PAYLOADS
    assert str(seen[0].url).startswith("http://h:1/store/query?from=")


# --- pieces ---------------------------------------------------------------------


@pytest.mark.parametrize("with_ulid, want", [(False, PAYLOADS), (True, WITH_ULID)])
def test_record_stripper_feeds(with_ulid, want):
    for size in (1, 2, 7, 27, len(RECORDS)):
        s = RecordStripper(with_ulid)
        got = b"".join(s.feed(RECORDS[i : i + size]) for i in range(0, len(RECORDS), size))
        assert got + s.finish() == want


def test_record_stripper_malformed_lines_unchanged():
    block = (
        b"not a record at all\n"
        + f"{U1} default ok\n".encode()
        + b"short\n"
        + b"\n"
        + f"{U2} topic-only-no-space\n".encode()
    )
    s = RecordStripper()
    assert s.feed(block) == (
        b"not a record at all\nok\nshort\n\n" + f"{U2} topic-only-no-space\n".encode()
    )
    s = RecordStripper(with_ulid=True)
    assert s.feed(block) == (
        b"not a record at all\n" + f"{U1} ok\n".encode() + b"short\n\n"
        + f"{U2} topic-only-no-space\n".encode()
    )


def test_record_stripper_final_line_without_lf():
    s = RecordStripper()
    assert s.feed(f"{U1} default a\n{U2} default b".encode()) == b"a\n"
    assert s.finish() == b"b\n"
    assert s.finish() == b""


def test_resolve_time():
    assert resolve_time("now", NOW) == "2027-01-15T08:00:00.500Z"
    assert resolve_time("NOW", NOW) == "2027-01-15T08:00:00.500Z"
    assert resolve_time("5m", NOW) == "2027-01-15T07:55:00.500Z"
    assert resolve_time("-5m", NOW) == "2027-01-15T07:55:00.500Z"
    assert resolve_time("1d", NOW) == "2027-01-14T08:00:00.500Z"
    assert resolve_time("1w", NOW) == "2027-01-08T08:00:00.500Z"
    assert resolve_time("1h30m", NOW) == "2027-01-15T06:30:00.500Z"
    assert resolve_time("2026-11-21T12:00:00Z", NOW) == "2026-11-21T12:00:00.000Z"
    assert resolve_time(U1, NOW) == U1
    for bad in ["", "5", "2026-11-21", "2026-11-21T12:00:00", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "x" * 26]:
        with pytest.raises(ConfigError):
            resolve_time(bad, NOW)


def test_query_url():
    assert query_url("http://h:1", "a", "b", "") == "http://h:1/store/query?from=a&to=b&q="
    assert (
        query_url("http://h:1", "a:b", "c", "x&y", regex=True, topic="t")
        == "http://h:1/store/query?from=a%3Ab&to=c&q=x%26y&regex=true&topic=t"
    )


def test_human_bytes():
    assert human_bytes(0) == "0B"
    assert human_bytes(1023) == "1023B"
    assert human_bytes(1536) == "1.5KiB"
    assert human_bytes(128 * 1024 * 1024) == "128.0MiB"
    assert human_bytes(3 * 1024**5) == "3072.0TiB"


def test_from_defaults_to_an_hour_like_the_cli(store):
    out, err = io.BytesIO(), io.StringIO()
    assert run_query(store.addr, out=out, err=err, now=NOW) == 0
    assert params(store)["from"] == [format_time(NOW - 3600)]


# --- robustness ------------------------------------------------------------------


def test_q_takes_any_bytes(store):
    store.body = RECORDS
    code, out, err = query(store, q=b"\xff\xfe\x80 x")
    assert code == 0 and err == ""
    raw = store.requests[-1][1]
    assert "q=%FF%FE%80%20x" in raw


def test_warnings_from_the_store_are_printed(store):
    store.headers = {"X-Oklog-Warning": "1 live store node(s) for replication factor 2: stuck | second"}
    store.body = RECORDS
    code, out, err = query(store)
    assert code == 0 and out == PAYLOADS
    assert err == ("warning: 1 live store node(s) for replication factor 2: stuck\n"
                   "warning: second\n")
    code, _, err = query(store, stats=True)
    assert code == 0 and err.splitlines()[1] == "warning: 1 live store node(s) for replication factor 2: stuck"


@pytest.fixture
def silent():
    """A port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("stats", [False, True])
def test_a_store_that_never_answers_times_out_naming_it(silent, stats):
    out, err = io.BytesIO(), io.StringIO()
    started = time.monotonic()
    code = run_query(f"127.0.0.1:{silent}", out=out, err=err, now=NOW, timeout=0.5, stats=stats)
    assert code == 1 and time.monotonic() - started < 10
    assert err.getvalue().splitlines()[-1] == (
        f"error: store at http://127.0.0.1:{silent} did not answer within 0.5s")


def test_long_gaps_in_the_body_are_not_cut(store):
    store.body = RECORDS
    store.chunks = [10, 30]
    store.delay = 1.0  # between body chunks: longer than the header timeout
    code, out, err = query(store, timeout=0.3)
    assert (code, out, err) == (0, PAYLOADS, "")


@pytest.mark.parametrize("with_ulid", [False, True])
def test_a_big_answer_in_odd_chunks_prints_exactly(with_ulid, monkeypatch):
    # blocks of whole lines above payloads.MIN_BLOCK take the vectorised cut;
    # a malformed line in one of them sends that block down the per-line path
    rng = random.Random(7)
    lines = [f"{U1[:20]}{i:06d} default payload {i} {'x' * rng.randrange(0, 200)}\n".encode()
             for i in range(4000)]
    lines[2500] = b"malformed line without a header\n"
    body = b"".join(lines)
    want = b"".join(
        line if line.startswith(b"malformed") else
        (line[:27] if with_ulid else b"") + line.split(b" ", 2)[2] for line in lines)

    from oklog import payloads

    cut_fast = []
    real = payloads.fixed_width

    def spy(block: bytes, keep_ulid: bool = False) -> bytes | None:
        got = real(block, keep_ulid)
        cut_fast.append(got is not None)
        return got

    monkeypatch.setattr(payloads, "fixed_width", spy)

    def handler(request: httpx.Request) -> httpx.Response:
        pieces, at = [], 0
        while at < len(body):  # big reads, and now and then a short one (a flush)
            n = rng.choice([100_000, 90_000, 70_000, 5_000])
            pieces.append(body[at : at + n])
            at += n
        class Pieces(httpx.AsyncByteStream):
            async def __aiter__(self):  # type: ignore[no-untyped-def]
                for piece in pieces:
                    yield piece

        return httpx.Response(200, stream=Pieces())

    out = io.BytesIO()
    code = run_query("h:1", with_ulid=with_ulid, out=out, err=io.StringIO(), now=NOW,
                     transport=httpx.MockTransport(handler))
    assert code == 0 and out.getvalue() == want
    assert True in cut_fast and False in cut_fast  # both paths taken
