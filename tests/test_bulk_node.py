"""Bulk ingest with real processes: an ``OK`` means queryable (and on RF
stores), and ``oklog forward -bulk`` loses nothing while a store is down."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

import httpx
import pytest

from tests.nodeutil import ROOT, Node, oklog_cmd, query
from tests.test_cluster import FAST_INGEST, FAST_STORE, wait_members

pytestmark = pytest.mark.slow

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def upload(port: int, data: bytes, timeout: float = 60) -> bytes:
    """One bulk upload over a raw socket: send, half-close, read the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return reply


def payloads(body: bytes) -> list[bytes]:
    return [line.split(b" ", 2)[2] for line in body.split(b"\n")[:-1]]


def forward_bulk(data: bytes, port: int, *extra: str, timeout: float = 120) -> str:
    """``oklog forward -bulk``; its log (stderr).  Fails unless it exits 0."""
    out = subprocess.run(oklog_cmd("forward", "-bulk", *extra, f"127.0.0.1:{port}"), input=data,
                         capture_output=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return out.stderr.decode()


@pytest.fixture
def node(tmp_path):
    n = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-ingest.max-record-size", "1KiB", "-ingest.bulk-max-size", "64KiB"])
    n.start()
    yield n
    n.kill()


def test_every_line_is_queryable_when_forward_exits(node):
    lines = [b"bulk line %d %s" % (i, b"x" * (i % 80)) for i in range(6000)]
    data = b"\n".join(lines[:3000] + [b"L" * 2000] + lines[3000:]) + b"\n"  # one line too long
    # segments of 200KiB are too large for this ingester (64KiB): forward splits them
    log = forward_bulk(data, node.bulk_port, "-bulk.size", "200KiB")
    assert "mode=bulk" in log and "lines_sent=6001" in log and "lines_rejected=1" in log
    assert "event=split" in log and "resends=0" in log
    body = query(node.api, **ALL).content  # no waiting: forward's exit means stored
    assert sorted(payloads(body)) == sorted(lines)  # the long line alone left out
    assert b"event=record_rejected mode=bulk reason=too_long count=1" in node.log().encode()


def test_ok_means_every_record_is_queryable(node):
    for n in (1, 2500, 0):
        tag = b"tag%d" % n
        reply = upload(node.bulk_port, b"".join(b"%s r%d\n" % (tag, i) for i in range(n)))
        assert reply == b"OK %d\n" % n
        if n:
            r = query(node.api, q=tag.decode(), **ALL)  # right after the OK
            assert r.status_code == 200 and r.content.count(b"\n") == n


@pytest.mark.serf
@pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")
def test_no_ok_while_a_store_is_down_and_forward_loses_nothing(tmp_path):
    ingest = Node("ingest", tmp_path / "ingest", extra=FAST_INGEST + ["-ingest.bulk-timeout", "4s"])
    ingest.start()
    seed = f"127.0.0.1:{ingest.cluster_port}"
    stores = [Node("store", tmp_path / f"store{i}", extra=FAST_STORE + [
        "-peer", seed, "-store.segment-replication-factor", "2"]) for i in range(2)]
    forwarder: subprocess.Popen | None = None
    try:
        for s in stores:
            s.start(wait=False)
        for n in (ingest, *stores):
            n.wait_ready()
            wait_members(n, 3)

        def on_both(tag: bytes) -> list[list[bytes]]:
            return [sorted(p for p in payloads(httpx.get(f"{s.api}/store/_query", params=ALL, timeout=60).content)
                           if p.startswith(tag)) for s in stores]

        # healthy: the OK means the records are on both stores (RF 2) already
        first = [b"first %d" % i for i in range(2000)]
        assert upload(ingest.bulk_port, b"\n".join(first) + b"\n") == b"OK 2000\n"
        assert on_both(b"first ") == [sorted(first)] * 2

        # a store dies: no commit can happen, so no OK; ERR at -ingest.bulk-timeout
        stores[1].proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        stores[1].proc.wait()  # type: ignore[union-attr]
        t0 = time.monotonic()
        lost = [b"orphan %d" % i for i in range(500)]
        reply = upload(ingest.bulk_port, b"\n".join(lost) + b"\n")
        assert reply.startswith(b"ERR not committed by a store within 4s")
        assert time.monotonic() - t0 >= 3.5

        # forward -bulk meanwhile gets ERRs and sends again, and only exits once all are OK
        sent = [b"fwd %d %s" % (i, b"y" * (i % 40)) for i in range(4000)]
        source = tmp_path / "input"
        source.write_bytes(b"\n".join(sent) + b"\n")
        with open(source, "rb") as stdin:
            forwarder = subprocess.Popen(
                oklog_cmd("forward", "-bulk", "-bulk.size", "16KiB", "-bulk.timeout", "20s",
                          f"127.0.0.1:{ingest.bulk_port}"),
                stdin=stdin, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(6)
        assert forwarder.poll() is None, "forward finished while a store was down"
        stores[1].start()  # back, with its data
        _, err = forwarder.communicate(timeout=120)
        assert forwarder.returncode == 0, err.decode()[-3000:]
        assert b"resends=0" not in err and b"mode=bulk" in err

        # right after forward's exit: every line on both stores; resends may
        # have stored some twice (new ULIDs), but nothing is missing or stray
        for got in on_both(b"fwd "):
            assert sorted(set(got)) == sorted(sent)
        # the upload that timed out was kept and stored all the same
        deadline = time.monotonic() + 60
        while (got := on_both(b"orphan ")) != [sorted(lost)] * 2:
            assert time.monotonic() < deadline, [len(g) for g in got]
            time.sleep(0.5)
    finally:
        if forwarder is not None and forwarder.poll() is None:
            forwarder.kill()
            forwarder.wait()
        for n in (ingest, *stores):
            n.kill()
