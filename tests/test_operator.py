"""What a new user and an operator meet: bad data on disk, a lone node at RF 2,
typos in flags, busy ports, a silent store, the Procfile.  Real processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from oklog.records.format import stamp
from oklog.segment.name import SegmentName
from oklog.ulid import Stamper
from tests.recordutil import segment_bytes
from tests.nodeutil import ROOT, Node, forward, oklog_cmd, wait_for_records

pytestmark = pytest.mark.slow

ALONE = ["-cluster.serf", "off", "-store.segment-target-age", "1s", "-ingest.segment-flush-age", "1s"]


def run(*args: str | bytes, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(oklog_cmd(*args), cwd=ROOT, capture_output=True, timeout=timeout,  # type: ignore[arg-type]
                          stdin=subprocess.DEVNULL)


def metric(node: Node, name: str, **labels: str) -> float:
    text = httpx.get(f"{node.api}/metrics", timeout=5).text
    want = "".join(f'{k}="{v}",' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and "".join(sorted(p + "," for p in m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def lines_of(block: bytes) -> list[bytes]:
    return block.splitlines(keepends=True)


# --- a peer's bad data never stops the pipeline --------------------------------------------


def test_an_ingest_segment_with_garbage_is_salvaged_and_nothing_else_waits(tmp_path: Path) -> None:
    st = Stamper()
    first = lines_of(stamp([b"first %d" % i for i in range(400)], st))
    second = stamp([b"second %d" % i for i in range(300)], st)
    ingest = tmp_path / "n" / "ingest"
    ingest.mkdir(parents=True)
    poisoned = b"".join(first[:200]) + b"\xff\xfe garbage from a bad disk\n" + b"not a record\n" + b"".join(first[200:])
    (ingest / f"{first[0][:26].decode()}.flushed").write_bytes(poisoned)
    (ingest / f"{second[:26].decode()}.flushed").write_bytes(second)
    n = Node("ingeststore", tmp_path / "n", extra=ALONE + ["-store.segment-replication-factor", "1"]).start()
    try:
        body = wait_for_records(n.api, 700)
        assert body == b"".join(first) + second  # every valid record, in order, nothing else
        assert metric(n, "oklog_store_rejected_records_total", reason="malformed", source="consume") == 2
        assert n.log().count("event=segment_salvaged") == 1
        assert not list(ingest.glob("*.flushed")) and not list(ingest.glob("*.pending"))
        # and the pipeline goes on
        forward(b"after the poison\n", f"127.0.0.1:{n.fast_port}")
        wait_for_records(n.api, 701)
    finally:
        n.kill()


def test_damaged_store_segments_are_repaired_when_the_store_opens_them(tmp_path: Path) -> None:
    st = Stamper()
    store = tmp_path / "n" / "store"
    store.mkdir(parents=True)
    garbage = lines_of(stamp([b"garbage-neighbour %d" % i for i in range(50)], st))
    unsorted = lines_of(stamp([b"unsorted %d" % i for i in range(50)], st))
    sound = stamp([b"sound %d" % i for i in range(50)], st)
    g_name = SegmentName.of_block(b"".join(garbage))
    u_name = SegmentName.of_block(b"".join(unsorted))
    (store / g_name.filename("flushed")).write_bytes(
        b"".join(garbage[:25]) + b"GARBAGE LINE \x00\n" + b"".join(garbage[25:]))
    (store / u_name.filename("flushed")).write_bytes(b"".join(reversed(unsorted)))
    (store / SegmentName.of_block(sound).filename("flushed")).write_bytes(sound)
    n = Node("ingeststore", tmp_path / "n", extra=ALONE + ["-store.segment-replication-factor", "1"]).start()
    try:
        body = wait_for_records(n.api, 150)
        assert lines_of(body) == sorted(garbage + unsorted + lines_of(sound))
        deadline = time.monotonic() + 20
        while len(list(store.glob("*.corrupt"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(p.name for p in store.glob("*.corrupt")) == sorted(
            [g_name.filename("corrupt"), u_name.filename("corrupt")])
        assert metric(n, "oklog_store_rejected_records_total", reason="malformed", source="segment") == 1
        assert metric(n, "oklog_store_repaired_segments_total", problem="unsorted") == 1
        assert n.log().count("event=segment_repaired") == 2
    finally:
        n.kill()
    # every repaired segment is sound on disk: cat gives every record, sorted, once
    on_disk = b"".join(segment_bytes(p) for p in sorted(store.glob("*.flushed")))
    assert lines_of(on_disk) == sorted(garbage + unsorted + lines_of(sound))


# --- the user is never left guessing -----------------------------------------------------------


def test_a_lone_ingeststore_at_replication_factor_2_says_why_nothing_shows(tmp_path: Path) -> None:
    n = Node("ingeststore", tmp_path / "n", extra=ALONE).start()  # OK Log's default RF 2
    try:
        ready = httpx.get(f"{n.api}/readyz", timeout=5)
        assert ready.status_code == 200
        assert "warning: 1 live store node(s) for replication factor 2" in ready.text
        state = httpx.get(f"{n.api}/store/_clusterstate", timeout=5).json()
        assert state["replication"]["ok"] is False and state["replication"]["live_stores"] == 1
        assert "replication factor 2" in state["replication"]["warning"]
        forward(b"hello\n", f"127.0.0.1:{n.fast_port}")
        out = run("query", "-store", f"127.0.0.1:{n.api_port}", "-from", "1h")
        assert out.returncode == 0 and out.stdout == b""
        assert b"warning: 1 live store node(s) for replication factor 2" in out.stderr
        assert b"-store.segment-replication-factor 1" in out.stderr  # what to do about it
        assert "event=waiting_for_stores" in n.log()  # the consumer says it, every 30 s
    finally:
        n.kill()


def test_an_unknown_flag_is_named_whole() -> None:
    out = run("ingeststore", "-store.bogus-flag", "1")
    assert out.returncode == 2
    assert b"No such option: -store.bogus-flag" in out.stderr
    out = run("query", "-q", "-store.x", "-frm", "1h")  # a value that looks like a flag is a value
    assert out.returncode == 2 and b"No such option: -frm" in out.stderr


@pytest.mark.parametrize("flag", ["-api", "-ingest.fast", "-ingest.durable", "-ingest.bulk"])
def test_a_busy_port_names_its_address(tmp_path: Path, flag: str) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        n = Node("ingeststore", tmp_path / "n", extra=ALONE)
        args = n.args() + [flag, f"127.0.0.1:{port}"]
        out = subprocess.run(oklog_cmd(*args), cwd=ROOT, capture_output=True, timeout=60)
        assert out.returncode == 1
        assert out.stderr.decode().strip().splitlines()[-1] == (
            f"oklog: {flag} 127.0.0.1:{port}: address already in use")
    finally:
        busy.close()


@pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")
def test_a_busy_gossip_port_names_its_address(tmp_path: Path) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        n = Node("ingeststore", tmp_path / "n", extra=["-cluster.serf", "on"])
        args = n.args() + ["-cluster", f"127.0.0.1:{port}"]
        out = subprocess.run(oklog_cmd(*args), cwd=ROOT, capture_output=True, timeout=60)
        assert out.returncode == 1
        assert f"oklog: -cluster 127.0.0.1:{port}: address already in use" in out.stderr.decode()
    finally:
        busy.close()


# --- the query CLI is robust ------------------------------------------------------------------


def test_query_cli_takes_any_bytes_and_go_durations(tmp_path: Path) -> None:
    n = Node("ingeststore", tmp_path / "n", extra=ALONE + ["-store.segment-replication-factor", "1"]).start()
    try:
        forward(b"plain line\nodd \xff\xfe\x80 bytes\n", f"127.0.0.1:{n.fast_port}")
        wait_for_records(n.api, 2)
        store = f"127.0.0.1:{n.api_port}"
        out = run("query", "-store", store, "-q", b"\xff\xfe\x80")
        assert (out.returncode, out.stdout, out.stderr) == (0, b"odd \xff\xfe\x80 bytes\n", b"")
        for spec in ("1w", "1h30m", "2d", "90m", "3600s"):
            out = run("query", "-store", store, "-from", spec, "-q", "plain")
            assert (out.returncode, out.stdout) == (0, b"plain line\n"), spec
        out = run("query", "-store", store, "-from", "1w", "-to", "2w")
        assert out.returncode == 1 and b'"from" is after "to"' in out.stderr
    finally:
        n.kill()


def test_query_cli_against_a_store_that_never_answers() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        out = run("query", "-store", f"127.0.0.1:{port}", "-timeout", "2s")
        assert time.monotonic() - started < 30
        assert out.returncode == 1
        assert out.stderr.decode().splitlines() == [
            f"error: store at http://127.0.0.1:{port} did not answer within 2s"]
    finally:
        silent.close()


# --- the Procfile -------------------------------------------------------------------------------


def procfile_commands() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))


def test_every_procfile_node_joins_through_a_peer_and_gossips_fast() -> None:
    procs = procfile_commands()
    nodes = {name: cmd for name, cmd in procs.items() if re.search(r"oklog (ingest|store|ingeststore) ", cmd)}
    assert len(nodes) == 5
    gossip = {name: re.search(r"-cluster (\S+)", cmd).group(1) for name, cmd in nodes.items()}  # type: ignore[union-attr]
    for name, cmd in nodes.items():
        peers = re.findall(r"-peer (\S+)", cmd)
        assert peers, f"{name} has no -peer"
        assert gossip[name] not in peers, f"{name} joins itself"
        assert set(peers) <= set(gossip.values())
        assert "-cluster.fast-gossip" in cmd
    readme = (ROOT / "README.md").read_text()
    assert "-cluster.fast-gossip" in readme


@pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")
def test_the_procfile_cluster_runs(tmp_path: Path) -> None:
    ports = [7650, 7651, 7652, 7659, 7660, 7661, 7662, 7669, 7750, 7759, 7760, 7769, 7770, 7779]
    for p in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", p)) == 0:
                pytest.skip(f"port {p} is in use: the Procfile needs its fixed ports")
    procfile = tmp_path / "Procfile"
    procfile.write_text((ROOT / "Procfile").read_text().replace("./cmd/oklog", str(ROOT / "cmd" / "oklog")))
    honcho = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "honcho"
    if not honcho.exists():
        honcho = ROOT / ".venv" / "bin" / "honcho"
    proc = subprocess.Popen([str(honcho), "-f", str(procfile), "-d", str(tmp_path), "start"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        members = 0
        while time.monotonic() < deadline:
            try:
                for api in ("7650", "7660", "7750", "7760", "7770"):
                    state = httpx.get(f"http://127.0.0.1:{api}/store/_clusterstate" if api[1] == "7"
                                      else f"http://127.0.0.1:{api}/ingest/_clusterstate", timeout=2).json()
                    members = sum(m["status"] == "alive" for m in state["members"])
                    if members != 5:
                        raise ValueError(api)
                break
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.5)
        assert members == 5, "the Procfile's nodes never saw each other"
        # the test service's lines become queryable on every store
        for store in ("7750", "7760", "7770"):
            while time.monotonic() < deadline:
                out = run("query", "-store", f"localhost:{store}", "-from", "1m")
                if out.returncode == 0 and out.stdout.count(b"\n") > 5:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"nothing queryable on {store}: {out.stderr!r}")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_testsvc_paces_its_lines_by_the_clock() -> None:
    """`oklog testsvc -rate 200`: about 200 lines a second (never faster)."""
    started = time.monotonic()
    done = subprocess.run(oklog_cmd("testsvc", "-rate", "200", "-count", "300", "-size", "64"),
                          capture_output=True, timeout=60, cwd=ROOT)
    took = time.monotonic() - started
    lines = done.stdout.split(b"\n")[:-1]
    assert done.returncode == 0 and len(lines) == 300
    assert took >= 1.45  # 300 lines at 200/s: 1.5 s of pacing
    assert all(line.split(b" ")[1] == b"%d" % (i + 1) for i, line in enumerate(lines))
