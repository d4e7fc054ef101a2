"""Hostile load against real nodes (issue 10): hundreds of idle and half-sent
connections do not stall a query and are dropped after -api.idle-timeout,
connections over -api.max-connections get a 503; a pathological regex over
megabytes of long lines neither hangs its query nor stalls the node; a
query that outlives -store.query-timeout is cut, and queries over
-store.max-concurrent-queries get a 503 with Retry-After."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.nodeutil import Node, forward, wait_for_records

pytestmark = pytest.mark.slow

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
IDLE_TIMEOUT = 3.0
MAX_CONNECTIONS = 450


def metric(api: str, name: str) -> float:
    """The sum of a metric's samples (every label set) at /metrics."""
    deadline = time.monotonic() + 30
    while (r := httpx.get(f"{api}/metrics", timeout=30)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)  # connections just closed by the test are still being let go of
    assert r.status_code == 200, r.text
    text = r.text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    data = tmp_path_factory.mktemp("limits")
    n = Node("ingeststore", data, extra=[
        "-store.segment-replication-factor", "1",
        "-api.max-connections", str(MAX_CONNECTIONS),
        "-api.idle-timeout", f"{IDLE_TIMEOUT:g}s",
        "-ingest.max-record-size", "4MiB",
    ]).start()
    try:
        forward(b"".join(b"marker %d\n" % i for i in range(10)), f"127.0.0.1:{n.fast_port}")
        wait_for_records(n.api, 10, q="marker")
        yield n
    finally:
        n.kill()


