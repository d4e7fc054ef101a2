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


class _FixedMembership:
    """The parts of ``Membership`` a fake with a fixed member list shares:
    it publishes nothing and runs until cancelled."""

    def self_url(self) -> str:
        return "http://self"

    async def publish(self, tags: dict[str, str]) -> None:
        pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()


class FakeCluster(_FixedMembership):
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
        self.histograms: dict[str, bytes] = {}  # store -> its /store/_histogram body
        self.histogram_calls: list[tuple[str, bytes]] = []
        self.live: dict[str, list[FakeStream]] = {}  # store -> the live streams opened on it
        self._stores = stores

    # -- Membership --------------------------------------------------------------------

    def ingesters(self) -> list[str]:
        return list(self.segments)

    def stores(self) -> list[str]:
        return list(self._stores)

    def state(self) -> dict[str, Any]:
        return {"source": "fake", "stores": self.stores(), "ingesters": self.ingesters()}

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

    async def histogram(self, store: str, raw_query: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        self.histogram_calls.append((store, raw_query))
        if store not in self.histograms:
            raise PeerUnavailable(store, "connection refused")
        return self.histograms[store]
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


class FakeStores(_FixedMembership):
    """Store nodes holding records: ``/store/_query`` answered from them
    (whole records, or ``ULID LF`` lines with ``ids=true``, with the
    ``X-Oklog-Node`` header), uploads added to them.  Membership and
    ``Peers`` in one, for read repair and the repair walker.

    ``held``: store URL -> its records (any order; kept sorted, one per
    ULID).  ``down``: stores that cannot be reached.  ``chunk``: answers
    are cut every ``chunk`` bytes (anywhere, as HTTP does).
    """

    def __init__(self, held: dict[str, list[bytes]], *, chunk: int = 1000) -> None:
        self.held = {s: {line[:26]: line for line in lines} for s, lines in held.items()}
        self.down: set[str] = set()
        self.broken: set[str] = set()  # answers break off half-way
        self.no_records: set[str] = set()  # refuse queries for whole records (ids only)
        self.rejecting: set[str] = set()  # uploads answered with a 500
        self.uploads: dict[str, list[bytes]] = {s: [] for s in held}
        self.queries: list[tuple[str, bytes]] = []
        self.chunk = chunk

    def copies(self) -> dict[bytes, int]:
        count: dict[bytes, int] = {}
        for records in self.held.values():
            for key in records:
                count[key] = count.get(key, 0) + 1
        return count

    # -- Membership --------------------------------------------------------------------

    def ingesters(self) -> list[str]:
        return []

    def stores(self) -> list[str]:
        return list(self.held)

    def state(self) -> dict[str, Any]:
        return {"source": "fake", "stores": self.stores()}

    # -- Peers -------------------------------------------------------------------------

    async def next(self, ingester: str) -> str | None:
        raise PeerUnavailable(ingester, "not an ingester")

    async def read_to(self, ingester: str, seg_id: str, path: Path) -> int:
        raise PeerUnavailable(ingester, "not an ingester")

    async def commit(self, ingester: str, seg_id: str) -> None:
        raise PeerUnavailable(ingester, "not an ingester")

    async def failed(self, ingester: str, seg_id: str) -> None:
        raise PeerUnavailable(ingester, "not an ingester")

    async def histogram(self, store: str, raw_query: bytes) -> bytes:
        raise PeerUnavailable(store, "these fake stores answer queries only")

    async def open_stream(self, store: str, raw_query: bytes) -> QueryAnswer:
        raise PeerUnavailable(store, "these fake stores answer queries only")

    async def replicate(self, store: str, paths: list[Path]) -> None:
        await trio.lowlevel.checkpoint()
        if store in self.down:
            raise PeerUnavailable(store, "connection refused")
        if store in self.rejecting:
            raise PeerRejected(store, 500, "disk full")
        body = b"".join(p.read_bytes() for p in paths)
        try:
            validate_block(body)
        except CorruptSegment as exc:
            raise PeerRejected(store, 400, str(exc)) from None
        self.uploads[store].append(body)
        for line in body.splitlines(keepends=True):
            self.held[store].setdefault(line[:26], line)

    async def open_query(self, store: str, raw_query: bytes, *, method: str = "GET") -> QueryAnswer:
        from oklog.query.params import parse_query

        await trio.lowlevel.checkpoint()
        self.queries.append((store, raw_query))
        if store in self.down or store not in self.held:
            raise PeerUnavailable(store, "connection refused")
        query = parse_query(raw_query)
        ids = b"ids=true" in raw_query.split(b"&")
        if store in self.no_records and not ids:
            raise PeerRejected(store, 503, "busy")
        lines = [line for key, line in sorted(self.held[store].items())
                 if query.lo <= key <= query.hi and query.q in line[27:].split(b" ", 1)[-1]]
        body = b"".join(line[:26] + b"\n" if ids else line for line in lines)
        chunks = [body[i:i + self.chunk] for i in range(0, len(body), self.chunk)]
        headers = {"X-Oklog-Node": store} | ({"X-Oklog-Ids": "true"} if ids else {})
        if store in self.broken:
            return BrokenAnswer(store, headers, chunks[: len(chunks) // 2])
        return FakeAnswer(store, headers, chunks)


class BrokenAnswer(FakeAnswer):
    """An answer whose connection breaks after its chunks."""

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in super().chunks():
            yield chunk
        raise PeerUnavailable(self.peer, "connection reset")


def _conforms_stores(stores: FakeStores) -> tuple[Membership, Peers]:
    """Checked by mypy: the fake implements both protocols."""
    return stores, stores
