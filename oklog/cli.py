"""The ``oklog`` command line: ``oklog MODE [flags]`` with OK Log's flags.

OK Log's single-dash long flags (``-from 5m``,
``-store.segment-replication-factor 1``) work verbatim, and so do the
double-dash forms.  The node modes (``ingest``, ``store``, ``ingeststore``)
get their options from ``oklog.config.NodeConfig``, the one table of node
settings; each mode gets the rows for its roles.  An unknown flag is named
whole (click would blame its first letter as a short option).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import random
import sys
import time
from typing import Any, Callable, List, Optional

import trio
import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .config import Flag, NodeConfig, flags
from .errors import OklogError

try:  # typer >= 0.28 carries its own copy of click
    from typer._click.exceptions import NoSuchOption
except ImportError:  # pragma: no cover - older typer, on click itself
    from click import NoSuchOption  # type: ignore[no-redef]

CONTEXT = {"help_option_names": ["-h", "-help", "--help"], "max_content_width": 100}


# --- unknown flags, named whole ------------------------------------------------------------


def unknown_option(args: list[str], params: list[Any]) -> str | None:
    """The first argument that looks like an unknown long option
    (``-store.bogus-flag``), skipping the values of known options."""
    known: dict[str, bool] = {}  # option -> takes a value
    for p in params:
        takes = (p.param_type_name == "option" and not getattr(p, "is_flag", False)
                 and not getattr(p, "count", False))
        for opt in [*p.opts, *p.secondary_opts]:
            known[opt] = takes
    value_next = False
    for arg in args:
        if value_next:
            value_next = False
            continue
        if arg == "--":
            return None
        if not arg.startswith("-") or arg == "-":
            continue
        name = arg.split("=", 1)[0]
        if name in known:
            value_next = known[name] and "=" not in arg
        elif len(name) > 2:
            return name
    return None


def _named_whole(parse: Callable[[], Any], ctx: Any, args: list[str], params: list[Any]) -> Any:
    try:
        return parse()
    except NoSuchOption as exc:
        whole = unknown_option(args, params)
        if whole is None or whole == exc.option_name:
            raise
        options = [o for p in params for o in p.opts if not o.startswith("--")]
        near = difflib.get_close_matches(whole, options, n=3)
        raise NoSuchOption(whole, possibilities=near, ctx=ctx) from None


class Command(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        original = list(args)  # the parser consumes its list
        return _named_whole(lambda: super(Command, self).parse_args(ctx, args), ctx, original,
                            self.get_params(ctx))

    def get_help(self, ctx: Any) -> str:
        # typer labels a repeatable argument with its Python type; the
        # metavar (ADDR) already says what to give
        return super().get_help(ctx).replace(" <list[str]>", " " * len(" <list[str]>"))


class Group(TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        original = list(args)
        return _named_whole(lambda: super(Group, self).parse_args(ctx, args), ctx, original,
                            self.get_params(ctx))


app = typer.Typer(
    cls=Group,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich panels truncate long OK Log flag names
    no_args_is_help=True,
    context_settings=CONTEXT,
    help="oklog: a coordination-free, grep-style log cluster (OK Log compatible).",
)


def command(name: str, summary: str, help: str = "") -> Callable[[Callable[..., Any]], Any]:
    """Register a command; ``summary`` is its line in ``oklog -h`` (never cut)."""
    return app.command(name, cls=Command, short_help=summary, help=help or summary,
                       context_settings=CONTEXT)


# --- shared helpers --------------------------------------------------------------------------


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


DEBUG = typer.Option(False, "-debug", "--debug", help="log debug messages too")

# Every client command of the HTTP API takes these four (docs/security.md) and
# passes client_conf(...) on: oklog.clientconf.ClientConf builds its httpx client.
TOKEN_FILE = typer.Option("", "-token-file", "--token-file", metavar="FILE",
                          help="send the token in FILE (first line) as Authorization: Bearer, "
                               "for nodes run with -api.token-file")
CA_FILE = typer.Option("", "-ca-file", "--ca-file", metavar="FILE",
                       help="CA bundle to verify an https:// node (default: the system's trust store)")
CERT_FILE = typer.Option("", "-cert-file", "--cert-file", metavar="FILE",
                         help="client certificate (PEM), for nodes that require one (-api.tls-ca)")
KEY_FILE = typer.Option("", "-key-file", "--key-file", metavar="FILE",
                        help="private key (PEM) of -cert-file")


# Options the record-reading client commands (query, stream, repair) share.
STORE = typer.Option("localhost:7650", "-store", "--store", metavar="ADDR",
                     help="address of any store node (https://host:port for TLS)")
Q = typer.Option("", "-q", "--q", metavar="TEXT",
                 help="what to find in records (any bytes; empty matches all)")
REGEX = typer.Option(False, "-regex", "--regex", help="q is a regular expression")
TOPIC = typer.Option(None, "-topic", "--topic", metavar="TOPIC", help="only records of this topic")
ULID = typer.Option(False, "-ulid", "--ulid", help="print each record's ULID")
FROM = typer.Option("1h", "-from", "--from", metavar="TIME",
                    help="from: a duration ago (5m, 1h30m, 7d, 1w), an RFC3339 time or a ULID")
TO = typer.Option("now", "-to", "--to", metavar="TIME",
                  help="to: now, a duration ago, an RFC3339 time or a ULID")


def exit_after_output(code: int) -> None:
    """Flush stdout and exit with ``code``; a reader that went away (``oklog
    query ... | head``) is not an error."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(code)


