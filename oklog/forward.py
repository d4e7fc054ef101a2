"""``oklog forward``: read lines from a file descriptor, send them to ingesters.

Theory of operation
-------------------
Two tasks share a bounded :class:`_Buffer` of line blocks.

The **reader** reads the source fd in large blocks (a ``trio`` ``FdStream``
on a ``dup`` of the fd), keeps whole lines only (a partial last line is
carried over to the next read; at EOF an unterminated last line gets an LF),
prepends the prefix to every line with one ``bytes.replace`` per block, and
puts ``(block, line count)`` into the buffer.  Bytes are never decoded or
interpreted: ``%``, NUL, CR, tabs and invalid UTF-8 reach the ingester as
they were read.  A line longer than ``max_line_size`` is dropped and counted
(the ingester would reject it anyway, and memory stays bounded).

The buffer holds at most ``buffer_size`` lines (and at most
``_MAX_BUFFER_BYTES`` bytes, but always at least one block).  When it is
full, the reader either waits (backpressure, the default: the pipe fills and
the producer blocks) or, with ``drop=True``, drops the oldest buffered lines
and counts them in :class:`ForwardStats`.

The **sender** takes everything buffered (up to ``_BATCH_BYTES``) as one
batch and writes it to the current ingester connection.  Connections are
opened lazily, starting at a random target and going round-robin from there;
on a connect or send error the sender logs, waits an exponential backoff
(``backoff_initial`` doubling up to ``backoff_max``, reset after a
successful send), moves on to the next target and re-sends the same batch.
A watcher task per connection reads from the ingester (which never sends
anything): EOF or an error means the ingester closed or reset the
connection, so the sender fails over *before* putting the next batch into a
dead socket.  ``tcp+dns://`` and ``tcp+dnssrv://`` targets are resolved into
one target per address / SRV record, again each time the rotation wraps.

At EOF of the source the sender sends everything buffered, half-closes the
connection (``send_eof``), waits up to ``close_timeout`` for the ingester to
close its side (it does so once it has read everything), closes, returns.

The line protocol has no acknowledgements (OK Log's neither): only a clean
close -- our EOF, then the ingester closing once it has read everything --
confirms that the ingester got what was written.  Lines written to a
connection that breaks or does not close cleanly may be lost; they are
counted as ``lines_unconfirmed`` (and logged at the failover) rather than
passed off as delivered, and the batch in flight when a write fails is
sent again to the next ingester.  Bulk mode (``oklog.forwardbulk``) is the
acknowledged, lossless one: it reuses the reader, the buffer and the
failover of this module, and sends segments that a store must commit
before the ingester answers ``OK``.

``tls://host:port`` targets speak TLS to ingesters run with
``-ingest.tls-cert`` (the server certificate is verified against
``-ca-file`` or the system's trust store; ``-cert-file``/``-key-file`` for
``-ingest.tls-ca``).  TLS has no half-close, so "done" is a TCP FIN under
the TLS session on both sides (``https_compatible`` streams): the same
confirmation as plain TCP, no weaker.  Bulk mode does not work over TLS
(yet; ``forward`` refuses ``-bulk`` with ``tls://`` targets): an upload
ends with a half-close and is answered after it, and a TLS stream cannot
go on after the end of its peer's data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from oklog.addr import join_host_port, split_addr
from oklog.errors import ConfigError
from oklog.lines import LineSplitter
from oklog.tls import client_context
from oklog.tls import describe as describe_tls

__all__ = [
    "DEFAULT_FAST_PORT",
    "DEFAULT_DURABLE_PORT",
    "DEFAULT_BULK_PORT",
    "ForwardStats",
    "Target",
    "parse_target",
    "parse_targets",
    "forward",
]

log = logging.getLogger("oklog.forward")

DEFAULT_FAST_PORT = 7651
DEFAULT_DURABLE_PORT = 7652
DEFAULT_BULK_PORT = 7653

_READ_SIZE = 256 * 1024  # per receive_some on the source fd
_BATCH_BYTES = 1024 * 1024  # at most this much per send_all (unless one block is bigger)
_MAX_BUFFER_BYTES = 16 * 1024 * 1024  # byte bound of the buffer, besides buffer_size lines
_DROP_LOG_INTERVAL = 1.0  # seconds between "dropped" log lines

_SCHEMES = {"tcp": "tcp", "tcp+dns": "tcp+dns", "tcp+dnsip": "tcp+dns", "tcp+dnssrv": "tcp+dnssrv",
            "tls": "tls"}
_STATIC = ("tcp", "tls")  # one target is one address

# Where the rotation starts; tests replace it with a seeded Random.
_rng = random.Random()


@dataclass
class ForwardStats:
    """Counters of one :func:`forward` run (updated live, readable any time)."""

    lines_sent: int = 0  #: lines written to an ingester connection
    bytes_sent: int = 0  #: bytes written, prefixes included
    lines_dropped: int = 0  #: lines dropped: buffer full with drop=True, or longer than max_line_size
    #: lines written to a connection that then broke or did not close cleanly:
    #: possibly lost (the line protocol has no acknowledgements)
    lines_unconfirmed: int = 0
    reconnects: int = 0  #: failed connects + broken connections (each moves on to the next target)
    # bulk mode (lines_sent and bytes_sent then count acknowledged segments only)
    segments_acked: int = 0  #: segments an ingester answered OK (committed by a store)
    resends: int = 0  #: segment uploads that failed (ERR, timeout, broken) and were sent again
    lines_rejected: int = 0  #: lines an ingester left out of an acknowledged segment (too long)


@dataclass(frozen=True)
class Target:
    """One forward target as given on the command line.

    ``scheme`` is ``tcp`` (connect to ``host:port``), ``tcp+dns`` (every
    A/AAAA record of ``host`` is a target) or ``tcp+dnssrv`` (every SRV
    record of ``host`` is a target; ``port`` None means "the SRV record's").
    """

    scheme: str
    host: str
    port: int | None
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        if self.text:
            return self.text
        hp = self.host if self.port is None else join_host_port(self.host, self.port)
        return f"{self.scheme}://{hp}"


def parse_target(s: str, default_port: int = DEFAULT_FAST_PORT) -> Target:
    """Parse ``host``, ``host:port``, ``tcp://host:port``, ``tls://host:port``,
    ``tcp+dns://host:port`` or ``tcp+dnssrv://name[:port]``."""
    scheme, host, port = split_addr(s)
    scheme = scheme or "tcp"
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"{s!r}: unsupported scheme {scheme!r} "
            "(use host:port, tcp://, tls://, tcp+dns:// or tcp+dnssrv://)"
        )
    scheme = _SCHEMES[scheme]
    if not host:
        raise ConfigError(f"{s!r}: forward target needs a host")
    if scheme != "tcp+dnssrv" and port is None:
        port = default_port
    if port == 0:
        raise ConfigError(f"{s!r}: port 0 is not a valid target")
    return Target(scheme, host, port, s)


