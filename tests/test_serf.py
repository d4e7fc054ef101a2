"""The Serf RPC client and the agent runner, against real agents on 127.0.0.1.

Helpers here (``run``, ``agent_config``, ``agent_pid``...) are shared with
``test_membership.py``.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from oklog.cluster import agent as agent_mod
from oklog.cluster.agent import AgentConfig, available, run_agent
from oklog.cluster.serf import (
    STREAM_BUFFER,
    Member,
    SerfClient,
    go_quote_meta,
    open_serf_client,
    split_host_port,
)
from oklog.errors import ClusterError

# --- helpers -----------------------------------------------------------------------


def run(fn: Callable[[], Awaitable[Any]], limit: float = 40.0) -> Any:
    """trio.run with a hard bound, so a bug fails instead of hanging."""

    async def main() -> Any:
        with trio.fail_after(limit):
            return await fn()

    return trio.run(main)


def free_gossip_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (memberlist binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


def agent_config(
    tmp: Path, name: str, peers: list[str] | None = None, tags: dict[str, str] | None = None
) -> AgentConfig:
    return AgentConfig(
        node_name=f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**6}",
        bind=f"127.0.0.1:{free_gossip_port()}",
        rpc_addr="",
        advertise=None,
        peers=list(peers or []),
        tags=dict(tags or {}),
        log_path=tmp / name / "serf.log",
        fast=True,
    )


def agent_pid(rpc_addr: str) -> int:
    """The pid of the agent listening on ``rpc_addr`` (via /proc)."""
    needle = f"-rpc-addr={rpc_addr}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if needle in args:
            return int(entry)
    raise LookupError(rpc_addr)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def expect_exit(
    config: AgentConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """run_agent for an agent the test will kill: its exit must raise ClusterError."""
    with pytest.raises(ClusterError, match="serf agent exited with code"):
        await run_agent(config, task_status=task_status)


class Agents:
    """Agents of one test, each in its own cancel scope, stopped one at a time.

    Stopping them all at once makes each agent's leave wait for peers that
    are leaving too (Serf's 5 s broadcast timeout); one by one is fast.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running: list[tuple[str, trio.CancelScope, trio.Event]] = []

    async def start(self, config: AgentConfig, *, killed: bool = False) -> str:
        """Start an agent; ``killed``: the test will kill it (exit expected)."""
        scope = trio.CancelScope()
        done = trio.Event()

        async def runner(task_status: trio.TaskStatus[str]) -> None:
            try:
                with scope:
                    if killed:
                        await expect_exit(config, task_status=task_status)
                    else:
                        await run_agent(config, task_status=task_status)
            finally:
                done.set()

        rpc: str = await self._nursery.start(runner)
        self._running.append((rpc, scope, done))
        return rpc

    async def stop(self, rpc: str) -> None:
        for entry in list(self._running):
            if entry[0] == rpc:
                entry[1].cancel()
                await entry[2].wait()
                self._running.remove(entry)

    async def stop_all(self) -> None:
        for rpc, _, _ in reversed(list(self._running)):
            await self.stop(rpc)


@asynccontextmanager
async def agents() -> AsyncIterator[Agents]:
    """An ``Agents`` group that is always stopped (children reaped) on exit."""
    async with trio.open_nursery() as nursery:
        group = Agents(nursery)
        try:
            yield group
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(30):
                    await group.stop_all()
            nursery.cancel_scope.cancel()


async def member_status(rpc: str, name: str) -> str | None:
    host, port = split_host_port(rpc)
    async with open_serf_client(host, port) as client:
        for m in await client.members():
            if m.name == name:
                return m.status
    return None


async def wait_status(rpc: str, name: str, status: str, within: float) -> float:
    """Poll until ``name`` has ``status`` as seen from ``rpc``; returns seconds taken."""
    start = trio.current_time()
    with trio.fail_after(within):
        while await member_status(rpc, name) != status:
            await trio.sleep(0.1)
    return trio.current_time() - start


# --- pure functions ----------------------------------------------------------------


def test_go_quote_meta_escapes_exactly_go_specials() -> None:
    assert go_quote_meta("127.0.0.1:7650") == r"127\.0\.0\.1:7650"
    assert go_quote_meta("a.b(c") == r"a\.b\(c"
    assert go_quote_meta(r"x+*?()|[]{}^$\y") == r"x\+\*\?\(\)\|\[\]\{\}\^\$\\y"
    assert go_quote_meta("plain-name_1 é") == "plain-name_1 é"


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:7373") == ("127.0.0.1", 7373)
    assert split_host_port("tcp://0.0.0.0:7659") == ("0.0.0.0", 7659)
    assert split_host_port("[::1]:7373") == ("::1", 7373)
    assert split_host_port("host", 7659) == ("host", 7659)
    with pytest.raises(ClusterError):
        split_host_port("host")
    with pytest.raises(ClusterError):
        split_host_port("host:http")


def test_member_from_wire_addresses() -> None:
    v4 = Member.from_wire(
        {"Name": "a", "Addr": bytes([127, 0, 0, 1]), "Port": 7946, "Tags": {}, "Status": "alive"}
    )
    assert (v4.addr, v4.port, v4.status) == ("127.0.0.1", 7946, "alive")
    mapped = Member.from_wire(
        {"Name": "b", "Addr": bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 2]), "Port": 1}
    )
    assert mapped.addr == "10.0.0.2"
    v6 = Member.from_wire({"Name": "c", "Addr": bytes(15) + b"\x01", "Port": 1})
    assert v6.addr == "::1"
    with pytest.raises(ClusterError):
        Member.from_wire({"Addr": b"\x01"})


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not available()
    with pytest.raises(ClusterError, match="apt-get install serf"):
        run(lambda: run_agent(agent_config(tmp_path, "x")))


