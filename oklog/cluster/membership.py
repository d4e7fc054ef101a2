"""Who is in the cluster: the view the rest of oklog reads.

Theory of operation
-------------------
Every node advertises two Serf tags: ``oklog.role`` (``ingest``, ``store``
or ``ingeststore``) and ``oklog.api`` (``host:port`` of its HTTP API).  A
``Membership`` turns the member list into base URLs per tier.  Reads
(``ingesters()``, ``stores()``, ``state()``) are synchronous lookups in a
cache, so the data path never waits on the cluster.

``SerfMembership.run`` keeps that cache fresh: connect to the agent, set our
tags, open an event stream, read ``members``; then re-read ``members`` after
every event (events are late, coalesced and droppable: only hints) and at
least every ``refresh`` seconds (which also notices a frozen agent, since
every call is bounded).  If the agent connection breaks, the last known
members stay in place and we reconnect with exponential backoff.

``plan_cluster`` chooses the flavour: attach to a running agent, start our
own agent as a child, or — with no Serf and no peers — a static membership
of just this node; ``Cluster.run`` starts it.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from oklog.cluster.agent import AgentConfig, available, free_loopback_port, run_agent
from oklog.cluster.serf import EventStream, Member, SerfClient, open_serf_client, split_host_port
from oklog.addr import is_wildcard
from oklog.errors import ClusterError, ConfigError
from oklog.ingest.shedding import LOAD_TAG
from oklog.roles import check_role, serves_ingest, serves_store

log = logging.getLogger("oklog.cluster")

ROLE_TAG = "oklog.role"
API_TAG = "oklog.api"


def _api_scheme(api_url: str) -> str:
    """``https`` for an ``https://`` API URL, else ``http``."""
    return "https" if api_url.lower().startswith("https://") else "http"


def _api_tag(scheme: str, hostport: str) -> str:
    """The ``oklog.api`` tag: ``host:port`` (plain HTTP, as before) or
    ``https://host:port`` when the API serves TLS."""
    return f"https://{hostport}" if scheme == "https" else hostport


def member_url(tag: str) -> str | None:
    """A member's base URL from its ``oklog.api`` tag (``host:port`` means
    ``http://``); None for a tag that is empty or not an http(s) address."""
    if not tag:
        return None
    if "://" not in tag:
        return f"http://{tag}"
    scheme = tag.split("://", 1)[0].lower()
    return tag if scheme in ("http", "https") else None


