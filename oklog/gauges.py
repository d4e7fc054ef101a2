"""Gauges read from a node's live state when Prometheus scrapes ``/metrics``.

Counters are bumped where things happen (``oklog.metrics``); a *level*
(segments per state, bytes on disk, members per role) is better read from
the structures that already know it, at scrape time, than mirrored into a
gauge at every change: nothing can drift, and the data path pays nothing.
``StateCollector`` does that; ``node`` registers one per node.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from .ulid import ms_of

if TYPE_CHECKING:
    from .cluster.membership import Membership
    from .ingest.log import IngestLog
    from .store.log import StoreLog


def ingest_families(ingest: "IngestLog", now: float) -> Iterator[GaugeMetricFamily]:
    """Ingest segments per state: count, bytes, and the age of the oldest
    (a growing flushed age means the store tier is not keeping up)."""
    segments = GaugeMetricFamily("oklog_ingest_segments", "Ingest segments by state", labels=["state"])
    size = GaugeMetricFamily("oklog_ingest_segment_bytes", "Bytes of ingest segments by state",
                             labels=["state"])
    age = GaugeMetricFamily(
        "oklog_ingest_oldest_segment_age_seconds",
        "Age of the oldest ingest segment in each state (0 when there is none)", labels=["state"])
    waiting = GaugeMetricFamily(
        "oklog_ingest_unconsumed_bytes",
        "Record bytes written here that no store has committed yet (active, flushed, pending): "
        "what is waiting to be replicated")
    unconsumed = 0
    for state, counts in ingest.segment_state().items():
        segments.add_metric([state], counts["segments"])
        size.add_metric([state], counts["bytes"])
        unconsumed += counts["bytes"]
    for state, oldest in ingest.oldest_ids().items():
        age.add_metric([state], max(0.0, now - ms_of(oldest) / 1000) if oldest else 0.0)
    waiting.add_metric([], unconsumed)
    yield from (segments, size, age, waiting)


def store_families(store: "StoreLog") -> Iterator[GaugeMetricFamily]:
    """What the store holds: segment files, blocks, bytes on disk, records;
    and what it still holds on disk for no query (trashed, to be purged)."""
    stats = store.disk_stats()
    for name, key, help_text in (
        ("oklog_store_segments", "segments", "Store segment files that queries read"),
        ("oklog_store_blocks", "blocks", "Blocks in verified store segments"),
        ("oklog_store_records", "records",
         "Records in verified store segments (copies here, not distinct cluster-wide)"),
        ("oklog_store_bytes", "bytes", "Bytes of the store segment files that queries read"),
        ("oklog_store_sidecar_bytes", "sidecar_bytes",
         "Bytes of the segments' sidecars (block tables and n-gram indexes) on disk"),
        ("oklog_store_unverified_segments", "unverified_segments",
         "Segments found on disk that are not checked yet"),
        ("oklog_store_trashed_bytes", "trashed_bytes",
         "Bytes of trashed segment files still on disk, awaiting their purge"),
    ):
        family = GaugeMetricFamily(name, help_text)
        family.add_metric([], stats[key])
        yield family


def cluster_family(membership: "Membership") -> GaugeMetricFamily:
    """Cluster members by role and Serf status, as this node sees them."""
    family = GaugeMetricFamily("oklog_cluster_members", "Cluster members by role and status",
                               labels=["role", "status"])
    counts: Counter[tuple[str, str]] = Counter()
    for member in membership.state().get("members", []):
        counts[(str(member.get("role", "")), str(member.get("status", "")))] += 1
    for (role, status), n in sorted(counts.items()):
        family.add_metric([role, status], n)
    return family


class StateCollector(Collector):
    """Yields the gauges of one node's ingest log, store and membership."""

    def __init__(self, ingest: "IngestLog | None", store: "StoreLog | None",
                 membership: "Membership", clock: Callable[[], float] = time.time) -> None:
        self.ingest = ingest
        self.store = store
        self.membership = membership
        self.clock = clock

    def collect(self) -> Iterator[Any]:
        if self.ingest is not None:
            yield from ingest_families(self.ingest, self.clock())
        if self.store is not None:
            yield from store_families(self.store)
        yield cluster_family(self.membership)


def register(collector: StateCollector, registry: CollectorRegistry = REGISTRY) -> Callable[[], None]:
    """Register ``collector``; returns the function that unregisters it (a
    process may run one node after another, as the tests do)."""
    registry.register(collector)
    return lambda: registry.unregister(collector)
