"""Load shedding with real processes: ``-ingest.max-connections`` refuses,
forwarders fail over to another ingester and keep every record, and the
load is published as a Serf tag."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.nodeutil import ROOT, Node, oklog_cmd, query
from tests.test_cluster import FAST_INGEST, FAST_STORE, wait_members

pytestmark = pytest.mark.slow

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def refused_by(sock: socket.socket, timeout: float = 10) -> bool:
    """True once the ingester closes or resets ``sock`` (line ports) or
    answers ``ERR refused`` (bulk port); False if it stays open."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(100)
        return data == b"" or data.startswith(b"ERR refused: too many connections")
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def feed(proc: subprocess.Popen, lines: list[bytes]) -> None:
    """Write ``lines`` to a forwarder's stdin in ten slices over about a
    second (so it sends several batches), then close it."""
    assert proc.stdin is not None
    step = len(lines) // 10
    for i in range(0, len(lines), step):
        proc.stdin.write(b"".join(line + b"\n" for line in lines[i:i + step]))
        proc.stdin.flush()
        time.sleep(0.1)
    proc.stdin.close()


def metric(node: Node, name: str) -> str:
    return "\n".join(line for line in httpx.get(f"{node.api}/metrics", timeout=10).text.splitlines()
                     if line.startswith(name))


def test_max_connections_refuses_the_fifth(tmp_path):
    node = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off", "-ingest.max-connections", "4"])
    node.start()
    held: list[socket.socket] = []
    try:
        for port in (node.fast_port, node.durable_port, node.fast_port, node.bulk_port):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        deadline = time.monotonic() + 20
        while 'oklog_ingest_connections{mode="fast"} 2.0' not in metric(node, "oklog_ingest_connections"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # the durable and bulk ones too
        for port in (node.fast_port, node.durable_port, node.bulk_port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as fifth:
                assert refused_by(fifth), port
        assert 'oklog_ingest_refused_connections_total{reason="max_connections"} 3.0' in metric(
            node, "oklog_ingest_refused_connections")
        assert "event=connection_refused reason=max_connections" in node.log()
        assert not any(refused_by(s, 0.2) for s in held)  # the four stay open

        held.pop(0).close()
        deadline = time.monotonic() + 20
        while True:  # the ingester notices the close within moments
            with socket.create_connection(("127.0.0.1", node.fast_port), timeout=10) as again:
                if not refused_by(again, 1.0):
                    break
            assert time.monotonic() < deadline, "a new connection is still refused"
    finally:
        for s in held:
            s.close()
        node.kill()


@pytest.mark.serf
@pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")
def test_forwarders_fail_over_and_keep_every_record(tmp_path):
    busy = Node("ingest", tmp_path / "busy", extra=FAST_INGEST + ["-ingest.max-connections", "1"])
    busy.start()
    seed = f"127.0.0.1:{busy.cluster_port}"
    other = Node("ingest", tmp_path / "other", extra=FAST_INGEST + ["-peer", seed])
    store = Node("store", tmp_path / "store", extra=FAST_STORE + [
        "-peer", seed, "-store.segment-replication-factor", "1"])
    procs: list[subprocess.Popen] = []
    hold: socket.socket | None = None
    try:
        other.start(wait=False)
        store.start(wait=False)
        for n in (busy, other, store):
            n.wait_ready()
            wait_members(n, 3)
        hold = socket.create_connection(("127.0.0.1", busy.fast_port), timeout=10)  # busy is full
        time.sleep(0.5)
        # busy listed twice: most forwarders start there (the rotation starts at random)
        targets = [f"127.0.0.1:{busy.fast_port}", f"tcp://127.0.0.1:{busy.fast_port}",
                   f"127.0.0.1:{other.fast_port}"]
        sent: list[bytes] = []
        feeders: list[threading.Thread] = []
        for i in range(8):
            lines = [b"shed %d %d %s" % (i, n, b"z" * (n % 50)) for n in range(2000)]
            sent += lines
            proc = subprocess.Popen(oklog_cmd("forward", *targets), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
            procs.append(proc)
            feeders.append(threading.Thread(target=feed, args=(proc, lines), daemon=True))
        for t in feeders:
            t.start()
        logs = []
        for p in procs:
            assert p.stderr is not None
            err = p.stderr.read()
            assert p.wait(timeout=120) == 0, err.decode()[-2000:]
            logs.append(err.decode())
        hold.close()
        hold = None

        deadline = time.monotonic() + 60
        while True:
            body = query(store.api, q="shed ", **ALL).content
            got = [line.split(b" ", 2)[2] for line in body.splitlines()]
            if len(set(got)) >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sorted(set(got)) == sorted(sent)  # every record (distinct payloads)
        assert len(got) == len(sent)  # and none twice
        refusals = metric(busy, "oklog_ingest_refused_connections_total")
        assert 'reason="max_connections"' in refusals, refusals
        # forwarders that started at busy wrote a first batch (stored there),
        # saw the close and went on at the other ingester
        assert "closed by ingester" in "".join(logs)
        landed = metric(other, "oklog_ingest_records_total")
        assert float(landed.split()[-1]) > 0
    finally:
        if hold is not None:
            hold.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for n in (busy, other, store):
            n.kill()


def clusterstate_loads(node: Node) -> dict[str, str]:
    members = httpx.get(f"{node.api}/ingest/_clusterstate", timeout=10).json()["members"]
    return {m["api"]: m["load"] for m in members}


@pytest.mark.serf
@pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")
def test_cluster_rule_sheds_the_busy_ingester_only(tmp_path):
    """-ingest.shed-factor with real Serf: the loads are gossiped as tags,
    the ingester far above the other refuses, the other still accepts."""
    a = Node("ingest", tmp_path / "a", extra=FAST_INGEST + ["-ingest.shed-factor", "2"])
    a.start()
    b = Node("ingest", tmp_path / "b", extra=FAST_INGEST + [
        "-peer", f"127.0.0.1:{a.cluster_port}", "-ingest.shed-factor", "2"])
    held: list[socket.socket] = []
    try:
        b.start()
        for n in (a, b):
            wait_members(n, 2)
        deadline = time.monotonic() + 30
        while not all(clusterstate_loads(a).values()):  # both published
            assert time.monotonic() < deadline, clusterstate_loads(a)
            time.sleep(0.2)
        assert set(clusterstate_loads(a).values()) == {"conns=0,bps=0,rps=0,refusing=0"}

        for _ in range(4):  # at least 4 connections at stake, and none on b
            held.append(socket.create_connection(("127.0.0.1", a.fast_port), timeout=10))
        deadline = time.monotonic() + 30
        while True:
            s = socket.create_connection(("127.0.0.1", a.fast_port), timeout=10)
            if refused_by(s, 1.0):
                s.close()
                break
            held.append(s)  # not yet: a did not count them all yet
            assert time.monotonic() < deadline, "a never refused"
        assert 'reason="load"' in metric(a, "oklog_ingest_refused_connections_total")
        with socket.create_connection(("127.0.0.1", b.fast_port), timeout=10) as ok:
            assert not refused_by(ok, 1.0)  # b is the one below the mean
        deadline = time.monotonic() + 30
        while "refusing=1" not in "".join(clusterstate_loads(b).values()):  # b hears of it
            assert time.monotonic() < deadline, clusterstate_loads(b)
            time.sleep(0.2)
        assert "event=shedding_started reason=load" in a.log()  # logged before it is published
    finally:
        for s in held:
            s.close()
        for n in (a, b):
            n.kill()
