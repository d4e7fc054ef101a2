"""Live tail, without processes: the stream wire format, the bounded
dropping queue, the de-duplication window, the store's write-path tap and
the cluster fan-out (on the in-memory fake cluster, with a mock clock)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from oklog import metrics
from oklog.errors import BadQuery, CorruptSegment
from oklog.query.scan import Matcher
from oklog.store.log import StoreLog
from oklog.stream.dedup import Deduper
from oklog.stream.fanout import StreamService
from oklog.stream.hub import Hub
from oklog.stream.params import parse_stream
from oklog.stream.queue import DropQueue
from oklog.stream.wire import HEARTBEAT_LINE, dropped_notice, parse_dropped, split_notices
from oklog.streamcli import _Printer, stream_url
from tests.fakes import FakeCluster
from tests.recordutil import rec, ulid


def recs(*ns: int, payload: bytes = b"p") -> bytes:
    return b"".join(rec(n, payload) for n in ns)


def lines_of(block: bytes) -> list[bytes]:
    return block.split(b"\n")[:-1]


# --- the wire ---------------------------------------------------------------------


def test_notices_are_never_records() -> None:
    block = recs(1, 2) + HEARTBEAT_LINE + dropped_notice(7) + recs(3)
    records, notices = split_notices(block)
    assert records == recs(1, 2, 3)
    assert [parse_dropped(n) for n in notices] == [0, 7]
    assert split_notices(recs(1)) == (recs(1), [])
    assert split_notices(HEARTBEAT_LINE) == (b"", [b"#"])
    # "#" inside a payload is payload
    assert split_notices(rec(1, b"#dropped 5 x")) == (rec(1, b"#dropped 5 x"), [])
    assert parse_dropped(b"#dropped 12 records: x") == 12 and parse_dropped(b"#droppedx") == 0
    assert parse_dropped(b"#dropped 3") == 3


# --- the bounded queue -------------------------------------------------------------


def test_queue_drops_oldest_and_counts() -> None:
    async def main() -> None:
        drops: list[int] = []
        block = recs(1, 2)  # 2 records
        q = DropQueue(len(block) * 3, on_drop=drops.append)
        for i in range(5):
            assert q.put(recs(10 * i, 10 * i + 1)) == (0 if i < 3 else 2)
        assert q.dropped == 4 and drops == [2, 2] and len(q) == len(block) * 3
        # the reader hears about the drop first, then gets the newest records
        assert parse_dropped((await q.get()).rstrip(b"\n")) == 4
        assert await q.get() == recs(20, 21, 30, 31, 40, 41)
        q.close()
        assert await q.get() == b""
        assert q.put(recs(1)) == 0  # closed: ignored

    trio.run(main)


def test_queue_keeps_the_newest_lines_of_a_block_too_big_for_it() -> None:
    async def main() -> None:
        q = DropQueue(len(recs(1)) * 2)
        assert q.put(recs(1, 2, 3, 4, 5)) == 3
        assert parse_dropped(await q.get()) == 3
        assert await q.get() == recs(4, 5)
        assert q.put(rec(9, b"x" * 500)) == 1 and len(q) == 0  # no whole line fits

    trio.run(main)


def test_queue_get_waits_and_upstream_drops_are_reported() -> None:
    async def main() -> None:
        q = DropQueue(1 << 20, max_chunk=len(recs(1)) * 2)
        got: list[bytes] = []

        async def reader() -> None:
            while chunk := await q.get():
                got.append(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            q.put(recs(1))
            q.put(recs(2))
            q.put(recs(3))
            q.report_dropped(5)
            await trio.testing.wait_all_tasks_blocked()
            q.close()
        assert got[0] == dropped_notice(5)
        assert got[1:] == [recs(1, 2), recs(3)]  # chunks of at most max_chunk

    trio.run(main)


@given(st.lists(st.integers(1, 6), max_size=40), st.integers(1, 12))
def test_queue_never_holds_more_than_its_bound_and_loses_no_count(sizes: list[int], cap: int) -> None:
    one = len(rec(0))
    q = DropQueue(one * cap)
    n = 0
    put = 0
    for size in sizes:
        q.put(recs(*range(n, n + size)))
        n += size
        put += size
        assert len(q) <= one * cap
    assert q.dropped + len(q) // one == put


# --- de-duplication ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_dedup_drops_copies_within_the_window_only() -> None:
    clock = Clock()
    d = Deduper(3.0, clock)
    assert d.filter(recs(1, 2)) == recs(1, 2)
    clock.now += 1
    assert d.filter(recs(2, 3)) == recs(3)  # 2 came from the other replica
    assert d.filter(recs(1, 2, 3)) == b""
    clock.now += 2.5  # 3.5 s after 1 and 2 were first seen, 2.5 s after 3
    assert d.filter(recs(1, 2, 3)) == recs(1, 2)
    assert d.duplicates == 1 + 3 + 1
    assert d.filter(recs(5, 5, 6)) == recs(5, 6)  # a copy inside one block
    assert d.filter(b"") == b""


def test_dedup_memory_is_bounded() -> None:
    clock = Clock()
    d = Deduper(60.0, clock, max_entries=10)
    for i in range(10):
        d.filter(recs(2 * i, 2 * i + 1))
        assert len(d) <= 12
    assert d.filter(recs(19)) == b""  # recent: still remembered
    assert d.filter(recs(0)) == recs(0)  # forgotten early: the bound wins


def test_dedup_window_zero_only_within_a_block() -> None:
    d = Deduper(0.0, Clock())
    assert d.filter(recs(1, 1)) == recs(1)
    assert d.filter(recs(1)) == recs(1)
    with pytest.raises(ValueError):
        Deduper(-1, Clock())


# --- parameters -------------------------------------------------------------------------


def test_stream_params() -> None:
    sq = parse_stream(b"q=ERR+x&regex=true&topic=web&window=500ms")
    assert (sq.query.q, sq.query.regex, sq.query.topic, sq.window) == (b"ERR x", True, b"web", 0.5)
    again = parse_stream(sq.encode())
    assert (again.query.q, again.query.regex, again.query.topic, again.window) == (b"ERR x", True, b"web", 0.5)
    assert parse_stream(b"").window == 3.0 and parse_stream(b"window=0").window == 0.0
    for bad in (b"window=soon", b"window=-1s", b"window=11m", b"q=a(&regex", b"q=a\\1&regex",
                b"topic=no/slash", b"regex=maybe"):
        with pytest.raises(BadQuery):
            parse_stream(bad)
    assert "window=1500ms" in stream_url("http://h:1", b"a b", True, "t", 1.5)


# --- the store's write-path tap --------------------------------------------------------------


def test_no_subscriber_no_tap_and_subscribers_get_only_matches() -> None:
    async def main() -> None:
        hub = Hub()
        assert hub.tap() is None
        with hub.subscribe(Matcher(b"ERROR")) as errors, hub.subscribe(Matcher(b"", topic=b"db")) as db:
            tap = hub.tap()
            assert tap is not None
            tap.see(rec(1, b"ERROR a") + rec(2, b"fine"))
            tap.see(ulid(3) + b" db ERROR b\n")
            assert len(errors.queue) == 0  # nothing before the segment is stored
            tap.publish()
            assert await errors.queue.get() == rec(1, b"ERROR a") + ulid(3) + b" db ERROR b\n"
            assert await db.queue.get() == ulid(3) + b" db ERROR b\n"
        assert hub.tap() is None and errors.queue.closed

    trio.run(main)


def test_a_tap_bounds_what_it_holds_and_counts_the_rest() -> None:
    async def main() -> None:
        drops: list[int] = []
        hub = Hub(queue_bytes=len(rec(0)) * 2, on_drop=drops.append)
        with hub.subscribe(Matcher()) as sub:
            tap = hub.tap()
            assert tap is not None
            for i in range(5):
                tap.see(rec(i))
            tap.publish()
            assert drops == [3]
            assert parse_dropped(await sub.queue.get()) == 3
            assert await sub.queue.get() == recs(3, 4)

    trio.run(main)


async def chunks_of(body: bytes):  # type: ignore[no-untyped-def]
    for i in range(0, len(body), 1000):
        yield body[i : i + 1000]


def test_the_store_publishes_what_it_stored_and_nothing_it_refused(tmp_path: Path) -> None:
    async def main() -> None:
        store = StoreLog(tmp_path / "store", block_size=4096)
        store.open()
        def body(start: int) -> bytes:
            return b"".join(rec(i, b"ERROR %d" % i if i % 3 == 0 else b"ok %d" % i)
                            for i in range(start, start + 2000))

        await store.write_segment(chunks_of(body(0)))  # nobody listens: nothing kept
        with store.live.subscribe(Matcher(b"ERROR")) as sub:
            await store.write_segment(chunks_of(body(3000)))
            got = b""
            with trio.fail_after(10):
                while got.count(b"\n") < 667:
                    chunk = await sub.queue.get()
                    assert not chunk.startswith(b"#")
                    got += chunk
            assert lines_of(got) and all(b" ERROR " in line for line in lines_of(got))
            assert len(lines_of(got)) == 667
            with pytest.raises(CorruptSegment):
                await store.write_segment(chunks_of(rec(9000, b"ERROR x") + b"garbage\n"))
            await trio.testing.wait_all_tasks_blocked()
            assert len(sub.queue) == 0
        store.close()

    trio.run(main)


# --- the cluster fan-out -------------------------------------------------------------------------


def run_fanout(test, stores: list[str], self_url: str = "http://self"):  # type: ignore[no-untyped-def]
    cluster = FakeCluster({}, stores)
    for s in stores + ["http://c"]:
        cluster.live[s] = []
    hub = Hub()

    async def main() -> None:
        service = StreamService(hub, cluster.stores, self_url, cluster, clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await test(service, cluster, hub)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def read_until(client, want: int) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Lines from a client's queue until ``want`` record lines came."""
    out: list[bytes] = []
    with trio.fail_after(30):
        while sum(not line.startswith(b"#") for line in out) < want:
            chunk = await client.queue.get()
            assert chunk, "stream ended"
            out += lines_of(chunk)
    return out


