"""Fault injection on real processes: every accepted record survives, once.

Each check makes one failure happen to real node processes and then asks
the cluster for every record it accepted: each must be queryable exactly
once (distinct ULIDs, and exactly the payloads that were sent).
docs/reliability.md says what each check proves, mode by mode.

- The ingest directory on a full disk (a 2 MiB tmpfs): the ingester holds
  its forwarders back, keeps its segments whole records, and resumes when
  space comes back.
- A forwarder SIGKILLed mid-stream: a prefix of its stream is stored.
- A store SIGKILLed at each stage of the consume transaction (gather,
  replicate, commit).  The kill lands where intended because the stores run
  with ``OKLOG_TEST_PARK`` (``oklog/store/park.py``): the test arms a stage,
  the first consumer to reach it parks there and names itself in a marker
  file, and the test kills that process.
- An ingester SIGKILLed after durable writes (still in its ``.active``
  segment), and one SIGKILLed while a store holds its segments as pending;
  each restarted on the same directories.
- Bulk ingest: no ``OK`` before the commit, through a store killed before
  it; an upload survives an ingester killed before its ``OK``.
- A store that lost its disk, and ``oklog repair`` restoring the
  replication factor for every record of the checks above.
- A store cut off from the others by a network partition (``ip netns``,
  veth) in the middle of its replication, with a canary writing, then
  healed.

The cluster checks share one Serf cluster (1 ingester, 3 stores,
replication factor 2); each check uses its own record tag.  The tmpfs and
the namespaces need root (skipped otherwise, with the reason), the clusters
need ``serf``.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from oklog.records.format import salvage
from oklog.store.park import ENV as PARK_ENV
from tests.nodeutil import ROOT, Forwarder, Node, forward, join, oklog_cmd, wait_for_records

pytestmark = pytest.mark.slow

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
HAVE_SERF = shutil.which("serf") is not None


@dataclass
class FaultNode(Node):
    """A ``Node`` started with extra environment variables."""

    env: dict[str, str] = field(default_factory=dict)

    def start(self, wait: bool = True) -> "FaultNode":
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(oklog_cmd(*self.args()), stdout=log, stderr=log, cwd=ROOT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, **self.env})
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# -- records ------------------------------------------------------------------


def tagged(tag: str, n: int) -> list[bytes]:
    """``n`` distinct payloads that no other check's query matches."""
    return [b"%s seq=%06d some payload" % (tag.encode(), i) for i in range(n)]


