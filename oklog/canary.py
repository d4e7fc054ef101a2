"""``oklog canary``: write numbered lines to an ingester, read them back
from the store tier, report what is missing, duplicated, out of order, and
how long a record takes to become queryable (in the spirit of Loki's
loki-canary).

Theory of operation
-------------------
Three tasks share one :class:`~oklog.canarybook.CanaryBook` (the IO-free
bookkeeping) and one trio event loop:

- the **writer** connects to the ingester's line port and writes
  ``oklog-canary run=RUN seq=N ts=UNIX_NS`` lines, ``rate`` per second, in
  small batches (one every 10 ms at most).  ``RUN`` is random per run, so
  several canaries can share a cluster.  A batch is numbered only once it
  is handed to the socket; a write that fails is not sent again (a re-sent
  line could be stored twice, and the canary would report its own
  duplicate).  Every line written to a connection that then broke (a write
  error, the ingester closing, or no clean close at the end) is reported to
  the book as *unconfirmed*: it may be lost without any fault of the
  cluster, exactly as ``oklog forward`` counts ``lines_unconfirmed``.  The
  writer reconnects with a backoff (0.1 s doubling up to 5 s); while it has
  no connection, no lines are numbered.  It does not catch up on lines it
  could not write.
- the **checker** polls ``/store/query`` every ``query_interval`` with
  ``q=run=RUN seq=`` and the time window the book asks for, feeds each
  answer to the book and declares missing what is older than ``max_wait``.
  A failed query is counted and retried at the next poll.
- the **reporter** prints a status line to stderr every ``report_interval``.

With a ``duration`` the writer stops after that long (half-closing its
connection and waiting for the ingester to close it, which confirms every
line); the checker goes on until nothing is pending (every line seen or
declared missing, so at most ``max_wait`` longer), then the run ends with a
summary and the verdict: ``ok`` unless a line is still missing or some line
was stored twice.  Without a duration it runs until interrupted.

Metrics (``oklog_canary_*``) are on their own registry, served on
``metrics_addr`` (plain HTTP ``/metrics``) when one is given.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import httpx
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from oklog import timespec
from oklog.addr import api_url, parse_addr
from oklog.canarybook import CanaryBook
from oklog.clientconf import ClientConf
from oklog.errors import ConfigError
from oklog.forward import DEFAULT_FAST_PORT
from oklog.records.format import TOPIC_PATTERN, TOPIC_RE

__all__ = ["CanaryConfig", "CanaryMetrics", "run_canary", "canary_line", "parse_answer"]

log = logging.getLogger("oklog.canary")

_TICK = 0.01  # at most one batch per 10 ms
_BACKOFF_INITIAL = 0.1
_BACKOFF_MAX = 5.0
_CONNECT_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 10.0
_SEND_TIMEOUT = 10.0
_QUERY_TIMEOUT = 30.0
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


@dataclass
class CanaryConfig:
    """Everything ``oklog canary`` is told on its command line."""

    ingest: str
    store: str
    rate: float = 10.0  #: lines per second
    duration: float | None = None  #: seconds to write for; None: until interrupted
    topic: str | None = None  #: first field of every line, and the query's topic=
    max_wait: float = 30.0  #: a line not queryable this long after its write is missing
    query_interval: float = 1.0
    report_interval: float = 10.0
    metrics_addr: str | None = None  #: host:port to serve /metrics on
    skew: float = 10.0  #: how far the ingester's clock may be from ours
    run_id: str = field(default_factory=lambda: secrets.token_hex(6))

    def check(self) -> None:
        """ConfigError for a value that makes no sense."""
        if not math.isfinite(self.rate) or self.rate <= 0:
            raise ConfigError(f"-rate must be more than 0 lines/s, not {self.rate:g}")
        if self.duration is not None and self.duration <= 0:
            raise ConfigError("-duration must be more than 0")
        for name, value in (("-max-wait", self.max_wait), ("-query-interval", self.query_interval),
                            ("-report-interval", self.report_interval)):
            if value <= 0:
                raise ConfigError(f"{name} must be more than 0")
        if self.topic is not None and not TOPIC_RE.fullmatch(self.topic.encode()):
            raise ConfigError(f"-topic {self.topic!r}: not a topic ({TOPIC_PATTERN.decode()})")
        if not re.fullmatch(r"[0-9A-Za-z_-]+", self.run_id):
            raise ConfigError(f"run id {self.run_id!r}: letters, digits, _ and - only")
        parse_addr(self.ingest, DEFAULT_FAST_PORT, "127.0.0.1")
        api_url(self.store)
        if self.metrics_addr is not None:
            parse_addr(self.metrics_addr, 9650, "0.0.0.0")


def canary_line(cfg: CanaryConfig, seq: int, now_ns: int) -> bytes:
    """One canary line (with its LF)."""
    head = f"{cfg.topic} " if cfg.topic else ""
    return f"{head}oklog-canary run={cfg.run_id} seq={seq} ts={now_ns}\n".encode()


def _marker(run_id: str) -> bytes:
    return f"run={run_id} seq=".encode()


def answer_pattern(run_id: str) -> re.Pattern[bytes]:
    """Finds ``(ULID, seq)`` in a query answer's records of this run."""
    return re.compile(rb"^([0-9A-Z]{26}) [^\n]*?" + re.escape(_marker(run_id)) + rb"([0-9]{1,18}) ",
                      re.MULTILINE)


