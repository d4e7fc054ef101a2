"""A real cluster on loopback: 2 ingesters and 3 stores joined by Serf, RF 2."""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.nodeutil import Node, forward, join, query, start_forwarders, wait_for_records

pytestmark = [pytest.mark.slow, pytest.mark.serf,
              pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")]

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
FAST_INGEST = ["-cluster.fast-gossip", "-ingest.segment-flush-age", "1s"]
FAST_STORE = ["-cluster.fast-gossip", "-store.segment-target-age", "1s"]


def wait_members(node: Node, alive: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        try:
            path = "/store/_clusterstate" if node.mode != "ingest" else "/ingest/_clusterstate"
            state = httpx.get(node.api + path, timeout=2).json()
            if sum(m["status"] == "alive" for m in state.get("members", [])) == alive:
                return state
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{node.api} never saw {alive} alive members: {state}")


@contextlib.contextmanager
def serf_cluster(first: Node, joiners: Callable[[str], list[Node]]) -> Iterator[list[Node]]:
    """Start ``first`` (ready, so its gossip port is final), then the nodes
    ``joiners(seed)`` builds to join it (``seed``: first's gossip address,
    for their ``-peer``). Yields them all, each ready and seeing all alive;
    kills them all at the end."""
    first.start()
    nodes = [first]
    try:
        for n in joiners(f"127.0.0.1:{first.cluster_port}"):
            nodes.append(n.start(wait=False))
        for n in nodes:
            n.wait_ready()
        for n in nodes:
            wait_members(n, len(nodes))
        yield nodes
    finally:
        for n in nodes:
            n.kill()


@pytest.fixture
def cluster(tmp_path):
    def joiners(seed: str) -> list[Node]:
        return [Node("ingest", tmp_path / "ingest2", extra=FAST_INGEST + ["-peer", seed])] + [
            Node("store", tmp_path / f"store{i}", extra=FAST_STORE + [
                "-peer", seed, "-store.segment-replication-factor", "2"]) for i in range(3)]

    with serf_cluster(Node("ingest", tmp_path / "ingest1", extra=FAST_INGEST), joiners) as nodes:
        yield nodes


def records(n: int, tag: str) -> bytes:
    return b"".join(b"%s record %d payload\n" % (tag.encode(), i) for i in range(n))


def test_cluster_replicates_and_survives_a_store_loss(cluster):
    ing1, ing2, *stores = cluster
    per = 15_000
    join(start_forwarders((records(per, "alpha"), f"127.0.0.1:{ing1.fast_port}"),
                          (records(per, "beta"), f"127.0.0.1:{ing2.fast_port}")))
    expected = sorted(records(per, "alpha").splitlines() + records(per, "beta").splitlines())
    for s in stores:
        body = wait_for_records(s.api, 2 * per, timeout=60)
        got = sorted(line[27:].split(b" ", 1)[1] for line in body.splitlines())
        assert got == expected  # exactly what was sent, once each

    # every record lives on at least 2 distinct stores
    copies: collections.Counter[bytes] = collections.Counter()
    for s in stores:
        body = httpx.get(f"{s.api}/store/_query", params=ALL, timeout=60).content
        lines = body.splitlines()
        assert len(set(lines)) == len(lines)
        copies.update(line[:26] for line in lines)
    assert len(copies) == 2 * per and min(copies.values()) >= 2

    # a store dies; the others still return everything
    stores[0].kill()
    for s in stores[1:]:
        r = query(s.api, **ALL)
        assert r.status_code in (200, 206)
        assert r.content.count(b"\n") == 2 * per
    # once membership notices, answers are complete (200) again
    deadline = time.monotonic() + 30
    while query(stores[1].api, **ALL).status_code != 200:
        assert time.monotonic() < deadline, "dead store never left the membership"
        time.sleep(0.5)


def test_partial_results_are_flagged_206(cluster):
    ing1, _, *stores = cluster
    forward(records(100, "x"), f"127.0.0.1:{ing1.fast_port}")
    wait_for_records(stores[0].api, 100, timeout=30)
    stores[2].signal(signal.SIGSTOP)  # frozen: alive to gossip for a while, silent to HTTP
    try:
        t0 = time.monotonic()
        r = httpx.get(f"{stores[0].api}/store/query", params=ALL, timeout=120)
        assert r.status_code == 206 and r.headers["X-Oklog-Error-Count"] == "1"
        assert r.content.count(b"\n") == 100  # RF 2: the two live stores hold everything
        assert time.monotonic() - t0 < 30
    finally:
        stores[2].signal(signal.SIGCONT)


def test_ingester_drains_on_sigterm(cluster):
    ing1, ing2, *stores = cluster
    burst = records(20_000, "drain")
    forward(burst, f"127.0.0.1:{ing2.fast_port}")
    assert ing2.stop(timeout=60) == 0  # right after the burst
    body = wait_for_records(stores[0].api, 20_000, timeout=60, q="drain record")
    assert body.count(b"\n") == 20_000
    assert not list((ing2.data / "ingest").glob("*.flushed"))
    assert not list((ing2.data / "ingest").glob("*.pending"))


def test_store_killed_mid_ingest_loses_nothing(cluster):
    ing1, ing2, *stores = cluster
    per = 30_000
    threads = start_forwarders((records(per, "left"), f"127.0.0.1:{ing1.fast_port}"),
                               (records(per, "right"), f"127.0.0.1:{ing2.fast_port}"))
    time.sleep(1.5)  # consumption is under way
    stores[1].kill()
    join(threads)
    # and more after the loss, while the others may still think it alive
    join(start_forwarders((records(per, "late"), f"127.0.0.1:{ing1.fast_port}")))
    for s in (stores[0], stores[2]):
        body = wait_for_records(s.api, 3 * per, timeout=90)
        lines = body.splitlines()
        assert len({line[:26] for line in lines}) == 3 * per
    # batches that were headed for the dead store went to the other survivor instead
    late = []
    for s in (stores[0], stores[2]):
        body = httpx.get(f"{s.api}/store/_query", params=ALL, timeout=60).content
        late.append({line[:26] for line in body.splitlines() if b" late record " in line})
    assert len(late[0]) == len(late[1]) == per  # RF 2 with two live stores: all on both


def test_wildcard_binds_with_serf_reach_themselves(tmp_path):
    """The quickstart's shape: everything on 0.0.0.0 and a Serf agent that may
    advertise any of the machine's addresses (an IPv6 one, here)."""
    n = Node("ingeststore", tmp_path / "n", extra=["-store.segment-replication-factor", "1",
                                                   "-store.segment-target-age", "1s"])
    n.args = lambda: [  # type: ignore[method-assign]
        "ingeststore", "-api", f"0.0.0.0:{n.api_port}", "-ingest.fast", f"0.0.0.0:{n.fast_port}",
        "-ingest.durable", f"0.0.0.0:{n.durable_port}", "-ingest.bulk", f"0.0.0.0:{n.bulk_port}",
        "-cluster", f"0.0.0.0:{n.cluster_port}",
        "-ingest.path", str(n.data / "ingest"), "-store.path", str(n.data / "store"), *n.extra]
    n.start()
    try:
        forward(records(500, "wild"), f"localhost:{n.fast_port}")
        body = wait_for_records(n.api, 500)
        assert body.count(b"\n") == 500
        r = query(n.api, **ALL)
        assert r.status_code == 200 and r.headers["X-Oklog-Error-Count"] == "0"
        state = httpx.get(f"{n.api}/store/_clusterstate").json()
        assert state["source"] == "serf" and not state["self"]["api"].startswith("0.0.0.0")
    finally:
        n.kill()


def test_node_attaches_to_an_agent_it_did_not_start(tmp_path):
    """-cluster.serf-rpc: the operator runs Serf; the node only talks RPC to it."""
    import socket
    import subprocess

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    rpc, gossip = port(), port()
    agent = subprocess.Popen(["serf", "agent", "-node", f"ext-{rpc}", "-bind", f"127.0.0.1:{gossip}",
                              "-rpc-addr", f"127.0.0.1:{rpc}", "-profile", "local"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf-rpc", f"127.0.0.1:{rpc}"])
    try:
        time.sleep(0.5)
        n.start()
        state = wait_members(n, 1)
        assert state["source"] == "serf" and state["members"][0]["role"] == "ingeststore"
        forward(records(100, "attached"), f"127.0.0.1:{n.fast_port}")
        assert wait_for_records(n.api, 100).count(b"\n") == 100
        assert n.stop() == 0
        assert agent.poll() is None  # not ours to stop
    finally:
        n.kill()
        agent.kill()
        agent.wait()
