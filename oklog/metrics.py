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
consume_records = Counter("oklog_store_consumed_records", "Records in committed composite segments")
replicate_segments = Counter("oklog_store_replicated_segments", "Segments received by /store/replicate")
replicate_records = Counter("oklog_store_replicated_records", "Records received by /store/replicate")
replicate_rejected = Counter("oklog_store_replicate_rejected", "Malformed /store/replicate bodies")

queries = Counter("oklog_store_queries", "Queries answered", ["kind"])
query_errors = Counter("oklog_store_query_errors", "Peers that failed during scatter-gather")
query_seconds = Histogram("oklog_store_query_seconds", "Query planning time (to headers)", ["kind"])