def parse_answer(body: bytes, pattern: re.Pattern[bytes]) -> list[tuple[bytes, int]]:
    """Every ``(ULID, seq)`` of this run in a query answer, in order."""
    return [(ulid, int(seq)) for ulid, seq in pattern.findall(body)]


class CanaryMetrics:
    """The ``oklog_canary_*`` metrics, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sent = Counter("oklog_canary_sent", "Lines written to an ingester", registry=r)
        self.seen = Counter("oklog_canary_seen", "Lines found by a query (first sighting)", registry=r)
        self.missing = Counter("oklog_canary_missing",
                               "Lines not queryable within -max-wait of being written", registry=r)
        self.missing_unconfirmed = Counter(
            "oklog_canary_missing_unconfirmed",
            "Missing lines that had been written to a connection that then broke", registry=r)
        self.late = Counter("oklog_canary_late", "Lines found after being declared missing", registry=r)
        self.duplicates = Counter("oklog_canary_duplicates",
                                  "Extra copies of a line (stored more than once)", registry=r)
        self.out_of_order = Counter("oklog_canary_out_of_order",
                                    "Lines whose ULID order disagrees with their write order", registry=r)
        self.unconfirmed = Counter("oklog_canary_unconfirmed",
                                   "Lines written to a connection that then broke", registry=r)
        self.reconnects = Counter("oklog_canary_reconnects",
                                  "Failed connects and broken connections to the ingester", registry=r)
        self.queries = Counter("oklog_canary_queries", "Check queries", ["outcome"], registry=r)
        self.pending = Gauge("oklog_canary_pending", "Lines written, not yet seen nor missing", registry=r)
        self.latency = Histogram("oklog_canary_latency_seconds",
                                 "From a line's write to the first query that returned it",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self._synced: dict[str, int] = {}

    def sync(self, book: CanaryBook) -> None:
        """Bring the counters up to the book's totals."""
        for name in ("sent", "seen", "missing", "missing_unconfirmed", "late", "duplicates",
                     "out_of_order", "unconfirmed"):
            value = getattr(book.stats, name)
            delta = value - self._synced.get(name, 0)
            if delta > 0:
                getattr(self, name).inc(delta)
            self._synced[name] = value
        self.pending.set(book.pending)


@dataclass
class _Conn:
    stream: trio.SocketStream
    first: int  # first sequence number written to it
    dead: str | None = None
    closed: trio.Event = field(default_factory=trio.Event)


