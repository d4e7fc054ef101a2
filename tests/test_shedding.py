"""Load shedding: the policy, the meter and the tag (IO-free), then the gate
on real sockets in one process (refusals lose nothing, each is counted)."""

from __future__ import annotations

import functools
from functools import partial
import os
import random
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from oklog.forward import ForwardStats, forward
from oklog.ingest.bulk import BulkIngester, serve_bulk
from oklog.cluster.membership import SerfMembership, StaticMembership
from oklog.cluster.serf import Member
from oklog.ingest.gate import Gate, peer_loads, warn_inactive
from oklog.ingest.log import IngestLog
from oklog.ingest.server import LineIngester, serve_lines
from oklog.ingest.shedding import (
    MIN_CONNECTIONS,
    MIN_RATE,
    Load,
    LoadMeter,
    ShedPolicy,
    changed_enough,
    format_load,
    parse_load,
)
from oklog.tls import client_context, server_context
from tests.certs import have_openssl, make_pki
from oklog.ulid import Stamper

# --- the policy ----------------------------------------------------------------------


def test_max_connections_alone():
    p = ShedPolicy(max_connections=4)
    assert p.decide(Load(3), []) is None
    assert p.decide(Load(4), []) == "max_connections"
    assert p.decide(Load(9), [Load(100)] * 3) == "max_connections"
    assert ShedPolicy().decide(Load(10_000, 1e12), [Load(0)] * 5) is None  # all off
    assert not ShedPolicy().enabled and ShedPolicy(factor=2).enabled


def test_cluster_rule_refuses_far_above_the_mean():
    p = ShedPolicy(factor=2)
    quiet = [Load(2), Load(2), Load(2)]
    assert p.decide(Load(30), quiet) == "load"  # the others' mean is 2
    assert p.decide(Load(5), quiet) == "load"  # 5 > 4
    assert p.decide(Load(4), quiet) is None  # not above 4
    assert p.decide(Load(4, refusing=True), quiet) is None  # its own flag does not matter
    assert p.decide(Load(5), [Load(1), Load(4)]) is None  # mean 2.5


def test_cluster_rule_by_rate():
    p = ShedPolicy(factor=2)
    mib = float(MIN_RATE)
    assert p.decide(Load(1, 40 * mib), [Load(1, mib)] * 3) == "load"
    assert p.decide(Load(1, 2 * mib), [Load(1, mib)] * 3) is None  # not above 2 x 1 MiB/s
    # far above the mean, but below the floor: an idle cluster never sheds
    assert p.decide(Load(1, mib / 2), [Load(1, 0.0)] * 3) is None
    assert p.decide(Load(MIN_CONNECTIONS - 1), [Load(0)] * 3) is None


def test_never_alone_and_never_more_than_a_handful():
    p = ShedPolicy(factor=2)
    assert p.decide(Load(1000, 1e9), []) is None  # no peer load known: a node never sheds alone
    assert [p.allowed_refusing(n) for n in (1, 2, 3, 4, 7, 8, 12, 100)] == [0, 1, 1, 1, 1, 2, 3, 25]
    busy = Load(100)
    assert p.decide(busy, [Load(1)]) == "load"  # 2 ingesters: one may refuse
    assert p.decide(busy, [Load(1, refusing=True)]) is None  # ... but not both
    peers = [Load(1, refusing=True)] + [Load(1)] * 6  # 8 ingesters: two may refuse
    assert p.decide(busy, peers) == "load"
    peers[1] = Load(1, refusing=True)
    assert p.decide(busy, peers) is None


def test_policy_rejects_nonsense():
    for kw in ({"max_connections": -1}, {"factor": 1.0}, {"factor": 0.5}, {"factor": float("inf")},
               {"factor": float("nan")}, {"refusing_fraction": 1.0}):
        with pytest.raises(ValueError):
            ShedPolicy(**kw)  # type: ignore[arg-type]


loads = st.builds(Load, st.integers(0, 10_000), st.floats(0, 1e10), st.floats(0, 1e8), st.booleans())