def parse_targets(targets: Sequence[str], default_port: int = DEFAULT_FAST_PORT) -> list[Target]:
    """Parse every target; ConfigError on the first bad one, or none at all.

    Also checks that ``dnspython`` is importable when a ``tcp+dnssrv://``
    target is given.
    """
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ConfigError("specify at least one ingest address as an argument")
    parsed = [parse_target(t, default_port) for t in targets]
    if any(t.scheme == "tcp+dnssrv" for t in parsed) and not _have_dnspython():
        raise ConfigError("tcp+dnssrv:// targets need the dnspython package: pip install dnspython")
    return parsed


def _have_dnspython() -> bool:
    try:
        import dns.resolver  # noqa: F401
    except ImportError:
        return False
    return True


def _lookup_srv(name: str) -> list[tuple[str, int]]:
    """SRV records of ``name`` as ``(host, port)``, best priority first (blocking)."""
    import dns.resolver

    answer = dns.resolver.resolve(name, "SRV")
    records = sorted(answer, key=lambda r: (r.priority, -r.weight))
    return [(str(r.target).rstrip("."), int(r.port)) for r in records]


def _kv(**fields: object) -> str:
    """Render ``key=value`` pairs, quoting values with spaces or quotes."""
    parts = []
    for k, v in fields.items():
        s = str(v)
        if not s or any(c in s for c in ' "=\n\t'):
            s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{k}={s}")
    return " ".join(parts)


