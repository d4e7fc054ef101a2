"""A real single ``ingeststore`` node, driven as an operator would drive it."""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import time

import httpx
import pytest

from tests.nodeutil import ROOT, Node, forward, join, oklog_cmd, query, start_forwarders, wait_for_records

pytestmark = pytest.mark.slow

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
RECORD_RE = re.compile(rb"[0-7][0-9A-HJKMNP-TV-Z]{25} default ")


def realistic_lines(n: int, tag: str, rng: random.Random) -> list[bytes]:
    levels = [b"INFO", b"WARN", b"ERROR", b"DEBUG"]
    odd = [b"\x00nul", b"cr\r", b"tab\there", b"\xff\xfe not utf8", b"%s %d %%", b"caf\xc3\xa9", b"", b" lead"]
    out = []
    for i in range(n):
        line = b"%s %s seq=%d user=%d msg=%s" % (
            tag.encode(), rng.choice(levels), i, rng.randrange(1000), rng.choice(odd))
        if i % 997 == 0:
            line += b" timeout after 30s"
        out.append(line)
    return out


def payloads(body: bytes) -> list[bytes]:
    return [line[27:].split(b" ", 1)[1] for line in body.split(b"\n")[:-1]]


@pytest.fixture
def node(tmp_path):
    n = Node("ingeststore", tmp_path / "node", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-ingest.max-record-size", "4096", "-ingest.segment-flush-age", "1s",
        "-store.segment-target-age", "1s"])
    n.start()
    yield n
    n.kill()


def test_lines_in_exact_bytes_out(node):
    rng = random.Random(1)
    a = realistic_lines(15_000, "svcA", rng)
    b = realistic_lines(15_000, "svcB", rng)
    long_line = b"svcA LONG " + b"x" * 10_000
    join(start_forwarders(
        (b"\n".join(a[:7000] + [long_line] + a[7000:]) + b"\n", f"127.0.0.1:{node.fast_port}"),
        (b"\n".join(b) + b"\n", f"tcp://127.0.0.1:{node.durable_port}")))
    body = wait_for_records(node.api, len(a) + len(b))
    lines = body.split(b"\n")[:-1]
    assert len(lines) == len(a) + len(b)
    assert all(RECORD_RE.match(line) for line in lines)
    ulids = [line[:26] for line in lines]
    assert ulids == sorted(ulids) and len(set(ulids)) == len(ulids)
    got = payloads(body)
    # each connection's lines arrive whole, once each, in sending order
    assert [p for p in got if p.startswith(b"svcA")] == a
    assert [p for p in got if p.startswith(b"svcB")] == b

    # the over-long record was rejected alone, and counted
    metrics = httpx.get(f"{node.api}/metrics").text
    assert re.search(r'oklog_ingest_rejected_records_total\{reason="too_long"\} 1\.0', metrics)

    # literal, regex and time-bounded queries match a reference computed from what was sent
    sent = a + b
    r = query(node.api, **ALL, q="timeout after")
    assert payloads(r.content) == [p for p in got if b"timeout after" in p]
    assert len(payloads(r.content)) == sum(1 for p in sent if b"timeout after" in p)
    r = query(node.api, **ALL, q=r"svcB (WARN|ERROR) seq=1\d\b", regex="true")
    pat = re.compile(rb"svcB (WARN|ERROR) seq=1\d\b")
    assert payloads(r.content) == [p for p in got if pat.search(p)]
    lo, hi = ulids[1000], ulids[2000]
    r = query(node.api, **{"from": lo.decode(), "to": hi.decode()})
    assert r.content.split(b"\n")[:-1] == lines[1000:2001]
    # a length is declared only when known exactly (overlapping segments are merged: chunked)
    assert int(r.headers.get("content-length", len(r.content))) == len(r.content)

    # non-UTF-8 query bytes, percent-encoded
    r = httpx.get(f"{node.api}/store/query?from={ALL['from']}&to={ALL['to']}&q=%FF%FE%20not")
    assert len(payloads(r.content)) == sum(1 for p in sent if b"\xff\xfe not" in p)


