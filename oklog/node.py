"""One oklog node (``ingest``, ``store`` or ``ingeststore``), wired together.

Theory of operation: ``run_node`` opens the data directories, binds the API
socket, plans its cluster membership and mounts every route (ops, ingest,
store, query) before anything listens, so no peer ever meets a half-built
node.  It then runs in one nursery: the HTTP API (hypercorn), the fast,
durable and bulk TCP listeners and the flusher (ingest role); the cluster (its own
Serf agent, if any, started only now: joining advertises the node); the
consumers, the segment verifier, the n-gram indexer, read repair's
background task and the scan workers (store role; the workers are
processes of their own, which die with the node), and the live-stream
service (``oklog.stream.fanout``; started before the API serves, stopped
last, which ends every open stream).  Calls the node makes to itself go
through ``LocalPeers``, without HTTP.  It then waits for SIGINT/SIGTERM and
shuts down in order:

1. stop the TCP listeners (closing forwarder connections; a bulk upload
   still waiting for its commit is answered ``ERR``), flush the active
   segment;
2. ingest role: keep serving ``/ingest/*`` until every flushed segment is
   consumed or ``ingest_shutdown_timeout`` passes (a second signal skips
   the wait);
3. stop the consumers (a batch in flight is failed back to its ingesters),
   leave the cluster, stop the API, stop the scan workers, unlock the
   directories.
"""

from __future__ import annotations

import logging
import signal
import socket
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from . import gauges
from .addr import is_wildcard, join_host_port, parse_addr
from .apiserver import serve_api
from .cluster.membership import Cluster, ClusterConfig, Membership, plan_cluster
from .config import NodeConfig
from .http import Request, Response, Router, json_response, request_metrics, text
from .ingest.api import ingest_router
from .ingest.bulk import BulkIngester, serve_bulk
from .ingest.gate import Gate, peer_loads, warn_inactive
from .ingest.log import IngestLog
from .ingest.server import LineIngester, serve_lines
from .ingest.shedding import ShedPolicy
from .listen import check_free, tcp_sockets
from .localpeers import LocalPeers
from .peer import Peers, open_peers
from .query.api import query_router
from .query.histogram import histogram_router
from .query.limits import QueryLimits
from .query.repair import Repairer
from .query.workers import Scanner
from .security import NodeSecurity
from .store.api import store_router
from .store.compactor import Compactor
from .store.consume import Consumer
from .store.log import StoreLog
from .stream.api import stream_router
from .stream.fanout import StreamService
from .ui import ui_router
from .ulid import Stamper

__all__ = ["NodeConfig", "run_node"]

log = logging.getLogger("oklog.node")


def advertised_api(cfg: NodeConfig, port: int, scheme: str = "http") -> str:
    """The API URL other nodes use to reach this one (``https`` with TLS)."""
    host, _ = parse_addr(cfg.api, 7650)
    if cfg.cluster_advertise:
        host, _ = parse_addr(cfg.cluster_advertise, 7659)
    elif is_wildcard(host):
        chost, _ = parse_addr(cfg.cluster, 7659)
        host = chost if not is_wildcard(chost) else "0.0.0.0"
    return f"{scheme}://{join_host_port(host, port)}"


def replication_warnings(cfg: NodeConfig, membership: Membership) -> list[str]:
    """What an operator must know about replication, from this node's view."""
    if "store" not in cfg.roles:
        return []
    rf = cfg.store_replication_factor
    live = len(set(membership.stores()))
    if live >= rf:
        return []
    return [
        f"{live} live store node(s) for replication factor {rf}: consumption is paused and "
        f"nothing ingested becomes queryable until {rf - live} more store node(s) join "
        f"(or run with -store.segment-replication-factor {max(live, 1)})"
    ]


def replication_state(cfg: NodeConfig, membership: Membership) -> dict[str, Any]:
    warnings = replication_warnings(cfg, membership)
    return {
        "factor": cfg.store_replication_factor,
        "live_stores": len(set(membership.stores())),
        "ok": not warnings,
        "warning": warnings[0] if warnings else None,
    }


