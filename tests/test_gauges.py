"""Gauges read at scrape time (``oklog.gauges``), and a real node's /metrics."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from oklog.cluster.membership import StaticMembership
from oklog.gauges import StateCollector, register
from oklog.ingest.log import IngestLog
from oklog.records.format import stamp
from oklog.store.log import StoreLog
from oklog.ulid import Stamper, ms_of
from tests.nodeutil import Node, forward, wait_for_records


class Members:
    """A membership view with a few members in different roles and states."""

    def __init__(self, members: list[dict[str, str]]) -> None:
        self.members = members

    def state(self) -> dict[str, object]:
        return {"members": self.members}


def scrape(collector: StateCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    register(collector, registry)
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_ingest_gauges_follow_the_segment_lifecycle(tmp_path: Path) -> None:
    now = [1_000.0]
    log = IngestLog(tmp_path, flush_size=1 << 20, flush_age=3.0, pending_timeout=60.0,
                    clock=lambda: now[0])
    log.open()
    collector = StateCollector(log, None, Members([]), clock=lambda: now[0])
    try:
        block = stamp([b"one", b"two"], Stamper())
        log.write(block)
        got = scrape(collector)
        assert got["oklog_ingest_segment_bytes{state=active}"] == len(block)
        assert got["oklog_ingest_unconsumed_bytes"] == len(block)
        assert got["oklog_ingest_segments{state=flushed}"] == 0

        trio.run(log.flush)
        got = scrape(collector)
        assert got["oklog_ingest_segments{state=flushed}"] == 1
        assert got["oklog_ingest_segment_bytes{state=flushed}"] == len(block)
        seg_id = log.next()
        assert seg_id is not None
        created = ms_of(seg_id) / 1000
        now[0] = created + 42.0
        got = scrape(collector)
        assert got["oklog_ingest_segments{state=pending}"] == 1
        assert got["oklog_ingest_oldest_segment_age_seconds{state=pending}"] == pytest.approx(42.0, abs=0.01)
        assert got["oklog_ingest_oldest_segment_age_seconds{state=flushed}"] == 0

        log.mark_read(seg_id)
        log.commit(seg_id)
        got = scrape(collector)
        assert got["oklog_ingest_segments{state=pending}"] == 0
        assert got["oklog_ingest_unconsumed_bytes"] == 0
    finally:
        log.close()


def test_store_gauges_count_files_blocks_records_and_bytes(tmp_path: Path) -> None:
    store = StoreLog(tmp_path, block_size=4096)
    store.open()
    collector = StateCollector(None, store, Members([]))
    try:
        assert scrape(collector)["oklog_store_segments"] == 0
        records = stamp([b"line %d " % i + b"x" * 100 for i in range(500)], Stamper())

        async def write() -> None:
            async def chunks():  # type: ignore[no-untyped-def]
                yield records

            await store.write_segment(chunks())
            await store.index_pending()

        trio.run(write)
        got = scrape(collector)
        files = list(tmp_path.glob("*.flushed"))
        assert got["oklog_store_segments"] == 1 == len(files)
        assert got["oklog_store_bytes"] == files[0].stat().st_size
        assert got["oklog_store_records"] == 500
        assert got["oklog_store_blocks"] > 1  # 4 KiB blocks of ~60 KB of records
        assert got["oklog_store_sidecar_bytes"] > 0
        assert got["oklog_store_unverified_segments"] == 0
        assert got["oklog_store_trashed_bytes"] == 0
        (segment,) = [s for _, s in store.index]
        store.expire(segment, purge_at=100.0, reason="age")  # retention: on disk until purged
        got = scrape(collector)
        assert got["oklog_store_segments"] == 0 == got["oklog_store_bytes"]
        assert got["oklog_store_trashed_bytes"] == segment.size
        assert [t.segment.path.name for t in store.purge(100.0)] == [segment.name.filename("trashed")]
        assert scrape(collector)["oklog_store_trashed_bytes"] == 0
    finally:
        store.close()


def test_cluster_members_by_role_and_status() -> None:
    members = Members([
        {"role": "ingest", "status": "alive"}, {"role": "store", "status": "alive"},
        {"role": "store", "status": "alive"}, {"role": "store", "status": "failed"},
    ])
    got = scrape(StateCollector(None, None, members))  # type: ignore[arg-type]
    assert got["oklog_cluster_members{role=store,status=alive}"] == 2
    assert got["oklog_cluster_members{role=store,status=failed}"] == 1
    assert got["oklog_cluster_members{role=ingest,status=alive}"] == 1
    # a static membership (no Serf) is one live member: this node
    alone = scrape(StateCollector(None, None, StaticMembership("http://127.0.0.1:1", "ingeststore")))
    assert alone["oklog_cluster_members{role=ingeststore,status=alive}"] == 1


def test_unregister_lets_a_process_run_another_node(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    collector = StateCollector(None, None, Members([]))
    unregister = register(collector, registry)
    unregister()
    register(StateCollector(None, None, Members([])), registry)  # no "duplicated timeseries"
    assert b"oklog_cluster_members" in generate_latest(registry)


def metric(text: str, name: str) -> float:
    """The value of one sample in the Prometheus text format (``name`` with labels)."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


