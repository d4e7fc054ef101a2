"""Every call one node makes to another, behind one interface.

``Peers`` is that interface (a ``Protocol``): the ingest segment API
(``next``/``read_into``/``commit``/``failed``), ``replicate``,
``open_query``, ``histogram`` and ``open_stream``.  ``HttpPeers`` is the real implementation over an
``httpx.AsyncClient`` (tests can hand it an ``httpx.MockTransport``); the
tests' in-memory fake (``tests/fakes.py``) implements the same protocol,
so consumption, replication shortfalls and scatter-gather are unit-tested
without sockets.  httpx's exceptions are converted to
``PeerUnavailable``/``PeerRejected`` here and nowhere else.

Timeouts are explicit: small requests get a short total budget; segment
reads, replicate uploads and query streams get a connect timeout and a
generous per-read timeout, never a total one, because a long rare-term scan
legitimately takes a while before its first byte.  A live stream's read
timeout is the stream's own idle timeout (it sends heartbeats).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, BinaryIO, Mapping, Protocol

import httpx
import trio

from .clientconf import ClientConf
from .errors import PeerRejected, PeerUnavailable
from .stream.wire import IDLE_TIMEOUT
from .tls import describe as describe_tls

log = logging.getLogger("oklog.peer")

SMALL = httpx.Timeout(10.0, connect=5.0)
STREAM = httpx.Timeout(connect=5.0, read=300.0, write=60.0, pool=10.0)
#: A live stream sends heartbeats: silence for longer than its
#: ``IDLE_TIMEOUT`` means the connection is dead.
LIVE = httpx.Timeout(connect=5.0, read=IDLE_TIMEOUT, write=10.0, pool=10.0)
UPLOAD_CHUNK = 1 << 20


class QueryAnswer(Protocol):
    """One store's answer to a query: who, its headers, its body."""

    @property
    def peer(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, in chunks cut anywhere."""
        ...

    async def aclose(self) -> None: ...


class Peers(Protocol):
    """Every call this node makes to another node (base URL first)."""

    async def next(self, ingester: str) -> str | None:
        """Claim the ingester's oldest flushed segment; None when it has none."""
        ...

    async def read_to(self, ingester: str, seg_id: str, path: Path) -> int:
        """Fetch a claimed segment into a new file ``path``; returns its size."""
        ...

    async def commit(self, ingester: str, seg_id: str) -> None: ...

    async def failed(self, ingester: str, seg_id: str) -> None: ...

    async def replicate(self, store: str, paths: list[Path]) -> None:
        """Upload a segment (the files ``paths``, one after another) to a
        store's ``/store/replicate``."""
        ...

    async def open_query(self, store: str, raw_query: bytes, *, method: str = "GET") -> QueryAnswer:
        """Send a query to a store's ``/store/_query``; return once its
        headers arrived (the caller closes the answer)."""
        ...

    async def histogram(self, store: str, raw_query: bytes) -> bytes:
        """A store's ``/store/_histogram`` answer (its JSON body)."""
        ...

    async def open_stream(self, store: str, raw_query: bytes) -> QueryAnswer:
        """Open a live stream on a store's ``/store/_stream``; return once
        its headers arrived.  The body runs until closed (the caller closes
        it); it has a line at least every ``oklog.stream.wire.HEARTBEAT``
        seconds."""
        ...


@dataclass
class QueryResponse:
    """One store's answer over HTTP (a ``QueryAnswer``)."""

    peer: str
    status: int
    headers: httpx.Headers
    response: httpx.Response

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:  # a body cut off mid-way
            raise PeerUnavailable(self.peer, _describe(exc)) from exc

    async def aclose(self) -> None:
        await self.response.aclose()


class HttpPeers:
    """``Peers`` over HTTP, with explicit timeouts (module docstring)."""

    def __init__(self, client: httpx.AsyncClient | None = None, conf: ClientConf | None = None) -> None:
        # ``conf``: the node's token and TLS settings, sent with every call
        self.client = client or (conf or ClientConf()).async_client(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _call(self, method: str, url: str, *, timeout: httpx.Timeout = SMALL) -> httpx.Response:
        try:
            return await self.client.request(method, url, timeout=timeout)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(url, _describe(exc)) from exc

    # -- the ingest API ----------------------------------------------------------

    async def next(self, ingester: str) -> str | None:
        """Claim the ingester's oldest flushed segment; None when it has none."""
        resp = await self._call("GET", f"{ingester}/ingest/next")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise PeerRejected(ingester, resp.status_code, resp.text[:200])
        return resp.text.strip()

    async def read_to(self, ingester: str, seg_id: str, path: Path) -> int:
        """Stream a pending segment into the new file ``path``; its size."""
        with open(path, "xb") as sink:
            return await self.read_into(ingester, seg_id, sink)

    async def read_into(self, ingester: str, seg_id: str, sink: BinaryIO) -> int:
        """Stream a pending segment into ``sink``; returns its size."""
        url = f"{ingester}/ingest/read"
        size = 0
        try:
            async with self.client.stream("GET", url, params={"id": seg_id}, timeout=STREAM) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise PeerRejected(ingester, resp.status_code, resp.text[:200])
                async for chunk in resp.aiter_raw():
                    sink.write(chunk)
                    size += len(chunk)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(url, _describe(exc)) from exc
        return size

    async def commit(self, ingester: str, seg_id: str) -> None:
        await self._segment_call(ingester, "commit", seg_id)

    async def failed(self, ingester: str, seg_id: str) -> None:
        await self._segment_call(ingester, "failed", seg_id)

    async def _segment_call(self, ingester: str, verb: str, seg_id: str) -> None:
        resp = await self._call("POST", f"{ingester}/ingest/{verb}?id={seg_id}")
        if resp.status_code != 200:
            raise PeerRejected(ingester, resp.status_code, resp.text[:200])

    # -- the store API -----------------------------------------------------------

    async def replicate(self, store: str, paths: list[Path]) -> None:
        """Upload a segment (``paths``, concatenated) to ``/store/replicate``."""
        url = f"{store}/store/replicate"
        try:
            resp = await self.client.post(url, content=file_chunks(paths), timeout=STREAM)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(url, _describe(exc)) from exc
        if resp.status_code != 200:
            raise PeerRejected(store, resp.status_code, resp.text[:200])

    async def open_query(
        self, store: str, raw_query: bytes, *, method: str = "GET", path: str = "/store/_query",
        timeout: httpx.Timeout = STREAM,
    ) -> QueryResponse:
        """Send a query and return once headers arrived; the caller closes it."""
        url = f"{store}{path}?{raw_query.decode('latin-1')}"
        try:
            request = self.client.build_request(method, url, timeout=timeout)
            resp = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(url, _describe(exc)) from exc
        if resp.status_code not in (200, 206):
            body = (await resp.aread()).decode("utf-8", "replace")[:200]
            await resp.aclose()
            raise PeerRejected(store, resp.status_code, body.strip())
        return QueryResponse(store, resp.status_code, resp.headers, resp)

    async def histogram(self, store: str, raw_query: bytes) -> bytes:
        """``/store/_histogram`` of one store: its JSON body (a scan can take
        a while before the answer: the stream timeouts apply)."""
        url = f"{store}/store/_histogram?{raw_query.decode('latin-1')}"
        try:
            resp = await self.client.get(url, timeout=STREAM)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(url, _describe(exc)) from exc
        if resp.status_code != 200:
            raise PeerRejected(store, resp.status_code, resp.text[:200].strip())
        return resp.content

    async def open_stream(self, store: str, raw_query: bytes) -> QueryResponse:
        """Open a live stream on ``/store/_stream``; the caller closes it."""
        return await self.open_query(store, raw_query, path="/store/_stream", timeout=LIVE)


async def file_chunks(paths: list[Path]) -> AsyncIterator[bytes]:
    """The files' bytes one after another, in large chunks."""
    for path in paths:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(UPLOAD_CHUNK)
                if not chunk:
                    break
                yield chunk
                await trio.lowlevel.checkpoint()


def _describe(exc: httpx.HTTPError) -> str:
    tls = describe_tls(exc)
    if tls is not None:
        return f"{type(exc).__name__}: {tls}"
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


@asynccontextmanager
async def open_peers(client: httpx.AsyncClient | None = None,
                     conf: ClientConf | None = None) -> AsyncIterator[HttpPeers]:
    peers = HttpPeers(client, conf)
    try:
        yield peers
    finally:
        with trio.CancelScope(shield=True):
            await peers.aclose()