# --- the buffer between reader and sender -------------------------------------


class _Buffer:
    """FIFO of ``(block, lines)`` bounded by lines and bytes; always admits a
    block when empty.  ``drop=True``: ``put`` never waits, it drops the oldest
    lines instead and returns how many."""

    def __init__(self, max_lines: int, max_bytes: int, drop: bool) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.drop = drop
        self._blocks: deque[tuple[bytes, int]] = deque()
        self.lines = 0
        self.bytes = 0
        self.closed = False
        self._getters = trio.lowlevel.ParkingLot()
        self._putters = trio.lowlevel.ParkingLot()

    def _full(self, nlines: int, nbytes: int) -> bool:
        return bool(self._blocks) and (
            self.lines + nlines > self.max_lines or self.bytes + nbytes > self.max_bytes
        )

    async def put(self, block: bytes, nlines: int) -> int:
        if self.closed:
            raise trio.ClosedResourceError("buffer closed")
        dropped = 0
        if self.drop:
            while self._full(nlines, len(block)):
                dropped += self._drop_oldest(self.lines + nlines - self.max_lines, len(block))
        else:
            while self._full(nlines, len(block)):
                await self._putters.park()
        self._blocks.append((block, nlines))
        self.lines += nlines
        self.bytes += len(block)
        self._getters.unpark_all()
        return dropped

    def _drop_oldest(self, excess_lines: int, nbytes: int) -> int:
        old, n = self._blocks[0]
        if n > excess_lines > 0 and self.bytes + nbytes <= self.max_bytes:
            # Trim the first `excess_lines` lines of the oldest block only.
            pos = -1
            for _ in range(excess_lines):
                pos = old.find(b"\n", pos + 1)
            self._blocks[0] = (old[pos + 1 :], n - excess_lines)
            self.lines -= excess_lines
            self.bytes -= pos + 1
            return excess_lines
        self._blocks.popleft()
        self.lines -= n
        self.bytes -= len(old)
        return n

    async def get(self, max_bytes: int) -> tuple[bytes, int] | None:
        """Everything buffered up to ``max_bytes`` (at least one block), or
        None once closed and empty."""
        while not self._blocks:
            if self.closed:
                return None
            await self._getters.park()
        parts: list[bytes] = []
        lines = size = 0
        while self._blocks and (not parts or size + len(self._blocks[0][0]) <= max_bytes):
            block, n = self._blocks.popleft()
            parts.append(block)
            lines += n
            size += len(block)
        self.lines -= lines
        self.bytes -= size
        self._putters.unpark_all()
        return (parts[0] if len(parts) == 1 else b"".join(parts)), lines

    def close(self) -> None:
        self.closed = True
        self._getters.unpark_all()


# --- reader ------------------------------------------------------------------


