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
ingest_bulk_uploads = Counter(
    "oklog_ingest_bulk_uploads",
    "Bulk uploads answered: ok (committed by a store), timeout (not committed within "
    "-ingest.bulk-timeout), too_large, write_error, shutdown",
    ["outcome"],
)
ingest_disk_full = Counter(
    "oklog_ingest_disk_full",
    "Times a forwarder connection was held back because the ingest disk was full")
ingest_connections = Gauge("oklog_ingest_connections", "Open forwarder connections", ["mode"])
ingest_segments_flushed = Counter("oklog_ingest_segments_flushed", "Ingest segments flushed")
ingest_segments_committed = Counter(
    "oklog_ingest_segments_committed", "Ingest segments committed by a store (replicated, deleted here)")
ingest_segments_failed = Counter(
    "oklog_ingest_segments_failed",
    "Ingest segments handed back: a store reported failure (failed) or its claim timed out (expired)",
    ["reason"])

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
query_seconds = Histogram(
    "oklog_store_query_seconds",
    "Query duration, request to the end of the body, by kind (cluster: /store/query, "
    "local: /store/_query; HEAD answers count as stats)",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
query_blocks = Counter(
    "oklog_store_query_blocks",
    "Blocks of the queried time ranges on this node: read (scanned) or skipped by the n-gram index",
    ["outcome"],
)

http_requests = Counter(
    "oklog_http_requests", "HTTP API requests answered", ["method", "route", "status"]
)
http_seconds = Histogram(
    "oklog_http_request_seconds",
    "Time from request to response headers (a streamed body is not included)",
    ["route"],
)

# Read repair and the repair walker (oklog.query.repair); source: query | walk.
repair_checked = Counter("oklog_repair_checked_records", "Records whose copies a repair check counted", ["source"])
repair_under = Counter(
    "oklog_repair_under_replicated_records", "Records a repair check found on too few stores", ["source"])
repair_repaired = Counter(
    "oklog_repair_repaired_records", "Records copied to enough stores by a repair check", ["source"])
repair_errors = Counter("oklog_repair_errors", "Failures of repair checks (peers, fetches, uploads)", ["source"])
repair_dropped = Counter(
    "oklog_repair_dropped_records",
    "Under-replicated records left for a later query or walk: reason=queue (too many findings "
    "waiting), broken_stream (a store broke off its answer), limit (a check's cap)",
    ["source", "reason"])
repair_found = Counter("oklog_read_repair_queued_records", "Under-replicated records queries handed to read repair")
repair_skipped = Counter(
    "oklog_read_repair_skipped_queries",
    "Queries that did not count copies: few_stores (fewer than the replication factor answered), "
    "busy (read repair's queue was full)", ["reason"])
stream_clients = Gauge(
    "oklog_stream_clients",
    "Open live streams: endpoint=stream (/store/stream clients), "
    "endpoint=_stream (subscriptions to this store's written records, local or from peers)",
    ["endpoint"],
)
stream_records = Counter(
    "oklog_stream_records", "Records sent to live stream readers", ["endpoint"]
)
stream_dropped = Counter(
    "oklog_stream_dropped_records",
    "Live stream records dropped because a reader fell behind: where=store (a subscription "
    "to this store), where=client (a /store/stream client of this node)",
    ["where"],
)
http_unauthorized = Counter(
    "oklog_http_unauthorized",
    "API requests refused for want of the bearer token (-api.token-file): "
    "reason=missing|malformed|invalid",
    ["reason"],
)
ingest_refused = Counter(
    "oklog_ingest_refused_connections",
    "Forwarder connections refused by load shedding: reason=max_connections "
    "(-ingest.max-connections) or load (-ingest.shed-factor)",
    ["reason"],
)
# API connection limits (oklog.apiserver) and query limits (oklog.query.limits)
http_connections = Gauge("oklog_http_connections", "Open connections to the HTTP API (idle ones included)")
http_refused = Counter(
    "oklog_http_refused_connections",
    "API connections refused: reason=max_connections (-api.max-connections; answered 503 "
    "or, with TLS, closed)",
    ["reason"],
)
queries_running = Gauge(
    "oklog_store_queries_running", "Queries and histograms running now (counted against "
    "-store.max-concurrent-queries until their body ends)")
queries_refused = Counter(
    "oklog_store_queries_refused",
    "Queries and histograms refused with 503 because -store.max-concurrent-queries were running",
    ["endpoint"],
)
query_timeouts = Counter(
    "oklog_store_query_timeouts",
    "Queries and histograms cut at -store.query-timeout: phase=head (answered 503) or "
    "body (the connection was broken mid-body)",
    ["endpoint", "phase"],
)
