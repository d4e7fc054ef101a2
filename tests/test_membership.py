"""Membership views: static (one node) and Serf-backed (real agents on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from oklog.cluster.agent import available, free_loopback_port
from oklog.cluster.membership import (
    API_TAG,
    ROLE_TAG,
    ClusterConfig,
    Membership,
    SerfMembership,
    StaticMembership,
    plan_cluster,
)
from oklog.cluster.serf import open_serf_client, split_host_port
from oklog.errors import ClusterError, ConfigError
from tests.test_serf import agent_config, agent_pid, agents, free_gossip_port, run

serf_only = pytest.mark.skipif(not available(), reason="serf binary not installed")


def cluster_config(
    tmp: Path, name: str, role: str, peers: list[str] | None = None, **kw: object
) -> ClusterConfig:
    return ClusterConfig(
        bind=f"127.0.0.1:{free_gossip_port()}",
        advertise=None,
        peers=list(peers or []),
        serf_rpc=None,
        api_url=f"http://127.0.0.1:{free_loopback_port()}",
        role=role,
        data_dir=tmp / name,
        fast=True,
        **kw,  # type: ignore[arg-type]
    )


# --- static -------------------------------------------------------------------------


def test_static_membership_is_just_itself() -> None:
    both = StaticMembership("http://127.0.0.1:7650", "ingeststore")
    assert both.ingesters() == both.stores() == ["http://127.0.0.1:7650"]
    ingest = StaticMembership("127.0.0.1:7650", "ingest")
    assert (ingest.ingesters(), ingest.stores()) == (["http://127.0.0.1:7650"], [])
    store = StaticMembership("http://localhost:7651/", "store")
    assert (store.ingesters(), store.stores()) == ([], ["http://localhost:7651"])
    state = json.loads(json.dumps(store.state()))
    assert state["self"]["api"] == "localhost:7651"
    [member] = state["members"]
    assert (member["status"], member["role"], member["api"]) == ("alive", "store", "localhost:7651")

    async def main() -> None:
        with trio.move_on_after(0.2) as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
        assert scope.cancelled_caught

    run(main)


def test_bad_role_or_api_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="role"):
        StaticMembership("http://127.0.0.1:7650", "querier")
    with pytest.raises(ConfigError, match="port"):
        StaticMembership("http://127.0.0.1", "store")
    with pytest.raises(ConfigError, match="role"):
        SerfMembership("127.0.0.1:7373", "http://127.0.0.1:7650", "both")


def test_cluster_without_serf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # auto-detection finds no serf

    async def start(cfg: ClusterConfig) -> Membership:
        async with trio.open_nursery() as nursery:
            membership: Membership = await nursery.start(plan_cluster(cfg).run)
            nursery.cancel_scope.cancel()
        return membership

    alone = run(lambda: start(cluster_config(tmp_path, "n", "ingeststore")))
    assert isinstance(alone, StaticMembership)

    # Refused while planning, before anything starts.
    with pytest.raises(ClusterError, match="install"):
        plan_cluster(cluster_config(tmp_path, "n", "store", peers=["127.0.0.1:7659"]))
    with pytest.raises(ClusterError, match="install"):
        plan_cluster(cluster_config(tmp_path, "n", "store", use_serf=True))


def test_attach_to_unreachable_agent_fails_at_start() -> None:
    rpc = f"127.0.0.1:{free_loopback_port()}"
    membership = SerfMembership(rpc, "http://127.0.0.1:7650", "store", start_timeout=0.5)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(membership.run)

    with pytest.raises(BaseException) as info:
        run(main)
    error = unwrap(info.value)
    assert isinstance(error, ClusterError)
    assert "cannot use the serf agent" in str(error)


def unwrap(error: BaseException) -> BaseException:
    """The lone exception inside the test's own nursery groups."""
    while isinstance(error, BaseExceptionGroup):
        [error] = error.exceptions
    return error


# --- with Serf ------------------------------------------------------------------------


async def start_node(
    nursery: trio.Nursery, cfg: ClusterConfig
) -> tuple[Membership, Callable[[], Awaitable[None]]]:
    """plan_cluster(cfg).run in its own cancel scope; ``stop()`` shuts the node down and
    waits, so nodes stop one at a time (Serf leaves fastest that way)."""
    scope = trio.CancelScope()
    done = trio.Event()

    async def node(task_status: trio.TaskStatus[Membership]) -> None:
        try:
            with scope:
                await plan_cluster(cfg).run(task_status=task_status)
        finally:
            done.set()

    async def stop() -> None:
        scope.cancel()
        await done.wait()

    membership: Membership = await nursery.start(node)
    return membership, stop