def ops_router(not_ready: Callable[[], str | None], warnings: Callable[[], list[str]]) -> Router:
    """``/metrics``, ``/health``, ``/healthz`` and ``/readyz``.  ``not_ready()``
    says why the node is not ready (starting, stopping, no cluster view), or
    None; ``warnings()`` what an operator should know while it is."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    router = Router()

    async def metrics_endpoint(request: Request) -> Response:
        return Response(200, generate_latest(), content_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        return text(200, "OK")

    async def readyz(request: Request) -> Response:
        reason = not_ready()
        if reason is not None:
            return text(503, f"not ready: {reason}")
        notes = warnings()
        response = text(200, "\n".join(["ready"] + [f"warning: {w}" for w in notes]))
        if notes:
            response.headers["X-Oklog-Warning"] = " | ".join(notes)
        return response

    router.add("GET", "/metrics", metrics_endpoint)
    router.add("GET", "/health", health)
    router.add("GET", "/healthz", health)
    router.add("GET", "/readyz", readyz)
    return router


def _cluster_config(cfg: NodeConfig, api_port: int, security: NodeSecurity) -> ClusterConfig:
    return ClusterConfig(
        bind=_hostport(cfg.cluster, 7659),
        advertise=_hostport(cfg.cluster_advertise, 7659) if cfg.cluster_advertise else None,
        peers=[_hostport(p, 7659) for p in cfg.peers],
        serf_rpc=_hostport(cfg.cluster_serf_rpc, 7373) if cfg.cluster_serf_rpc else None,
        api_url=advertised_api(cfg, api_port, security.scheme),
        role=cfg.mode,
        # The node's own directory: sibling nodes may share a parent.
        data_dir=Path(cfg.store_path if "store" in cfg.roles else cfg.ingest_path),
        fast=cfg.fast_gossip,
        use_serf=cfg.use_serf,
        encrypt_key=security.gossip_key,
    )


async def run_node(cfg: NodeConfig, *, stop: trio.Event | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Run until SIGINT/SIGTERM (or ``stop`` is set), then shut down cleanly."""
    roles = cfg.roles
    ingest_log: IngestLog | None = None
    store: StoreLog | None = None
    scanner = Scanner(cfg.store_scan_workers)  # starts nothing until asked to
    if stop is None:
        stop = trio.Event()
    security = NodeSecurity.load(cfg)  # a bad token, certificate or key file stops us here
    try:
        if "ingest" in roles:
            ingest_log = IngestLog(
                cfg.ingest_path,
                flush_size=cfg.ingest_flush_size,
                flush_age=cfg.ingest_flush_age,
                pending_timeout=cfg.ingest_pending_timeout,
            )
            ingest_log.open()
        if "store" in roles:
            store = StoreLog(cfg.store_path, compression=cfg.store_compression,
                             block_size=cfg.store_block_size)
            store.open()
            store.offload = scanner.call  # n-gram indexes are built by the scan workers
        api_host, api_port = parse_addr(cfg.api, 7650)
        api_socks = tcp_sockets(api_host, api_port, "-api")
        try:
            cluster = plan_cluster(_cluster_config(cfg, api_socks[0].getsockname()[1], security))
        except BaseException:
            for sock in api_socks:
                sock.close()
            raise
        async with open_peers(conf=security.peer) as http_peers:
            # calls to this node itself skip HTTP (same semantics, half the work)
            peers = LocalPeers(http_peers, cluster.membership.self_url(), ingest=ingest_log, store=store)
            unregister = gauges.register(gauges.StateCollector(ingest_log, store, cluster.membership))
            try:
                await _serve(cfg, cluster, api_socks, ingest_log, store, scanner, peers, stop, task_status,
                             security)
            finally:
                unregister()
    finally:
        scanner.close()
        if ingest_log is not None:
            ingest_log.close()
        if store is not None:
            store.close()
    log.info("event=stopped mode=%s", cfg.mode)


