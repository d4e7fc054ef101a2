"""Node-to-node calls and scatter-gather, over httpx.MockTransport (no sockets)."""

from __future__ import annotations

import random
from typing import AsyncIterator, Callable

import httpx
import pytest
import trio

from oklog.errors import PeerRejected, PeerUnavailable
from oklog.peer import HttpPeers
from oklog.query import gather
from oklog.records.format import stamp
from oklog.ulid import Stamper


class Body(httpx.AsyncByteStream):
    """A response body that streams, as a real transport's does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 97):
            yield self.data[i:i + 97]


def streamed(status: int, data: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=Body(data))


def peers_for(handler: Callable[[httpx.Request], httpx.Response]) -> HttpPeers:
    return HttpPeers(httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def run(fn, *args):  # type: ignore[no-untyped-def]
    return trio.run(fn, *args)


def test_segment_calls_map_statuses_and_errors(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if host == "down":
            raise httpx.ConnectError("refused")
        if path == "/ingest/next":
            return {"a": httpx.Response(200, text="01ABC\n"), "b": httpx.Response(404)}.get(
                host, httpx.Response(500, text="boom"))
        if path == "/ingest/read":
            return streamed(200, b"data") if host == "a" else streamed(404, b"gone")
        if path == "/ingest/commit":
            return httpx.Response(428, text="not read")
        return httpx.Response(200)

    peers = peers_for(handler)

    async def main() -> None:
        assert await peers.next("http://a") == "01ABC"
        assert await peers.next("http://b") is None
        with pytest.raises(PeerRejected) as info:
            await peers.next("http://c")
        assert info.value.status == 500
        with pytest.raises(PeerUnavailable):
            await peers.next("http://down")
        with open(tmp_path / "seg", "wb") as sink:
            assert await peers.read_into("http://a", "01ABC", sink) == 4
            with pytest.raises(PeerRejected):
                await peers.read_into("http://b", "01ABC", sink)
        with pytest.raises(PeerRejected) as info:
            await peers.commit("http://a", "01ABC")
        assert info.value.status == 428
        await peers.failed("http://a", "01ABC")

    run(main)


def test_replicate_and_query_rejections(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/store/replicate":
            return httpx.Response(400, text="line 1 is not a record")
        return httpx.Response(400, text='invalid "from"')

    seg = tmp_path / "seg"
    seg.write_bytes(b"x\n")
    peers = peers_for(handler)

    async def main() -> None:
        with pytest.raises(PeerRejected) as info:
            await peers.replicate("http://s", [seg])
        assert "not a record" in str(info.value)
        with pytest.raises(PeerRejected):
            await peers.open_query("http://s", b"from=x")

    run(main)


def test_scatter_counts_failed_stores_and_merges_the_rest():
    st = Stamper()
    records = stamp([b"r%d" % i for i in range(500)], st)
    lines = records.splitlines(keepends=True)
    held = {"s1": b"".join(lines[0::2] + lines[1::4]), "s2": b"".join(lines[1::2])}
    held = {k: b"".join(sorted(v.splitlines(keepends=True))) for k, v in held.items()}

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "s3":
            raise httpx.ConnectError("refused")
        headers = {"X-Oklog-Segments-Queried": "2", "X-Oklog-Max-Data-Set-Size": "100"}
        return streamed(200, held[host], headers)

    async def main() -> None:
        g = await gather.scatter(peers_for(handler), ["http://s1", "http://s2", "http://s3", "http://s1"],
                                 b"from=a&to=b", "GET")
        assert g.nodes == 3 and len(g.errors) == 1 and "s3" in g.errors[0]
        headers = gather.stats_headers(g, started=0)
        assert headers["X-Oklog-Error-Count"] == "1" and headers["X-Oklog-Segments-Queried"] == "4"
        body = b"".join([b async for b in gather.merged_body(g)])
        assert body == records  # union, in ULID order, each record once

    run(main)


async def blocks_of(data: bytes, rng: random.Random, fail_after: int | None = None) -> AsyncIterator[bytes]:
    pos, sent = 0, 0
    while pos < len(data):
        cut = min(len(data), pos + rng.randrange(1, 300))
        yield data[pos:cut]
        pos, sent = cut, sent + 1
        if fail_after is not None and sent >= fail_after:
            raise httpx.ReadError("connection reset")
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("seed", range(20))
def test_merge_streams_equals_sorted_union(seed):
    rng = random.Random(seed)
    lines = stamp([b"p%d" % i for i in range(rng.randrange(1, 400))], Stamper()).splitlines(keepends=True)
    sources = []
    for _ in range(rng.randrange(1, 5)):
        subset = sorted(line for line in lines if rng.random() < 0.6)
        sources.append(b"".join(subset))
    expected = b"".join(sorted(set(line for s in sources for line in s.splitlines(keepends=True))))

    async def main() -> bytes:
        from oklog.lines import aiter_blocks

        streams = [aiter_blocks(blocks_of(s, rng), final_tail="drop") for s in sources]
        return b"".join([b async for b in gather.merge_streams(streams)])

    assert run(main) == expected


def test_a_stream_that_breaks_midway_keeps_what_it_sent():
    class Broken:
        peer = "http://s1"
        headers: dict[str, str] = {}

        def chunks(self) -> AsyncIterator[bytes]:
            return blocks_of(b"".join(b"01M7Z1NWKZ4AAAAAAAAAAAAA%02d t p\n" % i for i in range(50)),
                             random.Random(1), fail_after=2)

        async def aclose(self) -> None:
            pass

    async def main() -> bytes:
        g = gather.Gathered(responses=[Broken()])
        return b"".join([b async for b in gather.merged_body(g)])

    async def delivered() -> bytes:  # what the stream sent before it broke
        sent = b""
        try:
            async for chunk in Broken().chunks():
                sent += chunk
        except httpx.ReadError:
            pass
        return sent[: sent.rfind(b"\n") + 1]

    body = run(main)
    assert body == run(delivered) and 0 < body.count(b"\n") < 50


def test_scatter_through_the_in_memory_fake():
    """The same scatter-gather over ``tests.fakes`` (no HTTP at all): replicas
    merge into one copy each, a store that cannot be reached makes it partial."""
    from tests.fakes import FakeAnswer, FakeCluster

    records = stamp([b"f%d" % i for i in range(200)], Stamper())
    cluster = FakeCluster({}, ["http://s1", "http://s2", "http://s3"])
    for store in ("http://s1", "http://s2"):
        cluster.answers[store] = FakeAnswer(store, {"X-Oklog-Segments-Queried": "1"},
                                            [records[i:i + 97] for i in range(0, len(records), 97)])

    async def main() -> None:
        g = await gather.scatter(cluster, cluster.stores(), b"from=a&to=b", "GET")
        assert g.nodes == 3 and len(g.errors) == 1 and "http://s3" in g.errors[0]
        assert gather.stats_headers(g, started=0)["X-Oklog-Segments-Queried"] == "2"
        assert b"".join([b async for b in gather.merged_body(g)]) == records
        assert all(a.closed for a in cluster.answers.values())

    run(main)


@pytest.mark.parametrize("seed", range(10))
def test_merge_streams_never_hangs_on_an_unsorted_peer(seed):
    rng = random.Random(seed)
    lines = stamp([b"u%d" % i for i in range(600)], Stamper()).splitlines(keepends=True)
    shuffled = lines[:]
    rng.shuffle(shuffled)  # a buggy peer
    sources = [b"".join(lines), b"".join(shuffled), b"".join(sorted(rng.sample(lines, 300)))]

    async def main() -> bytes:
        from oklog.lines import aiter_blocks

        streams = [aiter_blocks(blocks_of(s, rng), final_tail="drop") for s in sources]
        with trio.fail_after(10):
            return b"".join([b async for b in gather.merge_streams(streams)])

    body = run(main)
    assert set(body.splitlines(keepends=True)) == set(lines)


def test_a_local_share_that_fails_is_an_error_not_a_crash():
    from tests.fakes import FakeCluster

    cluster = FakeCluster({}, ["http://self"])

    async def failing_plan():  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    async def main() -> None:
        g = await gather.scatter(cluster, cluster.stores(), b"from=a&to=b", "GET",
                                 self_url="http://self", local_plan=failing_plan)
        assert g.responses == [] and len(g.errors) == 1 and "No space left" in g.errors[0]

    run(main)