def test_headers_head_and_bad_input(node):
    forward(b"Hello world\nHello again\nbye\n", f"127.0.0.1:{node.fast_port}")
    wait_for_records(node.api, 3)
    r = query(node.api, **ALL, q="Hello")
    assert r.status_code == 200
    assert r.headers["X-Oklog-Q"] == "Hello" and r.headers["X-Oklog-Regex"] == "false"
    assert r.headers["X-Oklog-From"] == ALL["from"] and r.headers["X-Oklog-To"] == ALL["to"]
    assert r.headers["X-Oklog-Nodes-Queried"] == "1" and r.headers["X-Oklog-Error-Count"] == "0"
    assert int(r.headers["X-Oklog-Segments-Queried"]) >= 1
    assert int(r.headers["X-Oklog-Max-Data-Set-Size"]) > 0
    assert "X-Oklog-Duration" in r.headers
    assert r.headers["transfer-encoding"] == "chunked"  # a filter: its length is unknown up front
    for path in ("/store/query", "/store/_query"):  # match everything: sent with its length
        e = httpx.get(f"{node.api}{path}", params=ALL)
        assert e.content.count(b"\n") == 3 and int(e.headers["content-length"]) == len(e.content)
    h = httpx.head(f"{node.api}/store/query", params={**ALL, "q": "Hello"})
    assert h.status_code == 200 and h.content == b""
    assert h.headers["X-Oklog-Segments-Queried"] == r.headers["X-Oklog-Segments-Queried"]
    for bad in ({"to": ALL["to"]}, {"from": ALL["from"]}, {"from": "yesterday", "to": ALL["to"]},
                {"from": ALL["to"], "to": ALL["from"]}, {**ALL, "q": "(", "regex": "true"},
                {**ALL, "regex": "maybe"}):
        for path in ("/store/query", "/store/_query"):
            r = httpx.get(f"{node.api}{path}", params=bad)
            assert r.status_code == 400, (bad, r.text)
            assert r.text.count("\n") == 1 and "Traceback" not in r.text
    assert httpx.post(f"{node.api}/store/replicate", content=b"not a record\n").status_code == 400
    assert httpx.get(f"{node.api}/ingest/read", params={"id": "nope"}).status_code == 404
    assert httpx.post(f"{node.api}/ingest/commit", params={"id": "../../etc"}).status_code == 404
    assert httpx.get(f"{node.api}/health").status_code == 200


def test_ok_log_command_lines_verbatim(node):
    store = f"localhost:{node.api_port}"
    forward(b"Hello from the CLI\nmyservice WARN disk\nmyservice INFO fine\n",
            f"localhost:{node.fast_port}")
    wait_for_records(node.api, 3)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(oklog_cmd(*args, "-store", store), capture_output=True, timeout=30, cwd=ROOT)

    out = cli("query", "-from", "5m", "-q", "Hello")
    assert out.returncode == 0 and out.stdout == b"Hello from the CLI\n"
    out = cli("query", "-from", "2h", "-to", "1h", "-q", "myservice.*(WARN|ERROR)", "-regex")
    assert out.returncode == 0 and out.stdout == b""
    out = cli("query", "-from", "1h", "-q", "myservice.*(WARN|ERROR)", "-regex")
    assert out.stdout == b"myservice WARN disk\n"
    out = cli("query", "-from", "1h", "-stats")
    assert out.returncode == 0 and b"segment" in out.stdout + out.stderr
    out = cli("query", "--from", "1h", "--q", "fine", "--ulid")
    assert re.fullmatch(rb"[0-9A-Z]{26} myservice INFO fine\n", out.stdout)
    out = cli("query", "-from", "banana")
    assert out.returncode != 0 and b"Traceback" not in out.stderr


