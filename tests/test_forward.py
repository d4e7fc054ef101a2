"""oklog.forward against real trio TCP listeners on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
from functools import partial

import pytest
import trio

import oklog.forward as fwd
from oklog.errors import ConfigError
from oklog.forward import ForwardStats, Target, forward, parse_target, parse_targets

TRICKY = (
    b"hello %s %d %n %%\n"
    b"nul\x00byte\n"
    b"cr\rinside and at end\r\n"
    b"\ttabs\tand  double  spaces \n"
    b"\n"
    b"non-utf8 \xff\xfe\xc3\x28 \x80\n"
    b"{\"json\": \"%v\"}\n"
    b"last line without LF %s"
)


class FakeIngester:
    """Records what each connection sends.

    ``close_after``: close a connection once it has read that many bytes.
    ``hold``: do not read anything until this event is set.
    """

    def __init__(self, *, close_after: int | None = None, hold: trio.Event | None = None) -> None:
        self.close_after = close_after
        self.hold = hold
        self.conns: list[bytearray] = []
        self.closed = trio.Event()
        self.port = 0

    @property
    def data(self) -> bytes:
        return b"".join(bytes(c) for c in self.conns)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)
        return self.port

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        self.conns.append(buf)
        try:
            if self.hold is not None:
                await self.hold.wait()
            while True:
                want = 65536
                if self.close_after is not None:
                    want = min(want, self.close_after - len(buf))
                    if want <= 0:
                        break
                chunk = await stream.receive_some(want)
                if not chunk:
                    break
                buf += chunk
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()
            self.closed.set()


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FirstTarget:
    """A stand-in for fwd._rng: always start at the first target."""

    def randrange(self, n: int) -> int:
        return 0


@pytest.fixture
def start_first(monkeypatch):
    monkeypatch.setattr(fwd, "_rng", FirstTarget())


async def feed(w: int, data: bytes, chunks: list[int] | None = None) -> None:
    """Write data to the pipe's write end (in the given chunk sizes), then close it."""
    stream = trio.lowlevel.FdStream(w)
    async with stream:
        if chunks is None:
            await stream.send_all(data)
        else:
            pos = 0
            for n in chunks:
                await stream.send_all(data[pos : pos + n])
                pos += n
            await stream.send_all(data[pos:])


async def run_forward(targets: list[str], data: bytes, chunks=None, **kw) -> None:
    r, w = os.pipe()
    try:
        async with trio.open_nursery() as n:
            n.start_soon(feed, w, data, chunks)
            with trio.fail_after(60):
                await forward(targets, r, **kw)
    finally:
        os.close(r)


def forward_to_fakes(data: bytes, n_ingesters: int = 1, chunks=None, ingester_kw=None, **kw):
    """Run forward to fresh fake ingesters; return the ingesters."""
    ings = [FakeIngester(**(ingester_kw or {})) for _ in range(n_ingesters)]

    async def main():
        async with trio.open_nursery() as n:
            for ing in ings:
                await ing.start(n)
            await run_forward([i.addr for i in ings], data, chunks, **kw)
            await trio.sleep(0.05)
            n.cancel_scope.cancel()

    trio.run(main)
    return ings


# --- target parsing ----------------------------------------------------------


def test_parse_target():
    assert parse_target("localhost") == Target("tcp", "localhost", 7651)
    assert parse_target("h:1") == Target("tcp", "h", 1)
    assert parse_target("tcp://h:2") == Target("tcp", "h", 2)
    assert parse_target("tcp+dns://h:3") == Target("tcp+dns", "h", 3)
    assert parse_target("tcp+dnsip://h") == Target("tcp+dns", "h", 7651)
    assert parse_target("tcp+dnssrv://_ok._tcp.x") == Target("tcp+dnssrv", "_ok._tcp.x", None)
    assert parse_target("h", default_port=7652).port == 7652
    assert str(parse_target("h:1")) == "h:1"


@pytest.mark.parametrize("s", ["udp://h:1", "http://h:1", ":7651", "h:0", "h:x", ""])
def test_parse_target_bad(s):
    with pytest.raises(ConfigError):
        parse_target(s)