@given(st.lists(loads, min_size=1, max_size=30), st.floats(1.01, 20), st.integers(0, 50))
def test_someone_always_accepts(cluster, factor, cap):
    """Whatever the loads: no node sheds alone, the refusing never exceed
    the handful, and the rule cannot refuse on every node at once."""
    p = ShedPolicy(factor=factor)
    n = len(cluster)
    verdicts = [p.decide(me, cluster[:i] + cluster[i + 1:]) for i, me in enumerate(cluster)]
    if n == 1:
        assert verdicts == [None]
    assert None in verdicts
    already = sum(load.refusing for load in cluster)
    for i, verdict in enumerate(verdicts):
        if verdict is not None:
            others = already - cluster[i].refusing
            assert others < p.allowed_refusing(n)
    # the cap alone: refuses exactly at or above it
    capped = ShedPolicy(max_connections=cap)
    for load in cluster:
        assert (capped.decide(load, cluster) is not None) == (cap > 0 and load.connections >= cap)


# --- the tag and the meter -----------------------------------------------------------


@given(loads)
def test_tag_round_trip(load):
    text = format_load(load)
    assert len(text) < 100
    back = parse_load(text)
    assert back == Load(load.connections, float(int(load.bytes_per_second)),
                        float(int(load.records_per_second)), load.refusing)


@pytest.mark.parametrize("bad", ["", "conns=1", "conns=1,bps=2,rps=3", "conns=1,bps=2,rps=3,refusing=2",
                                 "conns=-1,bps=2,rps=3,refusing=0", "conns=1,bps=2,rps=3,refusing=0,x=1",
                                 "conns=1,conns=1,bps=2,rps=3,refusing=0", "conns=١,bps=2,rps=3,refusing=0",
                                 "conns=1,bps=1e5,rps=3,refusing=0", "conns=" + "9" * 40 + ",bps=2,rps=3,refusing=0"])
def test_malformed_tags_are_ignored(bad):
    assert parse_load(bad) is None


@given(st.text(max_size=60))
def test_any_tag_parses_or_is_ignored(text):
    load = parse_load(text)
    assert load is None or isinstance(load, Load)


def test_changed_enough():
    assert changed_enough(None, Load())
    assert not changed_enough(Load(0), Load(0))
    assert changed_enough(Load(0), Load(1))
    assert changed_enough(Load(5), Load(5, refusing=True))
    assert not changed_enough(Load(100), Load(105))
    assert changed_enough(Load(100), Load(111))
    assert not changed_enough(Load(1, 1e6), Load(1, 1.1e6))  # 10 %
    assert changed_enough(Load(1, 1e6), Load(1, 1.3e6))
    assert not changed_enough(Load(1, 0.0), Load(1, 1000.0))  # below 64 KiB/s: noise


def test_meter_counts_and_rates():
    m = LoadMeter(window=5)
    assert m.rates() == (0.0, 0.0)
    m.opened(), m.opened(), m.closed()
    assert m.connections == 1
    m.sample(0.0)
    for t in range(1, 11):
        m.add(1000, 10)
        m.sample(float(t))
    assert m.rates() == (1000.0, 10.0)
    for t in range(11, 21):  # idle: the window forgets the old traffic
        m.sample(float(t))
    assert m.rates() == (0.0, 0.0)
    assert m.load(refusing=True) == Load(1, 0.0, 0.0, True)
    with pytest.raises(ValueError):
        m.sample(3.0)
    m.closed()
    with pytest.raises(ValueError):
        m.closed()


# --- the gate on real sockets ------------------------------------------------------------


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))
    return run


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("oklog_ingest_refused_connections_total", {"reason": reason}) or 0.0


