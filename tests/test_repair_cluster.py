"""Read repair and ``oklog repair`` on a real cluster: 4 stores (RF 2) and an
ingester joined by Serf; stores are SIGKILLed and the cluster heals."""

from __future__ import annotations

import collections
import re
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from tests.nodeutil import ROOT, Node, oklog_cmd, query, wait_for_records
from tests.test_cluster import serf_cluster

pytestmark = [pytest.mark.slow, pytest.mark.serf,
              pytest.mark.skipif(shutil.which("serf") is None, reason="serf is not installed")]

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
# small segments, so the records spread over all four stores
STORE = ["-cluster.fast-gossip", "-store.segment-target-age", "1s", "-store.segment-target-size", "16KiB",
         "-store.segment-replication-factor", "2", "-store.repair-grace", "1s", "-store.scan-workers", "0"]
N = 6000


def copies(stores: list[Node]) -> collections.Counter[bytes]:
    """How many of ``stores`` hold each ULID (each store's own /store/_query)."""
    count: collections.Counter[bytes] = collections.Counter()
    for s in stores:
        body = httpx.get(f"{s.api}/store/_query", params=ALL, timeout=60).content
        keys = {line[:26] for line in body.splitlines()}
        count.update(keys)
    return count


def wait_replicated(stores: list[Node], timeout: float) -> collections.Counter[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        count = copies(stores)
        if len(count) == N and min(count.values()) >= 2:
            return count
        if time.monotonic() > deadline:
            short = sum(1 for n in count.values() if n < 2)
            raise AssertionError(f"{len(count)} records, {short} on fewer than 2 of {len(stores)} stores")
        time.sleep(0.5)


def walk(store: Node, *flags: str) -> tuple[int, dict[str, int], str]:
    done = subprocess.run(oklog_cmd("repair", "-store", f"127.0.0.1:{store.api_port}", "-from", "1h",
                                    "-step", "5m", *flags),
                          capture_output=True, timeout=180, cwd=ROOT)
    out = done.stdout.decode()
    summary = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out)}
    return done.returncode, summary, out + done.stderr.decode()


@pytest.fixture
def cluster(tmp_path):
    ingester = Node("ingest", tmp_path / "ingest", extra=["-cluster.fast-gossip",
                                                          "-ingest.segment-flush-age", "100ms"])
    with serf_cluster(ingester, lambda seed: [
            Node("store", tmp_path / f"store{i}", extra=STORE + ["-peer", seed]) for i in range(4)]) as nodes:
        yield nodes


def test_a_query_and_then_the_walker_heal_lost_stores(cluster):
    ingester, *stores = cluster
    # in bursts, so that many small batches spread over the four stores
    with socket.create_connection(("127.0.0.1", ingester.fast_port)) as conn:
        for burst in range(20):
            conn.sendall(b"".join(b"heal record %d payload\n" % i for i in range(burst * 300, burst * 300 + 300)))
            time.sleep(0.2)
    wait_for_records(stores[0].api, N, timeout=60)
    before = wait_replicated(stores, 60)
    assert max(before.values()) == 2  # RF 2, four stores: not everything everywhere
    # the victims: the stores holding the most
    stores.sort(key=lambda s: -len(copies([s])))

    # /store/_query names its node, and answers ULIDs alone on request
    r = httpx.get(f"{stores[1].api}/store/_query", params=ALL | {"ids": "true"}, timeout=60)
    assert r.headers["X-Oklog-Node"] == stores[1].api and r.headers["X-Oklog-Ids"] == "true"
    assert all(len(line) == 26 for line in r.content.splitlines()) and r.content.count(b"\n") > 0
    # bad input is a one-line 400
    for path, params in (("/store/_query", ALL | {"ids": "maybe"}), ("/store/repair", {"from": "1h"}),
                         ("/store/repair", {"from": "1h", "to": "2h"}),
                         ("/store/repair", ALL | {"dry-run": "perhaps"})):
        bad = httpx.request("POST" if path == "/store/repair" else "GET", stores[1].api + path,
                            params=params, timeout=10)
        assert bad.status_code == 400 and bad.text.count("\n") == 1, (path, params, bad.text)

    # a store dies; one ordinary user query later (and a few seconds) every
    # record is on two of the three survivors again
    stores[0].kill()
    answer = query(stores[1].api, **ALL)
    assert answer.status_code in (200, 206) and answer.content.count(b"\n") == N
    assert "X-Oklog-Node" not in answer.headers  # /store/query stays OK Log's
    survivors = stores[1:]
    wait_replicated(survivors, 40)
    metrics = httpx.get(f"{stores[1].api}/metrics", timeout=10).text
    assert re.search(r'oklog_repair_repaired_records_total\{source="query"\} [1-9]', metrics)

    # another store dies; no query: the walker finds and repairs the rest
    stores[1].kill()
    survivors = stores[2:]
    held = copies(survivors)
    short = sum(1 for n in held.values() if n < 2)
    assert short > 0

    code, summary, text = walk(stores[2], "-dry-run")
    assert code == 0, text
    assert summary["under_replicated"] == short and summary["repaired"] == 0, text
    assert copies(survivors) == held  # a dry run changes nothing

    code, summary, text = walk(stores[2])
    assert code == 0, text
    assert summary["checked"] == N and summary["repaired"] == short, text
    count = copies(survivors)
    assert len(count) == N and min(count.values()) == 2

    code, summary, text = walk(stores[3])  # again, from the other survivor
    assert code == 0, text
    assert summary["under_replicated"] == 0 and summary["repaired"] == 0, text