class _Reader:
    def __init__(
        self, buf: _Buffer, prefix: bytes, max_line_size: int, stats: ForwardStats
    ) -> None:
        self.buf = buf
        self.prefix = prefix
        self.max_line = max_line_size
        self.stats = stats
        self._dropped_unlogged = 0
        self._last_drop_log = float("-inf")

    async def run(self, stream: trio.lowlevel.FdStream) -> None:
        try:
            await self._pump(stream)
        finally:
            self.buf.close()
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self._log_drops(force=True)

    async def _pump(self, stream: trio.lowlevel.FdStream) -> None:
        lines = LineSplitter(final_tail="keep", max_line=self.max_line, too_long="drop")
        while True:
            try:
                data = await stream.receive_some(_READ_SIZE)
            except (OSError, trio.BrokenResourceError) as e:
                log.error(_kv(event="read_error", err=e))
                break
            if not data:
                break
            block = lines.feed(data)
            self._count_too_long(lines)
            if block:
                await self._emit(block)
        for block in lines.finish():  # an unterminated last line gets an LF
            await self._emit(block)
        self._count_too_long(lines)

    async def _emit(self, block: bytes) -> None:
        """Queue a block of whole lines (ends with LF)."""
        nlines = block.count(b"\n")
        p = self.prefix
        if p:
            block = p + block[:-1].replace(b"\n", b"\n" + p) + b"\n"
        dropped = await self.buf.put(block, nlines)
        if dropped:
            self.stats.lines_dropped += dropped
            self._dropped_unlogged += dropped
            self._log_drops()

    def _count_too_long(self, lines: LineSplitter) -> None:
        if lines.rejected:
            self.stats.lines_dropped += lines.rejected
            log.warning(_kv(event="drop", reason="line_too_long", lines=lines.rejected,
                            max_line_size=self.max_line))
            lines.rejected = 0

    def _log_drops(self, force: bool = False) -> None:
        if not self._dropped_unlogged:
            return
        now = trio.current_time()
        if force or now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            log.warning(
                _kv(event="drop", reason="buffer_full", lines=self._dropped_unlogged,
                    total_dropped=self.stats.lines_dropped)
            )
            self._dropped_unlogged = 0
            self._last_drop_log = now


# --- sender ------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    label: str
    host: str
    port: int
    tls: bool = False


