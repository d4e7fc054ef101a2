"""run_node in-process: it starts, serves, and returns cleanly when stopped."""

from __future__ import annotations

import functools

import httpx
import trio

from oklog.ingest.log import IngestLog
from oklog.node import NodeConfig, run_node
from oklog.store.log import StoreLog


def test_node_stops_in_order_and_releases_its_directories(tmp_path):
    cfg = NodeConfig(api="127.0.0.1:0", ingest_fast="127.0.0.1:0", ingest_durable="127.0.0.1:0",
                     ingest_bulk="127.0.0.1:0",
                     use_serf=False, ingest_path=tmp_path / "ingest", store_path=tmp_path / "store",
                     store_replication_factor=1, ingest_flush_age=0.2, store_target_age=0.2)

    async def main() -> None:
        stop = trio.Event()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(functools.partial(run_node, cfg, stop=stop))
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient() as client:
                    assert (await client.get(f"{base}/readyz")).status_code == 200
                    body = b"".join(b"01M7Z1NWKZ4AAAAAAAAAAAAA%02d default x\n" % i for i in range(10))
                    r = await client.post(f"{base}/store/replicate", content=body)
                    assert r.text == "OK\n"
                    q = await client.get(f"{base}/store/query", params={"from": "2000-01-01T00:00:00Z",
                                                                        "to": "2100-01-01T00:00:00Z"})
                    assert q.content == body
                stop.set()  # the nursery must now close by itself: every task has an owner

    trio.run(main)
    IngestLog(tmp_path / "ingest").open()  # locks released
    StoreLog(tmp_path / "store").open()


def test_every_route_answers_before_the_node_joins_the_cluster(tmp_path, monkeypatch):
    """A peer that sees us in the membership must never meet a 404."""
    from oklog.cluster import membership as membership_mod

    cfg = NodeConfig(api="127.0.0.1:0", ingest_fast="127.0.0.1:0", ingest_durable="127.0.0.1:0",
                     ingest_bulk="127.0.0.1:0",
                     use_serf=False, ingest_path=tmp_path / "ingest", store_path=tmp_path / "store",
                     store_replication_factor=1)
    seen: dict[str, int] = {}
    real_run = membership_mod.Cluster.run

    async def joining(self, *, task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        port = self.membership.self_url().rsplit(":", 1)[1]
        async with httpx.AsyncClient() as client:
            for method, path in [("POST", "/store/replicate"), ("GET", "/store/_query?from=1h&to=now"),
                                 ("GET", "/store/query?from=1h&to=now"), ("GET", "/ingest/next"),
                                 ("GET", "/store/_clusterstate"), ("GET", "/metrics")]:
                r = await client.request(method, f"http://127.0.0.1:{port}{path}")
                seen[path] = r.status_code
                assert "no such endpoint" not in r.text
        await real_run(self, task_status=task_status)

    monkeypatch.setattr(membership_mod.Cluster, "run", joining)

    async def main() -> None:
        stop = trio.Event()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(run_node, cfg, stop=stop))
                stop.set()

    trio.run(main)
    assert seen == {"/store/replicate": 200, "/store/_query?from=1h&to=now": 200,
                    "/store/query?from=1h&to=now": 200, "/ingest/next": 404,  # OK Log's "nothing flushed"
                    "/store/_clusterstate": 200, "/metrics": 200}