def connect(port: int, send: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if send:
        s.sendall(send)
    return s


def closed_within(s: socket.socket, timeout: float) -> bool:
    """Whether the server closed ``s`` (EOF or reset) within ``timeout``,
    having sent nothing."""
    s.settimeout(timeout)
    try:
        return s.recv(1000) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_and_half_sent_connections_neither_starve_a_query_nor_stay(node: Node) -> None:
    idle = [connect(node.api_port) for _ in range(300)]
    half = [connect(node.api_port, b"GET /store/qu") for _ in range(50)]  # half a request line
    half += [connect(node.api_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Wait: ") for _ in range(50)]
    opened = time.monotonic()
    try:
        started = time.monotonic()
        r = httpx.get(f"{node.api}/store/query", params={**ALL, "q": "marker"}, timeout=30)
        assert r.status_code == 200 and r.content.count(b"\n") == 10
        assert httpx.get(f"{node.api}/healthz", timeout=30).status_code == 200
        assert time.monotonic() - started < 5.0
        assert metric(node.api, "oklog_http_connections") >= 400

        # over -api.max-connections: 503 and a one-line reason, counted
        refused_before = metric(node.api, "oklog_http_refused_connections_total")
        extra = [connect(node.api_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(80)]
        answers = []
        for s in extra:  # all held open until every one is answered
            s.settimeout(30)
            answers.append(s.recv(4096))
        for s in extra:
            s.close()
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
        assert len(refused) >= 80 - (MAX_CONNECTIONS - 400)
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers if a not in refused)
        assert b"-api.max-connections" in refused[0] and b"Retry-After: 1" in refused[0]
        assert metric(node.api, "oklog_http_refused_connections_total") >= refused_before + len(refused)

        # -api.idle-timeout: every idle and half-sent connection is dropped
        for s in idle + half:
            assert closed_within(s, max(1.0, opened + IDLE_TIMEOUT + 10 - time.monotonic()))
        assert time.monotonic() - opened < IDLE_TIMEOUT + 10
        time.sleep(0.5)
        assert metric(node.api, "oklog_http_connections") <= 5
    finally:
        for s in idle + half:
            s.close()


def test_a_pathological_regex_neither_hangs_nor_stalls_the_node(node: Node) -> None:
    mib = 1 << 20
    lines = [b"a" * mib + b"\n" for _ in range(3)] + [b"x" * mib + b"\n" for _ in range(3)]
    forward(b"".join(lines), f"127.0.0.1:{node.fast_port}")
    wait_for_records(node.api, 3, q="aaaaaaaaaa")

    stop = threading.Event()
    worst: dict[str, float] = {"healthz": 0.0, "query": 0.0}
    failures: list[str] = []

    def watch() -> None:
        """Meanwhile: /healthz and a small query answer promptly."""
        with httpx.Client(base_url=node.api, timeout=30) as client:
            while not stop.is_set():
                for name, call in (("healthz", lambda: client.get("/healthz")),
                                   ("query", lambda: client.get("/store/query", params={**ALL, "q": "marker 3"}))):
                    t = time.monotonic()
                    r = call()
                    worst[name] = max(worst[name], time.monotonic() - t)
                    if r.status_code != 200 or (name == "query" and r.content.count(b"\n") != 1):
                        failures.append(f"{name}: {r.status_code} {r.content[:200]!r}")
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for q, want in (("(a+)+$", 3), ("(x+x+)+y", 0), ("^(a|aa)+$", 3), ("(a*)*b", 0)):
            for _ in range(2):
                started = time.monotonic()
                r = httpx.get(f"{node.api}/store/query", params={**ALL, "q": q, "regex": "true"}, timeout=120)
                took = time.monotonic() - started
                assert r.status_code == 200, r.text
                assert r.content.count(b"\n") == want, q
                assert took < 60, f"{q} took {took:.1f}s"
        # ingest goes on meanwhile and is queryable
        forward(b"during the storm\n", f"127.0.0.1:{node.fast_port}")
        wait_for_records(node.api, 1, q="during the storm")
    finally:
        stop.set()
        watcher.join(60)
    assert not failures, failures
    assert worst["healthz"] < 5.0 and worst["query"] < 5.0, worst


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    data: Path = tmp_path_factory.mktemp("query-limits")
    n = Node("ingeststore", data, extra=[
        "-store.segment-replication-factor", "1",
        "-store.query-timeout", "5s",
        "-store.max-concurrent-queries", "1",
    ]).start()
    try:
        yield n
    finally:
        n.kill()


def test_a_slow_query_holds_the_only_slot_then_is_cut_at_its_deadline(limited: Node) -> None:
    count = 160_000  # 16 MB: more than the socket buffers hold, so a client that stops reading stalls the body
    forward(b"".join(b"rec %07d %s\n" % (i, b"p" * 87) for i in range(count)), f"127.0.0.1:{limited.fast_port}")
    wait_for_records(limited.api, count, timeout=60)
    timeouts = metric(limited.api, "oklog_store_query_timeouts_total")
    refusals = metric(limited.api, "oklog_store_queries_refused_total")

    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    slow.settimeout(30)
    slow.connect(("127.0.0.1", limited.api_port))
    started = time.monotonic()
    slow.sendall(b"GET /store/query?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z HTTP/1.1\r\n"
                 b"Host: x\r\nConnection: close\r\n\r\n")
    got = slow.recv(4096)
    assert got.startswith(b"HTTP/1.1 200 ")
    try:
        # the slot is taken: another query is refused at once, with a reason and Retry-After
        r = httpx.get(f"{limited.api}/store/query", params={**ALL, "q": "rec 0000007"}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1" and "-store.max-concurrent-queries" in r.text
        assert r.text.count("\n") == 1
        # peers' shares (/store/_query) have their own slots
        r = httpx.get(f"{limited.api}/store/_query", params={**ALL, "q": "rec 0000007"}, timeout=30)
        assert r.status_code == 200 and r.content.count(b"\n") == 1

        time.sleep(max(0.0, started + 6.0 - time.monotonic()))  # past the 5 s deadline
        try:
            while chunk := slow.recv(1 << 20):
                got += chunk
        except ConnectionResetError:
            pass
    finally:
        slow.close()
    assert len(got) < count * 100  # cut short...
    head, _, sent = got.partition(b"\r\n\r\n")
    declared = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
    # ...by breaking the connection, not by ending the body: a match everything answer
    # declares its length (oklog.query.local.exact_size), so it ends short of it
    assert declared is not None and len(sent) < count * 100 < int(declared[1])
    assert metric(limited.api, "oklog_store_query_timeouts_total") == timeouts + 1
    assert metric(limited.api, "oklog_store_queries_refused_total") == refusals + 1
    assert "event=query_timeout" in limited.log_path.read_text(errors="replace")

    # the slot is free again
    r = httpx.get(f"{limited.api}/store/query", params={**ALL, "q": "rec 0000007"}, timeout=30)
    assert r.status_code == 200 and r.content.count(b"\n") == 1