def test_sigterm_flushes_and_lets_consumption_finish(tmp_path):
    n = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-ingest.segment-flush-age", "30s", "-store.segment-target-age", "1s"])
    n.start()
    try:
        forward(b"".join(b"burst %d\n" % i for i in range(5000)), f"127.0.0.1:{n.fast_port}")
        assert n.stop() == 0
        assert not list((tmp_path / "n" / "ingest").glob("*.flushed"))
        n2 = Node("ingeststore", tmp_path / "n", extra=["-store.segment-replication-factor", "1",
                                                        "-cluster.serf", "off"])
        n2.start()
        try:
            body = query(n2.api, **ALL).content
            assert body.count(b"\n") == 5000  # everything was stored before the first exit
        finally:
            n2.kill()
    finally:
        n.kill()


def test_sigkill_loses_nothing_written(tmp_path):
    n = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-ingest.segment-flush-age", "60s"])
    n.start()
    forward(b"".join(b"crash %d\n" % i for i in range(3000)), f"127.0.0.1:{n.durable_port}")
    n.kill()
    assert list((tmp_path / "n" / "ingest").glob("*.active"))
    n2 = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off", "-store.segment-target-age", "1s"])
    n2.start()
    try:
        body = wait_for_records(n2.api, 3000)
        assert payloads(body) == [b"crash %d" % i for i in range(3000)]
    finally:
        n2.kill()


def test_second_process_on_same_directory_is_refused(node):
    other = subprocess.run(
        oklog_cmd("ingeststore", "-api", "127.0.0.1:0", "-ingest.fast", "127.0.0.1:0",
                  "-ingest.durable", "127.0.0.1:0", "-ingest.bulk", "127.0.0.1:0", "-cluster.serf", "off",
                  "-ingest.path", str(node.data / "ingest"), "-store.path", str(node.data / "other")),
        capture_output=True, timeout=30, cwd=ROOT)
    assert other.returncode == 1
    assert b"in use by another oklog process" in other.stderr and b"Traceback" not in other.stderr


def test_a_slow_reader_does_not_stall_ingest(node):
    """A query client that stops reading must not block forwarders."""
    forward(b"".join(b"volume %d %s\n" % (i, b"y" * 200) for i in range(40_000)), f"127.0.0.1:{node.fast_port}")
    wait_for_records(node.api, 40_000)
    s = socket.create_connection(("127.0.0.1", node.api_port))
    s.sendall(f"GET /store/query?from={ALL['from']}&to={ALL['to']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.recv(100)  # then stop reading
    t0 = time.monotonic()
    forward(b"after the stall\n", f"127.0.0.1:{node.fast_port}")
    body = wait_for_records(node.api, 1, q="after the stall")
    assert b"after the stall" in body and time.monotonic() - t0 < 20
    s.close()
    r = query(node.api, **ALL)
    assert r.content.count(b"\n") == 40_001
    node.signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0


def test_hostile_input_never_kills_the_node(node):
    base = f"{node.api}/store/query?from={ALL['from']}&to={ALL['to']}"
    for q in ("q=%00", "q=%0D%0AX-Evil:%201", "q=%FF%FE", "q=" + "a" * 20000, "q=(a%2B)%2B$&regex=true"):
        r = httpx.get(f"{base}&{q}", timeout=30)
        assert r.status_code == 200, q
        assert "x-evil" not in r.headers
    assert httpx.get(f"{base}&q=%00").headers["X-Oklog-Q"] == "%00"
    with socket.create_connection(("127.0.0.1", node.fast_port)) as s:
        s.sendall(random.Random(5).randbytes(3_000_000))  # garbage, with long "lines"
    forward(b"still alive\n", f"127.0.0.1:{node.fast_port}")
    assert b"still alive" in wait_for_records(node.api, 1, q="still alive")
    for path in ("/store/replicate", "/ingest/commit?id=", "/ingest/failed?id=x"):
        assert httpx.post(node.api + path, content=random.Random(6).randbytes(1000)).status_code in (400, 404)
    assert httpx.get(f"{node.api}/readyz").status_code == 200
    assert "Traceback" not in node.log()


def test_overlapping_segments_from_concurrent_consumers(tmp_path):
    """Several consumers and tiny ingest segments (store segments may overlap):
    queries must still return every record once, in ULID order."""
    n = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-store.segment-consumers", "4", "-ingest.segment-flush-size", "32KiB",
        "-store.segment-target-size", "96KiB", "-store.segment-target-age", "500ms"])
    n.start()
    try:
        rng = random.Random(3)
        streams = [realistic_lines(8000, f"c{i}", rng) for i in range(3)]
        join(start_forwarders(*[(b"\n".join(s) + b"\n", f"127.0.0.1:{n.fast_port}") for s in streams]))
        body = wait_for_records(n.api, 24_000)
        lines = body.split(b"\n")[:-1]
        ulids = [line[:26] for line in lines]
        assert len(lines) == 24_000 and ulids == sorted(ulids) and len(set(ulids)) == 24_000
        got = payloads(body)
        for i, s in enumerate(streams):
            assert [p for p in got if p.startswith(b"c%d " % i)] == s
        r = query(n.api, **ALL, q="timeout after")
        assert len(payloads(r.content)) == sum(b"timeout after" in p for s in streams for p in s)
    finally:
        n.kill()


