"""``Peers`` calls addressed to this very node, answered without HTTP.

An ``ingeststore`` node consumes its own ingest segments and usually
replicates to itself too.  Going through its own HTTP API for that costs a
send and a receive of every byte (measured: about a third of the node's CPU
on the ingest benchmark) for the same result.  ``LocalPeers`` keeps the one
``Peers`` interface and the same semantics -- ``next`` claims, ``read_to``
marks the segment read only once all of it is there, ``replicate``
validates the body like ``/store/replicate`` and refuses a malformed one
with the same ``PeerRejected(400)`` (a local write error is a 500) -- and
hands every call for another node to the HTTP implementation.  One
difference: segments this very process stamped are records by
construction (``IngestLog.stamped_here``), so their lines are not checked
again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import trio

from . import metrics
from .errors import CorruptSegment, OklogError, PeerRejected, SegmentNotRead
from .ingest.log import IngestLog
from .peer import Peers, QueryAnswer, file_chunks
from .store.log import StoreLog

__all__ = ["LocalPeers"]

_CHUNK = 1 << 20  # bytes per write when a copy goes through user space


class LocalPeers:
    """``Peers`` with a shortcut for calls to ``self_url`` (module docstring)."""

    def __init__(self, remote: Peers, self_url: str, *, ingest: IngestLog | None = None,
                 store: StoreLog | None = None) -> None:
        self.remote = remote
        self.self_url = self_url
        self.ingest = ingest
        self.store = store
        self._stamped: set[Path] = set()  # spools copied from segments stamped here

    def _own_ingest(self, ingester: str) -> IngestLog | None:
        return self.ingest if ingester == self.self_url else None

    async def next(self, ingester: str) -> str | None:
        log = self._own_ingest(ingester)
        if log is None:
            return await self.remote.next(ingester)
        return log.next()

    async def read_to(self, ingester: str, seg_id: str, path: Path) -> int:
        log = self._own_ingest(ingester)
        if log is None:
            return await self.remote.read_to(ingester, seg_id, path)
        try:
            source = log.read_path(seg_id)
            size = await trio.to_thread.run_sync(_link_or_copy, source, path)
            log.mark_read(seg_id)
            if log.stamped_here(seg_id):
                self._remember(path)
        except (OklogError, FileNotFoundError) as exc:
            raise PeerRejected(ingester, 404, str(exc)) from exc
        return size

    async def commit(self, ingester: str, seg_id: str) -> None:
        log = self._own_ingest(ingester)
        if log is None:
            return await self.remote.commit(ingester, seg_id)
        try:
            log.commit(seg_id)
        except OklogError as exc:
            raise PeerRejected(ingester, 428 if isinstance(exc, SegmentNotRead) else 404, str(exc)) from exc

    async def failed(self, ingester: str, seg_id: str) -> None:
        log = self._own_ingest(ingester)
        if log is None:
            return await self.remote.failed(ingester, seg_id)
        try:
            log.failed(seg_id)
        except OklogError as exc:
            raise PeerRejected(ingester, 404, str(exc)) from exc

    async def replicate(self, store: str, paths: list[Path]) -> None:
        if store != self.self_url or self.store is None:
            return await self.remote.replicate(store, paths)
        stamped = all(p in self._stamped for p in paths)
        try:
            await self.store.write_segment(file_chunks(paths), validated=stamped)
        except CorruptSegment as exc:
            metrics.replicate_rejected.inc()
            raise PeerRejected(store, 400, str(exc)) from exc
        except OSError as exc:  # a full disk, as a 500 would say: try another store
            raise PeerRejected(store, 500, f"store failed: {exc}") from exc

    async def open_query(self, store: str, raw_query: bytes, *, method: str = "GET") -> QueryAnswer:
        return await self.remote.open_query(store, raw_query, method=method)

    async def histogram(self, store: str, raw_query: bytes) -> bytes:
        return await self.remote.histogram(store, raw_query)

    async def open_stream(self, store: str, raw_query: bytes) -> QueryAnswer:
        # this node's own share of a stream is read from its hub directly
        # (oklog.stream.fanout): only peers' streams come here
        return await self.remote.open_stream(store, raw_query)

    def _remember(self, path: Path) -> None:
        if len(self._stamped) > 10_000:  # forget spools long gone
            self._stamped = {p for p in self._stamped if p.exists()}
        self._stamped.add(path)


def _link_or_copy(source: Path, path: Path) -> int:
    """``path`` becomes the segment file ``source`` without copying a byte
    (a hard link: flushed segments are never written again), or a copy
    when they are on different file systems."""
    try:
        os.link(source, path)
        return os.stat(path).st_size
    except OSError:
        with open(path, "xb") as sink:
            return _copy(source, sink)


def _copy(path: Path, sink: BinaryIO) -> int:
    """Copy a file into ``sink`` inside the kernel (``copy_file_range``)."""
    sink.flush()
    out = sink.fileno()
    total = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            while total < size:
                n = os.copy_file_range(f.fileno(), out, size - total)
                if n == 0:
                    break
                total += n
        except OSError:  # not supported here: copy through user space
            os.lseek(out, 0, os.SEEK_SET)
            os.ftruncate(out, 0)
            f.seek(0)
            total = 0
            while chunk := f.read(_CHUNK):
                os.write(out, chunk)
                total += len(chunk)
    return total
