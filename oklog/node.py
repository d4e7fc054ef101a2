"""One oklog node (``ingest``, ``store`` or ``ingeststore``), wired together.

Theory of operation: ``run_node`` opens the data directories, joins the
cluster, then runs in one nursery: the HTTP API (hypercorn), the fast and
durable TCP listeners and the flusher (ingest role), and the consumers
(store role).  It then waits for SIGINT/SIGTERM and shuts down in order:

1. stop the TCP listeners (closing forwarder connections), flush the
   active segment;
2. ingest role: keep serving ``/ingest/*`` until every flushed segment is
   consumed or ``ingest_shutdown_timeout`` passes (a second signal skips
   the wait);
3. stop the consumers (a batch in flight is failed back to its ingesters),
   leave the cluster, stop the API, unlock the directories.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import hypercorn.config
import hypercorn.trio
import trio

from .addr import parse_addr
from .cluster.membership import ClusterConfig, run_cluster, tiers
from .http import Response, Router, json_response, text
from .ingest.api import ingest_router
from .ingest.log import IngestLog
from .ingest.server import LineIngester, serve_lines
from .listen import tcp_sockets
from .peer import open_peers
from .record import DEFAULT_MAX_RECORD_SIZE
from .store.api import store_router
from .store.consume import Consumer
from .store.log import StoreLog
from .ulid import Stamper

log = logging.getLogger("oklog.node")



@dataclass
class NodeConfig:
    mode: str = "ingeststore"
    api: str = "tcp://0.0.0.0:7650"
    ingest_fast: str = "tcp://0.0.0.0:7651"
    ingest_durable: str = "tcp://0.0.0.0:7652"
    ingest_bulk: str = "tcp://0.0.0.0:7653"
    cluster: str = "tcp://0.0.0.0:7659"
    cluster_advertise: str | None = None
    cluster_serf_rpc: str | None = None
    peers: list[str] = field(default_factory=list)
    use_serf: bool | None = None  # None: use Serf when the binary is installed
    fast_gossip: bool = False  # test setting: quick failure detection
    ingest_path: Path = Path("data/ingest")
    ingest_flush_size: int = 16 << 20
    ingest_flush_age: float = 3.0
    ingest_pending_timeout: float = 60.0
    ingest_shutdown_timeout: float = 60.0
    ingest_max_record_size: int = DEFAULT_MAX_RECORD_SIZE
    store_path: Path = Path("data/store")
    store_consumers: int = 1
    store_target_size: int = 128 << 20
    store_target_age: float = 3.0
    store_replication_factor: int = 2

    @property
    def roles(self) -> tuple[str, ...]:
        return tiers(self.mode)


def advertised_api(cfg: NodeConfig, port: int) -> str:
    """The API URL other nodes use to reach this one."""
    host, _ = parse_addr(cfg.api, 7650)
    if cfg.cluster_advertise:
        host, _ = parse_addr(cfg.cluster_advertise, 7659)
    elif host in ("0.0.0.0", "", "::"):
        chost, _ = parse_addr(cfg.cluster, 7659)
        host = chost if chost not in ("0.0.0.0", "", "::") else "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def ops_router(ready: dict[str, bool]) -> Router:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    router = Router()

    async def metrics_endpoint(request) -> Response:  # type: ignore[no-untyped-def]
        return Response(200, generate_latest(), content_type=CONTENT_TYPE_LATEST)

    async def health(request) -> Response:  # type: ignore[no-untyped-def]
        return text(200, "OK")

    async def readyz(request) -> Response:  # type: ignore[no-untyped-def]
        return text(200, "ready") if ready["ready"] else text(503, "not ready")

    router.add("GET", "/metrics", metrics_endpoint)
    router.add("GET", "/health", health)
    router.add("GET", "/healthz", health)
    router.add("GET", "/readyz", readyz)
    return router


async def serve_api(app: Router, host: str, port: int, stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    # hypercorn adopts (and later closes) these file descriptors: detach them.
    config = hypercorn.config.Config()
    config.bind = [f"fd://{s.detach()}" for s in tcp_sockets(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("oklog.http.server")
    config.graceful_timeout = 3.0
    config.keep_alive_timeout = 75.0
    config.keep_alive_max_requests = 1_000_000
    await hypercorn.trio.serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]


async def run_node(cfg: NodeConfig, *, stop: trio.Event | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set), then shut down cleanly."""
    roles = cfg.roles
    ingest_log = store = None
    if "ingest" in roles:
        ingest_log = IngestLog(
            cfg.ingest_path,
            flush_size=cfg.ingest_flush_size,
            flush_age=cfg.ingest_flush_age,
            pending_timeout=cfg.ingest_pending_timeout,
        )
        ingest_log.open()
    if "store" in roles:
        store = StoreLog(cfg.store_path)
        store.open()
    if stop is None:
        stop = trio.Event()
    ready = {"ready": False}
    api_host, api_port = parse_addr(cfg.api, 7650)
    try:
        async with open_peers() as peers, trio.open_nursery() as nursery:
            api_stop = trio.Event()
            router = Router()
            router.mount(ops_router(ready))
            membership_box: list = []

            def cluster_state() -> dict:
                return membership_box[0].state() if membership_box else {}

            if ingest_log is not None:
                router.mount(ingest_router(ingest_log, cluster_state))
            # The API must be up before we advertise it to the cluster.
            binds = await nursery.start(serve_api, router, api_host, api_port, api_stop)
            bound_port = int(binds[0].rsplit(":", 1)[1])
            # The node's own directory: sibling nodes may share a parent.
            data_dir = Path(cfg.store_path if store is not None else cfg.ingest_path)
            cluster_scope = trio.CancelScope()
            cluster_cfg = ClusterConfig(
                bind=_hostport(cfg.cluster, 7659),
                advertise=_hostport(cfg.cluster_advertise, 7659) if cfg.cluster_advertise else None,
                peers=[_hostport(p, 7659) for p in cfg.peers],
                serf_rpc=_hostport(cfg.cluster_serf_rpc, 7373) if cfg.cluster_serf_rpc else None,
                api_url=advertised_api(cfg, bound_port),
                role=cfg.mode,
                data_dir=data_dir,
                fast=cfg.fast_gossip,
                use_serf=cfg.use_serf,
            )
            membership = await nursery.start(_scoped, cluster_scope, run_cluster, cluster_cfg)
            membership_box.append(membership)
            if store is not None:
                router.mount(store_router(store, membership, peers, cluster_state))

            listen_scopes: list[trio.CancelScope] = []
            if ingest_log is not None:
                ingester = LineIngester(ingest_log, max_record_size=cfg.ingest_max_record_size, stamper=Stamper())
                ports = []
                for addr, default, durable in ((cfg.ingest_fast, 7651, False), (cfg.ingest_durable, 7652, True)):
                    host, port = parse_addr(addr, default)
                    listen_scopes.append(trio.CancelScope())
                    ports.append(await nursery.start(_scoped, listen_scopes[-1], serve_lines, ingester, host, port, durable))
                flusher_scope = trio.CancelScope()
                nursery.start_soon(_scoped, flusher_scope, ingest_log.run_flusher)
            consume_scopes: list[trio.CancelScope] = []
            if store is not None:
                for _ in range(cfg.store_consumers):
                    consumer = Consumer(
                        store,
                        membership,
                        peers,
                        replication_factor=cfg.store_replication_factor,
                        target_size=cfg.store_target_size,
                        target_age=cfg.store_target_age,
                    )
                    consume_scopes.append(trio.CancelScope())
                    await nursery.start(_scoped, consume_scopes[-1], consumer.run)
            ready["ready"] = True
            log.info("event=started mode=%s api=%s", cfg.mode, binds[0])
            task_status.started(bound_port)

            stopping, second_signal = trio.Event(), trio.Event()
            signal_scope = trio.CancelScope()
            await nursery.start(_scoped, signal_scope, _watch_signals, stop, stopping, second_signal)
            await stopping.wait()

            log.info("event=stopping mode=%s", cfg.mode)
            ready["ready"] = False
            for scope in listen_scopes:
                scope.cancel()
            if ingest_log is not None:
                await ingest_log.flush()
                await _drain(ingest_log, cfg.ingest_shutdown_timeout, second_signal)
                flusher_scope.cancel()
            for scope in consume_scopes:
                scope.cancel()
            cluster_scope.cancel()
            signal_scope.cancel()
            api_stop.set()
    finally:
        if ingest_log is not None:
            ingest_log.close()
        if store is not None:
            store.close()
    log.info("event=stopped mode=%s", cfg.mode)