def _api_hostport(api_url: str) -> str:
    """``http://host:port`` (or bare ``host:port``) → ``host:port``."""
    text = api_url if "://" in api_url else f"http://{api_url}"
    parts = urlsplit(text)
    if not parts.hostname or parts.port is None:
        raise ConfigError(f"API address {api_url!r} needs a host and a port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


def _member_view(m: Member) -> dict[str, Any]:
    return {
        "name": m.name,
        "addr": m.addr,
        "port": m.port,
        "status": m.status,
        "role": m.tags.get(ROLE_TAG, ""),
        "api": m.tags.get(API_TAG, ""),
        "load": m.tags.get(LOAD_TAG, ""),  # an ingester's, for load shedding (oklog.ingest.gate)
    }


class Membership(Protocol):
    """What the ingest and store tiers need to know about the cluster."""

    def ingesters(self) -> list[str]:
        """Base URLs (``http://host:port``) of alive ingest-capable nodes."""
        ...

    def stores(self) -> list[str]:
        """Base URLs of alive store-capable nodes."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-able view for ``/ingest/_clusterstate`` and ``/store/_clusterstate``."""
        ...

    def self_url(self) -> str:
        """This node's own base URL as the others see it in ``stores()``."""
        ...

    async def publish(self, tags: dict[str, str]) -> None:
        """Advertise extra tags (e.g. load) to the other nodes, best effort."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the view fresh until cancelled."""
        ...


class StaticMembership:
    """A cluster of one: this node, no Serf."""

    def __init__(self, api_url: str, role: str) -> None:
        self.role = check_role(role)
        self.api = _api_hostport(api_url)
        self.url = f"{_api_scheme(api_url)}://{self.api}"
        self.name = socket.gethostname()

    def ingesters(self) -> list[str]:
        return [self.url] if serves_ingest(self.role) else []

    def stores(self) -> list[str]:
        return [self.url] if serves_store(self.role) else []

    def self_url(self) -> str:
        return self.url

    def state(self) -> dict[str, Any]:
        me = {"name": self.name, "role": self.role, "api": self.api}
        host = self.api.rpartition(":")[0].strip("[]")
        member = {**me, "addr": host, "port": 0, "status": "alive"}
        return {"source": "static", "self": me, "members": [member]}

    async def publish(self, tags: dict[str, str]) -> None:
        """Nobody to tell in a cluster of one."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()


class SerfMembership:
    """Membership read from a Serf agent over RPC; see the module docstring."""

    BACKOFF_MIN = 0.1
    BACKOFF_MAX = 5.0

    def __init__(
        self,
        rpc_addr: str,
        api_url: str,
        role: str,
        *,
        refresh: float = 1.0,
        auth_key: str | None = None,
        timeout: float = 5.0,
        start_timeout: float = 15.0,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.rpc_addr = rpc_addr
        self._rpc = split_host_port(rpc_addr)
        self.role = check_role(role)
        self.api = _api_hostport(api_url)
        self.scheme = _api_scheme(api_url)
        self.refresh = refresh
        self._auth_key = auth_key
        self._timeout = timeout
        self._start_timeout = start_timeout
        self.name = ""  # our agent's node name, once connected
        self.connected = False
        self.updated = 0.0  # wall-clock time of the last successful refresh
        self._members: list[Member] = []
        self._ingesters: list[str] = []
        self._stores: list[str] = []
        self._changed = trio.Event()
        self._extra_tags: dict[str, str] = dict(tags or {})
        self._client: SerfClient | None = None

    # --- synchronous reads ---------------------------------------------------------

    def ingesters(self) -> list[str]:
        return list(self._ingesters)

    def stores(self) -> list[str]:
        return list(self._stores)

    def members(self) -> list[Member]:
        return list(self._members)

    def self_url(self) -> str:
        return f"{self.scheme}://{self.api}"

    def state(self) -> dict[str, Any]:
        return {
            "source": "serf",
            "rpc": self.rpc_addr,
            "connected": self.connected,
            "updated": self.updated,
            "self": {"name": self.name, "role": self.role, "api": self.api},
            "members": [_member_view(m) for m in self._members],
        }

    def _update(self, members: list[Member]) -> None:
        """Replace the cache and wake ``wait_for`` callers."""
        self._members = sorted(members, key=lambda m: m.name)
        ingesters: set[str] = set()
        stores: set[str] = set()
        for m in self._members:
            url = member_url(m.tags.get(API_TAG, ""))
            if m.status != "alive" or url is None:
                continue
            role = m.tags.get(ROLE_TAG, "")
            if serves_ingest(role):
                ingesters.add(url)
            if serves_store(role):
                stores.add(url)
        self._ingesters = sorted(ingesters)
        self._stores = sorted(stores)
        self.updated = time.time()
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(
        self, *, stores: int | None = None, ingesters: int | None = None, timeout: float = 10.0
    ) -> None:
        """Wait until exactly that many alive stores/ingesters are seen.

        Raises ``trio.TooSlowError`` after ``timeout``.
        """
        with trio.fail_after(timeout):
            while (stores is not None and len(self._stores) != stores) or (
                ingesters is not None and len(self._ingesters) != ingesters
            ):
                await self._changed.wait()

    # --- keeping fresh -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the agent until cancelled, reconnecting as needed.

        Raises ``ClusterError`` only if the very first connection cannot be
        made within ``start_timeout``; afterwards failures are logged and
        retried while the last known members stay in the cache.
        """
        started = False
        backoff = self.BACKOFF_MIN
        give_up = trio.current_time() + self._start_timeout
        host, port = self._rpc
        while True:
            try:
                async with open_serf_client(
                    host, port, auth_key=self._auth_key, timeout=self._timeout
                ) as client:
                    await self._introduce(client)
                    self._client = client
                    async with client.stream() as events:
                        await self._refresh(client)
                        self.connected = True
                        backoff = self.BACKOFF_MIN
                        log.info("event=serf_connected rpc=%s node=%s", self.rpc_addr, self.name)
                        if not started:
                            started = True
                            task_status.started()
                        await self._follow(client, events)
            except ClusterError as exc:
                self.connected = False
                self._client = None
                if not started and trio.current_time() + backoff > give_up:
                    raise ClusterError(
                        f"cannot use the serf agent at {self.rpc_addr}: {exc}"
                    ) from exc
                log.warning(
                    "event=serf_disconnected rpc=%s error=%r retry_in=%.1fs",
                    self.rpc_addr,
                    str(exc),
                    backoff,
                )
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.BACKOFF_MAX)

    async def _introduce(self, client: SerfClient) -> None:
        """Learn our node name and advertise our role and API address."""
        stats = await client.stats()
        self.name = str(stats.get("agent", {}).get("name", ""))
        host, _, api_port = self.api.rpartition(":")
        if is_wildcard(host):
            # The API listens everywhere: advertise the address peers gossip with.
            me = await client.members_filtered(name=self.name) if self.name else []
            if me and me[0].addr:
                addr = me[0].addr
                self.api = f"[{addr}]:{api_port}" if ":" in addr else f"{addr}:{api_port}"
        await client.tags({**self._extra_tags, ROLE_TAG: self.role,
                           API_TAG: _api_tag(self.scheme, self.api)})

    async def publish(self, tags: dict[str, str]) -> None:
        """Advertise extra tags (e.g. load); kept and re-sent on reconnect.

        Best effort: if the agent is unreachable now, they go out with the
        next successful connection.
        """
        if ROLE_TAG in tags or API_TAG in tags:
            raise ValueError(f"{ROLE_TAG} and {API_TAG} are managed by the membership")
        self._extra_tags.update(tags)
        client = self._client
        if client is not None and client.alive:
            try:
                await client.tags(dict(tags))
            except ClusterError as exc:
                log.warning("event=serf_publish_failed rpc=%s error=%r", self.rpc_addr, str(exc))

    async def _refresh(self, client: SerfClient) -> None:
        self._update(await client.members())

    async def _follow(self, client: SerfClient, events: EventStream) -> None:
        """Re-read members after each burst of events and on the timer."""
        while True:
            with trio.move_on_after(self.refresh):
                try:
                    await events.receive()
                    while True:  # coalesce a burst into one refresh
                        events.receive_nowait()
                except trio.WouldBlock:
                    pass
                except trio.EndOfChannel:
                    raise ClusterError("serf event stream ended") from None
            await self._refresh(client)