def test_fanout_merges_every_store_once_and_follows_membership() -> None:
    async def test(service, cluster, hub) -> None:  # type: ignore[no-untyped-def]
        client = service.open(parse_stream(b"q=ERROR"))
        await trio.sleep(0.5)
        assert [len(cluster.live[s]) for s in ("http://a", "http://b")] == [1, 1]
        assert b"q=ERROR" in cluster.live["http://a"][0].raw_query
        assert len(hub) == 1  # this node's own share: the hub, no HTTP
        # the same record from both replicas comes out once
        cluster.stream_to("http://a", rec(1, b"ERROR one") + HEARTBEAT_LINE)
        cluster.stream_to("http://b", rec(1, b"ERROR one") + rec(2, b"ERROR two"))
        assert await read_until(client, 2) == [rec(1, b"ERROR one")[:-1], rec(2, b"ERROR two")[:-1]]
        # a store joins: it is read within a second; one leaves: its stream is closed
        cluster.set_stores(["http://self", "http://b", "http://c"])
        await trio.sleep(1.5)
        assert len(cluster.live["http://c"]) == 1 and cluster.live["http://a"][0].closed
        cluster.stream_to("http://c", rec(3, b"ERROR three"))
        tap = hub.tap()
        tap.see(rec(4, b"ERROR four") + rec(5, b"fine"))
        tap.publish()
        got = await read_until(client, 2)
        assert sorted(got) == [rec(3, b"ERROR three")[:-1], rec(4, b"ERROR four")[:-1]]
        client.close()
        await trio.sleep(0.5)
        assert all(s.closed for s in cluster.live["http://b"]) and len(hub) == 0

    run_fanout(test, ["http://self", "http://a", "http://b"])


