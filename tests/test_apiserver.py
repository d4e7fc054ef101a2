"""The API server's connection limits (oklog.apiserver) and the query limits
(oklog.query.limits), in-process on real sockets on 127.0.0.1: a full node
is not needed to hold connections open or to make a query slow."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import trio

from oklog import metrics
from oklog.apiserver import serve_api
from oklog.http import Request, Response, Router, request_metrics, text
from oklog.query.limits import QueryLimits


def sample(metric: Any, *labels: str) -> float:
    target = metric.labels(*labels) if labels else metric
    return float(target._value.get())


def app(limits: QueryLimits | None = None, gate: trio.Event | None = None) -> Router:
    """``/healthz``; ``/store/query``: a slow streamed body (a line every
    50 ms, 40 lines); ``/store/_query``: waits for ``gate`` before its headers."""
    router = Router()
    router.use(request_metrics(router))
    if limits is not None:
        router.use(limits.middleware())

    async def healthz(request: Request) -> Response:
        return text(200, "OK")

    async def slow_body() -> AsyncIterator[bytes]:
        for i in range(40):
            await trio.sleep(0.05)
            yield b"line %d\n" % i

    async def query(request: Request) -> Response:
        return Response(200, slow_body())

    async def local_query(request: Request) -> Response:
        if gate is not None:
            await gate.wait()
        return text(200, "done")

    router.add("GET", "/healthz", healthz)
    router.add("GET|HEAD", "/store/query", query)
    router.add("GET|HEAD", "/store/_query", local_query)
    return router


def serve(router: Router, test: Callable[[int], Any], **kw: Any) -> None:
    """Run ``serve_api`` on a fresh 127.0.0.1 port and ``await test(port)``."""

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_api(router, [sock], stop, None,
                                                              task_status=task_status, **kw))
            with trio.fail_after(60):
                await test(port)
            stop.set()

    trio.run(main)


async def request(port: int, path: str, *, read_all: bool = True,
                  method: str = "GET") -> tuple[bytes, trio.SocketStream]:
    """Send one request (no body); return what came back until the server
    closed (or the headers, with ``read_all=False``) and the stream."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    length = "Content-Length: 0\r\n" if method == "POST" else ""
    await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{length}Connection: close\r\n\r\n".encode())
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the server
            return data, stream
        data += chunk
        if not chunk or (not read_all and b"\r\n\r\n" in data):
            return data, stream


async def closed_by_server(stream: trio.SocketStream) -> bytes:
    """Read until the server closes the connection (or resets it); what came."""
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:  # reset
        pass
    return data


# --- connections --------------------------------------------------------------------------


def test_connections_over_the_limit_get_503_with_a_reason_and_are_counted() -> None:
    async def test(port: int) -> None:
        refused = sample(metrics.http_refused, "max_connections")
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await trio.sleep(0.2)  # all three accepted
        assert sample(metrics.http_connections) == 3
        answer, _ = await request(port, "/healthz")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nretry-after: 1" in head.lower()
        assert body.count(b"\n") == 1 and b"-api.max-connections" in body and b"limit 3" in body
        assert sample(metrics.http_refused, "max_connections") == refused + 1
        await idle.pop().aclose()  # a slot frees up
        await trio.sleep(0.2)
        answer, _ = await request(port, "/healthz")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"OK\n")
        for s in idle:
            await s.aclose()

    serve(app(), test, max_connections=3)


def test_idle_and_half_sent_connections_are_dropped_after_the_idle_timeout() -> None:
    async def test(port: int) -> None:
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        half = await trio.open_tcp_stream("127.0.0.1", port)
        await half.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        drip = await trio.open_tcp_stream("127.0.0.1", port)  # slowloris: a byte every 100 ms
        await drip.send_all(b"GET /healthz HTTP/1.1\r\n")
        keep_alive = await trio.open_tcp_stream("127.0.0.1", port)  # after one answered request
        await keep_alive.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"\r\n\r\nOK\n"):
            first += await keep_alive.receive_some(1000)
        assert first.startswith(b"HTTP/1.1 200")
        started = trio.current_time()
        with trio.fail_after(10):
            for _ in range(30):  # 3 s of dripping, far past the 1 s timeout
                try:
                    await drip.send_all(b"X")
                except trio.BrokenResourceError:
                    break
                await trio.sleep(0.1)
            for stream in (idle, half, drip, keep_alive):
                assert await closed_by_server(stream) == b""
        assert trio.current_time() - started < 5
        await trio.sleep(0.1)
        assert sample(metrics.http_connections) == 0

    serve(app(), test, idle_timeout=1.0)