def feed(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def payloads(body: bytes) -> list[bytes]:
    return [line[27:].split(b" ", 1)[1] for line in body.split(b"\n")[:-1]]


def assert_exactly_once(api: str, tag: str, sent: list[bytes], timeout: float = 90) -> None:
    """Every sent record is queryable, once: as many distinct ULIDs as lines
    sent, and exactly the payloads sent."""
    body = wait_for_records(api, len(sent), timeout=timeout, q=tag + " seq=")
    assert sorted(payloads(body)) == sorted(sent)


def ids_on(api: str, tag: str) -> list[bytes]:
    """The ULIDs of ``tag``'s records that the store at ``api`` holds (its
    own copies; a store never returns a ULID twice)."""
    r = httpx.get(f"{api}/store/_query", params={**ALL, "q": tag + " seq="}, timeout=60)
    assert r.status_code == 200, r.text
    ids = [line[:26] for line in r.content.split(b"\n")[:-1]]
    assert len(ids) == len(set(ids)), f"{api} returned a record twice"
    return ids


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def assert_whole_records(directory: Path) -> None:
    """Every ingest segment in ``directory`` is whole, well-formed records."""
    for path in directory.iterdir():
        if path.suffix in (".active", ".flushed", ".pending"):
            data = path.read_bytes()
            good, dropped = salvage(data)
            assert dropped == 0 and good == data, f"{path.name}: {dropped} torn or garbled line(s)"


def drained(api: str) -> bool:
    """The ingester at ``api`` holds nothing: every segment was committed."""
    state = httpx.get(f"{api}/ingest/_segmentstate", timeout=10).json()
    return all(state[s]["segments"] == 0 for s in ("active", "flushed", "pending"))


# -- parking a consumer ---------------------------------------------------------


def arm(park: Path, stage: str) -> None:
    (park / stage).touch()


def wait_parked(park: Path, stage: str, timeout: float = 60) -> tuple[Path, int]:
    """The marker of the consumer that parked at ``stage``, and its pid."""
    found: list[Path] = []

    def parked() -> bool:
        found[:] = list(park.glob(f"{stage}.parked.*"))
        return bool(found)

    wait_until(f"a consumer parked at {stage}", parked, timeout)
    return found[0], int(found[0].name.rsplit(".", 1)[1])


# -- a full disk ----------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (skipped when this process may not mount one)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path, leave: int) -> None:
    """Write ``path`` until its file system is full, then give back ``leave`` bytes."""
    chunk = b"\0" * (64 << 10)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    os.truncate(path, max(0, path.stat().st_size - leave))


def test_ingest_disk_full_holds_forwarders_back_then_resumes(tmp_path: Path, tmpfs: Path) -> None:
    """The ingest directory fills up mid-write: the ingester keeps its
    segments whole records, stays up and answers, holds the forwarder back
    (no data refused or dropped), and takes everything once space is back."""
    park = tmp_path / "park"
    park.mkdir()
    data = tmp_path / "node"
    node = FaultNode("ingeststore", data, extra=[
        "-ingest.path", str(tmpfs), "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-store.segment-target-age", "500ms"], env={PARK_ENV: str(park)})
    try:
        node.start()
        # the consumer takes a first batch and parks: nothing is consumed,
        # so nothing frees space behind the ingester's back
        arm(park, "gather")
        warm = tagged("diskfull-warm", 200)
        forward(feed(warm), f"127.0.0.1:{node.durable_port}")
        marker, _ = wait_parked(park, "gather")

        fill(tmpfs / "ballast", leave=48 << 10)
        sent = tagged("diskfull-main", 6000)  # ~240 KiB: far more than is left
        # a raw durable connection: the ingester's close says it took every line
        errors: list[BaseException] = []

        def write() -> None:
            try:
                durable_write(node.durable_port, sent, timeout=180)
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        wait_until("the ingester to see the full disk", lambda: "event=disk_full" in node.log(), 60)
        time.sleep(1.0)
        assert writer.is_alive(), "the ingester took every line while the disk was full"
        assert httpx.get(f"{node.api}/readyz", timeout=10).status_code == 200
        assert node.proc is not None and node.proc.poll() is None
        assert_whole_records(tmpfs)
        metrics = httpx.get(f"{node.api}/metrics", timeout=10).text
        assert "oklog_ingest_disk_full_total 1.0" in metrics

        (tmpfs / "ballast").unlink()  # space is back
        marker.unlink()  # and the consumer goes on
        writer.join(180)
        assert not writer.is_alive() and not errors, errors
        assert_exactly_once(node.api, "diskfull-warm", warm)
        assert_exactly_once(node.api, "diskfull-main", sent)
        assert_whole_records(tmpfs)
        assert "event=disk_space_back" in node.log()
    finally:
        node.kill()



def test_forwarder_sigkilled_mid_stream_leaves_a_prefix_stored_once(tmp_path: Path) -> None:
    """``oklog forward`` dies mid-stream: what it had not sent is gone with
    it (it keeps no spool), and what the ingester got is stored once each,
    in sending order -- a prefix of the stream, whose last line may be cut
    short (the ingester keeps a final line without LF)."""
    node = FaultNode("ingeststore", tmp_path / "node", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off"])
    sent = tagged("forwarder-killed", 20000)
    fwd = None
    try:
        node.start()
        fwd = subprocess.Popen(oklog_cmd("forward", f"127.0.0.1:{node.fast_port}"), stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        assert fwd.stdin is not None
        fwd.stdin.write(feed(sent[:5000]))
        fwd.stdin.flush()
        wait_until("the ingester to take the first lines",
                   lambda: httpx.get(f"{node.api}/metrics", timeout=10).text.count(
                       "oklog_ingest_records_total 0.0") == 0, 60)
        fwd.stdin.write(feed(sent[5000:10000]))
        fwd.kill()
        fwd.wait()
        wait_until("the ingester to hand everything it took on", lambda: drained(node.api), 60)
        body = httpx.get(f"{node.api}/store/query", params={**ALL, "q": "forwarder-killed seq="},
                         timeout=60).content
        got = payloads(body)
        assert got and len({line[:26] for line in body.split(b"\n")[:-1]}) == len(got)
        assert got[:-1] == sent[:len(got) - 1]  # in order, each once
        assert sent[len(got) - 1].startswith(got[-1])  # the last one whole or cut short
    finally:
        if fwd is not None and fwd.poll() is None:
            fwd.kill()
        node.kill()


# -- a cluster: 1 ingester, 3 stores, replication factor 2 ------------------------


STAGES = ("gather", "replicate", "commit")
RF = 2


@dataclass
class Cluster:
    ingester: FaultNode
    stores: list[FaultNode]
    park: Path
    ingest_flags: list[str]

    def store_by_pid(self, pid: int) -> FaultNode:
        [store] = [s for s in self.stores if s.pid == pid]
        return store

    def restart_ingester(self, *extra: str) -> None:
        """Start the ingester again on its directories and ports; it joins
        the cluster through a store (nothing else would bring it back)."""
        ing = self.ingester
        wait_until("the old process's Serf agent to let its port go",
                   lambda: port_free(ing.cluster_port), 30)
        ing.extra = self.ingest_flags + ["-peer", f"127.0.0.1:{self.stores[0].cluster_port}", *extra]
        ing.start()
        wait_members(ing, 1 + len(self.stores))

    def segment_state(self) -> dict:
        return httpx.get(f"{self.ingester.api}/ingest/_segmentstate", timeout=10).json()

    def drained(self) -> bool:
        return drained(self.ingester.api)

    def assert_all_there(self, tag: str, sent: list[bytes]) -> None:
        """Exactly once through every store, on RF stores each, and nothing
        left at the ingester."""
        assert_replicated([s.api for s in self.stores], tag, sent)
        wait_until("the ingester to have every segment committed", self.drained, 60, every=0.5)


def assert_replicated(apis: list[str], tag: str, sent: list[bytes]) -> None:
    """Exactly once through every store's /store/query, and every record
    on at least RF of these stores."""
    for api in apis:
        assert_exactly_once(api, tag, sent)
    copies: collections.Counter[bytes] = collections.Counter()

    def replicated() -> bool:
        copies.clear()
        for api in apis:
            copies.update(ids_on(api, tag))
        return len(copies) == len(sent) and min(copies.values()) >= RF

    wait_until(f"every {tag} record on {RF} stores", replicated, 60, every=0.5)


def port_free(port: int) -> bool:
    """Nothing holds ``port`` on 127.0.0.1, TCP or UDP (Serf takes both;
    like Serf, ignore connections closed lately: SO_REUSEADDR)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def wait_members(node: Node, alive: int, timeout: float = 60) -> None:
    path = "/ingest/_clusterstate" if node.mode == "ingest" else "/store/_clusterstate"
    state: dict = {}

    def seen() -> bool:
        nonlocal state
        try:
            state = httpx.get(node.api + path, timeout=2).json()
        except httpx.HTTPError:
            return False
        return sum(m["status"] == "alive" for m in state.get("members", [])) == alive

    wait_until(f"{node.api} to see {alive} alive members (last: {state})", seen, timeout, every=0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not HAVE_SERF:
        pytest.skip("serf is not installed")
    root = tmp_path_factory.mktemp("faults")
    park = root / "park"
    park.mkdir()
    ingest_flags = ["-cluster.fast-gossip", "-ingest.segment-flush-age", "1s",
                    "-ingest.segment-pending-timeout", "5s"]
    ing = FaultNode("ingest", root / "ingest", extra=list(ingest_flags))
    nodes: list[FaultNode] = [ing]
    try:
        ing.start()
        seed = f"127.0.0.1:{ing.cluster_port}"
        # no read repair on queries: replication is the consumers' work,
        # and then the repair walker's (the last check)
        stores = [FaultNode("store", root / f"store{i}", env={PARK_ENV: str(park)}, extra=[
            "-cluster.fast-gossip", "-peer", seed, "-store.segment-replication-factor", str(RF),
            "-store.read-repair-buffer", "0", "-store.repair-grace", "1s"])
            for i in range(3)]
        for s in stores:
            nodes.append(s.start(wait=False))
        for n in nodes:
            n.wait_ready()
        for n in nodes:
            wait_members(n, len(nodes))
        yield Cluster(ing, stores, park, ingest_flags)
    finally:
        for n in nodes:
            n.kill()


@pytest.mark.parametrize("stage", STAGES)
def test_store_sigkilled_at_each_consume_stage(cluster: Cluster, stage: str) -> None:
    """A store dies with a batch at ``stage``; restarted on its directories,
    the cluster ends with every record once, on RF stores, all committed."""
    tag = f"store-killed-at-{stage}"
    sent = tagged(tag, 3000)
    arm(cluster.park, stage)
    forward(feed(sent), f"127.0.0.1:{cluster.ingester.fast_port}")
    marker, pid = wait_parked(cluster.park, stage)
    victim = cluster.store_by_pid(pid)

    # the kill lands where intended: the batch is claimed and read at the
    # ingester, and on as many stores as the stage says
    assert cluster.segment_state()["pending"]["segments"] >= 1
    holding = [s for s in cluster.stores if ids_on(s.api, tag)]
    assert len(holding) == {"gather": 0, "replicate": 1, "commit": RF}[stage]

    victim.kill()
    marker.unlink()
    wait_until("the old process's Serf agent to let its port go", lambda: port_free(victim.cluster_port), 30)
    victim.start()
    cluster.assert_all_there(tag, sent)


def durable_write(port: int, lines: list[bytes], timeout: float = 30) -> None:
    """Write to a durable port and wait until the ingester has read (and
    fsynced) everything: it closes its side only then."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(feed(lines))
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


def test_ingester_sigkilled_after_durable_writes(cluster: Cluster) -> None:
    """Records a durable connection delivered are in the ``.active`` segment
    when the ingester is SIGKILLed; restarted, it hands them on."""
    ing = cluster.ingester
    assert ing.stop() == 0
    cluster.restart_ingester("-ingest.segment-flush-age", "1m")  # keep them in .active
    tag = "ingester-killed-after-durable"
    sent = tagged(tag, 3000)
    durable_write(ing.durable_port, sent)
    assert cluster.segment_state()["active"]["bytes"] > 0
    ing.kill()
    assert list((ing.data / "ingest").glob("*.active"))
    cluster.restart_ingester()
    cluster.assert_all_there(tag, sent)


def test_ingester_sigkilled_with_pending_segments(cluster: Cluster) -> None:
    """A store has claimed and read the ingester's segment when the
    ingester dies; restarted, the ingester hands it out again, and the
    store, let go, replicates and commits a segment its ingester no longer
    knows as pending: over-replication, never loss."""
    ing = cluster.ingester
    tag = "ingester-killed-with-pending"
    sent = tagged(tag, 3000)
    arm(cluster.park, "gather")
    forward(feed(sent), f"127.0.0.1:{ing.fast_port}")
    marker, _ = wait_parked(cluster.park, "gather")
    ing.kill()
    pending = [p.stem for p in (ing.data / "ingest").glob("*.pending")]
    assert pending
    cluster.restart_ingester()
    logs = "".join(p.read_text(errors="replace") for p in ing.data.glob("*.log"))
    for seg in pending:
        assert f"event=recovered segment={seg} from=.pending" in logs
    marker.unlink()
    cluster.assert_all_there(tag, sent)



def test_bulk_acknowledged_only_once_committed_through_a_store_killed_before_commit(cluster: Cluster) -> None:
    """``oklog forward -bulk`` gets no OK while the batch holding its
    upload is replicated but not committed; the store dies there, and the
    forwarder exits 0 (every segment acknowledged) only once another
    consumption committed it -- each record then queryable once."""
    tag = "bulk-store-killed-before-commit"
    sent = tagged(tag, 3000)
    arm(cluster.park, "commit")
    bulk = Forwarder(feed(sent), f"127.0.0.1:{cluster.ingester.bulk_port}", extra=("-bulk",), timeout=240)
    bulk.start()
    marker, pid = wait_parked(cluster.park, "commit")
    victim = cluster.store_by_pid(pid)
    time.sleep(1.0)
    assert bulk.is_alive(), "acknowledged before the commit"
    victim.kill()
    marker.unlink()
    wait_until("the old process's Serf agent to let its port go", lambda: port_free(victim.cluster_port), 30)
    victim.start()
    join([bulk])  # it exited 0: every segment was acknowledged
    cluster.assert_all_there(tag, sent)



def test_bulk_upload_survives_an_ingester_sigkilled_before_its_ok(cluster: Cluster) -> None:
    """The ingester dies while a bulk upload waits for its commit: the
    forwarder, never acknowledged, sends the segment again (to the restarted
    ingester) and exits 0; every line is stored -- possibly twice, with new
    ULIDs, which is what bulk mode trades for losing nothing -- and each
    ULID once."""
    ing = cluster.ingester
    tag = "bulk-ingester-killed"
    sent = tagged(tag, 3000)
    arm(cluster.park, "commit")
    bulk = Forwarder(feed(sent), f"127.0.0.1:{ing.bulk_port}", extra=("-bulk",), timeout=240)
    bulk.start()
    marker, _ = wait_parked(cluster.park, "commit")
    ing.kill()
    marker.unlink()  # the store's commit finds no ingester
    cluster.restart_ingester()
    join([bulk])  # it exited 0: every segment was acknowledged
    wait_until("the ingester to have every segment committed", cluster.drained, 60, every=0.5)
    for store in cluster.stores:
        r = httpx.get(f"{store.api}/store/query", params={**ALL, "q": tag + " seq="}, timeout=60)
        got = payloads(r.content)
        assert len({line[:26] for line in r.content.split(b"\n")[:-1]}) == len(got)
        assert set(got) == set(sent) and len(got) <= 2 * len(sent)


def copies(stores: list[FaultNode]) -> collections.Counter[bytes]:
    """On how many stores each record of every check above lies."""
    count: collections.Counter[bytes] = collections.Counter()
    for store in stores:
        count.update(ids_on(store.api, ""))
    return count


def test_a_store_loses_its_disk_and_oklog_repair_restores_replication(cluster: Cluster) -> None:
    """After the faults above, a store comes back with an empty disk: the
    records it held are on one store only, until ``oklog repair`` (run as
    from cron) copies each to a store that lacks it."""
    tag = "before-disk-loss"  # (so that the check also stands alone)
    sent = tagged(tag, 2000)
    forward(feed(sent), f"127.0.0.1:{cluster.ingester.fast_port}")
    cluster.assert_all_there(tag, sent)
    before = copies(cluster.stores)
    assert min(before.values()) >= RF
    victim = cluster.stores[0]
    victim.kill()
    shutil.rmtree(victim.data / "store")
    wait_until("the old process's Serf agent to let its port go", lambda: port_free(victim.cluster_port), 30)
    victim.start()
    wait_members(victim, 1 + len(cluster.stores))
    held = copies(cluster.stores)
    short = sum(1 for n in held.values() if n < RF)
    assert set(held) == set(before) and short > 0

    walk = subprocess.run(oklog_cmd("repair", "-store", cluster.stores[1].api, "-from", "1h", "-step", "10m"),
                          capture_output=True, timeout=180, cwd=ROOT)
    out = walk.stdout.decode() + walk.stderr.decode()
    assert walk.returncode == 0, out
    assert re.search(rf"\brepaired={short}\b", out), out
    after = copies(cluster.stores)
    assert set(after) == set(before) and min(after.values()) >= RF


# -- a network partition: ip netns + veth -----------------------------------------
#
# A hub namespace holds a bridge (10.200.0.254), the ingester and every
# client (forward, queries, the canary); each store has a namespace of its
# own (10.200.0.1-3) joined to the bridge by a veth pair.  Taking a store's
# hub-side veth down cuts it off from everything; bringing it up heals.
# Each namespace has its own Serf agent, started by the test so that a
# partitioned member is retried (reconnect_interval) and never reaped
# during the test (reconnect_timeout), as with Serf's production defaults;
# the nodes attach to them (-cluster.serf-rpc).  No address outside these
# namespaces is touched.

HUB_IP = "10.200.0.254"
STORE_IPS = ("10.200.0.1", "10.200.0.2", "10.200.0.3")
CLONE_NEWNET = 0x40000000
SERF_CONFIG = {"reconnect_interval": "1s", "reconnect_timeout": "10m", "tombstone_timeout": "10m"}


def ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr.strip()}"


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name``."""
    import ctypes

    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


@dataclass
class Net:
    """The namespaces of one test, and the processes running in them."""

    hub: str
    stores: list[str]  # one namespace per store
    root: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    pool: "ThreadPoolExecutor | None" = None

    def in_hub(self, fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        """Run ``fn`` in a thread that lives in the hub namespace (sockets it
        opens are the hub's)."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, initializer=enter_netns, initargs=(self.hub,))
        return self.pool.submit(fn, *args, **kwargs).result()

    def spawn(self, ns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def serf(self, ns: str, addr: str, join: str | None) -> None:
        config = self.root / f"serf-{ns}.json"
        config.write_text(json.dumps(SERF_CONFIG))
        argv = ["serf", "agent", "-node", f"node-{addr}", "-bind", f"{addr}:7946",
                "-rpc-addr", "127.0.0.1:7373", "-profile", "local", f"-config-file={config}"]
        if join:
            argv += ["-retry-join", f"{join}:7946", "-retry-interval", "1s"]
        self.spawn(ns, argv, self.root / f"serf-{ns}.log")

    def node(self, ns: str, mode: str, addr: str, *extra: str,
             env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        data = self.root / f"{mode}-{addr}"
        args = [mode, "-api", f"{addr}:7650", "-cluster.serf-rpc", "127.0.0.1:7373"]
        if mode == "ingest":
            args += ["-ingest.fast", f"{addr}:7651", "-ingest.durable", f"{addr}:7652",
                     "-ingest.bulk", f"{addr}:7653", "-ingest.path", str(data / "ingest")]
        else:
            args += ["-store.path", str(data / "store")]
        log = self.root / f"{mode}-{addr}.log"
        return self.spawn(ns, oklog_cmd(*args, *extra), log, env), log

    def cut(self, k: int) -> None:
        ip("-n", self.hub, "link", "set", f"h{k}", "down")

    def heal(self, k: int) -> None:
        ip("-n", self.hub, "link", "set", f"h{k}", "up")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    prefix = f"okf{os.getpid()}"
    hub = prefix + "h"
    r = subprocess.run(["ip", "netns", "add", hub], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root and iproute2): {r.stderr.strip()}")
    net = Net(hub, [], tmp_path)
    try:
        try:
            build(net, prefix)
        except AssertionError as exc:  # e.g. no bridge or veth support here
            pytest.skip(f"cannot build the test network: {exc}")
        yield net
    finally:
        for proc in net.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if net.pool is not None:
            net.pool.shutdown()
        for ns in [hub, *net.stores]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def build(net: Net, prefix: str) -> None:
    """The hub's bridge and one namespace per store, joined by veth pairs."""
    hub = net.hub
    ip("-n", hub, "link", "set", "lo", "up")
    ip("-n", hub, "link", "add", "br0", "type", "bridge")
    ip("-n", hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
    ip("-n", hub, "link", "set", "br0", "up")
    for k, addr in enumerate(STORE_IPS):
        ns = f"{prefix}s{k}"
        ip("netns", "add", ns)
        net.stores.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", hub, "link", "add", f"h{k}", "type", "veth", "peer", "name", "v0", "netns", ns)
        ip("-n", hub, "link", "set", f"h{k}", "master", "br0")
        ip("-n", hub, "link", "set", f"h{k}", "up")
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "v0")
        ip("-n", ns, "link", "set", "v0", "up")


def ready(api: str, members: int) -> bool:
    """``api`` answers /readyz and sees ``members`` alive members."""
    try:
        if httpx.get(f"{api}/readyz", timeout=2).status_code != 200:
            return False
        path = "/ingest/_clusterstate" if api.startswith(f"http://{HUB_IP}:") else "/store/_clusterstate"
        state = httpx.get(api + path, timeout=2).json()
    except httpx.HTTPError:
        return False
    return sum(m["status"] == "alive" for m in state.get("members", [])) == members


def test_store_partitioned_mid_replication_then_healed(net: Net) -> None:
    """A store is cut off from the cluster after its first upload of a
    batch and before the second: it cannot finish the batch (short of RF it
    fails it back, or, with its own store as the second copy, it cannot
    commit), the ingester hands the segments to the connected stores after
    the pending timeout, and writes go on (a canary checks them) while it
    is gone; healed, it rejoins, and every record is queryable once through
    every store, on RF stores."""
    if not HAVE_SERF:
        pytest.skip("serf is not installed")
    park = net.root / "park"
    park.mkdir()
    net.serf(net.hub, HUB_IP, None)
    for ns, addr in zip(net.stores, STORE_IPS):
        net.serf(ns, addr, HUB_IP)
    time.sleep(0.5)  # the agents' RPC ports
    ingester, _ = net.node(net.hub, "ingest", HUB_IP, "-ingest.segment-pending-timeout", "5s",
                           "-ingest.segment-flush-age", "1s")
    stores = [net.node(ns, "store", addr, "-store.segment-replication-factor", str(RF),
                       env={PARK_ENV: str(park)})  # their consumers park when armed
              for ns, addr in zip(net.stores, STORE_IPS)]
    apis = [f"http://{addr}:7650" for addr in STORE_IPS]
    for api in [f"http://{HUB_IP}:7650", *apis]:
        net.in_hub(wait_until, f"{api} ready with 4 members", lambda api=api: ready(api, 4), 90, 0.2)

    tag = "partitioned-mid-replication"
    sent = tagged(tag, 3000)
    arm(park, "replicate")
    net.in_hub(forward, feed(sent), f"{HUB_IP}:7651")
    marker, pid = wait_parked(park, "replicate")
    [k] = [k for k, (proc, _) in enumerate(stores) if proc.pid == pid]
    victim_log = stores[k][1]
    others = [api for j, api in enumerate(apis) if j != k]

    net.cut(k)
    canary = subprocess.Popen(["ip", "netns", "exec", net.hub, *oklog_cmd(
        "canary", "-ingest", f"{HUB_IP}:7651", "-store", others[0], "-rate", "200", "-duration", "10s",
        "-max-wait", "60s", "-report-interval", "5s")], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    net.procs.append(canary)
    marker.unlink()  # the victim goes on, alone: its uploads to the others fail

    def finished() -> bool:
        # short of RF, the batch is failed back; if its own store made up the
        # RF, the commit fails: either way the ingester never hears of it
        text = victim_log.read_text()
        return "event=batch_failed" in text or "event=commit_failed" in text

    wait_until("the victim to finish its batch, cut off", finished, 60)
    # meanwhile the connected stores took the segments from the ingester
    for api in others:
        net.in_hub(assert_exactly_once, api, tag, sent)

    net.heal(k)
    for api in [f"http://{HUB_IP}:7650", *apis]:
        net.in_hub(wait_until, f"{api} to see 4 members again", lambda api=api: ready(api, 4), 90, 0.2)
    net.in_hub(assert_replicated, apis, tag, sent)
    # the repair walker, from the healed store, finds nothing short
    walk = subprocess.run(["ip", "netns", "exec", net.hub, *oklog_cmd(
        "repair", "-store", apis[k], "-from", "1h", "-step", "10m")], capture_output=True, timeout=180, cwd=ROOT)
    out = walk.stdout.decode() + walk.stderr.decode()
    assert walk.returncode == 0 and re.search(r"\berrors=0\b", out), out
    _, err = canary.communicate(timeout=120)
    assert canary.returncode == 0 and "missing 0 " in err and "duplicates 0" in err, err
    assert ingester.poll() is None and all(proc.poll() is None for proc, _ in stores)