class Ingester:
    """An ingest log with gated fast and bulk ports on 127.0.0.1."""

    def __init__(self, path: Path, gate: Gate, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.log = IngestLog(path, flush_size=1 << 30, flush_age=3600)
        self.log.open()
        self.gate = gate
        self.lines = LineIngester(self.log, max_record_size=1 << 20, stamper=Stamper())
        self.lines.meter = gate.meter
        self.bulk = BulkIngester(self.log, stamp_block=self.lines.stamp_block, max_record_size=1 << 20,
                                 max_size=1 << 24, ack_timeout=5)

    async def start(self, nursery: trio.Nursery) -> tuple[int, int]:
        fast = await nursery.start(partial(serve_lines, gate=self.gate), self.lines, "127.0.0.1", 0, False,
                                   self.tls)
        bulk = await nursery.start(partial(serve_bulk, gate=self.gate), self.bulk, "127.0.0.1", 0)
        return fast, bulk

    async def payloads(self) -> list[bytes]:
        await self.log.flush()
        out = []
        for f in sorted(self.log.path.glob("*.flushed")):
            out += [line.split(b" ", 2)[2] for line in f.read_bytes().splitlines()]
        return out


@trio_test
async def test_held_connections_then_refusal_then_accept_again(tmp_path):
    ing = Ingester(tmp_path, Gate(ShedPolicy(max_connections=2), grace=5))
    before = refused("max_connections")
    async with trio.open_nursery() as nursery:
        fast, _ = await ing.start(nursery)
        held = [await trio.open_tcp_stream("127.0.0.1", fast) for _ in range(2)]
        with trio.fail_after(10):
            while ing.gate.meter.connections < 2:
                await trio.sleep(0.01)
        third = await trio.open_tcp_stream("127.0.0.1", fast)
        await third.send_all(b"sent before the refusal was seen\n")
        with trio.fail_after(10):
            assert await third.receive_some(10) == b""  # FIN: refused
        await third.send_eof()  # as a forwarder does: closes, and what it sent is stored
        await held[0].aclose()
        with trio.fail_after(10):
            while ing.gate.meter.connections > 1:
                await trio.sleep(0.01)
        again = await trio.open_tcp_stream("127.0.0.1", fast)
        with trio.move_on_after(0.5) as idle:
            await again.receive_some(10)
        assert idle.cancelled_caught  # admitted: nothing comes back
        await again.send_all(b"admitted\n")
        for s in (held[1], again):
            await s.aclose()
        with trio.fail_after(10):
            while ing.gate.meter.connections:
                await trio.sleep(0.01)
        assert refused("max_connections") == before + 1
        assert sorted(await ing.payloads()) == [b"admitted", b"sent before the refusal was seen"]
        nursery.cancel_scope.cancel()
    ing.log.close()


@trio_test
async def test_bulk_refusal_is_an_err(tmp_path):
    ing = Ingester(tmp_path, Gate(ShedPolicy(max_connections=1), grace=5))
    async with trio.open_nursery() as nursery:
        fast, bulk = await ing.start(nursery)
        hold = await trio.open_tcp_stream("127.0.0.1", fast)
        with trio.fail_after(10):
            while ing.gate.meter.connections < 1:
                await trio.sleep(0.01)
        up = await trio.open_tcp_stream("127.0.0.1", bulk)
        await up.send_all(b"a\nb\n" * 1000)
        await up.send_eof()
        reply = b""
        with trio.fail_after(10):
            while chunk := await up.receive_some(1000):
                reply += chunk
        assert reply.startswith(b"ERR refused: too many connections")
        await hold.aclose()
        await up.aclose()
        nursery.cancel_scope.cancel()
    assert await ing.payloads() == []  # discarded: the client sends it elsewhere
    ing.log.close()


@trio_test
async def test_cluster_rule_sheds_and_forward_loses_nothing(tmp_path, monkeypatch):
    """An ingester refusing by the cluster rule; real ``forward`` runs
    listing both ingesters keep every line, and some land on the other."""
    peers = [Load(0)]
    busy = Ingester(tmp_path / "busy", Gate(ShedPolicy(factor=2, min_connections=1), peers=lambda: peers))
    idle = Ingester(tmp_path / "idle", Gate(ShedPolicy()))
    monkeypatch.setattr("oklog.forward._rng", random.Random(0))
    stats = [ForwardStats() for _ in range(6)]
    sent: list[bytes] = []
    async with trio.open_nursery() as nursery:
        busy_port, _ = await busy.start(nursery)
        idle_port, _ = await idle.start(nursery)
        hold = await trio.open_tcp_stream("127.0.0.1", busy_port)  # 1 connection vs the other's 0
        with trio.fail_after(10):
            while busy.gate.meter.connections < 1:
                await trio.sleep(0.01)
        assert busy.gate.decide() == "load"
        before = refused("load")

        async def one(i: int) -> None:
            lines = [b"fwd%d line %d" % (i, n) for n in range(3000)]
            sent.extend(lines)
            r, w = os.pipe()
            async with trio.open_nursery() as inner:
                inner.start_soon(_feed, w, b"\n".join(lines) + b"\n")
                await forward([f"127.0.0.1:{busy_port}", f"127.0.0.1:{idle_port}"], r, stats=stats[i],
                              backoff_initial=0.01, backoff_max=0.05)
            os.close(r)

        with trio.fail_after(60):
            async with trio.open_nursery() as fwds:
                for i in range(len(stats)):
                    fwds.start_soon(one, i)
        await hold.aclose()
        with trio.fail_after(10):
            while busy.gate.meter.connections:
                await trio.sleep(0.01)
        got_busy, got_idle = await busy.payloads(), await idle.payloads()
        nursery.cancel_scope.cancel()
    assert sorted(got_busy + got_idle) == sorted(sent)  # every line, once
    assert len(got_idle) > 0
    # forwarders that started at busy wrote a batch there (stored), saw the
    # close and went on at idle
    moved = [st for st in stats if st.reconnects]
    assert moved and all(st.lines_unconfirmed for st in moved)
    assert refused("load") > before  # some forwarders tried the busy one first
    for log in (busy.log, idle.log):
        log.close()


async def _feed(fd: int, data: bytes, slices: int = 10) -> None:
    """Write ``data`` into a pipe in slices a moment apart (so a forwarder
    sends several batches), then close it."""
    stream = trio.lowlevel.FdStream(fd)
    step = len(data) // slices + 1
    for i in range(0, len(data), step):
        await stream.send_all(data[i:i + step])
        await trio.sleep(0.02)
    await stream.aclose()


@pytest.mark.skipif(not have_openssl(), reason="openssl is not installed")
@trio_test
async def test_tls_refusal_resets_before_the_handshake_and_forward_loses_nothing(tmp_path, monkeypatch):
    pki = make_pki(tmp_path / "pki")
    server = server_context(pki.node_cert, pki.node_key, alpn=[])
    full = Ingester(tmp_path / "full", Gate(ShedPolicy(max_connections=1)), tls=server)
    free = Ingester(tmp_path / "free", Gate(ShedPolicy()), tls=server)
    monkeypatch.setattr("oklog.forward._rng", random.Random(1))
    before = refused("max_connections")
    lines = [b"tls line %d" % n for n in range(5000)]
    async with trio.open_nursery() as nursery:
        full_port, _ = await full.start(nursery)
        free_port, _ = await free.start(nursery)
        hold = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", full_port),
                              client_context(pki.ca, alpn=[]), server_hostname="127.0.0.1")
        await hold.do_handshake()
        with trio.fail_after(10):
            while full.gate.meter.connections < 1:
                await trio.sleep(0.01)
        r, w = os.pipe()
        stats = ForwardStats()
        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                inner.start_soon(_feed, w, b"\n".join(lines) + b"\n")
                await forward([f"tls://127.0.0.1:{full_port}"] * 3 + [f"tls://127.0.0.1:{free_port}"], r,
                              stats=stats, tls=client_context(pki.ca, alpn=[]),
                              backoff_initial=0.01, backoff_max=0.05)
        os.close(r)
        await trio.aclose_forcefully(hold)
        with trio.fail_after(10):
            while full.gate.meter.connections:
                await trio.sleep(0.01)
        got_full, got_free = await full.payloads(), await free.payloads()
        nursery.cancel_scope.cancel()
    assert got_full == [] and sorted(got_free) == sorted(lines)
    assert stats.lines_unconfirmed == 0 and stats.reconnects >= 1  # random start 1 of 4 -> full first
    assert refused("max_connections") > before
    for log in (full.log, free.log):
        log.close()