def client_conf(token_file: str, ca_file: str, cert_file: str = "", key_file: str = "") -> Any:
    """The ``ClientConf`` of a client command's security flags; a bad file
    is one line on stderr and exit 1."""
    from .clientconf import ClientConf

    try:
        return ClientConf.load(token_file, ca_file, cert_file, key_file)
    except OklogError as exc:
        fail(str(exc))


# --- node modes -------------------------------------------------------------------------------


def _option(field: str, flag: Flag) -> inspect.Parameter:
    names = (f"-{flag.name}", f"--{flag.name}")
    if flag.repeatable:
        annotation: Any = Optional[List[str]]
        default = typer.Option(None, *names, help=flag.help, metavar=flag.metavar)
    else:
        annotation = flag.kind
        default = typer.Option(flag.default, *names, help=flag.help, metavar=flag.metavar)
    return inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def node_command(mode: str) -> Callable[..., None]:
    """The command function for a node mode, its options from ``NodeConfig``."""
    table = dict(flags(mode))

    def run(**values: Any) -> None:
        from . import malloc
        from .node import run_node  # heavy (hypercorn, httpx): only for node modes

        setup_logging(values.pop("debug"))
        malloc.tune()
        cfg = NodeConfig(mode=mode)
        for field, flag in table.items():
            value = values[field]
            try:
                setattr(cfg, field, list(value or []) if flag.repeatable else flag.parse(value))
            except OklogError as exc:
                fail(f"-{flag.name}: {exc}")
        run_or_fail(lambda: trio.run(run_node, cfg))

    # typer reads options from the signature (PEP 362 lets a function state its own).
    params = [_option(field, flag) for field, flag in table.items()]
    params.append(inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=DEBUG))
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__name__ = mode
    return run


command("ingeststore", "Run a node that both ingests and stores (single-node setups).")(
    node_command("ingeststore"))
command("ingest", "Run an ingest node: accepts forwarders, serves segments to store nodes.")(
    node_command("ingest"))
command("store", "Run a store node: consumes, replicates and answers queries.")(
    node_command("store"))


# --- clients ------------------------------------------------------------------------------------


@command("forward", "Forward stdin lines to ingest nodes: ./myservice | oklog forward localhost",
         "Forward stdin lines to ingest nodes, e.g. ./myservice | oklog forward localhost.\n\n"
         "The fast (default) and durable modes have no acknowledgements: lines written to a "
         "connection that then breaks may be lost, and are reported as lines_unconfirmed. "
         "The durable port fsyncs what it read before reading more. "
         "The bulk mode is lossless end to end: stdin is cut into segments and each is sent "
         "again until an ingester answers OK, which it does once a store has it replicated.")