class _Writer:
    """Writes the numbered lines; see the module docstring."""

    def __init__(self, cfg: CanaryConfig, book: CanaryBook, metrics: CanaryMetrics,
                 nursery: trio.Nursery, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.book = book
        self.metrics = metrics
        self.nursery = nursery
        self.clock = clock
        self.host, self.port = parse_addr(cfg.ingest, DEFAULT_FAST_PORT, "127.0.0.1")
        self.conn: _Conn | None = None
        self.backoff = _BACKOFF_INITIAL
        self.retry_at = -math.inf
        self.last_error = ""
        self.reconnects = 0

    async def run(self, start: float, until: float) -> None:
        """Write from ``start`` until ``until`` (trio time), then close cleanly."""
        done = 0  # lines due so far, written or skipped
        while (now := trio.current_time()) < until:
            due = int((now - start) * self.cfg.rate) - done
            if due > 0:
                # After an outage, do not burst: at most one second's worth at once.
                batch = min(due, max(1, math.ceil(self.cfg.rate)))
                done += due
                await self._write(batch)
            await trio.sleep_until(min(until, max(now + _TICK, start + (done + 1) / self.cfg.rate)))
        if math.isfinite(until):  # the lines due in the last tick
            due = int(round((until - start) * self.cfg.rate, 6)) - done
            if due > 0:
                await self._write(min(due, max(1, math.ceil(self.cfg.rate))))
        await self.close()

    async def _write(self, n: int) -> None:
        if self.conn is not None and self.conn.dead:
            self._broken(self.conn.dead)
        if self.conn is None and not await self._connect():
            return
        conn = self.conn
        assert conn is not None
        now = self.clock()
        seqs = self.book.send(n, now)
        ns = int(now * 1e9)
        data = b"".join(canary_line(self.cfg, seq, ns) for seq in seqs)
        self.metrics.sync(self.book)
        try:
            with trio.fail_after(_SEND_TIMEOUT):
                await conn.stream.send_all(data)
        except trio.TooSlowError:
            self._broken(f"write timed out after {_SEND_TIMEOUT:g}s (the ingester is not reading)")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._broken(f"write failed: {e}" if str(e) else "write failed")
        else:
            self.backoff = _BACKOFF_INITIAL

    async def _connect(self) -> bool:
        if trio.current_time() < self.retry_at:
            return False
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as e:
            self._failed(f"connect {self.host}:{self.port}: "
                         + ("timed out" if isinstance(e, trio.TooSlowError) else str(e.strerror or e)))
            return False
        try:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            pass
        self.conn = _Conn(stream, self.book.next_seq)
        self.nursery.start_soon(self._watch, self.conn)
        log.info("event=connect target=%s:%s", self.host, self.port)
        return True

    async def _watch(self, conn: _Conn) -> None:
        """The ingester sends nothing: EOF or an error means it dropped us."""
        try:
            while await conn.stream.receive_some(4096):
                pass
            conn.dead = "closed by ingester"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            conn.dead = f"connection lost: {e}" if str(e) else "connection lost"
        conn.closed.set()

    def _broken(self, why: str) -> None:
        """The current connection is gone: what it carried is unconfirmed."""
        conn = self.conn
        assert conn is not None
        self.conn = None
        written = range(conn.first, self.book.next_seq)
        marked = self.book.unconfirmed(written)
        self.nursery.start_soon(_aclose, conn.stream)
        self._failed(why, lines_unconfirmed=marked)

    def _failed(self, why: str, lines_unconfirmed: int = 0) -> None:
        self.reconnects += 1
        self.metrics.reconnects.inc()
        self.metrics.sync(self.book)
        self.last_error = why
        log.warning("event=failover err=%r lines_unconfirmed=%d backoff=%gs",
                    why, lines_unconfirmed, self.backoff)
        self.retry_at = trio.current_time() + self.backoff
        self.backoff = min(self.backoff * 2, _BACKOFF_MAX)

    async def close(self) -> None:
        """Half-close; the ingester closes its side once it has read everything."""
        conn = self.conn
        if conn is None:
            return
        if conn.dead:
            self._broken(conn.dead)
            return
        try:
            await conn.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._broken(f"close: {e}")
            return
        with trio.move_on_after(_CLOSE_TIMEOUT):
            await conn.closed.wait()
        if not conn.closed.is_set():
            self._broken("ingester did not close in time")
        elif conn.dead != "closed by ingester":
            self._broken(conn.dead or "connection lost")
        else:
            self.conn = None
            await _aclose(conn.stream)


async def _aclose(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await stream.aclose()


class _Checker:
    """Polls the store tier and feeds the answers to the book."""

    def __init__(self, cfg: CanaryConfig, book: CanaryBook, metrics: CanaryMetrics,
                 client: httpx.AsyncClient, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.book = book
        self.metrics = metrics
        self.client = client
        self.clock = clock
        self.base = api_url(cfg.store)
        self.pattern = answer_pattern(cfg.run_id)
        self.q = quote(_marker(cfg.run_id).decode(), safe="")
        self.errors = 0
        self.last_error = ""
        self.partial = 0

    def url(self, now: float) -> str:
        lo, hi = self.book.window(now)
        from_ = timespec.format_rfc3339(max(0, int(lo * 1000)))
        to = timespec.format_rfc3339(int(hi * 1000))
        url = f"{self.base}/store/query?from={quote(from_)}&to={quote(to)}&q={self.q}"
        if self.cfg.topic:
            url += f"&topic={self.cfg.topic}"
        return url

    async def poll(self) -> None:
        """One query; then expire what waited too long."""
        try:
            resp = await self.client.get(self.url(self.clock()))
        except httpx.HTTPError as e:
            self._error(f"query {self.base}: {e or type(e).__name__}")
        else:
            if resp.status_code in (200, 206):
                found = parse_answer(resp.content, self.pattern)
                for latency in self.book.observe(found, self.clock()):
                    self.metrics.latency.observe(latency)
                if resp.status_code == 206:
                    self.partial += 1
                    self.metrics.queries.labels("partial").inc()
                else:
                    self.metrics.queries.labels("ok").inc()
            else:
                reason = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
                self._error(f"query {self.base}: HTTP {resp.status_code} {reason}".strip())
        for seq in self.book.expire(self.clock())[:3]:
            log.warning("event=missing run=%s seq=%d max_wait=%gs", self.cfg.run_id, seq, self.cfg.max_wait)
        self.metrics.sync(self.book)

    def _error(self, why: str) -> None:
        self.errors += 1
        self.last_error = why
        self.metrics.queries.labels("error").inc()
        log.warning("event=query_error err=%r", why)


def _secs(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}s"


def status_line(book: CanaryBook, cfg: CanaryConfig, elapsed: float, writer: _Writer,
                checker: _Checker) -> str:
    s = book.stats
    p50, p99, worst = book.latency_summary()
    line = (f"canary run={cfg.run_id} elapsed={elapsed:.0f}s sent={s.sent} seen={s.seen} "
            f"pending={book.pending} missing={book.lost} duplicates={s.duplicates} "
            f"out_of_order={s.out_of_order} latency_p50={_secs(p50)} latency_p99={_secs(p99)} "
            f"latency_max={_secs(worst)} reconnects={writer.reconnects} query_errors={checker.errors}")
    return line


def summary(book: CanaryBook, cfg: CanaryConfig, elapsed: float, writer: _Writer,
            checker: _Checker) -> str:
    s = book.stats
    p50, p99, worst = book.latency_summary()
    verdict = "OK" if book.ok() else "FAIL"
    lines = [
        f"canary summary: run={cfg.run_id} {verdict} after {elapsed:.1f}s",
        f"  sent {s.sent}, seen {s.seen}, pending {book.pending} (not yet seen, not yet "
        f"{cfg.max_wait:g}s old)",
        f"  missing {book.lost} ({book.lost_unconfirmed} of them written to a connection that broke; "
        f"declared missing {s.missing}, seen late {s.late})",
        f"  duplicates {s.duplicates}, out of order {s.out_of_order}",
        f"  write-to-queryable latency: p50 {_secs(p50)}, p99 {_secs(p99)}, max {_secs(worst)}",
        f"  reconnects {writer.reconnects}, lines unconfirmed {s.unconfirmed}, "
        f"query errors {checker.errors}, partial answers {checker.partial}",
    ]
    if writer.last_error:
        lines.append(f"  last connection error: {writer.last_error}")
    if checker.last_error:
        lines.append(f"  last query error: {checker.last_error}")
    return "\n".join(lines)


def _serve_metrics(addr: str, registry: CollectorRegistry) -> Any:
    from prometheus_client import start_http_server

    host, port = parse_addr(addr, 9650, "0.0.0.0")
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise ConfigError(f"-metrics-addr {addr}: {e.strerror or e}") from None
    return server


async def run_canary(
    cfg: CanaryConfig,
    *,
    err: TextIO | None = None,
    clock: Callable[[], float] = time.time,
    metrics: CanaryMetrics | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
    conf: ClientConf | None = None,
) -> CanaryBook:
    """Run the canary (see the module docstring); returns its book, whose
    ``ok()`` is the verdict.  Status lines and the summary go to ``err``.
    ``handle_signals``: SIGINT and SIGTERM end the run early, with the
    summary (for the command line; main thread only)."""
    cfg.check()
    err = sys.stderr if err is None else err
    book = CanaryBook(cfg.max_wait, cfg.skew)
    metrics = metrics or CanaryMetrics()
    server = _serve_metrics(cfg.metrics_addr, metrics.registry) if cfg.metrics_addr else None
    begin = trio.current_time()
    until = begin + cfg.duration if cfg.duration is not None else math.inf
    timeouts = httpx.Timeout(_QUERY_TIMEOUT, connect=_CONNECT_TIMEOUT)
    print(f"canary run={cfg.run_id} ingest={cfg.ingest} store={api_url(cfg.store)} "
          f"rate={cfg.rate:g}/s max_wait={cfg.max_wait:g}s", file=err, flush=True)
    try:
        async with (conf or ClientConf()).async_client(timeout=timeouts, transport=transport) as client, \
                trio.open_nursery() as nursery:
            writer = _Writer(cfg, book, metrics, nursery, clock)
            checker = _Checker(cfg, book, metrics, client, clock)
            writing = trio.Event()

            async def write() -> None:
                try:
                    await writer.run(begin, until)
                finally:
                    writing.set()

            async def check() -> None:
                while True:
                    await trio.sleep(cfg.query_interval)
                    await checker.poll()
                    if writing.is_set() and book.settled():
                        break
                nursery.cancel_scope.cancel()

            async def report() -> None:
                while True:
                    await trio.sleep(cfg.report_interval)
                    elapsed = trio.current_time() - begin
                    print(status_line(book, cfg, elapsed, writer, checker), file=err, flush=True)

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        print("canary: interrupted", file=err, flush=True)
                        nursery.cancel_scope.cancel()
                        return

            if handle_signals:
                nursery.start_soon(stop_on_signal)
            nursery.start_soon(write)
            nursery.start_soon(check)
            nursery.start_soon(report)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    print(summary(book, cfg, trio.current_time() - begin, writer, checker), file=err, flush=True)
    return book