@trio_test
async def test_run_publishes_when_load_changes():
    sent: list[dict[str, str]] = []

    async def publish(tags: dict[str, str]) -> None:
        sent.append(tags)

    peers = [Load(0)]
    gate = Gate(ShedPolicy(factor=2, min_connections=1), peers=lambda: peers)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(gate.run, publish, tick=0.05))
        await trio.sleep(0.3)
        assert sent == [{"oklog.load": "conns=0,bps=0,rps=0,refusing=0"}]  # once, not every tick
        gate.meter.opened()  # one connection against the others' 0: refusing by load
        with trio.fail_after(5):
            while len(sent) < 2:
                await trio.sleep(0.01)
        assert sent[1] == {"oklog.load": "conns=1,bps=0,rps=0,refusing=1"}
        assert gate.refusing == "load"
        gate.meter.closed()
        with trio.fail_after(5):
            while len(sent) < 3:
                await trio.sleep(0.01)
        assert sent[2] == {"oklog.load": "conns=0,bps=0,rps=0,refusing=0"} and gate.refusing is None
        nursery.cancel_scope.cancel()


def test_peer_loads_reads_the_other_alive_ingesters():
    m = SerfMembership("127.0.0.1:1", "http://127.0.0.1:7650", "ingest")
    m.name = "me"

    def member(name: str, role: str, load: str | None, status: str = "alive") -> Member:
        tags = {"oklog.role": role, "oklog.api": f"127.0.0.1:{len(name)}"}
        if load is not None:
            tags["oklog.load"] = load
        return Member(name, "127.0.0.1", 7946, tags, status)

    tag = "conns=%d,bps=0,rps=0,refusing=0"
    m._update([member("me", "ingest", tag % 9), member("a", "ingest", tag % 1),
               member("b", "ingeststore", tag % 2), member("c", "store", tag % 3),
               member("d", "ingest", tag % 4, status="failed"), member("e", "ingest", None),
               member("f", "ingest", "garbage")])
    assert sorted(x.connections for x in peer_loads(m)) == [1, 2]
    assert peer_loads(StaticMembership("http://127.0.0.1:7650", "ingest")) == []


