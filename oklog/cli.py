"""The ``oklog`` command line: ``oklog MODE [flags]`` with OK Log's flags.

OK Log's single-dash long flags (``-from 5m``,
``-store.segment-replication-factor 1``) work verbatim, and so do the
double-dash forms.  The node modes (``ingest``, ``store``, ``ingeststore``)
share one table of options; each mode gets the rows for its roles.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import trio
import typer

from . import __version__
from .addr import parse_duration, parse_size
from .cluster.membership import tiers
from .errors import OklogError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich panels truncate long OK Log flag names
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "-help", "--help"]},
    help="oklog: a coordination-free, grep-style log cluster (OK Log compatible).",
)


def setup_logging(debug: bool) -> None:
    """One line per event, key=value, to stderr."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s component=%(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    for noisy in ("httpx", "httpcore", "hypercorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def run_or_fail(fn: Callable[[], Any]) -> None:
    """Run ``fn``; our own errors become one line on stderr and exit 1."""
    try:
        fn()
    except KeyboardInterrupt:
        raise typer.Exit(130)
    except BaseException as group:
        exc = _leaf(group)
        if isinstance(exc, OklogError):
            fail(str(exc))
        if isinstance(exc, OSError):
            fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        raise


def fail(message: str) -> None:
    typer.echo(f"oklog: {message}", err=True)
    raise typer.Exit(1)


# --- node modes -------------------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    field: str  # NodeConfig attribute
    flag: str  # OK Log flag name, without dashes
    default: Any
    help: str
    roles: tuple[str, ...] = ("ingest", "store")
    convert: Callable[[Any], Any] = lambda v: v
    kind: type = str


NODE_OPTIONS = [
    Opt("api", "api", "tcp://0.0.0.0:7650", "listen address for the HTTP API"),
    Opt("cluster", "cluster", "tcp://0.0.0.0:7659", "listen address for cluster gossip (Serf)"),
    Opt("cluster_advertise", "cluster.advertise-addr", "", "address other nodes use to reach this one",
        convert=lambda v: v or None),
    Opt("cluster_serf_rpc", "cluster.serf-rpc", "", "attach to a running Serf agent at host:port",
        convert=lambda v: v or None),
    Opt("fast_gossip", "cluster.fast-gossip", False,
        "quick failure detection (Serf's local profile): for loopback clusters and tests", kind=bool),
    Opt("ingest_fast", "ingest.fast", "tcp://0.0.0.0:7651", "listen address for fast (buffered) writes",
        ("ingest",)),
    Opt("ingest_durable", "ingest.durable", "tcp://0.0.0.0:7652", "listen address for durable (fsynced) writes",
        ("ingest",)),
    Opt("ingest_bulk", "ingest.bulk", "tcp://0.0.0.0:7653", "listen address for bulk segment writes",
        ("ingest",)),
    Opt("ingest_path", "ingest.path", "data/ingest", "directory for ingest segments", ("ingest",),
        convert=Path),
    Opt("ingest_flush_size", "ingest.segment-flush-size", "16MiB", "flush active segments after this many bytes",
        ("ingest",), convert=parse_size),
    Opt("ingest_flush_age", "ingest.segment-flush-age", "3s", "flush active segments after this long",
        ("ingest",), convert=parse_duration),
    Opt("ingest_pending_timeout", "ingest.segment-pending-timeout", "1m",
        "claimed but uncommitted segments return to the queue after this long", ("ingest",),
        convert=parse_duration),
    Opt("ingest_shutdown_timeout", "ingest.shutdown-timeout", "1m",
        "on shutdown, wait this long for the store tier to take flushed segments", ("ingest",),
        convert=parse_duration),
    Opt("ingest_max_record_size", "ingest.max-record-size", "1MiB", "longer records are rejected and counted",
        ("ingest",), convert=parse_size),
    Opt("store_path", "store.path", "data/store", "directory for store segments", ("store",), convert=Path),
    Opt("store_consumers", "store.segment-consumers", 1, "concurrent segment consumers", ("store",), kind=int),
    Opt("store_target_size", "store.segment-target-size", "128MiB", "try to make store segments this big",
        ("store",), convert=parse_size),
    Opt("store_target_age", "store.segment-target-age", "3s", "gather segments for at most this long",
        ("store",), convert=parse_duration),
    Opt("store_replication_factor", "store.segment-replication-factor", 2,
        "copies of each record across distinct store nodes", ("store",), kind=int),
]