# --- choosing and starting a membership ------------------------------------------------


@dataclass
class ClusterConfig:
    """Cluster flags of one node (``-cluster``, ``-peer``, ``-cluster.serf-rpc``)."""

    bind: str
    advertise: str | None
    peers: list[str]
    serf_rpc: str | None
    api_url: str
    role: str
    data_dir: Path
    fast: bool = False
    use_serf: bool | None = None  # None: use serf if the binary is available
    tags: dict[str, str] = field(default_factory=dict)  # extra tags to advertise
    # Serf's gossip encryption key (base64), from -cluster.key-file
    encrypt_key: str | None = field(default=None, repr=False)


def node_name(api_url: str) -> str:
    """Unique per process: Serf misbehaves on duplicate node names."""
    port = _api_hostport(api_url).rpartition(":")[2]
    return f"{socket.gethostname()}-{port}-{secrets.token_hex(3)}"


@dataclass
class Cluster:
    """A planned membership: the view, and the Serf agent to start for it (if any).

    Planning does no IO, so a node can mount every route that reads the
    membership before anything is advertised; ``run`` then starts the agent
    (if ours) and keeps the view fresh.
    """

    membership: Membership
    agent: AgentConfig | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[Membership] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Join and follow the cluster until cancelled; ``started`` (with the
        membership) once the view is first read.  Raises one ``ClusterError``
        if the agent dies or cannot be reached."""
        try:
            async with trio.open_nursery() as nursery:
                if self.agent is not None:
                    await nursery.start(run_agent, self.agent)
                await nursery.start(self.membership.run)
                task_status.started(self.membership)
        except BaseExceptionGroup as group:
            # Callers handle one ClusterError, not a nest of groups.
            match, rest = group.split(ClusterError)
            if match is not None and rest is None:
                raise _first_leaf(match) from group
            raise


def plan_cluster(cfg: ClusterConfig) -> Cluster:
    """The membership for ``cfg``: attach to a running agent, start our own,
    or a static cluster of this node alone (no Serf, no peers).

    Raises ``ClusterError`` when peers are given but Serf is unavailable.
    """
    use_serf = available() if cfg.use_serf is None else cfg.use_serf
    if not cfg.serf_rpc and not use_serf and cfg.peers:
        raise ClusterError(
            "-peer needs Serf for membership: install the `serf` binary "
            "(apt-get install serf) or run without -peer"
        )
    if not cfg.serf_rpc and use_serf and not available():
        raise ClusterError("serf requested but not on PATH: install it with apt-get install serf")
    if cfg.serf_rpc and cfg.encrypt_key:
        raise ConfigError(
            "-cluster.key-file cannot apply to a Serf agent oklog does not start "
            "(-cluster.serf-rpc): give that agent the key (its encrypt_key setting)"
        )
    if cfg.serf_rpc:
        return Cluster(SerfMembership(cfg.serf_rpc, cfg.api_url, cfg.role, tags=cfg.tags))
    if not use_serf:
        if cfg.encrypt_key:
            raise ConfigError("-cluster.key-file encrypts Serf gossip, but this node runs without "
                              "Serf (-cluster.serf off, or serf not installed)")
        return Cluster(StaticMembership(cfg.api_url, cfg.role))
    tags = dict(cfg.tags)
    api = _api_hostport(cfg.api_url)
    if not is_wildcard(api.rpartition(":")[0]):
        # Known from the first gossip; a wildcard API address is
        # resolved by SerfMembership once it knows our gossip address.
        tags.update({ROLE_TAG: cfg.role, API_TAG: _api_tag(_api_scheme(cfg.api_url), api)})
    agent = AgentConfig(
        node_name=node_name(cfg.api_url),
        bind=cfg.bind,
        rpc_addr=f"127.0.0.1:{free_loopback_port()}",
        advertise=cfg.advertise,
        peers=list(cfg.peers),
        tags=tags,
        log_path=cfg.data_dir / "serf.log",
        fast=cfg.fast,
        encrypt_key=cfg.encrypt_key,
        # With a gossip key, lock the agent's RPC too: its keyring commands
        # would hand the key to any local user who finds the port.
        rpc_auth=secrets.token_urlsafe(24) if cfg.encrypt_key else None,
    )
    membership = SerfMembership(agent.rpc_addr, cfg.api_url, cfg.role, tags=cfg.tags,
                                auth_key=agent.rpc_auth)
    return Cluster(membership, agent)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