def test_fanout_reopens_a_broken_store_stream_and_passes_drops_on() -> None:
    async def test(service, cluster, hub) -> None:  # type: ignore[no-untyped-def]
        client = service.open(parse_stream(b""))
        await trio.sleep(0.5)
        cluster.break_streams("http://a")  # the store restarted
        await trio.sleep(2)
        assert len(cluster.live["http://a"]) == 2
        cluster.stream_to("http://a", dropped_notice(4) + rec(7))
        got = await read_until(client, 1)
        assert got == [dropped_notice(4)[:-1], rec(7)[:-1]]
        # a store that refuses connections is tried again, not given up on
        cluster.break_streams("http://a")
        del cluster.live["http://a"]
        await trio.sleep(3)
        cluster.live["http://a"] = []
        await trio.sleep(2)
        assert len(cluster.live["http://a"]) == 1
        client.close()

    run_fanout(test, ["http://a"], self_url="http://elsewhere")


def test_a_client_that_never_reads_loses_the_oldest_and_is_told() -> None:
    async def test(service, cluster, hub) -> None:  # type: ignore[no-untyped-def]
        client = service.open(parse_stream(b""))
        client.queue.max_bytes = len(rec(0)) * 10
        before = metrics.stream_dropped.labels("client")._value.get()
        await trio.sleep(0.5)
        for i in range(100):
            cluster.stream_to("http://a", rec(i))
        await trio.sleep(0.5)
        assert client.queue.dropped == 90
        assert metrics.stream_dropped.labels("client")._value.get() - before == 90
        got = await read_until(client, 10)
        assert got[0] == dropped_notice(90)[:-1] and got[1:] == lines_of(recs(*range(90, 100)))
        client.close()

    run_fanout(test, ["http://a"], self_url="http://elsewhere")