def forward(
    ingesters: List[str] = typer.Argument(
        ..., metavar="ADDR",
        help="ingester addresses: host, host:port, tcp://, tls://, tcp+dns://, tcp+dnssrv://"),
    prefix: Optional[List[str]] = typer.Option(None, "-prefix", "--prefix", metavar="TEXT",
                                               help="prefix every line with TEXT (repeatable)"),
    durable: bool = typer.Option(False, "-durable", "--durable",
                                 help="send to the durable port (7652 by default)"),
    bulk: bool = typer.Option(False, "-bulk", "--bulk",
                              help="send acknowledged segments to the bulk port (7653 by default)"),
    bulk_size: str = typer.Option("4MiB", "-bulk.size", "--bulk.size", metavar="SIZE",
                                  help="bulk mode: cut a segment at this many bytes"),
    bulk_age: str = typer.Option("1s", "-bulk.age", "--bulk.age", metavar="DURATION",
                                 help="bulk mode: cut a segment this long after its first line"),
    bulk_timeout: str = typer.Option("2m", "-bulk.timeout", "--bulk.timeout", metavar="DURATION",
                                     help="bulk mode: send a segment again if no reply came within this long"),
    buffer: int = typer.Option(1024, "-buffer", "--buffer", metavar="LINES",
                               help="lines buffered between stdin and the network"),
    drop: bool = typer.Option(False, "-drop", "--drop",
                              help="drop the oldest buffered lines when full instead of blocking"),
    ca_file: str = typer.Option("", "-ca-file", "--ca-file", metavar="FILE",
                                help="CA bundle to verify tls:// ingesters (default: the system's "
                                     "trust store)"),
    cert_file: str = typer.Option("", "-cert-file", "--cert-file", metavar="FILE",
                                  help="client certificate (PEM) for ingesters run with -ingest.tls-ca"),
    key_file: str = typer.Option("", "-key-file", "--key-file", metavar="FILE",
                                 help="private key (PEM) of -cert-file"),
    verbose: bool = typer.Option(False, "-v", "--v", "-verbose", "--verbose",
                                 help="log a one-line status (sent, rate, buffered, dropped, target) "
                                      "every -status-interval"),
    status_interval: str = typer.Option("10s", "-status-interval", "--status-interval",
                                        metavar="DURATION", help="how often -v logs its status line"),
    debug: bool = DEBUG,
) -> None:
    from pathlib import Path

    from .config import parse_seconds, parse_size
    from .forward import forward as run_forward
    from .tls import client_context

    setup_logging(debug)
    tls = None
    if ca_file or cert_file or key_file:
        if not any(t.lower().startswith("tls://") for t in ingesters):
            fail("-ca-file, -cert-file and -key-file are for tls:// ingesters "
                 "(ingesters run with -ingest.tls-cert)")
        try:
            tls = client_context(Path(ca_file) if ca_file else None, Path(cert_file) if cert_file else None,
                                 Path(key_file) if key_file else None, alpn=[])
        except OklogError as exc:
            fail(str(exc))
    values: dict[str, Any] = {}
    for name, parse, text in (("bulk.size", parse_size, bulk_size), ("bulk.age", parse_seconds, bulk_age),
                              ("bulk.timeout", parse_seconds, bulk_timeout),
                              ("status-interval", parse_seconds, status_interval)):
        try:
            values[name] = parse(text)
        except OklogError as exc:
            fail(f"-{name}: {exc}")
    size, age, timeout = values["bulk.size"], values["bulk.age"], values["bulk.timeout"]
    run_or_fail(lambda: trio.run(lambda: run_forward(
        list(ingesters), 0, prefixes=list(prefix or []), durable=durable, bulk=bulk,
        buffer_size=buffer, drop=drop, tls=tls, bulk_size=size, bulk_age=age, bulk_timeout=timeout,
        status_interval=(values["status-interval"] or None) if verbose else None)))