@pytest.mark.slow
def test_a_node_reports_what_it_does(tmp_path: Path) -> None:
    node = Node("ingeststore", tmp_path / "node", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off"])
    node.start()
    try:
        assert httpx.get(f"{node.api}/readyz").text.startswith("ready")
        for path in ("/health", "/healthz", "/readyz"):
            assert httpx.get(f"{node.api}{path}").status_code == 200
        before = httpx.get(f"{node.api}/metrics").text
        lines = b"".join(b"hello metrics %d\n" % i for i in range(2000))
        forward(lines, f"127.0.0.1:{node.fast_port}")
        wait_for_records(node.api, 2000)
        params = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "q": "metrics 7"}
        assert httpx.get(f"{node.api}/store/query", params=params).status_code == 200
        assert httpx.head(f"{node.api}/store/query", params=params).status_code == 200
        deadline = time.monotonic() + 10
        while True:  # the consumer commits a moment after the records are queryable
            after = httpx.get(f"{node.api}/metrics").text
            if metric(after, "oklog_ingest_segments_committed_total") >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert metric(after, "oklog_ingest_records_total") - metric(before, "oklog_ingest_records_total") == 2000
        assert metric(after, "oklog_ingest_bytes_total") > metric(before, "oklog_ingest_bytes_total")
        assert metric(after, "oklog_ingest_segments_committed_total") >= 1
        assert metric(after, "oklog_store_replicated_bytes_total") > 0
        assert metric(after, "oklog_store_records") == 2000
        assert metric(after, "oklog_store_segments") >= 1
        assert metric(after, "oklog_store_bytes") > 0
        assert metric(after, 'oklog_cluster_members{role="ingeststore",status="alive"}') == 1
        assert metric(after, 'oklog_store_query_seconds_count{kind="cluster"}') >= 1
        assert metric(after, 'oklog_store_query_seconds_count{kind="stats"}') >= 1
        assert metric(after, 'oklog_store_query_blocks_total{outcome="read"}') >= 1
        assert 'oklog_ingest_oldest_segment_age_seconds{state="flushed"}' in after
    finally:
        node.kill()


def test_readyz_says_why_not() -> None:
    from oklog.node import ops_router
    from tests.test_http import Client, scope

    reason: list[str | None] = ["starting: joining the cluster"]
    router = ops_router(lambda: reason[0], lambda: ["1 live store node(s) for replication factor 2"])

    def get(path: str) -> tuple[int, bytes]:
        client = Client()
        trio.run(router, scope(path), client.receive, client.send)
        body = b"".join(m.get("body", b"") for m in client.sent[1:])
        return client.sent[0]["status"], body

    assert get("/readyz") == (503, b"not ready: starting: joining the cluster\n")
    assert get("/health")[0] == get("/healthz")[0] == 200  # alive even while not ready
    reason[0] = None
    status, body = get("/readyz")
    assert status == 200 and body.startswith(b"ready\nwarning: 1 live store node(s)")


def test_docs_list_every_metric() -> None:
    """docs/metrics.md names every ``oklog_*`` metric the code defines."""
    root = Path(__file__).resolve().parent.parent
    defined: set[str] = set()
    for path in (root / "oklog").rglob("*.py"):
        defined.update(re.findall(r"\"(oklog_[a-z0-9_]+)\"", path.read_text()))
    documented = set(re.findall(r"`(oklog_[a-z0-9_]+)`", (root / "docs" / "metrics.md").read_text()))
    assert defined, "found no metric names"
    assert not defined - documented, f"metrics missing from docs/metrics.md: {sorted(defined - documented)}"