async def _scoped(scope: trio.CancelScope, fn, *args, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Run ``fn`` under ``scope`` so shutdown can stop one part at a time."""
    with scope:
        await fn(*args, task_status=task_status)


async def _watch_signals(stop: trio.Event, first: trio.Event, second: trio.Event,
                         *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """First SIGINT/SIGTERM (or ``stop``) starts shutdown; a second skips the drain."""
    async def stopped() -> None:
        await stop.wait()
        first.set()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as receiver:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopped)
            task_status.started()
            async for signum in receiver:
                if not first.is_set():
                    log.info("event=signal signal=%s", signal.Signals(signum).name)
                    first.set()
                else:
                    log.warning("event=second_signal action=skip_drain")
                    second.set()


async def _drain(ingest_log: IngestLog, timeout: float, skip: trio.Event) -> None:
    """Serve the segment API until the store tier has taken everything."""
    with trio.move_on_after(timeout) as scope:
        while not ingest_log.drained() and not skip.is_set():
            with trio.move_on_after(0.2):
                await ingest_log.changed.wait()
    if scope.cancelled_caught:
        log.warning("event=drain_timeout unconsumed=%d", ingest_log.book.unconsumed())
    else:
        log.info("event=drained")


def _hostport(addr: str | None, default_port: int) -> str:
    host, port = parse_addr(addr or "", default_port)
    return f"{host}:{port}"
