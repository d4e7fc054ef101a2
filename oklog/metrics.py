"""Prometheus metrics, all named ``oklog_*``, served at ``/metrics``.

Module-level objects on the default registry: one node per process.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ingest_records = Counter("oklog_ingest_records", "Records written to ingest segments")
ingest_bytes = Counter("oklog_ingest_bytes", "Record bytes written to ingest segments")
ingest_rejected = Counter(
    "oklog_ingest_rejected_records", "Producer lines rejected at ingest", ["reason"]
)
ingest_connections = Gauge("oklog_ingest_connections", "Open forwarder connections", ["mode"])
ingest_segments_flushed = Counter("oklog_ingest_segments_flushed", "Ingest segments flushed")

consume_batches = Counter("oklog_store_consume_batches", "Consume transactions", ["outcome"])
consume_segments = Counter("oklog_store_consumed_segments", "Ingest segments consumed")
consume_bytes = Counter("oklog_store_consumed_bytes", "Bytes of records in committed batches")
replicate_segments = Counter("oklog_store_replicated_segments", "Segments received by /store/replicate")
replicate_records = Counter("oklog_store_replicated_records", "Records received by /store/replicate")
replicate_bytes = Counter("oklog_store_replicated_bytes",
                          "Bytes of segment files written for /store/replicate (on disk)")
replicate_rejected = Counter("oklog_store_replicate_rejected", "Malformed /store/replicate bodies")
store_rejected = Counter(
    "oklog_store_rejected_records",
    "Lines dropped by the store tier: not a record (malformed), a partial last line (torn), "
    "longer than any store accepts (too_long); "
    "source=consume: in a gathered ingest segment, source=segment: in a store segment file",
    ["reason", "source"],
)
store_repaired_segments = Counter(
    "oklog_store_repaired_segments", "Store segment files found damaged and repaired", ["problem"]
)

# compaction and retention (oklog.store.compactor)
compactions = Counter(
    "oklog_store_compactions", "Compaction jobs run, by kind (overlap, small) and outcome (done, failed)",
    ["kind", "outcome"],
)
compaction_bytes = Counter(
    "oklog_store_compaction_bytes",
    "Segment bytes on disk read (in) and written (out) by compaction jobs that completed", ["direction"],
)
compaction_seconds = Histogram(
    "oklog_store_compaction_seconds", "Duration of compaction jobs that completed",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
store_trashed_segments = Counter(
    "oklog_store_trashed_segments",
    "Store segments moved to .trashed by retention, by reason (age, size)", ["reason"],
)
store_purged_segments = Counter("oklog_store_purged_segments", "Trashed store segment files removed")

queries = Counter("oklog_store_queries", "Queries answered", ["kind"])
query_errors = Counter("oklog_store_query_errors", "Peers that failed during scatter-gather")

http_requests = Counter(
    "oklog_http_requests", "HTTP API requests answered", ["method", "route", "status"]
)
http_seconds = Histogram(
    "oklog_http_request_seconds",
    "Time from request to response headers (a streamed body is not included)",
    ["route"],
)
