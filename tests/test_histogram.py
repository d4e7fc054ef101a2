"""Histograms: bucketing math, metadata against scans, de-duplication
across stores (``oklog.query.buckets``, ``oklog.query.histogram``)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.errors import BadQuery
from oklog.query import local
from oklog.query.buckets import MAX_BUCKETS, STEPS, Buckets, parse_buckets
from oklog.query.histogram import cluster_histogram, layout, local_histogram
from oklog.query.params import Query
from oklog.store.log import StoreLog
from oklog.ulid import MAX_MS, encode_int, ms_of, ulid_for_ms
from tests.fakes import FakeAnswer, FakeCluster

# --- bucketing math ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, MAX_MS), span=st.one_of(st.integers(0, 10_000), st.integers(0, MAX_MS)),
       n=st.integers(1, MAX_BUCKETS))
def test_layout_is_the_smallest_round_step_within_the_budget(a: int, span: int, n: int) -> None:
    lo, hi = a, min(MAX_MS, a + span)
    b = Buckets.plan(lo, hi, n)
    assert 1 <= len(b) <= n
    assert b.index(lo) == 0 and b.index(hi) == len(b) - 1
    assert b.start(0) <= lo < b.start(0) + b.step_ms
    assert b.start(len(b) - 1) <= hi < b.start(len(b) - 1) + b.step_ms
    assert all(b.start(i) % b.step_ms == 0 for i in (0, len(b) - 1))
    ladder = list(STEPS)
    while ladder[-1] < b.step_ms:
        ladder.append(ladder[-1] * 2)
    assert b.step_ms in ladder
    k = ladder.index(b.step_ms)
    if k:  # the next smaller step would need too many buckets
        smaller = ladder[k - 1]
        assert hi // smaller - lo // smaller + 1 > n


def test_layout_examples() -> None:
    hour = 3_600_000
    b = Buckets.plan(10 * hour, 11 * hour - 1, 60)
    assert (b.step_ms, len(b), b.start(0)) == (60_000, 60, 10 * hour)
    b = Buckets.plan(10 * hour + 1, 11 * hour, 60)  # off the minute: 61 minutes touched
    assert (b.step_ms, len(b)) == (120_000, 31)
    assert len(Buckets.plan(5, 5, 1)) == 1
    assert Buckets.plan(0, MAX_MS, 1).step_ms > MAX_MS
    with pytest.raises(ValueError):
        Buckets.plan(2, 1, 10)


@pytest.mark.parametrize("raw,want", [(None, 60), ("", 60), ("1", 1), (" 25 ", 25), (str(MAX_BUCKETS), MAX_BUCKETS)])
def test_buckets_param(raw: str | None, want: int) -> None:
    assert parse_buckets(raw) == want


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "abc", str(MAX_BUCKETS + 1), "\u00b2", "9" * 40])
def test_bad_buckets_param(raw: str) -> None:
    with pytest.raises(BadQuery, match='invalid "buckets"'):
        parse_buckets(raw)


def rec(ms: int, i: int, topic: bytes = b"default", payload: bytes = b"rec") -> bytes:
    return encode_int(ms, 10) + encode_int(i, 16) + b" " + topic + b" " + payload + b"\n"


@settings(max_examples=100, deadline=None)
@given(times=st.lists(st.integers(0, 100_000), max_size=300), lo=st.integers(0, 60_000),
       span=st.integers(0, 60_000), n=st.integers(1, 50), data=st.data())
def test_count_block_equals_one_by_one(times: list[int], lo: int, span: int, n: int, data: st.DataObject) -> None:
    b = Buckets.plan(lo, lo + span, n)
    only = np.array(data.draw(st.lists(st.booleans(), min_size=len(b), max_size=len(b))), bool)
    block = b"".join(rec(ms, i, payload=b"x" * (i % 5)) for i, ms in enumerate(sorted(times)))
    counts, masked = b.zeros(), b.zeros()
    counted = b.count_block(block, counts)
    b.count_block(block, masked, only=only)
    want = b.zeros()
    for ms in times:
        if lo <= ms <= lo + span:
            want[b.index(ms)] += 1
    assert counts.tolist() == want.tolist() and counted == want.sum()
    assert masked.tolist() == np.where(only, want, 0).tolist()


# --- one node: metadata and scans agree ---------------------------------------------------------


def records(rng: random.Random, n: int) -> list[bytes]:
    """``n`` records over about 10 minutes, bursty, topics web/db."""
    out, ms = [], 1_800_000_000_000
    for i in range(n):
        ms += rng.choice([0, 0, 1, 3, 50, 700, 5000]) if rng.random() < 0.9 else rng.randrange(30_000)
        out.append(rec(ms, i, rng.choice([b"web", b"db"]), rng.choice([b"rec GET", b"rec ERROR", b"rec x"])))
    return out


async def store_holding(path: Path, rng: random.Random, recs: list[bytes]) -> StoreLog:
    """A store with ``recs`` in a few segments, some overlapping (duplicates
    within the node), some pieces missing (a replica holds a subset)."""
    store = StoreLog(path, compression=rng.choice(["zstd", "none"]), block_size=rng.choice([300, 1024, 4096]))
    store.open()
    for _ in range(rng.randrange(1, 5)):
        a = rng.randrange(len(recs))
        b = rng.randrange(a, len(recs)) + 1
        body = b"".join(recs[a:b])

        async def chunks(body: bytes = body):  # type: ignore[no-untyped-def]
            yield body

        await store.write_segment(chunks())
    return store


def brute(recs: list[bytes], query: Query, buckets: Buckets) -> list[int]:
    counts = [0] * len(buckets)
    for r in set(recs):
        if query.lo <= r[:26] <= query.hi and query.matcher.match(r):
            counts[buckets.index(ms_of(r))] += 1
    return counts


def held(store: StoreLog) -> list[bytes]:
    from tests.recordutil import segment_bytes

    from oklog.ulid import MAX_ULID, MIN_ULID

    return [line for group in store.overlapping_groups(MIN_ULID, MAX_ULID) for s in group
            for line in segment_bytes(s.path).splitlines(keepends=True)]


def ranges(recs: list[bytes], rng: random.Random) -> list[tuple[bytes, bytes]]:
    first, last = ms_of(recs[0]), ms_of(recs[-1])
    cut = sorted(rng.randrange(first, last + 1) for _ in range(2))
    return [(ulid_for_ms(first), ulid_for_ms(last, upper=True)),
            (ulid_for_ms(cut[0]), ulid_for_ms(cut[1], upper=True)),  # cuts blocks
            (recs[len(recs) // 3][:26], recs[2 * len(recs) // 3][:26])]  # ULID bounds inside a millisecond


@pytest.mark.parametrize("seed", range(12))
def test_local_histogram_metadata_and_scans_equal_a_brute_force_count(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    recs = records(rng, rng.randrange(50, 1500))

    async def main() -> None:
        store = await store_holding(tmp_path, rng, recs)
        mine = held(store)
        for lo, hi in ranges(recs, rng):
            n = rng.choice([1, 7, 60, 500])
            empty = Query(lo, hi)
            buckets = layout(empty, n)
            by_table = await local_histogram(store, empty, buckets)
            scanned = await local_histogram(store, Query(lo, hi, b"rec"), buckets)  # every record, by scan
            assert by_table.counts.tolist() == brute(mine, empty, buckets) == scanned.counts.tolist()
            assert scanned.blocks_counted == 0
            for q in (Query(lo, hi, b"ERROR"), Query(lo, hi, b"", topic=b"web"),
                      Query(lo, hi, b"G.T|x", regex=True, topic=b"db"), Query(lo, hi, b".*", regex=True)):
                h = await local_histogram(store, q, buckets)
                assert h.counts.tolist() == brute(mine, q, buckets), q
        store.close()

    trio.run(main)


def test_blocks_inside_one_bucket_are_counted_from_the_table_alone(tmp_path: Path) -> None:
    recs = [rec(60_000 * m + i, m * 1000 + i) for m in range(10) for i in range(100)]  # 100 a minute

    async def main() -> None:
        store = StoreLog(tmp_path, block_size=600)  # several blocks a minute
        store.open()

        async def chunks():  # type: ignore[no-untyped-def]
            yield b"".join(recs)

        await store.write_segment(chunks())
        q = Query(ulid_for_ms(0), ulid_for_ms(600_000 - 1, upper=True))
        h = await local_histogram(store, q, layout(q, 10))
        assert h.counts.tolist() == [100] * 10
        assert h.blocks_counted > h.blocks_scanned >= 1  # only blocks across a minute boundary are read
        store.close()

    trio.run(main)


# --- the cluster: distinct records across stores ---------------------------------------------


async def answer_of(store: StoreLog, query: Query, n: int, url: str) -> tuple[bytes, FakeAnswer]:
    """What a real store would answer to ``/store/_histogram`` and ``/store/_query``."""
    h = await local_histogram(store, query, layout(query, n))
    p = await local.prepare(store, query)
    body = b"".join([b async for b in local.run(p)])
    return json.dumps(h.to_json(query)).encode(), FakeAnswer(url, {}, [body[i:i + 999] for i in range(0, len(body), 999)])


@pytest.mark.parametrize("seed", range(8))
def test_replicas_are_counted_once(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    recs = records(rng, rng.randrange(200, 1200))
    urls = ["http://self", "http://b", "http://c"]

    async def main() -> None:
        stores = [await store_holding(tmp_path / str(i), rng, recs) for i in range(3)]
        union = [r for s in stores for r in held(s)]
        fake = FakeCluster({}, urls)
        lo, hi = ranges(recs, rng)[0]
        for q in (Query(lo, hi), Query(lo, hi, b"ERROR"), Query(lo, hi, topic=b"db")):
            n = rng.choice([5, 60, 300])
            for url, store in zip(urls[1:], stores[1:]):
                fake.histograms[url], fake.answers[url] = await answer_of(store, q, n, url)
            fake.histogram_calls.clear()
            h = await cluster_histogram(stores[0], urls, fake, q, n, self_url="http://self")
            assert not h.errors and h.nodes == 3
            assert h.counts.tolist() == brute(union, q, h.buckets)
            if q.q or q.topic:
                assert not fake.histogram_calls  # a scan anyway: straight to round 2
            else:
                assert {u for u, _ in fake.histogram_calls} == {"http://b", "http://c"}
        for s in stores:
            s.close()

    trio.run(main)


def test_a_bucket_only_one_store_holds_is_not_recounted() -> None:
    day = 86_400_000
    a = [rec(1000 + i, i) for i in range(50)]  # minute 0: store a only
    both = [rec(day // 2 + i, 100 + i) for i in range(30)]  # both stores
    q = Query(ulid_for_ms(0), ulid_for_ms(day - 1, upper=True))
    b = layout(q, 24)
    fake = FakeCluster({}, ["http://a", "http://b"])

    def hist(recs: list[bytes]) -> bytes:
        counts = b.zeros()
        b.count_block(b"".join(recs), counts)
        return json.dumps({"bucket_ms": b.step_ms, "from_ms": b.from_ms,
                           "buckets": [{"t": b.start(i), "count": int(c)} for i, c in enumerate(counts)]}).encode()

    fake.histograms = {"http://a": hist(a + both), "http://b": hist(both)}
    fake.answers = {"http://a": FakeAnswer("http://a", {}, [b"".join(a + both)]),
                    "http://b": FakeAnswer("http://b", {}, [b"".join(both)])}
    h = trio.run(cluster_histogram, None, ["http://a", "http://b"], fake, q, 24)
    assert h.counts[0] == 50 and h.counts[12] == 30 and h.counts.sum() == 80
    assert h.rescanned_buckets == 1 and not h.errors


def test_a_store_that_fails_is_reported_and_counts_are_lower_bounds() -> None:
    q = Query(ulid_for_ms(0), ulid_for_ms(59_999, upper=True))
    b = layout(q, 6)
    fake = FakeCluster({}, ["http://a", "http://gone", "http://odd"])
    fake.histograms = {"http://a": json.dumps({"bucket_ms": b.step_ms, "from_ms": b.from_ms, "buckets": [
        {"t": b.start(i), "count": 2} for i in range(len(b))]}).encode(),
        "http://odd": b'{"bucket_ms": 1, "from_ms": 0, "buckets": []}'}
    h = trio.run(cluster_histogram, None, ["http://a", "http://gone", "http://odd"], fake, q, 6)
    assert h.counts.tolist() == [2] * 6
    assert len(h.errors) == 2 and any("gone" in e for e in h.errors) and any("unusable" in e for e in h.errors)
    assert h.to_json(q)["exact"] is False


def test_the_work_stops_when_the_client_goes_away() -> None:
    from oklog.errors import ClientGone
    from oklog.http import Request
    from oklog.query.histogram import _unless_gone

    messages = [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> dict:
        await trio.sleep(0.01)
        return messages.pop(0)

    async def forever() -> None:
        await trio.sleep_forever()

    async def main() -> None:
        request = Request("GET", "/store/histogram", b"", {}, receive)
        with trio.fail_after(5), pytest.raises(ClientGone):
            await _unless_gone(request, forever)  # type: ignore[arg-type]

    trio.run(main)


def test_an_answer_that_breaks_off_in_round_two_is_reported() -> None:
    q = Query(ulid_for_ms(0), ulid_for_ms(59_999, upper=True))
    b = layout(q, 6)
    recs = [rec(100 + i, i) for i in range(20)]
    body = json.dumps({"bucket_ms": b.step_ms, "from_ms": b.from_ms, "buckets": [
        {"t": b.start(i), "count": 20 if i == 0 else 0} for i in range(len(b))]}).encode()
    fake = FakeCluster({}, ["http://a", "http://b"])
    fake.histograms = {"http://a": body, "http://b": body}
    whole = b"".join(recs)
    fake.answers = {"http://a": FakeAnswer("http://a", {}, [whole[:-5]]),  # cut inside the last record
                    "http://b": FakeAnswer("http://b", {}, [whole[: 10 * len(recs[0])]])}
    h = trio.run(cluster_histogram, None, ["http://a", "http://b"], fake, q, 6)
    assert h.counts[0] == 19  # a lower bound: every whole record, once
    assert len(h.errors) == 1 and "http://a: answer broke off" in h.errors[0]
    assert fake.answers["http://a"].closed and fake.answers["http://b"].closed


class Named(FakeCluster):
    """A fake store that answers under its own identity (``self_url``)."""

    def __init__(self, url: str, stores: list[str]) -> None:
        super().__init__({}, stores)
        self.url = url

    def self_url(self) -> str:
        return self.url


class Watched(FakeAnswer):
    """A canned answer that says whether its body was read."""

    read = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.read = True
        async for chunk in super().chunks():
            yield chunk


def test_one_node_under_two_addresses_is_merged_once_in_round_two() -> None:
    """As ``/store/query`` (``gather.one_per_node``, by ``X-Oklog-Node``): the
    second answer of a node is closed unread and its work is not counted."""
    q = Query(ulid_for_ms(0), ulid_for_ms(59_999, upper=True))
    b = layout(q, 6)
    recs = [rec(100 + i, i) for i in range(20)]
    body = json.dumps({"bucket_ms": b.step_ms, "from_ms": b.from_ms, "buckets": [
        {"t": b.start(i), "count": 20 if i == 0 else 0} for i in range(len(b))]}).encode()
    urls = ["http://a", "http://a-alias", "http://b"]
    fake = FakeCluster({}, urls)
    fake.histograms = {u: body for u in urls}
    a = {"X-Oklog-Node": "http://a", "X-Oklog-Segments-Queried": "2", "X-Oklog-Blocks-Queried": "5"}
    answers = {
        "http://a": Watched("http://a", a, [b"".join(recs)]),
        "http://a-alias": Watched("http://a-alias", a, [b"".join(recs)]),
        "http://b": Watched("http://b", {"X-Oklog-Node": "http://b", "X-Oklog-Segments-Queried": "1",
                                         "X-Oklog-Blocks-Queried": "3"}, [b"".join(recs[:10])]),
    }
    fake.answers = dict(answers)
    h = trio.run(cluster_histogram, None, urls, fake, q, 6)
    assert h.counts.tolist() == [20, 0, 0, 0, 0, 0] and not h.errors and h.rescanned_buckets == 1
    assert (h.segments, h.blocks_scanned) == (3, 8)  # a once, b once
    assert answers["http://b"].read
    assert answers["http://a"].read != answers["http://a-alias"].read  # whichever answered first, alone
    assert all(r.closed for r in answers.values())


def test_two_stores_over_http(tmp_path: Path) -> None:
    """The real endpoints and ``HttpPeers`` (httpx to the ASGI apps, no sockets)."""
    import httpx

    from oklog.peer import HttpPeers
    from oklog.query.api import query_router
    from oklog.query.histogram import histogram_router

    rng = random.Random(7)
    recs = records(rng, 800)

    class Route(httpx.AsyncBaseTransport):
        def __init__(self, apps: dict[str, Any]) -> None:
            self.apps = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host not in self.apps:
                raise httpx.ConnectError("connection refused", request=request)
            return await self.apps[request.url.host].handle_async_request(request)

    async def main() -> None:
        stores = [await store_holding(tmp_path / name, rng, recs) for name in ("a", "b")]
        apps = {}
        for name, s in zip("ab", stores):
            node = Named(f"http://{name}", ["http://a", "http://b"])  # each store its own X-Oklog-Node
            app = query_router(s, node, node)
            app.mount(histogram_router(s, node, node))
            apps[name] = app
        peers = HttpPeers(httpx.AsyncClient(transport=Route(apps)))
        union = [r for s in stores for r in held(s)]
        lo, hi = ranges(recs, rng)[0]
        for q in (Query(lo, hi), Query(lo, hi, b"GET")):
            h = await cluster_histogram(None, ["http://a", "http://b"], peers, q, 40)
            assert not h.errors and h.counts.tolist() == brute(union, q, h.buckets)
        bad = await cluster_histogram(None, ["http://a", "http://nowhere"], peers, Query(lo, hi), 40)
        assert len(bad.errors) >= 1 and "nowhere" in bad.errors[0]
        await peers.aclose()
        for s in stores:
            s.close()

    trio.run(main)