def test_a_request_body_that_stalls_gets_408_and_frees_its_connection() -> None:
    router = Router()
    router.body_timeout = 0.5  # as oklog.node sets it from -api.idle-timeout

    async def upload(request: Request) -> Response:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return text(200, f"{size} bytes")

    router.add("POST", "/upload", upload)

    async def test(port: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = trio.current_time()
        answer = b""
        with trio.fail_after(10):
            while b"-api.idle-timeout" not in answer:
                answer += await stream.receive_some(1000)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 0.4 < trio.current_time() - started < 5
        whole, _ = await request(port, "/upload")  # GET: 405, the server is fine
        assert whole.startswith(b"HTTP/1.1 405 ")

    serve(router, test)


def test_an_oversized_request_head_gets_431() -> None:
    async def test(port: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (20 << 10))
        answer = await closed_by_server(stream)
        assert answer.startswith(b"HTTP/1.1 431 ")

    serve(app(), test)


# --- queries ------------------------------------------------------------------------------


def test_a_query_past_its_deadline_is_cut_by_breaking_the_connection() -> None:
    async def test(port: int) -> None:
        before = sample(metrics.query_timeouts, "/store/query", "body")
        answer, _ = await request(port, "/store/query")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"line 3\n" in answer and b"line 39\n" not in answer
        assert not answer.endswith(b"\r\n0\r\n\r\n")  # no clean end of the chunked body
        assert sample(metrics.query_timeouts, "/store/query", "body") == before + 1
        assert sample(metrics.queries_running) == 0

    serve(app(QueryLimits(timeout=0.5, max_concurrent=4)), test)


def test_a_query_past_its_deadline_before_its_headers_gets_503() -> None:
    async def test(port: int) -> None:
        before = sample(metrics.query_timeouts, "/store/_query", "head")
        answer, _ = await request(port, "/store/_query")  # the gate never opens
        assert answer.startswith(b"HTTP/1.1 503 ") and b"-store.query-timeout" in answer
        assert sample(metrics.query_timeouts, "/store/_query", "head") == before + 1
        assert sample(metrics.queries_running) == 0

    serve(app(QueryLimits(timeout=0.3, max_concurrent=4), gate=trio.Event()), test)


def test_queries_beyond_the_cap_get_503_with_retry_after_per_pool() -> None:
    gate = trio.Event()

    async def test(port: int) -> None:
        before = sample(metrics.queries_refused, "/store/_query")
        async with trio.open_nursery() as nursery:
            answers: list[bytes] = []

            async def held() -> None:
                answers.append((await request(port, "/store/_query"))[0])

            nursery.start_soon(held)
            nursery.start_soon(held)
            await trio.sleep(0.3)  # both hold a slot of the "local" pool
            refused, _ = await request(port, "/store/_query")
            assert refused.startswith(b"HTTP/1.1 503 ")
            assert b"\r\nretry-after: 1\r\n" in refused.lower()
            assert b"-store.max-concurrent-queries" in refused
            assert sample(metrics.queries_refused, "/store/_query") == before + 1
            # another pool and other routes are not held up
            head, _ = await request(port, "/store/query", read_all=False)
            assert head.startswith(b"HTTP/1.1 200 ")
            ok, _ = await request(port, "/healthz")
            assert ok.startswith(b"HTTP/1.1 200 ")
            gate.set()
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
        after, _ = await request(port, "/store/_query")  # the slots were given back
        assert after.startswith(b"HTTP/1.1 200 ") and after.endswith(b"done\n")
        assert sample(metrics.queries_running) == 0

    serve(app(QueryLimits(timeout=30, max_concurrent=2), gate=gate), test)


def test_a_scatter_cut_by_its_deadline_lets_go_of_the_answers_it_had() -> None:
    from oklog.query import gather
    from tests.fakes import FakeAnswer

    opened: list[FakeAnswer] = []

    class Peers:  # one store answers at once, the other never does
        async def open_query(self, store: str, raw_query: bytes, *, method: str = "GET") -> FakeAnswer:
            if store == "http://frozen":
                await trio.sleep_forever()
            opened.append(FakeAnswer(store, {}, []))
            return opened[-1]

    async def main() -> None:
        with trio.move_on_after(0.3) as scope:  # as QueryLimits cuts a query before its headers
            await gather.scatter(Peers(), ["http://quick", "http://frozen"],  # type: ignore[arg-type]
                                 b"from=a&to=b", "GET")
        assert scope.cancelled_caught
        assert len(opened) == 1 and opened[0].closed

    trio.run(main)


# --- the walker's repair step (POST /store/repair) ----------------------------------------------

REPAIR = "/store/repair?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z"


def repair_app(tmp_path: Path, limits: QueryLimits, gate: trio.Event) -> Router:
    """The real query routes and repairer behind ``limits``; the two peer
    stores answer the repair's id queries (empty) once ``gate`` is set."""
    from oklog.query.api import query_router
    from oklog.query.repair import Repairer
    from oklog.store.log import StoreLog
    from tests.fakes import FakeAnswer, FakeCluster

    class Peers(FakeCluster):
        async def open_query(self, store: str, raw_query: bytes, *, method: str = "GET") -> FakeAnswer:
            await gate.wait()
            return FakeAnswer(store, {"X-Oklog-Node": store, "X-Oklog-Ids": "true"}, [])

    store = StoreLog(tmp_path / "store")
    store.open()
    peers = Peers({}, ["http://p1", "http://p2"])
    repairer = Repairer(peers, peers, rf=2, grace=0.0, tmp=tmp_path)
    router = Router()
    router.use(limits.middleware())
    router.mount(query_router(store, peers, peers, repairer=repairer))
    return router


def test_repair_steps_beyond_the_cap_get_503_and_share_the_cluster_pool(tmp_path: Path) -> None:
    gate = trio.Event()

    async def test(port: int) -> None:
        before = sample(metrics.queries_refused, "/store/repair")
        answers: list[bytes] = []

        async def held() -> None:
            answers.append((await request(port, REPAIR, method="POST"))[0])

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(held)
                nursery.start_soon(held)
                await trio.sleep(0.3)  # both hold a slot of the "cluster" pool
                refused, _ = await request(port, REPAIR, method="POST")
                assert refused.startswith(b"HTTP/1.1 503 ")
                assert b"\r\nretry-after: 1\r\n" in refused.lower()
                assert b"-store.max-concurrent-queries" in refused
                assert sample(metrics.queries_refused, "/store/repair") == before + 1
                # the same pool as /store/query (both scatter to every store)
                query, _ = await request(port, "/store/query?from=2020-01-01T00:00:00Z")
                assert query.startswith(b"HTTP/1.1 503 ")
                gate.set()
            assert len(answers) == 2
            assert all(a.startswith(b"HTTP/1.1 200 ") and b'"stores": 2' in a for a in answers)
            after, _ = await request(port, REPAIR, method="POST")  # the slots were given back
            assert after.startswith(b"HTTP/1.1 200 ")
        assert sample(metrics.queries_running) == 0

    serve(repair_app(tmp_path, QueryLimits(timeout=30, max_concurrent=2), gate), test)


def test_a_repair_step_past_its_deadline_gets_503(tmp_path: Path) -> None:
    async def test(port: int) -> None:
        before = sample(metrics.query_timeouts, "/store/repair", "head")
        with trio.fail_after(10):  # the peers never answer (gate never set)
            answer, _ = await request(port, REPAIR, method="POST")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"-store.query-timeout" in answer
        assert sample(metrics.query_timeouts, "/store/repair", "head") == before + 1
        assert sample(metrics.queries_running) == 0

    serve(repair_app(tmp_path, QueryLimits(timeout=0.3, max_concurrent=4), trio.Event()), test)
