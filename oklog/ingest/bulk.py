"""Bulk ingest (``-ingest.bulk``): one upload, one segment, one acknowledgement.

Theory of operation: a client sends producer lines and half-closes (the
protocol is in ``oklog.bulkwire``).  ``BulkUpload``, the IO-free core, cuts
what arrives into whole lines, drops lines longer than the record limit
(counted, as on the line ports), stamps the rest exactly as the line ports
do (``stamp_block``: their stamper, so ULIDs rise across both, and their
topic rule) and hands back blocks of records; it refuses an upload that
grows beyond ``max_size`` (``UploadTooLarge``).  ``BulkIngester``, the thin
TCP adapter, appends those blocks to a segment of the upload's own (never
the line ports' active segment) as they arrive, so memory stays at one
receive buffer whatever the upload's size.  At the client's EOF the segment
is synced and renamed ``.flushed`` at once, and the connection waits until
a store node commits it -- which the consumer does only after replicating
it (within whatever composite it built) to the replication factor -- then
answers ``OK <records>``.  No commit within ``ack_timeout``: ``ERR``, and
the segment stays flushed and is still consumed (a client that sends it
again makes duplicates; they are harmless).  An upload that breaks before
its EOF, or is too large, is discarded: its client got no ``OK``.  An empty
upload is ``OK 0`` at once.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from .. import metrics
from ..bulkwire import err_line, ok_line
from ..errors import UploadTooLarge
from ..lines import Chunk, LineSplitter
from ..listen import open_tcp_listeners
from .gate import Gate
from .log import ActiveSegment, IngestLog
from .shedding import LoadMeter

log = logging.getLogger("oklog.ingest")

RECEIVE_SIZE = 256 * 1024
#: How long an answer may take to go out, and how long a connection that
#: got an early ``ERR`` may keep sending what is then discarded.
REPLY_TIMEOUT = 10.0
DISCARD_TIMEOUT = 60.0


#: Producer lines (a block of whole lines) → a block of records, and how
#: many it holds (lines it leaves out are its own to count and log); the
#: node passes ``LineIngester.stamp_block``, the line ports' own rule.
StampBlock = Callable[[bytes], tuple[bytes, int]]


class BulkUpload:
    """Bytes of one upload → blocks of stamped records (sans-IO)."""

    def __init__(self, stamp_block: StampBlock, *, max_record_size: int, max_size: int) -> None:
        self.stamp_block = stamp_block
        self.max_size = max_size
        self.received = 0  #: bytes received so far
        self.records = 0  #: records stamped so far
        self._lines = LineSplitter(final_tail="keep", max_line=max_record_size, too_long="drop")

    def feed(self, data: Chunk) -> bytes:
        """The records ready after ``data`` (maybe ``b""``)."""
        self.received += len(data)
        if self.received > self.max_size:
            raise UploadTooLarge(f"too large: more than {self.max_size} bytes (-ingest.bulk-max-size)")
        return self._stamp(self._lines.feed(data))

    def finish(self) -> bytes:
        """End of the upload: the last records (a last line without LF counts)."""
        return self._stamp(b"".join(self._lines.finish()))

    def take_rejected(self) -> int:
        """Lines dropped as too long since the last call."""
        n, self._lines.rejected = self._lines.rejected, 0
        return n

    def _stamp(self, block: bytes) -> bytes:
        if not block:
            return b""
        records, n = self.stamp_block(block)
        self.records += n
        return records


class BulkIngester:
    """Handles bulk connections for one ``IngestLog``."""

    def __init__(self, ingest_log: IngestLog, *, stamp_block: StampBlock, max_record_size: int,
                 max_size: int, ack_timeout: float) -> None:
        self.log = ingest_log
        self.stamp_block = stamp_block
        self.max_record_size = max_record_size
        self.max_size = max_size
        self.ack_timeout = ack_timeout
        self.meter: LoadMeter | None = None  #: counts stamped bytes/records (load shedding)

    async def handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        metrics.ingest_connections.labels("bulk").inc()
        try:
            reply, outcome = await self._answer(stream)
            with trio.move_on_after(REPLY_TIMEOUT):
                await stream.send_all(reply)
                await stream.send_eof()
            if outcome == "too_large":  # let the client finish sending, then read the answer
                with trio.move_on_after(DISCARD_TIMEOUT):
                    while await stream.receive_some(RECEIVE_SIZE):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("event=connection_error mode=bulk error=%r", exc)
        finally:
            metrics.ingest_connections.labels("bulk").dec()
            await trio.aclose_forcefully(stream)

    async def _answer(self, stream: trio.abc.HalfCloseableStream) -> tuple[bytes, str]:
        """Take one upload; its reply line and outcome.  A broken
        connection raises; shutdown (cancellation) answers ``ERR`` first."""
        try:
            return await self._upload(stream)
        except trio.Cancelled:
            _count("shutdown")
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await stream.send_all(err_line("ingester shutting down; send again"))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            raise

    async def _upload(self, stream: trio.abc.HalfCloseableStream) -> tuple[bytes, str]:
        upload = BulkUpload(self.stamp_block, max_record_size=self.max_record_size, max_size=self.max_size)
        segment: ActiveSegment | None = None
        try:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                try:
                    block = upload.feed(data) if data else upload.finish()
                except UploadTooLarge as exc:
                    log.warning("event=bulk_refused reason=too_large limit=%d", self.max_size)
                    _count("too_large")
                    return err_line(str(exc)), "too_large"
                self._count_rejected(upload)
                if block:
                    try:
                        if segment is None:
                            segment = self.log.open_bulk()
                        segment.write(block)
                    except OSError as exc:  # a full disk: the client sends it elsewhere
                        return self._write_failed(exc)
                    metrics.ingest_bytes.inc(len(block))
                    if self.meter is not None:
                        self.meter.add(len(block), 0)
                if not data:
                    break
            if segment is None:
                _count("ok")
                return ok_line(0), "ok"
            try:
                committed = await self.log.finish_bulk(segment)  # discards it on an error
            except OSError as exc:
                return self._write_failed(exc)
            seg_id, segment = segment.id, None  # flushed: from now on it stays
        finally:
            if segment is not None:
                self.log.discard_bulk(segment)
        metrics.ingest_records.inc(upload.records)
        if self.meter is not None:
            self.meter.add(0, upload.records)
        with trio.move_on_after(self.ack_timeout):
            await committed.wait()
            log.debug("event=bulk_committed segment=%s records=%d", seg_id, upload.records)
            _count("ok")
            return ok_line(upload.records), "ok"
        self.log.forget_commit(seg_id)
        log.warning("event=bulk_timeout segment=%s records=%d timeout=%s", seg_id, upload.records,
                    _seconds(self.ack_timeout))
        _count("timeout")
        return err_line(f"not committed by a store within {_seconds(self.ack_timeout)} "
                        "(-ingest.bulk-timeout); the segment is kept and will still be stored"), "timeout"

    def _write_failed(self, exc: OSError) -> tuple[bytes, str]:
        log.error("event=bulk_write_failed path=%s error=%r", self.log.path, exc)
        _count("write_error")
        return err_line(f"ingester cannot write the segment: {exc.strerror or exc}"), "write_error"

    def _count_rejected(self, upload: BulkUpload) -> None:
        rejected = upload.take_rejected()
        if rejected:
            metrics.ingest_rejected.labels("too_long").inc(rejected)
            log.warning("event=record_rejected mode=bulk reason=too_long count=%d limit=%d",
                        rejected, self.max_record_size)


def _seconds(t: float) -> str:
    return f"{t:g}s"


def _count(outcome: str) -> None:
    metrics.ingest_bulk_uploads.labels(outcome).inc()


async def serve_bulk(ingester: BulkIngester, host: str, port: int, *, gate: Gate | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    """Accept bulk connections until cancelled (which answers those waiting
    ``ERR``).  Plain TCP only: an upload ends with a half-close and is
    answered after it, which a TLS stream cannot do (the node does not open
    this port when its line ports use TLS).  With a ``gate`` (load
    shedding), each connection is admitted or refused by it."""
    listeners = await open_tcp_listeners(host, port, "-ingest.bulk")
    bound = listeners[0].socket.getsockname()
    log.info("event=listening mode=bulk addr=%s:%d", bound[0], bound[1])
    task_status.started(bound[1])
    handler = ingester.handle if gate is None else gate.bulk(ingester.handle)
    await trio.serve_listeners(handler, listeners)
