"""The consume transaction and its driver, against in-memory fake peers."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

from oklog.errors import IllegalTransition, PeerUnavailable
from oklog.records.format import stamp
from oklog.store.consume import Consumer, ConsumeTxn, Phase
from oklog.store.log import StoreLog
from oklog.ulid import Stamper
from tests.fakes import FakeCluster


def segments(n: int, per: int, stamper: Stamper) -> list[bytes]:
    return [stamp([b"line %d.%d" % (s, i) for i in range(per)], stamper) for s in range(n)]


def make(tmp_path: Path, cluster: FakeCluster, rf: int) -> Consumer:
    store = StoreLog(tmp_path / "store")
    store.open()
    return Consumer(store, cluster, cluster, replication_factor=rf, target_size=1 << 20,
                    target_age=60, rng=random.Random(3))


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


# --- a peer's bad data never stops the pipeline ------------------------------------------


def counter(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_poisoned_segment_is_salvaged_and_the_batch_goes_on(tmp_path, caplog):
    st = Stamper()
    good = segments(3, 20, st)
    head, tail = good[1].split(b"\n", 10)[:10], good[1].split(b"\n", 10)[10]
    poisoned = b"\n".join(head) + b"\nGARBAGE \xff not a record\n\n" + tail + b"01ARZ3NDEK torn"
    cluster = FakeCluster({"http://i1": [good[0], poisoned, good[2]]}, ["http://s1"])
    consumer = make(tmp_path, cluster, rf=1)
    before = counter("oklog_store_rejected_records_total", reason="malformed", source="consume")
    torn = counter("oklog_store_rejected_records_total", reason="torn", source="consume")
    assert trio.run(consumer.one_batch)
    (composite,) = cluster.received["http://s1"]
    assert composite == b"".join(good)  # every valid record, nothing else
    assert sorted(cluster.committed) == ["http://i1-0", "http://i1-1", "http://i1-2"]
    assert counter("oklog_store_rejected_records_total", reason="malformed", source="consume") == before + 2
    assert counter("oklog_store_rejected_records_total", reason="torn", source="consume") == torn + 1
    logged = [r.message for r in caplog.records if "segment_salvaged" in r.message]
    assert len(logged) == 1 and "segment=http://i1-1" in logged[0] and "dropped_lines=3" in logged[0]


def test_a_segment_of_nothing_but_garbage_is_committed_away(tmp_path):
    cluster = FakeCluster({"http://i1": [b"junk\n" * 100]}, ["http://s1"])
    consumer = make(tmp_path, cluster, rf=1)
    assert trio.run(consumer.one_batch)
    assert cluster.received["http://s1"] == []  # nothing valid to replicate
    assert cluster.committed == ["http://i1-0"] and not cluster.failed_back


def test_a_store_refusing_the_body_fails_the_batch_back_without_crashing(tmp_path):
    cluster = FakeCluster({"http://i1": segments(2, 10, Stamper())}, ["http://s1"])
    cluster.rejecting_stores = {"http://s1"}
    consumer = make(tmp_path, cluster, rf=1)
    assert not trio.run(consumer.one_batch)
    assert sorted(cluster.failed_back) == ["http://i1-0", "http://i1-1"]
    assert consumer.failures == 1


def test_a_bug_in_a_batch_fails_it_back_and_the_consumer_goes_on(tmp_path, caplog):
    cluster = FakeCluster({"http://i1": segments(1, 10, Stamper())}, ["http://s1"])
    consumer = make(tmp_path, cluster, rf=1)
    calls = []

    async def explode(store: str, paths) -> None:  # type: ignore[no-untyped-def]
        calls.append(store)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        cluster.received[store].append(b"".join(p.read_bytes() for p in paths))

    cluster.replicate = explode  # type: ignore[method-assign]

    async def twice() -> tuple[bool, bool]:
        return await consumer.one_batch(), await consumer.one_batch()

    assert trio.run(twice) == (False, True)
    assert cluster.failed_back == ["http://i1-0"] and cluster.committed == ["http://i1-0"]
    assert any("batch_error" in r.message and r.exc_info for r in caplog.records)
    assert consumer.failures == 0  # reset by the success


def test_failures_back_off_and_cancellation_fails_the_batch_back(tmp_path):
    cluster = FakeCluster({"http://i1": segments(1, 10, Stamper())}, ["http://s1"])
    cluster.broken_stores = {"http://s1"}
    consumer = make(tmp_path, cluster, rf=1)
    consumer.idle_sleep = 0.01

    async def main() -> None:
        with trio.move_on_after(0.5):
            await consumer.run()

    trio.run(main)
    # 0.01, 0.02, 0.04, ... between attempts: a handful of tries, not fifty
    assert 2 <= len(cluster.failed_back) <= 8


def test_cancelled_mid_batch_fails_the_sources_back(tmp_path):
    cluster = FakeCluster({"http://i1": segments(2, 10, Stamper())}, ["http://s1"])
    consumer = make(tmp_path, cluster, rf=1)

    async def stuck(store: str, paths) -> None:  # type: ignore[no-untyped-def]
        await trio.sleep_forever()

    cluster.replicate = stuck  # type: ignore[method-assign]

    async def main() -> None:
        with trio.move_on_after(0.2):
            await consumer.one_batch()

    trio.run(main)
    assert sorted(cluster.failed_back) == ["http://i1-0", "http://i1-1"] and not cluster.committed
    assert not list((tmp_path / "store" / "tmp").iterdir())


def test_a_record_longer_than_any_store_takes_is_dropped_not_retried_forever(tmp_path):
    from oklog.records.format import MAX_LINE

    st = Stamper()
    before, huge, after = stamp([b"before"], st), stamp([b"h" * (MAX_LINE + 10)], st), stamp([b"after"], st)
    cluster = FakeCluster({"http://i1": [before + huge + after]}, ["http://s1"])
    consumer = make(tmp_path, cluster, rf=1)
    too_long = counter("oklog_store_rejected_records_total", reason="too_long", source="consume")
    assert trio.run(consumer.one_batch)
    assert cluster.received["http://s1"] == [before + after]
    assert counter("oklog_store_rejected_records_total", reason="too_long", source="consume") == too_long + 1


@pytest.mark.parametrize("stage, uploads, pending", [("gather", 0, 1), ("replicate", 1, 2), ("commit", 2, 2)])
def test_the_test_park_hook_stops_a_batch_exactly_at_its_stage(tmp_path, stage, uploads, pending):
    """OKLOG_TEST_PARK (oklog.store.park): an armed stage parks the first
    batch to reach it -- at gather one segment is read and nothing is sent,
    at replicate one store took the upload, at commit every store did and
    nothing is committed yet -- until the marker goes; an unarmed one never."""
    from oklog.store.park import ENV, Park

    st = Stamper()
    cluster = FakeCluster({"http://i1": segments(2, 10, st)}, ["http://s1", "http://s2", "http://s3"])
    park = tmp_path / "park"
    park.mkdir()
    consumer = make(tmp_path, cluster, rf=2)
    consumer.park = Park.from_env({ENV: str(park)})
    assert Park.from_env({}) is None  # production: no hook at all
    (park / stage).touch()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer.one_batch)
            while not list(park.glob(f"{stage}.parked.*")):
                await trio.sleep(0.01)
            [marker] = park.glob(f"{stage}.parked.*")
            assert marker.name == f"{stage}.parked.{os.getpid()}"
            await trio.sleep(0.2)  # it stays parked
            assert sum(len(b) for b in cluster.received.values()) == uploads
            assert len(cluster.pending) == pending and not cluster.committed
            marker.unlink()
        assert sorted(cluster.committed) == sorted(cluster.segments["http://i1"])
        assert not list(park.iterdir())

    trio.run(main)