def test_parse_targets_empty():
    with pytest.raises(ConfigError, match="at least one"):
        parse_targets([])


def test_dnssrv_needs_dnspython(monkeypatch):
    monkeypatch.setattr(fwd, "_have_dnspython", lambda: False)
    with pytest.raises(ConfigError, match="pip install dnspython"):
        parse_targets(["tcp+dnssrv://_oklog._tcp.example.com"])
    r, w = os.pipe()
    try:
        with pytest.raises(ConfigError, match="dnspython"):
            trio.run(forward, ["localhost", "tcp+dnssrv://x"], r)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"bulk": True, "durable": True}, "choose one of durable and bulk"),
        ({"bulk": True, "bulk_size": 0}, "bulk size, age and timeout must be positive"),
        ({"bulk": True, "bulk_age": 0}, "bulk size, age and timeout must be positive"),
        ({"buffer_size": 0}, "buffer size"),
        ({"prefixes": ["a\nb"]}, "newline"),
        ({"backoff_initial": 0}, "backoff"),
        ({"max_line_size": 0}, "max line size"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        trio.run(lambda: forward(["localhost"], 0, **kw))


# --- data path ---------------------------------------------------------------


def test_exact_bytes_arrive():
    stats = ForwardStats()
    (ing,) = forward_to_fakes(TRICKY, stats=stats)
    assert ing.data == TRICKY + b"\n"
    assert len(ing.conns) == 1
    assert stats.lines_sent == TRICKY.count(b"\n") + 1
    assert stats.bytes_sent == len(TRICKY) + 1
    assert stats.lines_dropped == 0 and stats.reconnects == 0
    assert stats.lines_unconfirmed == 0  # a clean close confirms everything


def test_exact_bytes_byte_by_byte():
    (ing,) = forward_to_fakes(TRICKY, chunks=[1] * len(TRICKY))
    assert ing.data == TRICKY + b"\n"


def test_prefixes():
    data = b"one %s\n\ntwo\xff\nthree"
    stats = ForwardStats()
    (ing,) = forward_to_fakes(data, prefixes=["host=a", "app=%d", b"raw=\xfe"], stats=stats)
    p = b"host=a app=%d raw=\xfe "
    assert ing.data == p + b"one %s\n" + p + b"\n" + p + b"two\xff\n" + p + b"three\n"
    assert stats.bytes_sent == len(ing.data)


def test_single_prefix_string():
    (ing,) = forward_to_fakes(b"a\nb\n", prefixes="x")
    assert ing.data == b"x a\nx b\n"


def test_random_lines_random_chunks():
    rnd = random.Random(7)
    lines = []
    for i in range(3000):
        n = rnd.choice([0, 1, 5, 80, 300, 4000])
        body = bytes(rnd.choice(b"abc %\x00\r\t\xff") for _ in range(n))
        lines.append(b"%d " % i + body + b"\n")
    lines.insert(1500, b"big " + b"x" * (700 * 1024) + b"\n")  # spans several reads
    data = b"".join(lines)
    chunks = [rnd.choice([1, 7, 4096, 70000, 300000]) for _ in range(200)]
    (ing,) = forward_to_fakes(data, chunks=chunks)
    assert ing.data == data


def test_large_volume_exact():
    data = b"".join(b"line %08d %s\n" % (i, b"y" * (i % 200)) for i in range(200_000))
    stats = ForwardStats()
    (ing,) = forward_to_fakes(data, stats=stats)
    assert ing.data == data
    assert stats.lines_sent == 200_000


def test_empty_input_never_connects(start_first):
    stats = ForwardStats()

    async def main():
        await run_forward([f"127.0.0.1:{dead_port()}"], b"", stats=stats)

    trio.run(main)
    assert stats.lines_sent == 0 and stats.reconnects == 0


def test_over_long_lines_are_dropped(caplog):
    caplog.set_level(logging.WARNING, logger="oklog.forward")
    data = b"a\n" + b"L" * 5000 + b"\nb\n" + b"M" * 1000 + b"\nc\n" + b"N" * 3000
    stats = ForwardStats()
    (ing,) = forward_to_fakes(data, chunks=[1, 2, 3, 999, 1500, 10, 4000], max_line_size=1000, stats=stats)
    assert ing.data == b"a\nb\n" + b"M" * 1000 + b"\nc\n"
    assert stats.lines_dropped == 2
    assert "reason=line_too_long" in caplog.text


def test_over_long_line_completed_in_one_read():
    # The carry is short, but carry + the rest of the line is too long.
    data = b"a\n" + b"L" * 600 + b"\nz\n"
    stats = ForwardStats()
    (ing,) = forward_to_fakes(data, chunks=[400], max_line_size=500, stats=stats)
    assert ing.data == b"a\nz\n"
    assert stats.lines_dropped == 1


# --- failover ----------------------------------------------------------------


def test_failover_when_first_refuses(start_first, caplog):
    caplog.set_level(logging.INFO, logger="oklog.forward")
    stats = ForwardStats()
    ing = FakeIngester()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            targets = [f"127.0.0.1:{dead_port()}", f"tcp://127.0.0.1:{ing.port}"]
            await run_forward(targets, TRICKY, stats=stats, backoff_initial=0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == TRICKY + b"\n"
    assert stats.reconnects == 1
    assert "event=failover op=connect" in caplog.text
    assert "event=connect target=tcp://127.0.0.1:" in caplog.text


def test_round_robin_wraps_and_backoff_grows(monkeypatch, caplog):
    """Start at the last target; the dead ones are tried in order with doubling backoff."""
    caplog.set_level(logging.INFO, logger="oklog.forward")

    class LastTarget:
        def randrange(self, n):
            return n - 1

    monkeypatch.setattr(fwd, "_rng", LastTarget())
    sleeps = []
    real_sleep = trio.sleep

    async def fake_sleep(t):
        sleeps.append(t)
        await real_sleep(0)

    monkeypatch.setattr(fwd.trio, "sleep", fake_sleep)
    ing = FakeIngester()
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            d1, d2 = dead_port(), dead_port()
            targets = [f"127.0.0.1:{d1}", ing.addr, f"127.0.0.1:{d2}"]
            await run_forward(targets, b"x\n", stats=stats, backoff_initial=0.5, backoff_max=0.8)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == b"x\n"
    assert stats.reconnects == 2  # d2, then d1, then the live one
    assert sleeps[:2] == [0.5, 0.8]


def test_failover_when_closed_mid_stream(start_first):
    """The first ingester closes after the first block; the rest goes to the second, nothing lost."""
    block_a = b"".join(b"a%d %%s\n" % i for i in range(10))
    block_b = b"".join(b"b%d \xff\n" % i for i in range(10)) + b"tail"
    ing1 = FakeIngester(close_after=len(block_a))
    ing2 = FakeIngester()
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing1.start(n)
            await ing2.start(n)
            r, w = os.pipe()
            stream = trio.lowlevel.FdStream(w)

            async def producer():
                async with stream:
                    await stream.send_all(block_a)
                    await ing1.closed.wait()
                    await trio.sleep(0.2)
                    await stream.send_all(block_b)

            n.start_soon(producer)
            with trio.fail_after(30):
                await forward([ing1.addr, ing2.addr], r, stats=stats, backoff_initial=0.01)
            os.close(r)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing1.data == block_a
    assert ing2.data == block_b + b"\n"
    assert stats.reconnects == 1
    assert stats.lines_sent == 21
    # the first connection broke: what it carried is reported, not assumed delivered
    assert stats.lines_unconfirmed == 10 and stats.lines_dropped == 0


def test_failover_when_closed_mid_flow(start_first):
    """Under continuous flow the first ingester drops the connection: what
    arrives is whole lines, in order, and the stream ends at the second one."""
    total = 100_000
    lines = [b"%07d %s\n" % (i, b"z" * 100) for i in range(total)]
    data = b"".join(lines)
    ing1 = FakeIngester(close_after=1_000_003)  # mid-line
    ing2 = FakeIngester()
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing1.start(n)
            await ing2.start(n)
            await run_forward([ing1.addr, ing2.addr], data, stats=stats, backoff_initial=0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    got1 = ing1.data[: ing1.data.rfind(b"\n") + 1].splitlines(keepends=True)
    got2 = ing2.data.splitlines(keepends=True)
    assert got1 == lines[: len(got1)]
    assert got2[-1] == lines[-1]
    idx2 = [int(ln[:7]) for ln in got2]
    assert idx2 == sorted(idx2) and len(set(idx2)) == len(idx2)
    assert all(ln == lines[i] for i, ln in zip(idx2, got2))
    # No acks in the line protocol: at most what sat in socket buffers is lost,
    # and every line that may be lost is reported as unconfirmed.
    assert len(got1) + len(got2) >= total * 0.5
    assert stats.reconnects >= 1
    assert total - len(got2) <= stats.lines_unconfirmed <= stats.lines_sent - len(got2)


def test_tcp_dns_each_address_is_a_target(start_first):
    """localhost may resolve to ::1 and 127.0.0.1; only the latter listens."""
    ing = FakeIngester()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            await run_forward([f"tcp+dns://localhost:{ing.port}"], TRICKY, backoff_initial=0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == TRICKY + b"\n"


def _fake_getaddrinfo(answers, calls):
    real = trio.socket.getaddrinfo

    async def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host != "ingest.example":  # open_tcp_stream resolves the IPs too
            return await real(host, port, family, type, proto, flags)
        calls.append(host)
        ips = answers[min(len(calls), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    return getaddrinfo


def test_tcp_dns_all_records_are_targets(monkeypatch, start_first):
    """Two A records: 127.0.0.2 (nothing listens there) then 127.0.0.1."""
    calls = []
    monkeypatch.setattr(trio.socket, "getaddrinfo",
                        _fake_getaddrinfo([["127.0.0.2", "127.0.0.2", "127.0.0.1"]], calls))
    ing = FakeIngester()
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            await run_forward([f"tcp+dns://ingest.example:{ing.port}"], TRICKY, stats=stats,
                              backoff_initial=0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == TRICKY + b"\n"
    assert stats.reconnects == 1  # duplicates removed: one dead address, tried once
    assert calls == ["ingest.example"]


def test_tcp_dns_re_resolved_when_rotation_wraps(monkeypatch, start_first):
    calls = []
    monkeypatch.setattr(trio.socket, "getaddrinfo",
                        _fake_getaddrinfo([["127.0.0.2"], ["127.0.0.2"], ["127.0.0.1"]], calls))
    ing = FakeIngester()
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            await run_forward([f"tcp+dns://ingest.example:{ing.port}"], b"r\n", stats=stats,
                              backoff_initial=0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == b"r\n"
    assert len(calls) == 3
    assert stats.reconnects == 2


def test_tcp_dns_unresolvable_then_next(start_first, caplog):
    caplog.set_level(logging.WARNING, logger="oklog.forward")
    ing = FakeIngester()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            targets = ["tcp+dns://no-such-host.invalid:1", ing.addr]
            await run_forward(targets, b"q\n", backoff_initial=0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == b"q\n"
    assert "event=resolve" in caplog.text


def test_tcp_dnssrv_with_fake_lookup(monkeypatch, start_first):
    ing = FakeIngester()
    looked_up = []

    def fake_lookup(name):
        looked_up.append(name)
        return [("127.0.0.1", dead_port()), ("127.0.0.1", ing.port)]

    monkeypatch.setattr(fwd, "_have_dnspython", lambda: True)
    monkeypatch.setattr(fwd, "_lookup_srv", fake_lookup)
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            await run_forward(["tcp+dnssrv://_oklog._tcp.example.com"], b"srv\n", stats=stats,
                              backoff_initial=0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == b"srv\n"
    assert looked_up[0] == "_oklog._tcp.example.com"
    assert stats.reconnects == 1


def test_tcp_dnssrv_explicit_port_overrides(monkeypatch, start_first):
    ing = FakeIngester()
    monkeypatch.setattr(fwd, "_have_dnspython", lambda: True)
    monkeypatch.setattr(fwd, "_lookup_srv", lambda name: [("127.0.0.1", 1)])

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            await run_forward([f"tcp+dnssrv://svc.example.com:{ing.port}"], b"p\n")
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == b"p\n"


# --- buffer: backpressure vs drop --------------------------------------------

BIG_LINES = 400_000  # ~40 MB: far more than socket + pipe buffers


def _big_data() -> tuple[list[bytes], bytes]:
    lines = [b"%07d %s\n" % (i, b"w" * 92) for i in range(BIG_LINES)]
    return lines, b"".join(lines)


def test_backpressure_blocks_the_producer():
    lines, data = _big_data()
    hold = trio.Event()
    ing = FakeIngester(hold=hold)
    stats = ForwardStats()
    written = trio.Event()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            r, w = os.pipe()

            async def producer():
                await feed(w, data)
                written.set()

            n.start_soon(producer)
            n.start_soon(lambda: forward([ing.addr], r, stats=stats, buffer_size=1000))
            await trio.sleep(1.0)
            assert not written.is_set(), "producer should be blocked by backpressure"
            assert stats.lines_dropped == 0
            hold.set()
            with trio.fail_after(60):
                await written.wait()
                while not ing.closed.is_set():
                    await trio.sleep(0.01)
            os.close(r)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == data
    assert stats.lines_dropped == 0
    assert stats.lines_sent == BIG_LINES


def test_drop_oldest_when_full(caplog):
    caplog.set_level(logging.WARNING, logger="oklog.forward")
    lines, data = _big_data()
    hold = trio.Event()
    ing = FakeIngester(hold=hold)
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            r, w = os.pipe()
            done = trio.Event()

            async def run():
                await forward([ing.addr], r, stats=stats, buffer_size=1000, drop=True)
                done.set()

            n.start_soon(run)
            with trio.fail_after(30):
                await feed(w, data)  # never blocked for long: the forwarder drops instead
            await trio.sleep(0.3)
            hold.set()
            with trio.fail_after(30):
                await done.wait()
            os.close(r)
            n.cancel_scope.cancel()

    trio.run(main)
    got = ing.data.splitlines(keepends=True)
    idx = [int(ln[:7]) for ln in got]
    assert stats.lines_dropped > 0
    assert stats.lines_sent + stats.lines_dropped == BIG_LINES
    assert len(got) == stats.lines_sent
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert all(ln == lines[i] for i, ln in zip(idx, got))
    assert idx[-1] == BIG_LINES - 1  # the newest lines survive
    assert "reason=buffer_full" in caplog.text


def test_buffer_drop_trims_oldest_block_by_lines():
    async def main():
        buf = fwd._Buffer(max_lines=5, max_bytes=1 << 20, drop=True)
        assert await buf.put(b"1\n2\n3\n", 3) == 0
        assert await buf.put(b"4\n5\n", 2) == 0
        assert await buf.put(b"6\n7\n", 2) == 2  # drops 1 and 2, keeps 3
        assert buf.lines == 5
        assert await buf.get(1 << 20) == (b"3\n4\n5\n6\n7\n", 5)
        assert await buf.put(b"a\nb\nc\nd\ne\nf\ng\n", 7) == 0  # alone: always admitted
        assert await buf.put(b"h\n", 1) == 3  # keeps the newest 5 lines
        buf.close()
        assert await buf.get(1 << 20) == (b"d\ne\nf\ng\nh\n", 5)
        assert await buf.get(1 << 20) is None

    trio.run(main)


def test_buffer_byte_bound_and_batching():
    async def main():
        buf = fwd._Buffer(max_lines=100, max_bytes=10, drop=True)
        await buf.put(b"aaaa\n", 1)
        await buf.put(b"bbbb\n", 1)
        assert await buf.put(b"cc\n", 1) == 1  # 13 bytes > 10: oldest block goes
        assert await buf.get(6) == (b"bbbb\n", 1)  # batch limited to 6 bytes
        assert await buf.get(6) == (b"cc\n", 1)

    trio.run(main)


# --- as a separate process ------------------------------------------------------


def test_forward_in_child_process():
    ing = FakeIngester()
    big = b"".join(b"%d %%s \xff\x00\r\n" % i for i in range(50_000))
    data = TRICKY + b"\n" + big + b"no LF at the end"

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            code = (
                "import logging, trio, oklog.forward as f;"
                "logging.basicConfig(level=logging.INFO);"
                f"trio.run(f.forward, ['tcp://127.0.0.1:{ing.port}'])"
            )
            with trio.fail_after(60):
                proc = await trio.run_process(
                    [sys.executable, "-c", code], stdin=data, capture_stderr=True, check=False
                )
            assert proc.returncode == 0, proc.stderr.decode()
            assert b"event=connect" in proc.stderr
            assert b"event=done" in proc.stderr
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == data + b"\n"


def test_bad_source_fd():
    bad = 987_654  # far above anything open
    with pytest.raises(ConfigError, match=f"file descriptor {bad}"):
        trio.run(forward, ["localhost"], bad)


def test_an_ingester_that_never_closes_leaves_the_lines_unconfirmed(caplog):
    hold = trio.Event()
    ing = FakeIngester(hold=hold)
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            await run_forward([ing.addr], b"one\ntwo\nthree\n", stats=stats, close_timeout=0.3)
            n.cancel_scope.cancel()

    trio.run(main)
    assert stats.lines_sent == 3 and stats.lines_unconfirmed == 3
    assert any("lines_unconfirmed=3" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_an_ingester_that_closes_before_our_eof_leaves_the_lines_unconfirmed(start_first):
    """It may have read them all, or not: only a close after our EOF confirms."""
    ing = FakeIngester(close_after=len(b"one\ntwo\n"))
    stats = ForwardStats()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            r, w = os.pipe()
            stream = trio.lowlevel.FdStream(w)

            async def producer():
                async with stream:
                    await stream.send_all(b"one\ntwo\n")
                    await ing.closed.wait()  # closed by the ingester...
                    await trio.sleep(0.2)  # ...and seen by the forwarder, before stdin ends

            n.start_soon(producer)
            with trio.fail_after(30):
                await forward([ing.addr], r, stats=stats)
            os.close(r)
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == b"one\ntwo\n"
    assert stats.lines_sent == 2 and stats.lines_unconfirmed == 2


def test_status_fields_give_totals_rate_and_target():
    from oklog.forward import status_fields

    before = ForwardStats(lines_sent=100, bytes_sent=1000)
    now = ForwardStats(lines_sent=600, bytes_sent=6000, lines_dropped=3, reconnects=1)
    fields = status_fields(before, now, 2.0, 42, "127.0.0.1:7651")
    assert fields == {"event": "status", "target": "127.0.0.1:7651", "lines_sent": 600,
                      "lines_per_s": "250", "bytes_sent": 6000, "buffered_lines": 42,
                      "lines_dropped": 3, "lines_unconfirmed": 0, "reconnects": 1}
    assert status_fields(now, now, 0.0, 0, None)["target"] == "none"


def test_verbose_forward_logs_a_status_line_periodically():
    """`oklog forward -v -status-interval 200ms` with a producer that keeps writing."""
    ing = FakeIngester()

    async def main():
        async with trio.open_nursery() as n:
            await ing.start(n)
            proc = await n.start(partial(
                trio.run_process,
                [sys.executable, "-m", "oklog", "forward", "-v", "-status-interval", "200ms",
                 f"127.0.0.1:{ing.port}"],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE, check=False))
            assert proc.stdin is not None and proc.stderr is not None
            for i in range(12):
                await proc.stdin.send_all(b"status line %d\n" % i)
                await trio.sleep(0.1)
            await proc.stdin.aclose()
            err = b""
            with trio.fail_after(60):
                async for chunk in proc.stderr:
                    err += chunk
                await proc.wait()
            assert proc.returncode == 0, err.decode()
            statuses = [line for line in err.splitlines() if b"event=status" in line]
            assert len(statuses) >= 3, err.decode()
            assert b"target=127.0.0.1:%d" % ing.port in statuses[-1]
            assert b"lines_per_s=" in statuses[-1] and b"buffered_lines=" in statuses[-1]
            n.cancel_scope.cancel()

    trio.run(main)
    assert ing.data == b"".join(b"status line %d\n" % i for i in range(12))