@pytest.mark.serf
@serf_only
def test_serf_membership_sees_stores_come_and_go(tmp_path: Path) -> None:
    a = cluster_config(tmp_path, "a", "ingest")
    b = cluster_config(tmp_path, "b", "store", peers=[a.bind])
    c = cluster_config(tmp_path, "c", "ingeststore", peers=[a.bind])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            m_a, stop_a = await start_node(nursery, a)
            assert isinstance(m_a, SerfMembership)
            assert m_a.ingesters() == [a.api_url] and m_a.stores() == []

            m_b, stop_b = await start_node(nursery, b)
            m_c, stop_c = await start_node(nursery, c)
            assert isinstance(m_b, SerfMembership) and isinstance(m_c, SerfMembership)
            await m_a.wait_for(stores=2, ingesters=2, timeout=5)
            assert m_a.stores() == sorted([b.api_url, c.api_url])
            assert m_a.ingesters() == sorted([a.api_url, c.api_url])
            await m_b.wait_for(stores=2, ingesters=2, timeout=5)

            await m_a.publish({"oklog.load": "7"})
            with trio.fail_after(5):
                while not any(m.tags.get("oklog.load") == "7" for m in m_c.members()):
                    await trio.sleep(0.1)

            state = json.loads(json.dumps(m_a.state()))
            assert state["self"] == {"name": m_a.name, "role": "ingest", "api": m_a.api}
            assert state["connected"] is True
            roles = {m["api"]: m["role"] for m in state["members"]}
            assert roles[b.api_url.removeprefix("http://")] == "store"
            assert (a.data_dir / "serf.log").exists()

            await stop_b()  # b shuts down: leaves, gone from a's view in seconds
            await m_a.wait_for(stores=1, ingesters=2, timeout=5)
            assert m_a.stores() == [c.api_url]
            await stop_c()
            await m_a.wait_for(stores=0, ingesters=1, timeout=5)
            await stop_a()

    run(main)


@pytest.mark.serf
@serf_only
def test_attach_reconnects_and_keeps_last_members(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Attached to an agent that dies and comes back on the same RPC address:
    the cache survives the outage, tags are re-sent, a line is logged.  A
    wildcard API address is advertised with the gossip address."""
    caplog.set_level(logging.INFO, logger="oklog.cluster")
    first = agent_config(tmp_path, "first")
    first.rpc_addr = f"127.0.0.1:{free_loopback_port()}"
    api_port = free_loopback_port()
    url = f"http://127.0.0.1:{api_port}"
    membership = SerfMembership(
        first.rpc_addr, f"http://0.0.0.0:{api_port}", "store", refresh=0.2
    )

    async def main() -> None:
        async with agents() as group, trio.open_nursery() as nursery:
            await group.start(first, killed=True)
            await nursery.start(membership.run)
            assert membership.connected
            assert membership.api == f"127.0.0.1:{api_port}"
            await membership.wait_for(stores=1, timeout=5)
            assert membership.stores() == [url]

            os.kill(agent_pid(first.rpc_addr), signal.SIGKILL)
            with trio.fail_after(5):
                while membership.connected:
                    await trio.sleep(0.05)
            assert membership.stores() == [url]  # last known members kept
            assert "event=serf_disconnected" in caplog.text

            second = agent_config(tmp_path, "second")
            second.rpc_addr = first.rpc_addr
            await group.start(second)
            with trio.fail_after(10):
                while not (membership.connected and membership.name == second.node_name):
                    await trio.sleep(0.05)
            async with open_serf_client(*split_host_port(second.rpc_addr)) as client:
                [me] = await client.members()
            assert me.tags == {ROLE_TAG: "store", API_TAG: f"127.0.0.1:{api_port}"}
            await membership.wait_for(stores=1, timeout=5)
            nursery.cancel_scope.cancel()

    run(main)


@pytest.mark.serf
@serf_only
def test_cluster_raises_when_its_agent_dies(tmp_path: Path) -> None:
    cfg = cluster_config(tmp_path, "solo", "ingeststore")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            membership = await nursery.start(plan_cluster(cfg).run)
            assert membership.stores() == [cfg.api_url]
            os.kill(agent_pid(membership.rpc_addr), signal.SIGKILL)
            await trio.sleep_forever()

    with pytest.raises(BaseException) as info:
        run(main)
    error = unwrap(info.value)
    assert isinstance(error, ClusterError)
    assert "serf agent exited with code -9" in str(error)
    assert str(cfg.data_dir / "serf.log") in str(error)