class _Conn:
    def __init__(self, endpoint: _Endpoint, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.dead: str | None = None  # why the ingester side is gone, if it is
        self.closed = trio.Event()  # the watcher saw EOF or an error
        self.lines = 0  # written to this connection, not confirmed by a clean close
        self.scope = trio.CancelScope()

    async def watch(self) -> None:
        with self.scope:
            try:
                while await self.stream.receive_some(4096):
                    pass  # ingesters send nothing; ignore whatever comes
                self.dead = "closed by ingester"
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.dead = f"connection lost: {e}" if str(e) else "connection lost"
            self.closed.set()

    async def aclose(self) -> None:
        self.scope.cancel()
        if isinstance(self.stream, trio.SSLStream):
            # no close_notify: it could block on a peer that stopped reading
            await trio.aclose_forcefully(self.stream)
            return
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class _Sender:
    connect_log_level = logging.INFO
    watch_connections = True  #: a task per connection notices the ingester closing it

    def __init__(
        self,
        targets: list[Target],
        nursery: trio.Nursery,
        stats: ForwardStats,
        backoff_initial: float,
        backoff_max: float,
        connect_timeout: float,
        close_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.targets = targets
        self.tls = tls
        self.nursery = nursery
        self.stats = stats
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff = backoff_initial
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.endpoints: list[_Endpoint] = []
        self.index = 0
        self.resolved = False
        self.conn: _Conn | None = None

    async def run(self, buf: _Buffer) -> None:
        try:
            while True:
                batch = await buf.get(_BATCH_BYTES)
                if batch is None:
                    break
                await self.send(*batch)
            await self.finish()
        finally:
            if self.conn is not None:
                await self.conn.aclose()
                self.conn = None

    async def send(self, data: bytes, nlines: int) -> None:
        """Write ``data`` to some ingester, failing over until it succeeds."""
        while True:
            if self.conn is None:
                await self._connect()
            conn = self.conn
            assert conn is not None
            try:
                if conn.dead:
                    raise trio.BrokenResourceError(conn.dead)
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                await self._fail("send", conn.endpoint, conn.dead or e)
                continue
            conn.lines += nlines
            self.stats.lines_sent += nlines
            self.stats.bytes_sent += len(data)
            self.backoff = self.backoff_initial
            return

    async def finish(self) -> None:
        """Half-close and wait for the ingester to finish reading and close."""
        conn = self.conn
        if conn is None:
            return
        if conn.closed.is_set():  # it closed before it saw our EOF: it did not read everything
            self._unconfirmed(conn, "close", conn.dead or "closed by ingester")
            return
        try:
            if isinstance(conn.stream, trio.SSLStream):  # no half-close in TLS: FIN beneath it
                await conn.stream.transport_stream.send_eof()
            else:
                await conn.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._unconfirmed(conn, "close", e)
            return
        with trio.move_on_after(self.close_timeout) as scope:
            await conn.closed.wait()
        if scope.cancelled_caught:
            self._unconfirmed(conn, "close", "ingester did not close in time")
        elif conn.dead and conn.dead != "closed by ingester":
            self._unconfirmed(conn, "close", conn.dead)
        else:  # the ingester read everything up to our EOF, then closed
            log.info(_kv(event="close", target=conn.endpoint.label, lines=conn.lines))

    def _unconfirmed(self, conn: _Conn, event: str, err: object) -> None:
        """``conn`` ended without a clean close: what it carried may be lost."""
        self.stats.lines_unconfirmed += conn.lines
        log.warning(_kv(event=event, target=conn.endpoint.label, err=err,
                        lines_unconfirmed=conn.lines,
                        note="lines written to this connection may be lost"))
        conn.lines = 0

    async def _fail(self, op: str, endpoint: _Endpoint, err: object) -> None:
        self.stats.reconnects += 1
        unconfirmed = 0
        if self.conn is not None:
            unconfirmed = self.conn.lines
            self.stats.lines_unconfirmed += unconfirmed
            await self.conn.aclose()
            self.conn = None
        self.index += 1
        log.warning(_kv(event="failover", op=op, target=endpoint.label, err=err,
                        lines_unconfirmed=unconfirmed, backoff=f"{self.backoff:g}s"))
        await trio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, self.backoff_max)

    async def _connect(self) -> None:
        while True:
            if not self.resolved or self.index >= len(self.endpoints):
                await self._resolve()
                if not self.endpoints:
                    self.stats.reconnects += 1
                    log.warning(_kv(event="resolve", err="no target addresses", backoff=f"{self.backoff:g}s"))
                    await trio.sleep(self.backoff)
                    self.backoff = min(self.backoff * 2, self.backoff_max)
                    continue
            ep = self.endpoints[self.index]
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(ep.host, ep.port)
            except (OSError, trio.TooSlowError) as e:
                err: object = e if not isinstance(e, trio.TooSlowError) else "connect timed out"
                await self._fail("connect", ep, err)
                continue
            try:
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            except OSError:
                pass
            conn_stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = stream
            if ep.tls:
                assert self.tls is not None
                conn_stream = trio.SSLStream(stream, self.tls, server_hostname=ep.host,
                                             https_compatible=True)
                try:
                    with trio.fail_after(self.connect_timeout):
                        await conn_stream.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError) as e:
                    await trio.aclose_forcefully(stream)
                    reason = describe_tls(e) or ("TLS handshake timed out" if isinstance(
                        e, trio.TooSlowError) else f"TLS handshake failed: {e} (an ingester run with "
                        "-ingest.tls-ca refuses forwarders without an accepted -cert-file/-key-file)")
                    await self._fail("connect", ep, reason)
                    continue
            self.conn = _Conn(ep, conn_stream)
            if self.watch_connections:
                self.nursery.start_soon(self.conn.watch)
            log.log(self.connect_log_level, _kv(event="connect", target=ep.label))
            return

    async def _resolve(self) -> None:
        first = not self.resolved
        static = all(t.scheme in _STATIC for t in self.targets)
        if static and not first:
            self.index = 0
            return
        endpoints: list[_Endpoint] = []
        for t in self.targets:
            if t.scheme in _STATIC:
                assert t.port is not None
                endpoints.append(_Endpoint(str(t), t.host, t.port, tls=t.scheme == "tls"))
            elif t.scheme == "tcp+dns":
                assert t.port is not None
                try:
                    infos = await trio.socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
                except OSError as e:
                    log.warning(_kv(event="resolve", target=str(t), err=e))
                    continue
                seen = set()
                for _family, _type, _proto, _canon, sockaddr in infos:
                    ip = str(sockaddr[0])
                    if ip not in seen:
                        seen.add(ip)
                        endpoints.append(_Endpoint(f"{t}({ip})", ip, t.port))
            else:  # tcp+dnssrv
                try:
                    records = await trio.to_thread.run_sync(_lookup_srv, t.host)
                except Exception as e:  # dnspython raises its own exception tree
                    log.warning(_kv(event="resolve", target=str(t), err=e))
                    continue
                for host, port in records:
                    port = t.port if t.port is not None else port
                    endpoints.append(_Endpoint(f"{t}({join_host_port(host, port)})", host, port))
        if not static:
            log.debug(_kv(event="resolve", endpoints=",".join(e.label for e in endpoints)))
        self.endpoints = endpoints
        self.resolved = True
        self.index = _rng.randrange(len(endpoints)) if first and endpoints else 0