@command("query", "Query the store tier: oklog query -from 5m -q Hello")
def query(
    store: str = STORE,
    from_: str = FROM,
    to: str = TO,
    q: str = Q,
    regex: bool = REGEX,
    topic: Optional[str] = TOPIC,
    stats: bool = typer.Option(False, "-stats", "--stats", help="print statistics only"),
    ulid: bool = ULID,
    verbose: bool = typer.Option(False, "-v", "--v", "-verbose", "--verbose",
                                 help="print the request and response headers"),
    timeout: str = typer.Option("20s", "-timeout", "--timeout", metavar="DURATION",
                                help="give up if the store has not started answering after this long"),
    token_file: str = TOKEN_FILE,
    ca_file: str = CA_FILE,
    cert_file: str = CERT_FILE,
    key_file: str = KEY_FILE,
) -> None:
    from .querycli import run_query

    conf = client_conf(token_file, ca_file, cert_file, key_file)
    code = run_query(store, from_=from_, to=to, q=os.fsencode(q), regex=regex, stats=stats,
                     with_ulid=ulid, verbose=verbose, topic=topic, timeout=timeout, conf=conf)
    exit_after_output(code)


@command("repair", "Re-replicate under-replicated records, step by step: oklog repair -from 30d -step 1h",
         "Walk a time range step by step and copy every record found on fewer store nodes than "
         "the replication factor to nodes that lack it. Cron-able: safe to run repeatedly and "
         "concurrently (at worst an extra copy). A healthy step moves only ULIDs. Exits 1 if the "
         "store cannot be reached or any step failed.")
def repair(
    store: str = STORE,
    from_: str = FROM,
    to: str = TO,
    step: str = typer.Option("1h", "-step", "--step", metavar="DURATION",
                             help="check this much time per request"),
    dry_run: bool = typer.Option(False, "-dry-run", "--dry-run",
                                 help="count under-replicated records, copy nothing"),
    timeout: str = typer.Option("10m", "-timeout", "--timeout", metavar="DURATION",
                                help="give up on a step that has not answered after this long"),
    token_file: str = TOKEN_FILE,
    ca_file: str = CA_FILE,
    cert_file: str = CERT_FILE,
    key_file: str = KEY_FILE,
) -> None:
    from .repaircli import run_repair

    conf = client_conf(token_file, ca_file, cert_file, key_file)
    raise typer.Exit(run_repair(store, from_=from_, to=to, step=step, dry_run=dry_run,
                                timeout=timeout, conf=conf))


@command("stream", "Print matching records as they are stored: oklog stream -q ERROR",
         "Print matching records as the store tier writes them, until interrupted "
         "(e.g. oklog stream -q ERROR). Records appear about as soon as they become "
         "queryable (under a second on an idle cluster); copies from the replicas are "
         "de-duplicated within -window. A client too slow to keep up loses the oldest "
         "records and is told so on stderr; a lost connection is opened again.")
def stream(
    store: str = STORE,
    q: str = Q,
    regex: bool = REGEX,
    topic: Optional[str] = TOPIC,
    window: str = typer.Option("3s", "-window", "--window", metavar="DURATION",
                               help="de-duplication window (0 turns it off)"),
    ulid: bool = ULID,
    verbose: bool = typer.Option(False, "-v", "--v", "-verbose", "--verbose",
                                 help="print the request and every reconnection attempt"),
    token_file: str = TOKEN_FILE,
    ca_file: str = CA_FILE,
    cert_file: str = CERT_FILE,
    key_file: str = KEY_FILE,
) -> None:
    from .streamcli import run_stream

    conf = client_conf(token_file, ca_file, cert_file, key_file)
    code = run_stream(store, q=os.fsencode(q), regex=regex, topic=topic, window=window,
                      with_ulid=ulid, verbose=verbose, conf=conf)
    exit_after_output(code)