def test_overlapping_and_duplicate_store_segments_merge_on_read(node):
    from oklog.records.format import stamp
    from oklog.ulid import Stamper

    block = stamp([b"rec %05d" % i for i in range(3000)], Stamper())
    lines = block.splitlines(keepends=True)
    odd, even = b"".join(lines[1::2]), b"".join(lines[0::2])
    for body in (odd, even, block, odd):  # interleaved ranges, a full copy, a repeat
        assert httpx.post(f"{node.api}/store/replicate", content=body).status_code == 200
    r = query(node.api, **ALL)
    assert r.content == block
    assert int(r.headers["X-Oklog-Segments-Queried"]) >= 3
    r = query(node.api, **ALL, q="rec 0299")
    assert payloads(r.content) == [b"rec 02990", b"rec 02991", b"rec 02992", b"rec 02993", b"rec 02994",
                                   b"rec 02995", b"rec 02996", b"rec 02997", b"rec 02998", b"rec 02999"]
    lo, hi = lines[100][:26].decode(), lines[199][:26].decode()
    assert query(node.api, **{"from": lo, "to": hi}).content == b"".join(lines[100:200])


def test_drain_gives_up_after_the_shutdown_timeout_and_keeps_the_data(tmp_path):
    """No store ever comes: the ingester waits -ingest.shutdown-timeout, exits 0,
    and its segments wait on disk for the next start."""
    n = Node("ingest", tmp_path / "n", extra=["-cluster.serf", "off", "-ingest.shutdown-timeout", "2s"])
    n.start()
    try:
        forward(b"kept 1\nkept 2\n", f"127.0.0.1:{n.fast_port}")
        t0 = time.monotonic()
        assert n.stop() == 0
        assert 1.5 < time.monotonic() - t0 < 15
        assert "drain_timeout" in n.log()
        flushed = list((tmp_path / "n" / "ingest").glob("*.flushed"))
        assert len(flushed) == 1 and flushed[0].read_bytes().endswith(b" default kept 2\n")
    finally:
        n.kill()


def test_a_second_signal_skips_the_drain(tmp_path):
    n = Node("ingest", tmp_path / "n", extra=["-cluster.serf", "off", "-ingest.shutdown-timeout", "5m"])
    n.start()
    try:
        forward(b"waiting\n", f"127.0.0.1:{n.fast_port}")
        n.signal(signal.SIGTERM)
        time.sleep(1.5)
        assert n.proc.poll() is None  # draining: nobody has consumed the segment
        n.signal(signal.SIGINT)
        assert n.proc.wait(15) == 0
        assert "second_signal" in n.log()
        assert list((tmp_path / "n" / "ingest").glob("*.flushed"))
    finally:
        n.kill()


