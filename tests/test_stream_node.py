"""Live tail and topics on real nodes, driven as a user would: ``oklog
stream`` started first prints what is forwarded afterwards, a stuck stream
client slows nothing, a dynamic-topic node keeps each topic apart."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.nodeutil import ROOT, Node, forward, oklog_cmd, query, wait_for_records

pytestmark = pytest.mark.slow

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
FAST = ["-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-ingest.segment-flush-age", "250ms", "-store.segment-target-age", "250ms"]


def metric(node: Node, name: str, **labels: str) -> float:
    text = httpx.get(f"{node.api}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$" if labels
                  else rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_until(check, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class StreamCLI:
    """A real ``oklog stream`` process, its output in files."""

    def __init__(self, tmp: Path, node: Node, *args: str) -> None:
        self.out = tmp / f"stream-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                oklog_cmd("stream", "-store", f"127.0.0.1:{node.api_port}", *args),
                stdout=out, stderr=err, cwd=ROOT, stdin=subprocess.DEVNULL)

    def lines(self) -> list[bytes]:
        return self.out.read_bytes().split(b"\n")[:-1]

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_lines(self, n: int, timeout: float = 30.0) -> list[bytes]:
        wait_until(lambda: len(self.lines()) >= n or self.proc.poll() is not None, timeout,
                   f"{n} lines from oklog stream (have {len(self.lines())}; stderr: {self.stderr()})")
        return self.lines()

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_subscribed(node: Node, streams: int = 1) -> None:
    """Until ``streams`` cluster streams of ``node`` read its own store."""
    wait_until(lambda: metric(node, "oklog_stream_clients", endpoint="_stream") >= streams,
               what="the stream to subscribe")


@pytest.fixture
def node(tmp_path):
    n = Node("ingeststore", tmp_path / "node", extra=FAST)
    n.start()
    yield n
    n.kill()


def test_stream_started_first_prints_only_matching_records_forwarded_afterwards(node, tmp_path):
    """...and only those; bad requests are one-line errors."""
    forward(b"needle before the stream\n", f"127.0.0.1:{node.fast_port}")
    wait_for_records(node.api, 1)
    plain = StreamCLI(tmp_path, node, "-q", "needle")
    regex = StreamCLI(tmp_path, node, "-q", "needle-[0-9]+$", "-regex", "-ulid")
    try:
        wait_subscribed(node, 2)
        lines = [b"needle-%d" % i if i % 3 == 0 else b"hay-%d" % i for i in range(300)]
        lines += [b"needle-x with spaces", b"NEEDLE upper"]
        started = time.monotonic()
        forward(b"\n".join(lines) + b"\n", f"127.0.0.1:{node.fast_port}")
        want = [line for line in lines if b"needle" in line]
        got = plain.wait_lines(len(want))
        assert time.monotonic() - started < 20
        assert got == want  # payloads only, in order, each once, nothing from before
        got_regex = regex.wait_lines(100)
        assert [line[27:] for line in got_regex] == [b"needle-%d" % i for i in range(0, 300, 3)]
        assert all(re.fullmatch(rb"[0-7][0-9A-Z]{25}", line[:26]) for line in got_regex)
        time.sleep(1)  # nothing else arrives
        assert len(plain.lines()) == len(want) and len(regex.lines()) == 100
        assert plain.interrupt() == 0 and regex.interrupt() == 0
        assert plain.stderr() == "" and regex.stderr() == ""  # Ctrl-C is quiet
        wait_until(lambda: metric(node, "oklog_stream_clients", endpoint="stream") == 0,
                   what="the node to notice the clients left")
    finally:
        plain.kill()
        regex.kill()
    # bad requests are one-line errors
    r = httpx.get(f"{node.api}/store/stream", params={"q": "a(", "regex": "true"}, timeout=10)
    assert r.status_code == 400 and "bad regex" in r.text
    r = httpx.get(f"{node.api}/store/_stream", params={"window": "soon"}, timeout=10)
    assert r.status_code == 400 and "window" in r.text


def test_a_stuck_stream_client_does_not_stop_ingest_or_queries(node):
    stuck = socket.create_connection(("127.0.0.1", node.api_port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /store/stream?q= HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
    try:
        wait_subscribed(node)
        n = 100_000
        body = b"".join(b"volume %d %s\n" % (i, b"y" * 250) for i in range(n))
        started = time.monotonic()
        forward(body, f"127.0.0.1:{node.fast_port}")
        wait_for_records(node.api, n, timeout=90)
        assert time.monotonic() - started < 90
        r = query(node.api, q="volume 99999 ", **ALL)
        assert r.status_code == 200 and r.content.count(b"\n") == 1
        wait_until(lambda: metric(node, "oklog_stream_dropped_records_total", where="client") > 0,
                   what="the stuck client's drops to be counted")
        assert metric(node, "oklog_stream_clients", endpoint="stream") == 1
    finally:
        stuck.close()
    wait_until(lambda: metric(node, "oklog_stream_clients", endpoint="stream") == 0,
               what="the node to notice the stuck client left")
    assert metric(node, "oklog_stream_clients", endpoint="_stream") == 0
    node.signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0


def test_dynamic_topics_keep_each_topic_apart(tmp_path):
    n = Node("ingeststore", tmp_path / "dyn", extra=FAST + ["-ingest.topic-mode", "dynamic"])
    n.start()
    stream = StreamCLI(tmp_path, n, "-topic", "db")
    try:
        wait_subscribed(n)
        web = [b"web GET /a %d" % i for i in range(500)]
        db = [b"db SELECT %d" % i for i in range(300)]
        bad = [b"no/topic here", b"", b" leading", b"justoneword", b"-x y"]
        lines = []
        for i in range(800):
            lines.append(web[i] if i < 500 else db[i - 500])
            if i % 160 == 0:
                lines.append(bad[i // 160])
        forward(b"\n".join(lines) + b"\n", f"127.0.0.1:{n.fast_port}")
        everything = wait_for_records(n.api, 800)
        topics = [line.split(b" ")[1] for line in everything.split(b"\n")[:-1]]
        assert topics.count(b"web") == 500 and topics.count(b"db") == 300
        for topic, want in ((b"web", web), (b"db", db)):
            body = query(n.api, topic=topic.decode(), **ALL).content
            assert [line[27:] for line in body.split(b"\n")[:-1]] == want
        assert query(n.api, topic="nope", **ALL).content == b""
        assert query(n.api, topic="no/pe", **ALL).status_code == 400
        assert metric(n, "oklog_ingest_rejected_records_total", reason="invalid_topic") == 5
        cli = subprocess.run(oklog_cmd("query", "-store", f"127.0.0.1:{n.api_port}", "-from", "1h",
                                       "-topic", "db", "-q", "SELECT 29"),
                             capture_output=True, timeout=30, cwd=ROOT)
        assert cli.returncode == 0 and cli.stdout == b"SELECT 29\nSELECT 290\nSELECT 291\n" \
            b"SELECT 292\nSELECT 293\nSELECT 294\nSELECT 295\nSELECT 296\nSELECT 297\nSELECT 298\nSELECT 299\n"
        assert [b"db " + line for line in stream.wait_lines(300)] == db
        assert stream.interrupt() == 0
    finally:
        stream.kill()
        n.kill()


def test_stream_reconnects_when_its_node_comes_back(node, tmp_path):
    stream = StreamCLI(tmp_path, node, "-q", "again")
    try:
        wait_subscribed(node)
        forward(b"again 1\n", f"127.0.0.1:{node.fast_port}")
        stream.wait_lines(1)
        started = time.monotonic()
        assert node.stop() == 0  # an open stream does not hold up a clean shutdown
        assert time.monotonic() - started < 10
        wait_until(lambda: "reconnecting" in stream.stderr(), what="the client to notice")
        node.start()  # same ports, same data
        wait_subscribed(node)
        forward(b"again 2\nnot this\n", f"127.0.0.1:{node.fast_port}")
        assert stream.wait_lines(2) == [b"again 1", b"again 2"]
        assert "reconnected" in stream.stderr() and "Traceback" not in stream.stderr()
        assert stream.interrupt() == 0
    finally:
        stream.kill()


@pytest.mark.serf
@pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")
def test_a_cluster_stream_prints_each_replicated_record_once(tmp_path):
    gossip = ["-cluster.fast-gossip", "-store.segment-replication-factor", "2",
              "-ingest.segment-flush-age", "250ms", "-store.segment-target-age", "250ms"]
    a = Node("ingeststore", tmp_path / "a", extra=gossip).start()
    b = Node("ingeststore", tmp_path / "b", extra=gossip + ["-peer", f"127.0.0.1:{a.cluster_port}"])
    stream = None
    try:
        b.start()
        wait_until(lambda: len(httpx.get(f"{a.api}/store/_clusterstate", timeout=5).json()
                               .get("members", [])) == 2, what="the cluster to form")
        stream = StreamCLI(tmp_path, a, "-ulid")
        wait_subscribed(a)  # a's own share
        wait_subscribed(b)  # and b's, read by a over HTTP
        lines = b"".join(b"replicated %d\n" % i for i in range(400))
        forward(lines, f"127.0.0.1:{b.fast_port}")
        wait_for_records(a.api, 400)
        got = stream.wait_lines(400)
        time.sleep(2)  # any duplicate would have come by now
        got = stream.lines()
        assert len(got) == 400 and len({line[:26] for line in got}) == 400
        assert sorted(line[27:] for line in got) == sorted(lines.split(b"\n")[:-1])
        assert stream.interrupt() == 0
    finally:
        if stream is not None:
            stream.kill()
        b.kill()
        a.kill()