@trio_test
async def test_refusals_held_open_are_bounded(tmp_path):
    ing = Ingester(tmp_path, Gate(ShedPolicy(max_connections=1), grace=30, max_draining=1))
    async with trio.open_nursery() as nursery:
        fast, _ = await ing.start(nursery)
        hold = await trio.open_tcp_stream("127.0.0.1", fast)
        with trio.fail_after(10):
            while ing.gate.meter.connections < 1:
                await trio.sleep(0.01)
        lingering = await trio.open_tcp_stream("127.0.0.1", fast)  # refused, never closes
        with trio.fail_after(10):
            assert await lingering.receive_some(10) == b""
        assert ing.gate.draining == 1
        flood = await trio.open_tcp_stream("127.0.0.1", fast)
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            while await flood.receive_some(10):  # reset, not held
                pass
        await lingering.aclose()
        with trio.fail_after(10):
            while ing.gate.draining:
                await trio.sleep(0.01)
        for s in (hold, flood):
            await trio.aclose_forcefully(s)
        nursery.cancel_scope.cancel()
    ing.log.close()


@trio_test
async def test_refusal_log_is_rate_limited_and_the_tail_is_logged(caplog):
    caplog.set_level("WARNING", logger="oklog.ingest")
    gate = Gate(ShedPolicy(max_connections=1), log_interval=0.3)

    async def publish(tags: dict[str, str]) -> None:
        pass

    for _ in range(5):
        gate._refused("max_connections", "fast")
    lines = [r.getMessage() for r in caplog.records if "connection_refused" in r.getMessage()]
    assert len(lines) == 1 and "count=1" in lines[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(gate.run, publish, tick=0.05))
        await trio.sleep(0.6)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "connection_refused" in r.getMessage()]
    assert len(lines) == 2 and "count=4" in lines[1]  # the four held back, once the interval passed


def test_warns_when_the_cluster_rule_cannot_act(caplog):
    caplog.set_level("WARNING", logger="oklog.ingest")
    static = StaticMembership("http://127.0.0.1:7650", "ingest")
    warn_inactive(ShedPolicy(max_connections=3), static)
    assert not caplog.records
    warn_inactive(ShedPolicy(factor=2), static)
    assert "event=shed_factor_inactive" in caplog.text


def test_flags():
    from oklog.config import NodeConfig, flags
    from oklog.errors import ConfigError
    table = dict(flags("ingest"))
    assert NodeConfig().ingest_max_connections == 0 and NodeConfig().ingest_shed_factor == 0.0
    assert table["ingest_max_connections"].parse(4) == 4
    assert table["ingest_shed_factor"].parse("2.5") == 2.5
    assert table["ingest_shed_factor"].parse("0") == 0.0
    for bad in ("1", "0.5", "-2", "nan", "inf", "x"):
        with pytest.raises(ConfigError):
            table["ingest_shed_factor"].parse(bad)
    with pytest.raises(ConfigError):
        table["ingest_max_connections"].parse(-1)
    assert "ingest_shed_factor" not in dict(flags("store"))
