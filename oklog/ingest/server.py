"""The fast and durable ingest TCP servers: lines in, record blocks to disk.

A connection's bytes go through a ``LineSplitter`` (whole lines, long ones
rejected), are stamped with monotonic ULIDs as one block and appended to the
active segment in one synchronous step, so every segment stays sorted and a
connection's lines keep their sending order.  In durable mode the segment is
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
from typing import Awaitable, Callable

import trio

from .. import metrics
from ..lines import LineSplitter
from ..listen import open_tcp_listeners
from ..records.format import stamp
from ..ulid import Stamper
from .log import IngestLog

log = logging.getLogger("oklog.ingest")

RECEIVE_SIZE = 256 * 1024
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_RETRY = (0.1, 1.0)  # first and longest wait before writing again


class LineIngester:
    """Handles forwarder connections for one ``IngestLog``."""

    def __init__(self, ingest_log: IngestLog, *, max_record_size: int, stamper: Stamper) -> None:
        self.log = ingest_log
        self.max_record_size = max_record_size
        self.stamper = stamper

    def handler(self, durable: bool) -> Callable[[trio.SocketStream], Awaitable[None]]:
        mode = "durable" if durable else "fast"

        async def handle(stream: trio.SocketStream) -> None:
            metrics.ingest_connections.labels(mode).inc()
            try:
                await self._handle(stream, durable)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("event=connection_error mode=%s error=%r", mode, exc)
            finally:
                metrics.ingest_connections.labels(mode).dec()
                await trio.aclose_forcefully(stream)

        return handle

    async def _handle(self, stream: trio.SocketStream, durable: bool) -> None:
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
            if block:
                lines = block.split(b"\n")
                lines.pop()  # after the final LF
                full = await self._append(lines, durable)
                if full:
                    await self.log.flush()
                elif durable:
                    await self.log.sync()
            if not data:
                return

    async def _append(self, lines: list[bytes], durable: bool) -> bool:
        """Stamp and write ``lines`` as one block, waiting while the disk is
        full; True when the segment should be flushed.  The block is stamped
        again at every try: blocks other connections wrote meanwhile have
        later ULIDs, and a segment stays sorted."""
        wait, since = DISK_FULL_RETRY[0], None
        while True:
            block = stamp(lines, self.stamper)
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
                continue
            if since is not None:
                log.warning("event=disk_space_back mode=%s waited=%.1fs",
                            "durable" if durable else "fast", trio.current_time() - since)
            metrics.ingest_records.inc(len(lines))
            metrics.ingest_bytes.inc(len(block))
            return full


async def serve_lines(
    ingester: LineIngester,
    host: str,
    port: int,
    durable: bool,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept forwarder connections until cancelled (which closes them all).

    A wildcard host listens on every address family (see ``oklog.listen``).
    """
    flag = "-ingest.durable" if durable else "-ingest.fast"
    listeners = await open_tcp_listeners(host, port, flag)
    bound = listeners[0].socket.getsockname()
    log.info("event=listening mode=%s addr=%s:%d", "durable" if durable else "fast", bound[0], bound[1])
    task_status.started(bound[1])
    await trio.serve_listeners(ingester.handler(durable), listeners)
