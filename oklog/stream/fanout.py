"""The cluster live stream: every store's new records, merged, each once.

Theory of operation
-------------------
``/store/stream`` on any store node opens a ``ClientStream``.  It follows
the membership: every ``FOLLOW`` seconds it compares the live stores with
the ones it reads, opens a reader for each store that joined and cancels
the reader of each store that left.  A reader of this node's own share
subscribes to the local ``Hub`` directly; a reader of a peer opens that
peer's ``/store/_stream`` (``Peers.open_stream``) and, when the stream
breaks or falls silent (no heartbeat), opens it again after ``RETRY``
seconds for as long as the store is a member.

Readers hand their blocks to the client's ``Deduper`` (the first copy of a
record passes, copies from the other replicas within the window are
dropped) and then to the client's ``DropQueue``; the HTTP response sends
what the queue hands out.  Readers never wait for the client: a client that
reads slowly or not at all loses its oldest records (counted, and told by a
``#dropped`` notice), and a store that sees this client's subscription fall
behind drops there and says so on the stream, which is passed on.

The readers of every client run in the ``StreamService``'s nursery, a task
of the node's (structured concurrency: the HTTP response only reads a
queue, so no task is ever spawned from a response body).  Closing the
response (the client left) cancels its readers; stopping the service
(node shutdown) ends every client's stream.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from oklog import metrics
from oklog.records.format import MAX_LINE
from oklog.lines import aiter_blocks
from oklog.peer import Peers
from oklog.stream.dedup import Deduper
from oklog.stream.hub import Hub
from oklog.stream.params import StreamQuery
from oklog.stream.queue import QUEUE_BYTES, DropQueue
from oklog.stream.wire import parse_dropped, split_notices

__all__ = ["ClientStream", "StreamService", "FOLLOW", "RETRY"]

log = logging.getLogger("oklog.stream")

#: Seconds between looks at the membership.
FOLLOW = 1.0
#: Seconds before a broken store stream is opened again.
RETRY = 1.0


class ClientStream:
    """One ``/store/stream`` client: its readers, de-duplication and queue."""

    def __init__(self, query: StreamQuery, clock: Callable[[], float], queue_bytes: int = QUEUE_BYTES) -> None:
        self.query = query
        self.dedup = Deduper(query.window, clock)
        self.queue = DropQueue(queue_bytes, on_drop=metrics.stream_dropped.labels("client").inc)
        self.scope = trio.CancelScope()
        self.readers: dict[str, trio.CancelScope] = {}  # store URL -> its reader

    def take(self, block: bytes) -> None:
        """A block from some store's stream: notices passed on, records
        de-duplicated and queued."""
        records, notices = split_notices(block)
        for notice in notices:
            self.queue.report_dropped(parse_dropped(notice))
        if records:
            self.queue.put(self.dedup.filter(records))

    def close(self) -> None:
        """The client left: stop reading (the service ends the task)."""
        self.scope.cancel()
        self.queue.close()


class StreamService:
    """Runs the readers of every cluster stream of this node (see module doc)."""

    def __init__(self, hub: Hub, stores: Callable[[], list[str]], self_url: str, peers: Peers,
                 *, clock: Callable[[], float] = trio.current_time,
                 follow: float = FOLLOW, retry: float = RETRY) -> None:
        self.hub = hub
        self.stores = stores
        self.self_url = self_url
        self.peers = peers
        self.clock = clock
        self.follow = follow
        self.retry = retry
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve streams until cancelled (which ends them all)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def open(self, query: StreamQuery) -> ClientStream:
        """Start streaming ``query`` from every store into a new client's queue."""
        if self._nursery is None:
            raise RuntimeError("the stream service is not running")
        client = ClientStream(query, self.clock)
        self._nursery.start_soon(self._serve, client)
        return client

    async def _serve(self, client: ClientStream) -> None:
        try:
            with client.scope:
                async with trio.open_nursery() as nursery:
                    while True:
                        self._follow(client, nursery)
                        await trio.sleep(self.follow)
        finally:
            client.queue.close()

    def _follow(self, client: ClientStream, nursery: trio.Nursery) -> None:
        """Readers for the stores that are live now, and only those."""
        live = dict.fromkeys(self.stores())
        for store in live:
            if store not in client.readers:
                client.readers[store] = scope = trio.CancelScope()
                nursery.start_soon(self._read, client, store, scope)
                log.debug("event=stream_reader_added store=%s", store)
        for store in [s for s in client.readers if s not in live]:
            client.readers.pop(store).cancel()
            log.debug("event=stream_reader_dropped store=%s", store)

    async def _read(self, client: ClientStream, store: str, scope: trio.CancelScope) -> None:
        failures = 0
        with scope:
            while True:
                try:
                    if store == self.self_url:
                        await self._read_local(client)
                    else:
                        await self._read_peer(client, store)
                    failures = 0
                except Exception as exc:  # a peer gone, refused, silent (httpx), a bad line
                    # the first failure of a streak is news; the retries every second are not
                    level = logging.INFO if failures == 0 else logging.DEBUG
                    failures += 1
                    log.log(level, "event=stream_reader_failed store=%s error=%r retry_in=%gs "
                            "failures=%d", store, exc, self.retry, failures)
                await trio.sleep(self.retry)

    async def _read_local(self, client: ClientStream) -> None:
        with self.hub.subscribe(client.query.query.matcher) as sub:
            metrics.stream_clients.labels("_stream").inc()
            try:
                while True:
                    chunk = await sub.queue.get()
                    if not chunk:
                        return
                    client.take(chunk)
            finally:
                metrics.stream_clients.labels("_stream").dec()

    async def _read_peer(self, client: ClientStream, store: str) -> None:
        answer = await self.peers.open_stream(store, client.query.encode())
        try:
            async for block in aiter_blocks(answer.chunks(), final_tail="drop", max_line=MAX_LINE):
                client.take(block)
        finally:
            with trio.CancelScope(shield=True):
                await answer.aclose()