# --- the CLI's printer ----------------------------------------------------------------------


def test_printer_prints_records_as_query_does_and_notices_on_stderr() -> None:
    for with_ulid, want in ((False, b"a b\nc\n"), (True, ulid(1) + b" a b\n" + ulid(2) + b" c\n")):
        out, err = io.BytesIO(), io.StringIO()
        printer = _Printer(with_ulid, out, err)
        data = rec(1, b"a b") + HEARTBEAT_LINE + dropped_notice(3) + rec(2, b"c")
        for i in range(len(data)):  # cut anywhere
            printer.feed(data[i : i + 1])
        assert out.getvalue() == want
        assert "3 matching record(s) dropped" in err.getvalue() and err.getvalue().count("\n") == 1


# --- the HTTP routes (raw ASGI, mock clock) ------------------------------------------------------


def test_stream_routes_heartbeat_deliver_and_release_on_disconnect() -> None:
    from oklog.stream.api import stream_router
    from tests.test_http import Client

    def request(path: str, query: bytes) -> dict:  # type: ignore[type-arg]
        return {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": []}

    async def main() -> None:
        hub = Hub()
        cluster = FakeCluster({}, ["http://self"])
        service = StreamService(hub, cluster.stores, "http://self", cluster)
        router = stream_router(hub, service, max_clients=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            local = Client(disconnect_after=25)
            cl = Client(disconnect_after=25)
            nursery.start_soon(router, request("/store/_stream", b"q=ERR"), local.receive, local.send)
            nursery.start_soon(router, request("/store/stream", b"q=ERR&window=1s"), cl.receive, cl.send)
            await trio.sleep(2)
            assert len(hub) == 2  # the local subscription, and the cluster stream's own share
            full = Client(disconnect_after=0)
            await router(request("/store/_stream", b""), full.receive, full.send)
            assert full.status == 503 and b"too many" in full.body
            bad = Client()
            await router(request("/store/stream", b"q=(&regex"), bad.receive, bad.send)
            assert bad.status == 400 and b"bad regex" in bad.body
            tap = hub.tap()
            tap.see(rec(1, b"ERR a") + rec(2, b"fine"))
            tap.publish()
            await trio.sleep(12)  # silence: a heartbeat each
            assert local.status == 200 and cl.status == 200
            assert local.body == HEARTBEAT_LINE + rec(1, b"ERR a") + HEARTBEAT_LINE
            assert cl.body == HEARTBEAT_LINE + rec(1, b"ERR a") + HEARTBEAT_LINE
            assert dict(cl.sent[0]["headers"])[b"x-oklog-window"] == b"1s"
            await trio.sleep(15)  # both clients have gone by now
            assert len(hub) == 0
            assert local.sent[-1] == cl.sent[-1] == {"type": "http.response.body", "body": b"",
                                                     "more_body": False}
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@given(st.binary(max_size=80))
def test_any_stream_query_string_parses_or_is_a_bad_query(raw: bytes) -> None:
    try:
        sq = parse_stream(raw)
    except BadQuery as exc:
        assert "\n" not in str(exc)
    else:
        assert 0 <= sq.window <= 600 and sq.query.matcher is not None


def test_stream_cli_errors_reconnects_and_stops_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from oklog import streamcli
    from oklog.streamcli import run_stream

    monkeypatch.setattr(streamcli, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(streamcli, "RETRY_MAX", 0.05)

    def run(handler, **kw):  # type: ignore[no-untyped-def]
        out, err = io.BytesIO(), io.StringIO()
        code = run_stream("127.0.0.1:9", out=out, err=err, transport=httpx.MockTransport(handler), **kw)
        return code, out.getvalue(), err.getvalue()

    code, _, err = run(lambda r: httpx.Response(400, text='invalid "q": bad regex: missing )\n'),
                       q="(", regex=True)
    assert code == 1 and err == 'error: bad query: invalid "q": bad regex: missing )\n'
    code, _, err = run(lambda r: httpx.Response(503, text="too many open streams\n"))
    assert code == 1 and "503" in err and "too many" in err
    assert run(lambda r: httpx.Response(200), window="soon")[0] == 1

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    code, _, err = run(refused)
    assert code == 1 and err == "error: cannot connect to store at http://127.0.0.1:9: connection refused\n"

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if len(calls) == 1:
            return httpx.Response(200, content=HEARTBEAT_LINE + rec(1, b"one") + rec(2, b"two"))
        if len(calls) == 2:
            raise httpx.ConnectError("connection refused")
        if len(calls) == 3:
            return httpx.Response(200, content=rec(3, b"three"))
        raise KeyboardInterrupt  # Ctrl-C while reconnecting

    code, out, err = run(handler, q="o", topic="web", with_ulid=True)
    assert code == 0
    assert out == ulid(1) + b" one\n" + ulid(2) + b" two\n" + ulid(3) + b" three\n"
    assert err.count("reconnecting") == 2 and "reconnected" in err and "Traceback" not in err
    assert "topic=web" in calls[0] and "q=o" in calls[0] and "window=3000ms" in calls[0]

    # once streaming, a 5xx is retried; a 400 (the node no longer takes the query) ends it
    answers = iter([httpx.Response(200, content=rec(1, b"one")), httpx.Response(500, text="boom\n"),
                    httpx.Response(400, text='invalid "topic"\n')])
    code, out, err = run(lambda r: next(answers), verbose=True)
    assert code == 1 and out == b"one\n"
    assert "reconnecting" in err and "HTTP 500: boom; retrying" in err
    assert err.endswith('error: bad query: invalid "topic"\n') and "Traceback" not in err