def test_ingest_goes_on_while_heavy_queries_run(node):
    """Scans run in worker processes, never on the event loop: records keep
    becoming queryable while a loop of CPU-heavy queries runs."""
    import threading

    forward(b"".join(b"bulk %d ERROR x%d timeout %s\n" % (i, i % 7, b"z" * 150) for i in range(150_000)),
            f"127.0.0.1:{node.fast_port}")
    wait_for_records(node.api, 150_000, timeout=60)
    stop = threading.Event()
    done = []

    def heavy() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                r = c.get(f"{node.api}/store/query", params=dict(ALL, q=r"(?i)e.*r.*o.*x\d", regex="true"))
                assert r.status_code == 200 and r.content.count(b"\n") == 150_000
                done.append(1)

    loop = threading.Thread(target=heavy, daemon=True)
    loop.start()
    try:
        for batch in range(4):
            t0 = time.monotonic()
            forward(b"".join(b"live-%d-%d\n" % (batch, i) for i in range(1000)), f"127.0.0.1:{node.fast_port}")
            body = wait_for_records(node.api, 1000, timeout=30, q=f"live-{batch}-")
            assert body.count(b"\n") == 1000 and time.monotonic() - t0 < 30
    finally:
        stop.set()
        loop.join(120)
    assert done, "no heavy query finished"
    assert "Traceback" not in node.log()


def test_deleting_every_non_segment_file_then_restarting_changes_no_answer(tmp_path):
    """The acceptance check of the storage engine: segments are readable by
    zstdcat as they are, and everything else in the store directory is
    derived (sidecars, scratch, the lock)."""
    import shutil

    n = Node("ingeststore", tmp_path / "node", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off", "-store.block-size", "64KiB"])
    n.start()
    try:
        rng = random.Random(8)
        lines = realistic_lines(60_000, "restart", rng)
        forward(b"".join(line + b"\n" for line in lines), f"127.0.0.1:{n.fast_port}")
        wait_for_records(n.api, 60_000, timeout=60)
        queries = [dict(ALL), dict(ALL, q="timeout after"), dict(ALL, q=r"ERROR.*seq=\d+5 ", regex="true"),
                   dict(ALL, q="caf\u00e9"), dict(ALL, q="nothing-matches-this")]
        store = tmp_path / "node" / "store"
        deadline = time.monotonic() + 30
        while len(list(store.glob("*.idx"))) < len(list(store.glob("*.flushed"))):
            assert time.monotonic() < deadline, "sidecars were not written"
            time.sleep(0.1)
        before = [query(n.api, **q).content for q in queries]
        assert before[0].count(b"\n") == 60_000 and before[1] and before[2]
        assert n.stop() == 0
        if shutil.which("zstdcat"):
            cat = subprocess.run(["zstdcat", *sorted(map(str, store.glob("*.flushed")))],
                                 capture_output=True, check=True).stdout
            assert sorted(cat.splitlines()) == sorted(before[0].splitlines())
        for path in store.iterdir():
            if path.suffix != ".flushed":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        n.start()
        after = [query(n.api, **q).content for q in queries]
        assert after == before
        assert len(list(store.glob("*.idx"))) == len(list(store.glob("*.flushed")))  # rebuilt
        assert "Traceback" not in n.log()
    finally:
        n.kill()


def test_sixteen_concurrent_forwarders_lose_and_duplicate_nothing(node):
    """16 `oklog forward` processes at once, half on the fast port, half on
    the durable one: every line once, each stream in its own order."""
    rng = random.Random(16)
    streams = [realistic_lines(1500, f"f{i:02d}", rng) for i in range(16)]
    ports = [node.fast_port if i % 2 else node.durable_port for i in range(16)]
    join(start_forwarders(*[(b"\n".join(s) + b"\n", f"127.0.0.1:{port}") for s, port in zip(streams, ports)]))
    body = wait_for_records(node.api, 16 * 1500, timeout=60)  # fails on any duplicate or stray
    got = payloads(body)
    for i, s in enumerate(streams):
        assert [p for p in got if p.startswith(b"f%02d " % i)] == s