def test_connect_refused_is_cluster_error() -> None:
    async def main() -> None:
        with pytest.raises(ClusterError, match="cannot connect"):
            async with open_serf_client("127.0.0.1", agent_mod.free_loopback_port()):
                pass

    run(main)


# --- against a scripted fake agent (framing and failure branches) --------------------

Script = Callable[[trio.SocketStream, Any, Callable[[Any], bytes]], Awaitable[None]]


async def _requests(stream: trio.SocketStream) -> AsyncIterator[dict[str, Any]]:
    unpacker = msgpack.Unpacker(raw=False)
    while data := await stream.receive_some(65536):
        unpacker.feed(data)
        for obj in unpacker:
            yield obj


async def serve_fake(nursery: trio.Nursery, script: Script) -> int:
    """A TCP server that answers the handshake, then runs ``script``."""

    async def handler(stream: trio.SocketStream) -> None:
        pack = msgpack.Packer(use_bin_type=True).pack
        requests = _requests(stream)
        hello = await requests.__anext__()
        assert hello["Command"] == "handshake"
        await requests.__anext__()  # its body
        await stream.send_all(pack({"Seq": hello["Seq"], "Error": ""}))
        await script(stream, requests, pack)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def with_fake(script: Script, body: Callable[[SerfClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await serve_fake(nursery, script)
            async with open_serf_client("127.0.0.1", port, timeout=2) as client:
                await body(client)
            nursery.cancel_scope.cancel()

    run(main)


def test_bare_header_error_keeps_framing() -> None:
    async def script(stream: trio.SocketStream, requests: Any, pack: Any) -> None:
        req = await requests.__anext__()  # members: no request body
        await stream.send_all(pack({"Seq": req["Seq"], "Error": "Unsupported command"}))
        req = await requests.__anext__()
        member = {"Name": "n", "Addr": bytes([10, 0, 0, 1]), "Port": 1, "Status": "alive"}
        await stream.send_all(pack({"Seq": req["Seq"], "Error": ""}) + pack({"Members": [member]}))
        await trio.sleep_forever()

    async def body(client: SerfClient) -> None:
        with pytest.raises(ClusterError, match="Unsupported command"):
            await client.members()
        [m] = await client.members()
        assert (m.name, m.addr) == ("n", "10.0.0.1")

    with_fake(script, body)


@pytest.mark.parametrize(
    "reply",
    [
        [{"Seq": 999, "Error": ""}],  # nobody asked
        [["not", "a", "header"]],
        [b"\xc1"],  # never-used msgpack byte
        [{"Seq": 1, "Error": ""}, {"Members": "nope"}],  # malformed body
    ],
)
def test_protocol_violation_kills_connection(reply: list[Any]) -> None:
    async def script(stream: trio.SocketStream, requests: Any, pack: Any) -> None:
        await requests.__anext__()
        for item in reply:
            await stream.send_all(item if isinstance(item, bytes) else pack(item))
        await trio.sleep_forever()

    async def body(client: SerfClient) -> None:
        with trio.fail_after(1):
            with pytest.raises(ClusterError):
                await client.members()
        if reply[0] != {"Seq": 1, "Error": ""}:
            assert not client.alive

    with_fake(script, body)


def test_silent_agent_times_out_and_wakes_every_waiter() -> None:
    async def script(stream: trio.SocketStream, requests: Any, pack: Any) -> None:
        await trio.sleep_forever()

    async def body(client: SerfClient) -> None:
        client.timeout = 0.3
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await client.stats()
            except ClusterError as exc:
                errors.append(exc)

        with trio.fail_after(2):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(call)
        assert len(errors) == 3 and not client.alive

    with_fake(script, body)


def test_stream_overflow_drops_and_counts() -> None:
    records = STREAM_BUFFER + 40

    async def script(stream: trio.SocketStream, requests: Any, pack: Any) -> None:
        req = await requests.__anext__()
        assert req["Command"] == "stream"
        await requests.__anext__()  # {"Type": ...}
        seq = req["Seq"]
        data = pack({"Seq": seq, "Error": ""})
        for i in range(records):
            data += pack({"Seq": seq, "Error": ""}) + pack({"Event": f"e{i}", "Members": []})
        await stream.send_all(data)
        req = await requests.__anext__()  # stop, after records we still send
        assert req["Command"] == "stop"
        await requests.__anext__()
        late = pack({"Seq": seq, "Error": ""}) + pack({"Event": "late", "Members": []})
        await stream.send_all(late + pack({"Seq": req["Seq"], "Error": ""}))
        req = await requests.__anext__()  # members: must still be in step
        await stream.send_all(pack({"Seq": req["Seq"], "Error": ""}) + pack({"Members": []}))
        await trio.sleep_forever()

    async def body(client: SerfClient) -> None:
        async with client.stream() as events:
            with trio.fail_after(2):
                while events.dropped < records - STREAM_BUFFER:
                    await trio.sleep(0.01)
            got = [(await events.receive())["Event"] for _ in range(STREAM_BUFFER)]
            assert got == [f"e{i}" for i in range(STREAM_BUFFER)]
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()
        assert await client.members() == []

    with_fake(script, body)


# --- against real agents -------------------------------------------------------------


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_handshake_members_stats(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, "a", tags={"oklog.role": "store"})

    async def main() -> None:
        async with agents() as group:
            rpc = await group.start(cfg)
            host, port = split_host_port(rpc)
            async with open_serf_client(host, port) as client:
                [me] = await client.members()
                assert me.name == cfg.node_name
                assert me.status == "alive"
                assert (me.addr, me.port) == split_host_port(cfg.bind)
                assert me.tags == {"oklog.role": "store"}
                stats = await client.stats()
                assert stats["agent"]["name"] == cfg.node_name

    run(main)
    assert "Serf agent running" in cfg.log_path.read_text()


async def three_agents(group: Agents, tmp: Path, killed: str) -> dict[str, tuple[AgentConfig, str]]:
    """a, b (joined by RPC) and c (joined by -retry-join), all seen alive by a and c."""
    a = agent_config(tmp, "a")
    b = agent_config(tmp, "b")
    c = agent_config(tmp, "c", peers=[a.bind])
    rpcs = {}
    for key, cfg in (("a", a), ("b", b), ("c", c)):
        rpcs[key] = (cfg, await group.start(cfg, killed=key == killed))
    async with open_serf_client(*split_host_port(rpcs["b"][1])) as client:
        assert await client.join([a.bind]) == 1
    for cfg in (a, b, c):
        await wait_status(rpcs["a"][1], cfg.node_name, "alive", within=5)
        await wait_status(rpcs["c"][1], cfg.node_name, "alive", within=5)
    return rpcs


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_rpc_auth(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, "a")
    cfg.rpc_auth = "s3cret"

    async def main() -> None:
        async with agents() as group:
            host, port = split_host_port(await group.start(cfg))
            async with open_serf_client(host, port, auth_key="s3cret") as client:
                assert len(await client.members()) == 1
            async with open_serf_client(host, port) as client:  # handshake only
                with pytest.raises(ClusterError, match="Authentication required"):
                    await client.members()  # a bare-header error: framing survives
                assert client.alive
                with pytest.raises(ClusterError, match="Authentication required"):
                    await client.stats()
            with pytest.raises(ClusterError):
                async with open_serf_client(host, port, auth_key="wrong"):
                    pass

    run(main)


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_join_then_graceful_leave(tmp_path: Path) -> None:
    async def main() -> None:
        async with agents() as group:
            nodes = await three_agents(group, tmp_path, killed="b")
            (b, rpc_b), (_, rpc_a) = nodes["b"], nodes["a"]
            async with open_serf_client(*split_host_port(rpc_b)) as client:
                await client.leave()  # the agent then exits 0: expect_exit
            took = await wait_status(rpc_a, b.node_name, "left", within=5)
            assert took < 3

    run(main)


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_sigkilled_agent_is_seen_failed(tmp_path: Path) -> None:
    async def main() -> None:
        async with agents() as group:
            nodes = await three_agents(group, tmp_path, killed="c")
            (c, rpc_c), (_, rpc_a) = nodes["c"], nodes["a"]
            os.kill(agent_pid(rpc_c), signal.SIGKILL)
            took = await wait_status(rpc_a, c.node_name, "failed", within=12)
            assert took > 1  # detected by probing, not by a goodbye

    run(main)


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_tags_change_is_visible_on_another_agent(tmp_path: Path) -> None:
    a = agent_config(tmp_path, "a", tags={"keep": "1", "drop": "1"})
    b = agent_config(tmp_path, "b", peers=[a.bind])

    async def main() -> None:
        async with agents() as group:
            rpc_a = await group.start(a)
            rpc_b = await group.start(b)
            await wait_status(rpc_b, a.node_name, "alive", within=5)
            async with open_serf_client(*split_host_port(rpc_a)) as client:
                await client.tags({"oklog.api": "127.0.0.1:7650"}, ["drop"])
            want = {"keep": "1", "oklog.api": "127.0.0.1:7650"}
            async with open_serf_client(*split_host_port(rpc_b)) as client:
                with trio.fail_after(5):
                    while True:
                        seen = {m.name: m.tags for m in await client.members()}
                        if seen.get(a.node_name) == want:
                            break
                        await trio.sleep(0.1)

    run(main)


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_stream_events_and_members_filtered_literals(tmp_path: Path) -> None:
    """Filter values with regex metacharacters are literals and never kill the
    connection; an open stream on the same connection keeps working."""
    a = agent_config(tmp_path, "a", tags={"oklog.api": "127.0.0.1:7650"})
    b = agent_config(tmp_path, "b", tags={"oklog.api": "127x0x0x1:7650"})

    async def main() -> None:
        async with agents() as group:
            rpc_a = await group.start(a)
            await group.start(b)
            async with open_serf_client(*split_host_port(rpc_a)) as client:
                async with client.stream() as events:
                    assert await client.join([b.bind]) == 1
                    got = await client.members_filtered(tags={"oklog.api": "127.0.0.1:7650"})
                    assert [m.name for m in got] == [a.node_name]  # '.' is not a wildcard
                    assert await client.members_filtered(name="a.b(c") == []
                    assert await client.members_filtered(tags={"x": "[", "y": "("}) == []
                    assert len(await client.members_filtered(status="alive")) == 2
                    got = await client.members_filtered(name=b.node_name)
                    assert [m.name for m in got] == [b.node_name]
                    assert client.alive
                    with trio.fail_after(5):
                        async for event in events:
                            names = [m.name for m in event["Members"]]
                            if event["Event"] == "member-join" and b.node_name in names:
                                break
                    assert all(isinstance(m, Member) for m in event["Members"])
                assert len(await client.members()) == 2  # still usable after stop

    run(main)


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_agent_death_mid_stream_raises_not_hangs(tmp_path: Path) -> None:
    a = agent_config(tmp_path, "a")

    async def main() -> None:
        async with agents() as group:
            rpc = await group.start(a, killed=True)
            async with open_serf_client(*split_host_port(rpc)) as client:
                async with client.stream() as events:
                    os.kill(agent_pid(rpc), signal.SIGKILL)
                    with trio.fail_after(3):
                        with pytest.raises(ClusterError):
                            async for _ in events:
                                pass
                assert not client.alive
                with pytest.raises(ClusterError):
                    await client.members()

    run(main)


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_frozen_agent_times_out(tmp_path: Path) -> None:
    """A SIGSTOPped agent never sends EOF: calls must still end, with ClusterError."""
    a = agent_config(tmp_path, "a")

    async def main() -> None:
        async with agents() as group:
            rpc = await group.start(a)
            pid = agent_pid(rpc)
            async with open_serf_client(*split_host_port(rpc), timeout=0.5) as client:
                os.kill(pid, signal.SIGSTOP)
                try:
                    start = trio.current_time()
                    with pytest.raises(ClusterError, match="timed out"):
                        await client.members()
                    assert trio.current_time() - start < 2
                    with pytest.raises(ClusterError):  # dead for good
                        await client.stats()
                finally:
                    os.kill(pid, signal.SIGCONT)

    run(main)


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_port_in_use_fails_fast_with_log_hint(tmp_path: Path) -> None:
    a = agent_config(tmp_path, "a")
    host, port = split_host_port(a.bind)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((host, port))
        busy.listen()
        start = time.monotonic()
        with pytest.raises(ClusterError, match=r"exited with code 1; see .*serf\.log"):
            run(lambda: run_agent(a))
        assert time.monotonic() - start < 5


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_cancel_leaves_gracefully_and_reaps(tmp_path: Path) -> None:
    a = agent_config(tmp_path, "a")
    b = agent_config(tmp_path, "b", peers=[a.bind])

    async def main() -> None:
        async with agents() as group:
            rpc_a = await group.start(a)
            rpc_b = await group.start(b)
            pid_b = agent_pid(rpc_b)
            await wait_status(rpc_a, b.node_name, "alive", within=5)
            start = trio.current_time()
            await group.stop(rpc_b)  # cancels run_agent: leave, then reap
            assert trio.current_time() - start < 3
            assert not alive(pid_b)
            took = await wait_status(rpc_a, b.node_name, "left", within=5)
            assert took < 2

    run(main)


_ORPHAN_SCRIPT = """
import sys, trio
from pathlib import Path
from oklog.cluster.agent import AgentConfig, run_agent

async def main():
    async with trio.open_nursery() as nursery:
        cfg = AgentConfig(
            node_name=sys.argv[1], bind=sys.argv[2], log_path=Path(sys.argv[3]), fast=True
        )
        rpc = await nursery.start(run_agent, cfg)
        print(rpc, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@pytest.mark.serf
@pytest.mark.skipif(not available(), reason="serf binary not installed")
def test_agent_dies_with_its_parent(tmp_path: Path) -> None:
    """PDEATHSIG: a SIGKILLed node must not leave its agent advertising it."""
    cfg = agent_config(tmp_path, "orphan")
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, cfg.node_name, cfg.bind, str(cfg.log_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        rpc = parent.stdout.readline().strip()
        pid = agent_pid(rpc)
        assert alive(pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)
    finally:
        parent.kill()
        parent.wait()
        try:
            os.kill(agent_pid(rpc), signal.SIGKILL)
        except (LookupError, NameError, OSError):
            pass
