"""``oklog forward -bulk``: stdin cut into segments, each acknowledged.

Theory of operation: the reader and its bounded buffer are the line
forwarder's (``oklog.forward``).  A **cutter** takes the buffered lines and
cuts them into segments of about ``size`` bytes, or whatever arrived within
``age`` of a segment's first line; a **shipper** sends one segment at a
time, so a cut segment waits while the one before it is in flight, and
backpressure (or ``-drop``) works as in the other modes.

Shipping a segment (the protocol is ``oklog.bulkwire``): connect to the
current ingester's bulk port, send the segment, half-close, read the one
reply line.  ``OK`` means a store committed it (it is replicated): done.
``ERR``, a broken connection, garbage or no reply within ``ack_timeout``
mean it may not be stored: the shipper backs off as the line forwarder
does, moves on to the next ingester and sends the segment again, for as
long as it takes.  A segment refused as too large is split in two and each
half shipped.  Resending can store a segment twice (an ingester that timed
out keeps and stores what it got; the copy has new ULIDs): bulk mode trades
duplicates for losing nothing, so ``forward`` returns only once every
segment it read got its ``OK``.
"""

from __future__ import annotations

import logging
import ssl

import trio

from .bulkwire import Reply, ReplyReader
from .errors import PeerError
from .forward import ForwardStats, Target, _Buffer, _Endpoint, _kv, _Sender
from .lines import Pieces

log = logging.getLogger("oklog.forward")

_REPLY_READ = 4096


class BulkSender(_Sender):
    """Cuts the buffer into segments and ships each until it is acknowledged."""

    connect_log_level = logging.DEBUG  # a connection per segment: not worth a line each
    watch_connections = False  # the reply is read by ``_exchange`` itself

    def __init__(self, targets: list[Target], nursery: trio.Nursery, stats: ForwardStats,
                 backoff_initial: float, backoff_max: float, connect_timeout: float, *,
                 size: int, age: float, ack_timeout: float, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(targets, nursery, stats, backoff_initial, backoff_max, connect_timeout,
                         close_timeout=0.0, tls=tls)  # bulk connections end with the reply
        self.size = size
        self.age = age
        self.ack_timeout = ack_timeout

    async def run(self, buf: _Buffer) -> None:
        cut_out, cut_in = trio.open_memory_channel[tuple[bytes, int]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cut, buf, cut_out)
            async with cut_in:
                async for segment, nlines in cut_in:
                    await self.ship(segment, nlines)

    async def _cut(self, buf: _Buffer, out: trio.MemorySendChannel[tuple[bytes, int]]) -> None:
        async with out:
            pieces, nlines, deadline = Pieces(), 0, float("inf")
            carry: tuple[bytes, int] | None = None  # lines left over from the last cut
            closed = False
            while not closed or carry is not None:
                batch, carry = carry, None
                if batch is None:
                    with trio.move_on_at(deadline):
                        batch = await buf.get(max(1, self.size - pieces.size))
                        closed = batch is None
                if batch is not None:
                    block, n = batch
                    room = self.size - pieces.size
                    if len(block) > room:  # cut at the last line that fits
                        cut = block.rfind(b"\n", 0, room)
                        if cut < 0 and not pieces:
                            cut = block.find(b"\n")  # a line longer than a segment goes alone
                        if cut < 0:
                            carry, block, n = batch, b"", 0
                        elif cut + 1 < len(block):
                            head = block[: cut + 1]
                            carry = (block[cut + 1 :], n - head.count(b"\n"))
                            block, n = head, n - carry[1]
                    if block:
                        if not pieces:
                            deadline = trio.current_time() + self.age
                        pieces.add(block)
                        nlines += n
                full = carry is not None or pieces.size >= self.size
                if pieces and (full or closed or trio.current_time() >= deadline):
                    await out.send((pieces.take(), nlines))
                    nlines, deadline = 0, float("inf")

    async def ship(self, segment: bytes, nlines: int) -> None:
        """Send ``segment`` until an ingester acknowledges it (module docstring)."""
        while True:
            endpoint, stream = await self._open()
            reply: Reply | None = None
            err: object = None
            try:
                with trio.fail_after(self.ack_timeout):
                    reply = await self._exchange(endpoint, stream, segment)
            except trio.TooSlowError:
                err = f"no reply within {self.ack_timeout:g}s"
            except (PeerError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                err = exc
            finally:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            if reply is not None and reply.ok:
                self._acknowledged(endpoint, reply, segment, nlines)
                return
            if reply is not None and reply.too_large:
                await self._split(endpoint, reply, segment, nlines)
                return
            if reply is not None:
                err = f"ERR {reply.reason}"
            self.stats.resends += 1
            await self._fail("bulk", endpoint, err)

    async def _open(self) -> tuple[_Endpoint, trio.SocketStream]:
        """A fresh connection to the current ingester, failing over (with
        the line forwarder's backoff) until one accepts."""
        await self._connect()
        conn, self.conn = self.conn, None
        assert conn is not None and isinstance(conn.stream, trio.SocketStream)  # no TLS (forward refuses it)
        return conn.endpoint, conn.stream

    async def _exchange(self, endpoint: _Endpoint, stream: trio.SocketStream, segment: bytes) -> Reply:
        # Sent whole even if an early ERR is waiting: the ingester reads and
        # discards the rest, so the reply is never lost to a reset.
        await stream.send_all(segment)
        await stream.send_eof()
        reader = ReplyReader(endpoint.label)
        while True:
            data = await stream.receive_some(_REPLY_READ)
            if not data:
                reader.eof()  # raises
            reply = reader.feed(bytes(data))
            if reply is not None:
                return reply

    def _acknowledged(self, endpoint: _Endpoint, reply: Reply, segment: bytes, nlines: int) -> None:
        stats = self.stats
        stats.segments_acked += 1
        stats.lines_sent += nlines
        stats.bytes_sent += len(segment)
        rejected = max(0, nlines - reply.records)
        stats.lines_rejected += rejected
        self.backoff = self.backoff_initial
        fields = {"event": "acknowledged", "target": endpoint.label, "lines": nlines,
                  "records": reply.records}
        if rejected:  # longer than the ingester's -ingest.max-record-size
            log.warning(_kv(**fields, lines_rejected=rejected))
        else:
            log.debug(_kv(**fields))

    async def _split(self, endpoint: _Endpoint, reply: Reply, segment: bytes, nlines: int) -> None:
        """The ingester takes smaller uploads than we cut: halve and ship each."""
        if nlines < 2:
            self.stats.lines_dropped += nlines
            log.error(_kv(event="drop", reason="line_too_large_for_ingester", target=endpoint.label,
                          err=f"ERR {reply.reason}", lines=nlines))
            return
        log.warning(_kv(event="split", target=endpoint.label, err=f"ERR {reply.reason}",
                        bytes=len(segment), note="lower -bulk.size below the ingester's -ingest.bulk-max-size"))
        mid = segment.find(b"\n", len(segment) // 2)
        if mid == len(segment) - 1:  # the last line is the long one
            mid = segment.rfind(b"\n", 0, mid)
        first = segment[: mid + 1]
        half = first.count(b"\n")
        await self.ship(first, half)
        await self.ship(segment[mid + 1 :], nlines - half)
