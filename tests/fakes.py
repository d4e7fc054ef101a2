"""In-memory stand-ins for the cluster: a ``Membership`` and ``Peers`` in one.

``FakeCluster`` holds ingesters with segments and stores that collect
uploads, and answers queries from canned bodies, with no sockets.  It
implements the same protocols as the real ``SerfMembership``/``HttpPeers``
(mypy checks this file), so tests hand it to ``Consumer`` and ``scatter``
as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import trio

from oklog.cluster.membership import Membership
from oklog.errors import CorruptSegment, PeerRejected, PeerUnavailable
from oklog.peer import Peers, QueryAnswer
from oklog.records.format import MAX_LINE, validate_block


class FakeAnswer:
    """A canned ``QueryAnswer``: headers and a body in fixed chunks."""

    def __init__(self, peer: str, headers: Mapping[str, str], chunks: list[bytes]) -> None:
        self.peer = peer
        self.headers = headers
        self._chunks = chunks
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            await trio.lowlevel.checkpoint()
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class FakeStream:
    """A live stream opened on a fake store: chunks come as the test sends them."""

    def __init__(self, peer: str, raw_query: bytes) -> None:
        self.peer = peer
        self.raw_query = raw_query
        self.headers: Mapping[str, str] = {}
        self.feed, self._receive = trio.open_memory_channel[bytes](1000)
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._receive:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True
        self.feed.close()


class FakeCluster:
    """Ingesters holding segments, stores collecting uploads."""

    def __init__(self, ingesters: dict[str, list[bytes]], stores: list[str]) -> None:
        self.segments = {ing: {f"{ing}-{i}": seg for i, seg in enumerate(segs)} for ing, segs in ingesters.items()}
        self.queue = {ing: list(segs) for ing, segs in self.segments.items()}
        self.pending: dict[str, str] = {}
        self.committed: list[str] = []
        self.failed_back: list[str] = []
        self.received: dict[str, list[bytes]] = {s: [] for s in stores}
        self.broken_stores: set[str] = set()
        self.rejecting_stores: set[str] = set()  # answer 400, as to a malformed body
        self.broken_reads: set[str] = set()
        self.answers: dict[str, FakeAnswer] = {}  # store -> its answer to open_query
        self.live: dict[str, list[FakeStream]] = {}  # store -> the live streams opened on it
        self._stores = stores

    # -- Membership --------------------------------------------------------------------

    def ingesters(self) -> list[str]:
        return list(self.segments)

    def stores(self) -> list[str]:
        return list(self._stores)

    def state(self) -> dict[str, Any]:
        return {"source": "fake", "stores": self.stores(), "ingesters": self.ingesters()}

    def self_url(self) -> str:
        return "http://self"

    async def publish(self, tags: dict[str, str]) -> None:
        pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    # -- Peers -------------------------------------------------------------------------

    async def next(self, ingester: str) -> str | None:
        await trio.lowlevel.checkpoint()
        if not self.queue[ingester]:
            return None
        seg_id = self.queue[ingester].pop(0)
        self.pending[seg_id] = ingester
        return seg_id

    async def read_to(self, ingester: str, seg_id: str, path: Path) -> int:
        await trio.lowlevel.checkpoint()
        if seg_id in self.broken_reads:
            raise PeerUnavailable(ingester, "connection reset")
        data = self.segments[ingester][seg_id]
        path.write_bytes(data)
        return len(data)

    async def commit(self, ingester: str, seg_id: str) -> None:
        self.committed.append(seg_id)

    async def failed(self, ingester: str, seg_id: str) -> None:
        self.failed_back.append(seg_id)
        self.queue[ingester].append(seg_id)

    async def replicate(self, store: str, paths: list[Path]) -> None:
        await trio.lowlevel.checkpoint()
        if store in self.broken_stores:
            raise PeerRejected(store, 500, "disk full")
        if store in self.rejecting_stores:
            raise PeerRejected(store, 400, "line 1 is not a record")
        body = b"".join(p.read_bytes() for p in paths)
        try:
            validate_block(body)  # as /store/replicate does
            if len(body) > MAX_LINE and max(map(len, body.split(b"\n"))) > MAX_LINE:
                raise CorruptSegment(f"line longer than {MAX_LINE} bytes")
        except CorruptSegment as exc:
            raise PeerRejected(store, 400, str(exc)) from None
        self.received[store].append(body)

    async def open_query(self, store: str, raw_query: bytes, *, method: str = "GET") -> QueryAnswer:
        await trio.lowlevel.checkpoint()
        if store not in self.answers:
            raise PeerUnavailable(store, "connection refused")
        return self.answers[store]

    async def open_stream(self, store: str, raw_query: bytes) -> QueryAnswer:
        await trio.lowlevel.checkpoint()
        if store not in self.live:
            raise PeerUnavailable(store, "connection refused")
        stream = FakeStream(store, raw_query)
        self.live[store].append(stream)
        return stream

    # -- test controls -------------------------------------------------------------------

    def set_stores(self, stores: list[str]) -> None:
        """Membership changes: these are the live stores from now on."""
        self._stores = list(stores)

    def stream_to(self, store: str, chunk: bytes) -> None:
        """Send a chunk on every open live stream of ``store``."""
        for stream in self.live[store]:
            if not stream.closed:
                stream.feed.send_nowait(chunk)

    def break_streams(self, store: str) -> None:
        """End every open live stream of ``store`` (its node went away)."""
        for stream in self.live[store]:
            stream.feed.close()


def _conforms(cluster: FakeCluster) -> tuple[Membership, Peers]:
    """Checked by mypy: the fake implements both protocols."""
    return cluster, cluster