async def _serve(cfg: NodeConfig, cluster: Cluster, api_socks: list[socket.socket],
                 ingest_log: IngestLog | None, store: StoreLog | None, scanner: Scanner,
                 peers: Peers, stop: trio.Event, task_status: Any,
                 security: NodeSecurity) -> None:
    membership = cluster.membership

    def warnings() -> list[str]:
        return replication_warnings(cfg, membership)

    def cluster_state() -> dict[str, Any]:
        state = membership.state()
        if store is not None:
            state["replication"] = replication_state(cfg, membership)
        return state

    api_port = api_socks[0].getsockname()[1]
    phase: str | None = "starting: recovering segments, opening listeners, joining the cluster"

    def not_ready() -> str | None:
        if phase is not None:
            return phase
        if getattr(membership, "connected", True) is False:
            return f"lost the Serf agent ({getattr(membership, 'rpc_addr', '?')}); reconnecting"
        return None

    router = Router()
    router.body_timeout = cfg.api_idle_timeout  # a request body that stalls this long: 408
    router.use(request_metrics(router))
    if (auth := security.middleware()) is not None:
        router.use(auth)  # every route, those mounted below and any added later
    # per-query deadline and concurrency cap, after the token check (oklog.query.limits)
    router.use(QueryLimits(cfg.store_query_timeout, cfg.store_max_concurrent_queries).middleware())
    router.mount(ops_router(not_ready, warnings))
    if ingest_log is not None:
        router.mount(ingest_router(ingest_log, cluster_state))
    repairer: Repairer | None = None
    streams: StreamService | None = None
    if store is not None:
        repairer = Repairer(membership, peers, rf=cfg.store_replication_factor,
                            grace=cfg.store_repair_grace, buffer=cfg.store_read_repair_buffer,
                            store=store, scanner=scanner)
        router.mount(store_router(store, cluster_state))
        router.mount(query_router(store, membership, peers, warnings, scanner, repairer))
        router.mount(histogram_router(store, membership, peers, scanner, warnings))
        router.mount(ui_router())
        streams = StreamService(store.live, membership.stores, membership.self_url(), peers)
        router.mount(stream_router(store.live, streams))

    async with trio.open_nursery() as nursery:
        streams_scope = trio.CancelScope()
        if streams is not None:  # live streams: their readers run in this service's nursery
            await nursery.start(_scoped, streams_scope, streams.run)
        api_stop = trio.Event()
        binds = await nursery.start(partial(serve_api, max_connections=cfg.api_max_connections,
                                            idle_timeout=cfg.api_idle_timeout),
                                    router, api_socks, api_stop, security.server_tls)

        listen_scopes: list[trio.CancelScope] = []
        flusher_scope = trio.CancelScope()
        if ingest_log is not None:
            ingester = LineIngester(ingest_log, max_record_size=cfg.ingest_max_record_size, stamper=Stamper(),
                                    topic_mode=cfg.ingest_topic_mode, topic=cfg.ingest_topic.encode())
            # load shedding (oklog.ingest.gate): measures and publishes always, refuses only if enabled
            gate = Gate(ShedPolicy(max_connections=cfg.ingest_max_connections, factor=cfg.ingest_shed_factor),
                        peers=lambda: peer_loads(membership))
            ingester.meter = gate.meter
            warn_inactive(gate.policy, membership)
            for addr, default, durable in ((cfg.ingest_fast, 7651, False), (cfg.ingest_durable, 7652, True)):
                host, port = parse_addr(addr, default)
                listen_scopes.append(trio.CancelScope())
                await nursery.start(_scoped, listen_scopes[-1], partial(serve_lines, gate=gate), ingester, host,
                                    port, durable, security.ingest_tls)
            # the line ports' stamping (their stamper: every ULID strictly increasing; their topic mode)
            bulk = BulkIngester(ingest_log, stamp_block=ingester.stamp_block,
                                max_record_size=cfg.ingest_max_record_size,
                                max_size=cfg.ingest_bulk_max_size, ack_timeout=cfg.ingest_bulk_timeout)
            bulk.meter = gate.meter
            if security.ingest_tls is None:
                host, port = parse_addr(cfg.ingest_bulk, 7653)
                listen_scopes.append(trio.CancelScope())
                await nursery.start(_scoped, listen_scopes[-1], partial(serve_bulk, gate=gate), bulk, host, port)
            else:  # a plain bulk port would let in whom TLS keeps out; bulk has no TLS yet
                log.warning("event=bulk_disabled reason=ingest_tls (bulk ingest does not work over "
                            "TLS yet: -ingest.bulk is not opened on a node with -ingest.tls-cert)")
            nursery.start_soon(_scoped, flusher_scope, ingest_log.run_flusher)
            listen_scopes.append(trio.CancelScope())
            nursery.start_soon(_scoped, listen_scopes[-1], gate.run, membership.publish)

        # Every route is mounted and the listeners are up: now join (and advertise).
        if cluster.agent is not None:
            host, port = parse_addr(cfg.cluster, 7659)
            check_free(host, port, "-cluster")
        cluster_scope = trio.CancelScope()
        await nursery.start(_scoped, cluster_scope, cluster.run)

        background: list[trio.CancelScope] = []
        if store is not None:
            background.append(trio.CancelScope())
            nursery.start_soon(_scoped, background[-1], store.run_verifier)
            background.append(trio.CancelScope())
            nursery.start_soon(_scoped, background[-1], store.run_indexer)
            background.append(trio.CancelScope())  # compaction and retention (oklog.store.compactor)
            nursery.start_soon(_scoped, background[-1], _compactor(cfg, store).run)
            nursery.start_soon(_start_scanner, scanner)
            if repairer is not None:
                background.append(trio.CancelScope())
                await nursery.start(_scoped, background[-1], repairer.run)
            for _ in range(cfg.store_consumers):
                consumer = Consumer(
                    store,
                    membership,
                    peers,
                    replication_factor=cfg.store_replication_factor,
                    target_size=cfg.store_target_size,
                    target_age=cfg.store_target_age,
                )
                background.append(trio.CancelScope())
                await nursery.start(_scoped, background[-1], consumer.run)
        phase = None
        log.info("event=started mode=%s api=%s", cfg.mode, binds[0])
        task_status.started(api_port)

        stopping, second_signal = trio.Event(), trio.Event()
        signal_scope = trio.CancelScope()
        await nursery.start(_scoped, signal_scope, _watch_signals, stop, stopping, second_signal)
        await stopping.wait()

        log.info("event=stopping mode=%s", cfg.mode)
        phase = "stopping: draining, then shutting down"
        for scope in listen_scopes:
            scope.cancel()
        if ingest_log is not None:
            await ingest_log.flush()
            await _drain(ingest_log, cfg.ingest_shutdown_timeout, second_signal)
            flusher_scope.cancel()
        for scope in background:
            scope.cancel()
        cluster_scope.cancel()
        signal_scope.cancel()
        streams_scope.cancel()  # ends every live stream's body
        if store is not None:
            store.live.close()
        api_stop.set()


def _compactor(cfg: NodeConfig, store: StoreLog) -> Compactor:
    return Compactor(
        store,
        target_size=cfg.store_target_size,
        retain=cfg.store_retain or None,  # 0: keep forever
        retain_size=cfg.store_retain_size,
        purge=cfg.store_purge,
        interval=cfg.store_compaction_interval or 1.0,
        compact=cfg.store_compaction_interval > 0,
    )


async def _start_scanner(scanner: Scanner) -> None:
    """Start the scan workers in the background (a query would otherwise)."""
    try:
        await scanner.start()
    except Exception as exc:  # the first query tries again, and says why
        log.error("event=scan_workers_failed error=%r", exc)


async def _scoped(scope: trio.CancelScope, fn: Callable[..., Awaitable[Any]], *args: Any,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Run ``fn`` under ``scope`` so shutdown can stop one part at a time."""
    with scope:
        await fn(*args, task_status=task_status)


async def _watch_signals(stop: trio.Event, first: trio.Event, second: trio.Event,
                         *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
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
    return join_host_port(host, port)