# --- entry point -------------------------------------------------------------


async def forward(
    targets: Sequence[str],
    source_fd: int = 0,
    *,
    prefixes: Sequence[str | bytes] = (),
    durable: bool = False,
    bulk: bool = False,
    buffer_size: int = 1024,
    drop: bool = False,
    backoff_initial: float = 0.1,
    backoff_max: float = 10.0,
    stats: ForwardStats | None = None,
    max_line_size: int = 16 * 1024 * 1024,
    connect_timeout: float = 5.0,
    close_timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
    bulk_size: int = 4 << 20,
    bulk_age: float = 1.0,
    bulk_timeout: float = 120.0,
    status_interval: float | None = None,
) -> None:
    """Forward every line read from ``source_fd`` to the ingesters ``targets``.

    Returns once the source is at EOF and everything read has been written
    to an ingester and the connection closed cleanly.  Retries forever while
    no ingester is reachable.

    - ``targets``: ``host``, ``host:port``, ``tcp://host:port``,
      ``tcp+dns://host:port`` (each A/AAAA record is a target),
      ``tcp+dnssrv://name[:port]`` (each SRV record is a target; needs
      dnspython).  The default port is the fast port 7651, or the durable
      port 7652 with ``durable=True``; durability itself is decided by the
      ingester port, nothing differs client-side.
    - ``prefixes``: joined by spaces, plus a space, prepended to every line.
    - ``buffer_size``: capacity of the buffer between reader and sender in
      **lines** (as OK Log's ``-buffer-size``), additionally capped at 16 MiB;
      a single read block (up to 256 KiB) is always admitted.  Full buffer:
      the reader waits (backpressure) or, with ``drop=True``, the oldest
      buffered lines are dropped and counted in ``stats.lines_dropped``.  The
      batch being sent (up to 1 MiB) is never dropped.
    - ``backoff_initial``/``backoff_max``: delay after each failure before
      trying the next target, doubling, reset by a successful send.
    - ``max_line_size``: longer lines are dropped and counted.
    - ``tls``: the client context for ``tls://`` targets (default: the
      system's trust store, no client certificate).
    - ``bulk=True``: send segments to the bulk port (7653 by default) and
      wait for each one's ``OK`` (``oklog.forwardbulk``): a segment is cut
      at ``bulk_size`` bytes or ``bulk_age`` seconds after its first line,
      and sent again (to the next ingester, after the backoff) on ``ERR``,
      a broken connection or no reply within ``bulk_timeout`` seconds.
      Returns only once every segment is acknowledged.
    - ``status_interval``: log a one-line status (``event=status``: lines
      sent and their rate, buffered, dropped, unconfirmed, the current
      target) every this many seconds (``-v``).
    """
    if bulk and durable:
        raise ConfigError("choose one of durable and bulk")
    if bulk and (bulk_size < 1 or bulk_age <= 0 or bulk_timeout <= 0):
        raise ConfigError("bulk size, age and timeout must be positive")
    if buffer_size < 1:
        raise ConfigError(f"buffer size must be at least 1 line, not {buffer_size}")
    if max_line_size < 1:
        raise ConfigError(f"max line size must be positive, not {max_line_size}")
    if backoff_initial <= 0 or backoff_max < backoff_initial:
        raise ConfigError("backoff must satisfy 0 < initial <= max")
    default_port = DEFAULT_BULK_PORT if bulk else DEFAULT_DURABLE_PORT if durable else DEFAULT_FAST_PORT
    parsed = parse_targets(targets, default_port)
    if bulk and any(t.scheme == "tls" for t in parsed):
        # a bulk upload ends with a half-close and is then answered; TLS (as
        # trio implements it) cannot read on after the peer's end
        raise ConfigError("-bulk does not work over tls:// yet; use the line ports over TLS "
                          "(-durable for fsynced writes), or -bulk without TLS")
    if tls is None and any(t.scheme == "tls" for t in parsed):
        tls = client_context(alpn=[])
    prefix = _prefix_bytes(prefixes)
    if stats is None:
        stats = ForwardStats()

    buf = _Buffer(buffer_size, _MAX_BUFFER_BYTES, drop)
    reader = _Reader(buf, prefix, max_line_size, stats)
    try:
        source = trio.lowlevel.FdStream(os.dup(source_fd))  # dup: closing ours leaves the caller's open
    except OSError as e:
        raise ConfigError(f"cannot read from file descriptor {source_fd}: {e.strerror or e}") from None
    async with trio.open_nursery() as nursery:
        sender: _Sender
        if bulk:
            from .forwardbulk import BulkSender

            sender = BulkSender(parsed, nursery, stats, backoff_initial, backoff_max, connect_timeout,
                                size=bulk_size, age=bulk_age, ack_timeout=bulk_timeout, tls=tls)
        else:
            sender = _Sender(parsed, nursery, stats, backoff_initial, backoff_max, connect_timeout,
                             close_timeout, tls)
        nursery.start_soon(reader.run, source)
        if status_interval:
            nursery.start_soon(_report_status, stats, buf, sender, status_interval)
        await sender.run(buf)
        nursery.cancel_scope.cancel()  # connection watchers
    if bulk:
        log.info(_kv(event="done", mode="bulk", segments_acked=stats.segments_acked,
                     lines_sent=stats.lines_sent, bytes_sent=stats.bytes_sent,
                     lines_rejected=stats.lines_rejected, lines_dropped=stats.lines_dropped,
                     resends=stats.resends, reconnects=stats.reconnects))
        return
    done = log.warning if stats.lines_unconfirmed else log.info
    done(_kv(event="done", lines_sent=stats.lines_sent, bytes_sent=stats.bytes_sent,
             lines_dropped=stats.lines_dropped, lines_unconfirmed=stats.lines_unconfirmed,
             reconnects=stats.reconnects))


