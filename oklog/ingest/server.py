"""The fast and durable ingest TCP servers: lines in, record blocks to disk.

A connection's bytes go through a ``LineSplitter`` (whole lines, long ones
rejected), are stamped with monotonic ULIDs as one block and appended to the
active segment in one synchronous step, so every segment stays sorted and a
connection's lines keep their sending order.  Topics: in static mode
every record gets the ingester's topic; in dynamic mode each line's first
field is its topic and lines without a valid one are rejected and counted
(``oklog.records.topics``), the connection going on.  In durable mode the segment is
fsynced before the next read from that connection: what a durable forwarder
has had accepted by TCP flow control beyond that point is not yet promised.

A full disk (``ENOSPC``, ``EDQUOT``) is backpressure, not an error: the
block that did not fit is taken back (the segment stays whole records), the
connection is not read any further, and the block is stamped again and
retried (every 0.1 s, backing off to 1 s) until it fits -- when the store
tier consumes segments, or an operator frees space.  The forwarder is held
back by TCP flow control; nothing it sent is refused or dropped.
"""

from __future__ import annotations

import errno
import logging
import ssl
from typing import Awaitable, Callable

import trio

from .. import metrics
from ..lines import LineSplitter
from ..listen import open_tcp_listeners, reset_on_close
from ..records.format import DEFAULT_TOPIC, stamp
from ..records.topics import MODES, check_topic, stamp_dynamic
from ..tls import tls_listeners
from ..ulid import ULID_LEN, Stamper
from .gate import Gate
from .log import IngestLog
from .shedding import LoadMeter

log = logging.getLogger("oklog.ingest")

RECEIVE_SIZE = 256 * 1024
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_RETRY = (0.1, 1.0)  # first and longest wait before writing again


class LineIngester:
    """Handles forwarder connections for one ``IngestLog``."""

    def __init__(self, ingest_log: IngestLog, *, max_record_size: int, stamper: Stamper,
                 topic_mode: str = "static", topic: bytes = DEFAULT_TOPIC) -> None:
        if topic_mode not in MODES:
            raise ValueError(f"topic mode must be static or dynamic: {topic_mode!r}")
        if not check_topic(topic):
            raise ValueError(f"invalid topic {topic!r}")
        self.log = ingest_log
        self.max_record_size = max_record_size
        self.stamper = stamper
        self.dynamic = topic_mode == "dynamic"
        self.topic = topic
        self.meter: LoadMeter | None = None  #: counts stamped bytes/records (load shedding)

    def handler(self, durable: bool) -> Callable[[trio.abc.Stream], Awaitable[None]]:
        mode = "durable" if durable else "fast"

        async def handle(stream: trio.abc.Stream) -> None:
            metrics.ingest_connections.labels(mode).inc()
            try:
                await self._handle(stream, durable)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("event=connection_error mode=%s error=%r", mode, exc)
                if isinstance(stream, trio.SSLStream):
                    # a failed TLS handshake (a plain tcp:// forwarder, a refused
                    # certificate): a reset, so it does not count its lines delivered
                    reset_on_close(stream.transport_stream)
            finally:
                metrics.ingest_connections.labels(mode).dec()
                await trio.aclose_forcefully(stream)

        return handle

    async def _handle(self, stream: trio.abc.Stream, durable: bool) -> None:
        # A final line without LF still counts as a record.
        splitter = LineSplitter(final_tail="keep", max_line=self.max_record_size, too_long="drop")
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            block = splitter.feed(data) if data else b"".join(splitter.finish())
            if splitter.rejected:
                metrics.ingest_rejected.labels("too_long").inc(splitter.rejected)
                log.warning(
                    "event=record_rejected reason=too_long count=%d limit=%d",
                    splitter.rejected,
                    self.max_record_size,
                )
                splitter.rejected = 0
            records = 0
            if block:
                block, records = self.stamp_block(block)
            if block:
                full = await self._append(block, records, durable)
                if full:
                    await self.log.flush()
                elif durable:
                    await self.log.sync()
            if not data:
                return

    async def _append(self, block: bytes, records: int, durable: bool) -> bool:
        """Write a stamped block, waiting while the disk is full; True when
        the segment should be flushed.  The block is stamped again before
        every new try: blocks other connections wrote meanwhile have later
        ULIDs, and a segment stays sorted."""
        wait, since = DISK_FULL_RETRY[0], None
        while True:
            try:
                full = self.log.write(block)
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise
                if since is None:
                    since = trio.current_time()
                    metrics.ingest_disk_full.inc()
                    log.warning("event=disk_full mode=%s path=%s error=%r action=backpressure "
                                "(not reading this connection until the block fits)",
                                "durable" if durable else "fast", self.log.path, exc.strerror)
                await trio.sleep(wait)
                wait = min(wait * 2, DISK_FULL_RETRY[1])
                block = restamp(block, self.stamper)
                continue
            if since is not None:
                log.warning("event=disk_space_back mode=%s waited=%.1fs",
                            "durable" if durable else "fast", trio.current_time() - since)
            metrics.ingest_records.inc(records)
            metrics.ingest_bytes.inc(len(block))
            if self.meter is not None:
                self.meter.add(len(block), records)
            return full

    def stamp_block(self, block: bytes) -> tuple[bytes, int]:
        """Producer lines → a block of records, and how many it holds."""
        lines = block.split(b"\n")
        lines.pop()  # after the final LF
        if not self.dynamic:
            return stamp(lines, self.stamper, self.topic), len(lines)
        records, bad = stamp_dynamic(lines, self.stamper)
        if bad:
            self._invalid_topics(bad)
        return records, len(lines) - bad

    def _invalid_topics(self, count: int) -> None:
        metrics.ingest_rejected.labels("invalid_topic").inc(count)
        log.warning("event=record_rejected reason=invalid_topic count=%d "
                    "(dynamic topic mode: each line must be TOPIC SP PAYLOAD, "
                    "TOPIC as [a-zA-Z0-9][a-zA-Z0-9_-]*)", count)


def restamp(block: bytes, stamper: Stamper) -> bytes:
    """The same records with new ULIDs from ``stamper`` (their topics were
    checked when first stamped)."""
    lines = block.split(b"\n")
    lines.pop()  # after the final LF
    return stamp_dynamic([line[ULID_LEN + 1:] for line in lines], stamper)[0]


async def serve_lines(
    ingester: LineIngester,
    host: str,
    port: int,
    durable: bool,
    tls: ssl.SSLContext | None = None,
    *,
    gate: Gate | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept forwarder connections until cancelled (which closes them all).

    A wildcard host listens on every address family (see ``oklog.listen``).
    With ``tls`` (``-ingest.tls-cert``), forwarders must speak TLS; a failed
    handshake is one ``connection_error`` line, like a broken connection.
    With a ``gate`` (load shedding), each connection is admitted or refused
    by it (``oklog.ingest.gate``).
    """
    flag = "-ingest.durable" if durable else "-ingest.fast"
    listeners = await open_tcp_listeners(host, port, flag)
    bound = listeners[0].socket.getsockname()
    log.info("event=listening mode=%s addr=%s:%d tls=%s", "durable" if durable else "fast",
             bound[0], bound[1], "on" if tls is not None else "off")
    task_status.started(bound[1])
    handler = ingester.handler(durable)
    if gate is not None:
        handler = gate.lines(handler, durable=durable, tls=tls is not None)
    await trio.serve_listeners(handler, tls_listeners(listeners, tls))