@command("testsvc", "Emit test log lines to stdout (for demos and the Procfile).")
def testsvc(
    id: str = typer.Option("", "-id", "--id", metavar="TEXT", help="identifier in every line (default: random)"),
    rate: float = typer.Option(5.0, "-rate", "--rate", metavar="N", help="lines per second"),
    size: int = typer.Option(128, "-size", "--size", metavar="BYTES", help="approximate bytes per line"),
    count: int = typer.Option(0, "-count", "--count", metavar="N", help="stop after this many lines (0: never)"),
) -> None:
    name = id or f"{random.getrandbits(32):08x}"
    words = ["GET", "POST", "INFO", "WARN", "ERROR", "timeout", "ok", "user", "cache", "miss", "hit", "db"]
    out = sys.stdout.buffer
    interval = 1.0 / rate if rate > 0 else 0.0
    start = time.monotonic()
    n = 0
    try:
        while not count or n < count:
            n += 1
            text = " ".join(random.choice(words) for _ in range(max(1, size // 6)))
            out.write(f"{name} {n} {text}"[:max(size, 16)].encode() + b"\n")
            out.flush()
            if interval:  # paced by the clock, not by sleeps that add up: -rate lines a second
                time.sleep(max(0.0, start + n * interval - time.monotonic()))
    except (BrokenPipeError, KeyboardInterrupt):
        os._exit(0)


@command("canary", "Write numbered lines and check them back: missing, duplicated, latency.",
         "Write sequence-numbered lines to an ingester's line port and read them back from the "
         "store tier with queries, reporting missing, duplicated and out-of-order records and the "
         "write-to-queryable latency (a status line on stderr, Prometheus metrics on -metrics-addr). "
         "With -duration it stops by itself and exits 1 if a line is missing or stored twice.")
def canary(
    ingest: str = typer.Option("localhost:7651", "-ingest", "--ingest", metavar="ADDR",
                               help="an ingester's fast (or durable) line port"),
    store: str = typer.Option("localhost:7650", "-store", "--store", metavar="ADDR",
                              help="address of any store node's API"),
    rate: float = typer.Option(10.0, "-rate", "--rate", metavar="N", help="lines per second"),
    duration: str = typer.Option("", "-duration", "--duration", metavar="DURATION",
                                 help="stop writing after this long, settle, exit 1 on loss (default: run "
                                      "until interrupted)"),
    topic: Optional[str] = typer.Option(None, "-topic", "--topic", metavar="TOPIC",
                                        help="begin every line with TOPIC and query that topic (for "
                                             "ingesters in dynamic topic mode)"),
    max_wait: str = typer.Option("30s", "-max-wait", "--max-wait", metavar="DURATION",
                                 help="a line not queryable this long after its write is missing"),
    query_interval: str = typer.Option("1s", "-query-interval", "--query-interval", metavar="DURATION",
                                       help="time between check queries"),
    report_interval: str = typer.Option("10s", "-report-interval", "--report-interval",
                                        metavar="DURATION", help="time between status lines"),
    metrics_addr: Optional[str] = typer.Option(None, "-metrics-addr", "--metrics-addr", metavar="ADDR",
                                               help="serve oklog_canary_* metrics at http://ADDR/metrics"),
    debug: bool = DEBUG,
    token_file: str = TOKEN_FILE,
    ca_file: str = CA_FILE,
    cert_file: str = CERT_FILE,
    key_file: str = KEY_FILE,
) -> None:
    from .canary import CanaryConfig, run_canary
    from .timespec import parse_duration

    setup_logging(debug)
    seconds = {}
    for flag, value in (("-duration", duration), ("-max-wait", max_wait),
                        ("-query-interval", query_interval), ("-report-interval", report_interval)):
        if value:
            try:
                seconds[flag] = parse_duration(value)
            except ValueError as exc:
                fail(f"{flag}: {exc}")
    cfg = CanaryConfig(ingest=ingest, store=store, rate=rate, duration=seconds.get("-duration"),
                       topic=topic, max_wait=seconds["-max-wait"],
                       query_interval=seconds["-query-interval"],
                       report_interval=seconds["-report-interval"], metrics_addr=metrics_addr)
    ok: list[bool] = []
    conf = client_conf(token_file, ca_file, cert_file, key_file)
    run_or_fail(lambda: ok.append(trio.run(lambda: run_canary(cfg, handle_signals=True, conf=conf)).ok()))
    raise typer.Exit(0 if ok and ok[0] else 1)


@command("version", "Print the version.")
def version() -> None:
    typer.echo(f"oklog {__version__}")


def main() -> None:
    app(prog_name="oklog")


if __name__ == "__main__":
    main()
