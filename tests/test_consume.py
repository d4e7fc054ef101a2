"""The consume transaction and its driver, against in-memory fake peers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from oklog.errors import IllegalTransition, PeerRejected, PeerUnavailable
from oklog.record import stamp
from oklog.store.consume import Consumer, ConsumeTxn, Phase
from oklog.store.log import StoreLog
from oklog.ulid import Stamper


class FakeCluster:
    """Ingesters holding segments and stores collecting uploads, no sockets."""

    def __init__(self, ingesters: dict[str, list[bytes]], stores: list[str]) -> None:
        self.segments = {ing: {f"{ing}-{i}": seg for i, seg in enumerate(segs)} for ing, segs in ingesters.items()}
        self.queue = {ing: list(segs) for ing, segs in self.segments.items()}
        self.pending: dict[str, str] = {}
        self.committed: list[str] = []
        self.failed_back: list[str] = []
        self.received: dict[str, list[bytes]] = {s: [] for s in stores}
        self.broken_stores: set[str] = set()
        self.broken_reads: set[str] = set()
        self._stores = stores

    # Membership
    def ingesters(self) -> list[str]:
        return list(self.segments)

    def stores(self) -> list[str]:
        return list(self._stores)

    def state(self) -> dict:
        return {}

    # Peers
    async def next(self, ingester: str) -> str | None:
        await trio.lowlevel.checkpoint()
        if not self.queue[ingester]:
            return None
        seg_id = self.queue[ingester].pop(0)
        self.pending[seg_id] = ingester
        return seg_id

    async def read_into(self, ingester: str, seg_id: str, sink) -> int:
        if seg_id in self.broken_reads:
            raise PeerUnavailable(ingester, "connection reset")
        data = self.segments[ingester][seg_id]
        sink.write(data)
        return len(data)

    async def commit(self, ingester: str, seg_id: str) -> None:
        self.committed.append(seg_id)

    async def failed(self, ingester: str, seg_id: str) -> None:
        self.failed_back.append(seg_id)
        self.queue[ingester].append(seg_id)

    async def replicate(self, store: str, path: Path) -> None:
        if store in self.broken_stores:
            raise PeerRejected(store, 500, "disk full")
        self.received[store].append(path.read_bytes())


def segments(n: int, per: int, stamper: Stamper) -> list[bytes]:
    return [stamp([b"line %d.%d" % (s, i) for i in range(per)], stamper) for s in range(n)]


def make(tmp_path: Path, cluster: FakeCluster, rf: int) -> Consumer:
    store = StoreLog(tmp_path / "store")
    store.open()
    return Consumer(store, cluster, cluster, replication_factor=rf, target_size=1 << 20,
                    target_age=60, rng=random.Random(3))  # type: ignore[arg-type]


def test_txn_moves_only_forward():
    txn = ConsumeTxn(target_size=10, target_age=5, started=0)
    with pytest.raises(IllegalTransition):
        txn.replicate()  # nothing gathered
    txn.add("i", "s", 4)
    assert not txn.gathered_enough(now=1)
    txn.add("i", "t", 6)
    assert txn.gathered_enough(now=1)
    txn.replicate()
    with pytest.raises(IllegalTransition):
        txn.add("i", "u", 1)
    assert [s.seg_id for s in txn.commit()] == ["s", "t"]
    assert txn.phase is Phase.COMMIT
    with pytest.raises(IllegalTransition):
        txn.fail()
    old = ConsumeTxn(target_size=10, target_age=5, started=0)
    assert old.gathered_enough(now=5)


def test_batch_is_merged_replicated_to_rf_distinct_stores_then_committed(tmp_path):
    st = Stamper()
    cluster = FakeCluster({"http://i1": segments(3, 50, st), "http://i2": segments(2, 50, st)},
                          ["http://s1", "http://s2", "http://s3"])
    consumer = make(tmp_path, cluster, rf=2)
    assert trio.run(consumer.one_batch)
    got = [s for s, bodies in cluster.received.items() if bodies]
    assert len(got) == 2
    composite = cluster.received[got[0]][0]
    assert cluster.received[got[1]][0] == composite
    lines = composite.split(b"\n")[:-1]
    assert len(lines) == 250 and lines == sorted(lines)
    assert sorted(cluster.committed) == sorted(s for ing in cluster.segments.values() for s in ing)
    assert not cluster.failed_back
    assert not list((tmp_path / "store" / "tmp").iterdir())  # spool files cleaned up


def test_a_failing_store_is_replaced_by_another(tmp_path):
    cluster = FakeCluster({"http://i1": segments(2, 10, Stamper())}, ["http://s1", "http://s2", "http://s3"])
    cluster.broken_stores = {"http://s1"}
    consumer = make(tmp_path, cluster, rf=2)
    assert trio.run(consumer.one_batch)
    assert cluster.received["http://s2"] and cluster.received["http://s3"]
    assert len(cluster.committed) == 2 and not cluster.failed_back


def test_shortfall_fails_every_source_back(tmp_path):
    cluster = FakeCluster({"http://i1": segments(2, 10, Stamper()), "http://i2": segments(1, 10, Stamper())},
                          ["http://s1", "http://s2"])
    cluster.broken_stores = {"http://s2"}
    consumer = make(tmp_path, cluster, rf=2)
    assert not trio.run(consumer.one_batch)
    assert not cluster.committed and len(cluster.failed_back) == 3
    # over-replication is allowed, loss is not: every segment is queued again
    assert sum(len(q) for q in cluster.queue.values()) == 3


def test_too_few_stores_waits_without_gathering(tmp_path, caplog):
    cluster = FakeCluster({"http://i1": segments(1, 10, Stamper())}, ["http://s1"])
    consumer = make(tmp_path, cluster, rf=2)

    async def twice() -> tuple[bool, bool]:
        return await consumer.one_batch(), await consumer.one_batch()

    assert trio.run(twice) == (False, False)
    assert cluster.queue["http://i1"] and not cluster.pending
    assert sum("waiting_for_stores" in r.message for r in caplog.records) == 1


def test_a_broken_read_fails_that_segment_back_only(tmp_path):
    cluster = FakeCluster({"http://i1": segments(3, 10, Stamper())}, ["http://s1"])
    cluster.broken_reads = {"http://i1-1"}
    consumer = make(tmp_path, cluster, rf=1)

    async def two_batches() -> None:
        await consumer.one_batch()
        await consumer.one_batch()

    trio.run(two_batches)  # a failed read ends the round: no hot loop on a broken ingester
    assert sorted(cluster.committed) == ["http://i1-0", "http://i1-2"]
    assert set(cluster.failed_back) == {"http://i1-1"}
    assert cluster.queue["http://i1"] == ["http://i1-1"]


def test_duplicates_across_sources_are_merged_away(tmp_path):
    seg = segments(1, 20, Stamper())[0]
    cluster = FakeCluster({"http://i1": [seg], "http://i2": [seg]}, ["http://s1"])
    consumer = make(tmp_path, cluster, rf=1)
    assert trio.run(consumer.one_batch)
    assert cluster.received["http://s1"][0] == seg


def test_a_failed_commit_call_is_logged_and_left_to_the_pending_timeout(tmp_path, caplog):
    cluster = FakeCluster({"http://i1": segments(2, 10, Stamper())}, ["http://s1"])

    async def unreachable(ingester: str, seg_id: str) -> None:
        raise PeerUnavailable(ingester, "connection reset")

    cluster.commit = unreachable  # type: ignore[method-assign]
    consumer = make(tmp_path, cluster, rf=1)
    assert trio.run(consumer.one_batch)  # the data is replicated: the batch succeeded
    assert cluster.received["http://s1"]
    assert sum("commit_failed" in r.message for r in caplog.records) == 2
    assert not cluster.failed_back  # never failed back: that would only duplicate