def status_fields(before: ForwardStats, now: ForwardStats, seconds: float, buffered: int,
                  target: str | None) -> dict[str, object]:
    """One periodic status line (``-v``): totals, the send rate since the
    last line, what waits in the buffer, and where lines go now."""
    rate = (now.lines_sent - before.lines_sent) / seconds if seconds > 0 else 0.0
    return {"event": "status", "target": target or "none", "lines_sent": now.lines_sent,
            "lines_per_s": f"{rate:.0f}", "bytes_sent": now.bytes_sent, "buffered_lines": buffered,
            "lines_dropped": now.lines_dropped, "lines_unconfirmed": now.lines_unconfirmed,
            "reconnects": now.reconnects}


async def _report_status(stats: ForwardStats, buf: _Buffer, sender: "_Sender", interval: float) -> None:
    """Log ``status_fields`` every ``interval`` seconds until cancelled."""
    before, last = dataclasses.replace(stats), trio.current_time()
    while True:
        await trio.sleep(interval)
        now = trio.current_time()
        conn = sender.conn
        log.info(_kv(**status_fields(before, stats, now - last, buf.lines,
                                     conn.endpoint.label if conn is not None else None)))
        before, last = dataclasses.replace(stats), now


def _prefix_bytes(prefixes: Sequence[str | bytes]) -> bytes:
    if isinstance(prefixes, (str, bytes)):
        prefixes = [prefixes]
    if not prefixes:
        return b""
    parts = [p if isinstance(p, bytes) else os.fsencode(p) for p in prefixes]
    if any(b"\n" in p for p in parts):
        raise ConfigError("a prefix cannot contain a newline")
    return b" ".join(parts) + b" "