def _node_command(mode: str) -> Callable[..., None]:
    roles = tiers(mode)
    opts = [o for o in NODE_OPTIONS if set(o.roles) & set(roles)]

    def command(**kwargs: Any) -> None:
        from .node import NodeConfig, run_node  # heavy (hypercorn, httpx): only for node modes

        setup_logging(kwargs.pop("debug"))
        peers = kwargs.pop("peer") or []
        serf = kwargs.pop("serf")
        cfg = NodeConfig(mode=mode, peers=list(peers), use_serf={"auto": None, "on": True, "off": False}[serf])
        for o in opts:
            try:
                setattr(cfg, o.field, o.convert(kwargs[o.field]))
            except OklogError as exc:
                fail(f"-{o.flag}: {exc}")
        run_or_fail(lambda: trio.run(run_node, cfg))

    params = [
        inspect.Parameter(o.field, inspect.Parameter.KEYWORD_ONLY, annotation=o.kind,
                          default=typer.Option(o.default, f"-{o.flag}", f"--{o.flag}", help=o.help))
        for o in opts
    ]
    params.append(inspect.Parameter("peer", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[str]],
                                    default=typer.Option(None, "-peer", "--peer",
                                                         help="cluster peer host:port to join (repeatable)")))
    params.append(inspect.Parameter("serf", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                                    default=typer.Option("auto", "-cluster.serf", "--cluster.serf",
                                                         help="auto | on | off: run a Serf agent for membership")))
    params.append(inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, "-debug", "--debug", help="debug logging")))
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = mode
    return command


app.command("ingeststore", help="Run a node that both ingests and stores (single-node setups).")(
    _node_command("ingeststore"))
app.command("ingest", help="Run an ingest node: accepts forwarders, serves segments to stores.")(
    _node_command("ingest"))
app.command("store", help="Run a store node: consumes, replicates and answers queries.")(
    _node_command("store"))


# --- clients -------------------------------------------------------------------------


@app.command(help="Forward stdin lines to ingest nodes (e.g. ./myservice | oklog forward localhost).")
def forward(
    ingesters: List[str] = typer.Argument(..., help="ingester addresses: host, host:port, tcp://, tcp+dns://, tcp+dnssrv://"),
    prefix: Optional[List[str]] = typer.Option(None, "-prefix", "--prefix", help="prefix every line (repeatable)"),
    durable: bool = typer.Option(False, "-durable", "--durable", help="send to the durable port (7652 by default)"),
    bulk: bool = typer.Option(False, "-bulk", "--bulk", help="bulk mode"),
    buffer: int = typer.Option(1024, "-buffer", "--buffer", help="blocks buffered between stdin and the network"),
    drop: bool = typer.Option(False, "-drop", "--drop", help="drop the oldest buffered lines when full instead of blocking"),
    debug: bool = typer.Option(False, "-debug", "--debug"),
) -> None:
    from .forward import forward as run_forward

    setup_logging(debug)
    run_or_fail(lambda: trio.run(lambda: run_forward(
        list(ingesters), 0, prefixes=list(prefix or []), durable=durable, bulk=bulk,
        buffer_size=buffer, drop=drop)))


@app.command(help="Query the store tier (e.g. oklog query -from 5m -q Hello).")
def query(
    store: str = typer.Option("localhost:7650", "-store", "--store", help="address of any store node"),
    from_: str = typer.Option("1h", "-from", "--from", help="how far back: a duration (5m, 2h), RFC3339 time or ULID"),
    to: str = typer.Option("now", "-to", "--to", help="up to: now, a duration ago, RFC3339 time or ULID"),
    q: str = typer.Option("", "-q", "--q", help="text to find in records (empty matches all)"),
    regex: bool = typer.Option(False, "-regex", "--regex", help="q is a regular expression"),
    topic: Optional[str] = typer.Option(None, "-topic", "--topic", help="only records of this topic"),
    stats: bool = typer.Option(False, "-stats", "--stats", help="print statistics only"),
    ulid: bool = typer.Option(False, "-ulid", "--ulid", help="print each record's ULID"),
    verbose: bool = typer.Option(False, "-v", "--v", "-verbose", "--verbose", help="print the request and headers"),
) -> None:
    from .querycli import run_query

    code = run_query(store, from_=from_, to=to, q=q, regex=regex, stats=stats, with_ulid=ulid,
                     verbose=verbose, topic=topic)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `oklog query ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(code)


@app.command(help="Emit test log lines to stdout (for demos and the Procfile).")
def testsvc(
    id: str = typer.Option("", "-id", "--id", help="identifier in every line (default: random)"),
    rate: float = typer.Option(5.0, "-rate", "--rate", help="lines per second"),
    size: int = typer.Option(128, "-size", "--size", help="approximate bytes per line"),
    count: int = typer.Option(0, "-count", "--count", help="stop after this many lines (0: never)"),
) -> None:
    name = id or f"{random.getrandbits(32):08x}"
    words = ["GET", "POST", "INFO", "WARN", "ERROR", "timeout", "ok", "user", "cache", "miss", "hit", "db"]
    out = sys.stdout.buffer
    interval = 1.0 / rate if rate > 0 else 0.0
    n = 0
    try:
        while not count or n < count:
            n += 1
            text = " ".join(random.choice(words) for _ in range(max(1, size // 6)))
            out.write(f"{name} {n} {text}"[:max(size, 16)].encode() + b"\n")
            out.flush()
            if interval:
                time.sleep(interval)
    except (BrokenPipeError, KeyboardInterrupt):
        os._exit(0)


@app.command(help="Print the version.")
def version() -> None:
    typer.echo(f"oklog {__version__}")


def main() -> None:
    app(prog_name="oklog")


if __name__ == "__main__":
    main()
