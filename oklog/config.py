"""Node configuration: every setting once, with its flag, default and help.

``NodeConfig`` is what ``run_node`` takes.  Each field that is a command
line flag carries a ``Flag`` in its metadata: OK Log's flag name, the
default as the user writes it, the help line, which roles have it and how
to parse it.  The field's own default is that text parsed, and the CLI
builds every node command's options from these fields, so defaults, flags
and help cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError
from .records.format import RECORD_SIZE_LIMIT, TOPIC_PATTERN, TOPIC_RE
from .roles import tiers
from .timespec import parse_duration

__all__ = ["Flag", "NodeConfig", "flags", "parse_seconds", "parse_size"]

# --- value parsers (ConfigError with a one-line reason) -------------------------------

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"^(\d+\.?\d*|\.\d+)\s*([A-Za-z]*)$")


def parse_size(s: str | int) -> int:
    """Bytes in a size: ``1048576``, ``16MiB``, ``128MB``, ``1KiB``, ``1.5G``.

    ``KiB/MiB/GiB/TiB`` and the one-letter ``K/M/G/T`` are powers of 1024;
    ``KB/MB/GB/TB`` are powers of 1000 (like ``dd``).  Case-insensitive.
    """
    if isinstance(s, int) and not isinstance(s, bool):
        if s < 0:
            raise ConfigError(f"invalid size {s!r}: negative")
        return s
    if not isinstance(s, str):
        raise ConfigError(f"invalid size {s!r}")
    m = _SIZE.match(s.strip())
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ConfigError(f"invalid size {s!r} (use e.g. 1048576, 64KiB, 16MiB, 1GB)")
    number = m.group(1)
    if number.isdigit():
        return int(number) * _SIZE_UNITS[unit]
    value = float(number) * _SIZE_UNITS[unit]
    if value != int(value) and unit in ("", "b"):
        raise ConfigError(f"invalid size {s!r}: fractional bytes")
    return int(round(value))


def parse_seconds(s: str) -> float:
    """A duration flag (``3s``, ``1m``, ``1h30m``, ``7d``) in seconds, not negative."""
    try:
        seconds = parse_duration(s)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if seconds < 0:
        raise ConfigError(f"invalid duration {s!r}: negative")
    return seconds


def _optional(s: str) -> str | None:
    return s or None


def _optional_path(s: str) -> Path | None:
    return Path(s) if s else None


def _serf_mode(s: str) -> bool | None:
    modes = {"auto": None, "on": True, "off": False}
    if s not in modes:
        raise ConfigError(f"invalid value {s!r}: want auto, on or off")
    return modes[s]


def _record_size(s: str) -> int:
    size = parse_size(s)
    if not 0 < size <= RECORD_SIZE_LIMIT:
        raise ConfigError(f"{s!r}: must be between 1 byte and {RECORD_SIZE_LIMIT >> 20}MiB")
    return size


def _topic_mode(s: str) -> str:
    if s not in ("static", "dynamic"):
        raise ConfigError(f"invalid value {s!r}: want static or dynamic")
    return s


def _topic(s: str) -> str:
    if not TOPIC_RE.fullmatch(s.encode("utf-8", "surrogateescape")):
        raise ConfigError(f"invalid topic {s!r}: want {TOPIC_PATTERN.decode()}")
    return s


def _compression(s: str) -> str:
    if s not in ("zstd", "none"):
        raise ConfigError(f"invalid value {s!r}: want zstd or none")
    return s


def _block_size(s: str) -> int:
    size = parse_size(s)
    if not 4096 <= size <= 64 << 20:
        raise ConfigError(f"{s!r}: must be between 4KiB and 64MiB")
    return size


def _budget(s: str | int) -> int:
    """A disk budget: a size, or ``off`` (0)."""
    if isinstance(s, str) and s.strip().lower() in ("", "off", "none"):
        return 0
    return parse_size(s)


def _number(s: str | int, least: int) -> int:
    try:
        n = int(s)
    except ValueError:
        raise ConfigError(f"invalid number {s!r}") from None
    if n < least:
        raise ConfigError(f"{s!r}: must be at least {least}")
    return n


def _count(s: str | int) -> int:
    return _number(s, 0)


def _positive(s: str | int) -> int:
    return _number(s, 1)


def _shed_factor(s: str | float) -> float:
    """``-ingest.shed-factor``: 0 (off) or a number above 1."""
    try:
        f = float(s)
    except ValueError:
        raise ConfigError(f"invalid number {s!r}") from None
    if f != 0 and not (1 < f < float("inf")):
        raise ConfigError(f"{s!r}: must be 0 (off) or a number above 1 (e.g. 2)")
    return f


def _bulk_size(s: str) -> int:
    size = parse_size(s)
    if size < 1:
        raise ConfigError(f"{s!r}: must be at least 1 byte")
    return size


def _timeout(s: str) -> float:
    """A duration that must be above zero."""
    seconds = parse_seconds(s)
    if seconds <= 0:
        raise ConfigError(f"{s!r}: must be above zero")
    return seconds


# --- the settings ------------------------------------------------------------------------

BOTH = ("ingest", "store")


@dataclass(frozen=True)
class Flag:
    """How one ``NodeConfig`` field appears on the command line."""

    name: str  # OK Log's flag name, without dashes
    default: Any  # as the user would write it (shown in --help)
    help: str
    roles: tuple[str, ...] = BOTH
    parse: Callable[[Any], Any] = str
    kind: type = str  # what the command line hands over: str, int or bool
    metavar: str | None = None
    repeatable: bool = False


def setting(flag: str, default: Any, help: str, roles: tuple[str, ...] = BOTH, **kw: Any) -> Any:
    """A ``NodeConfig`` field whose default is ``default`` parsed."""
    meta = Flag(flag, default, help, roles, **kw)
    if meta.repeatable:
        return field(default_factory=list, metadata={"flag": meta})
    return field(default=meta.parse(default), metadata={"flag": meta})


@dataclass
class NodeConfig:
    mode: str = "ingeststore"
    api: str = setting("api", "tcp://0.0.0.0:7650", "listen address for the HTTP API",
                       metavar="ADDR")
    cluster: str = setting("cluster", "tcp://0.0.0.0:7659",
                           "listen address for cluster gossip (Serf)", metavar="ADDR")
    cluster_advertise: str | None = setting(
        "cluster.advertise-addr", "", "address other nodes use to reach this one",
        parse=_optional, metavar="ADDR")
    cluster_serf_rpc: str | None = setting(
        "cluster.serf-rpc", "", "attach to a running Serf agent at host:port instead of starting one",
        parse=_optional, metavar="HOST:PORT")
    use_serf: bool | None = setting(
        "cluster.serf", "auto",
        "auto | on | off: run a Serf agent for membership (auto: when serf is installed)",
        parse=_serf_mode, metavar="MODE")
    fast_gossip: bool = setting(
        "cluster.fast-gossip", False,
        "quick failure detection (Serf's local profile): for loopback clusters and tests",
        parse=bool, kind=bool)
    peers: list[str] = setting(
        "peer", "", "gossip address (host:port) of a node to join; repeatable",
        metavar="HOST:PORT", repeatable=True)
    ingest_fast: str = setting("ingest.fast", "tcp://0.0.0.0:7651",
                               "listen address for fast (buffered) writes", ("ingest",), metavar="ADDR")
    ingest_durable: str = setting("ingest.durable", "tcp://0.0.0.0:7652",
                                  "listen address for durable (fsynced) writes", ("ingest",),
                                  metavar="ADDR")
    ingest_bulk: str = setting(
        "ingest.bulk", "tcp://0.0.0.0:7653",
        "listen address for bulk writes: one upload becomes one segment, answered OK once a "
        "store committed it (replicated)", ("ingest",), metavar="ADDR")
    ingest_bulk_timeout: float = setting(
        "ingest.bulk-timeout", "1m",
        "answer a bulk upload ERR if no store commits it within this long (it is still stored)",
        ("ingest",), parse=parse_seconds, metavar="DURATION")
    ingest_bulk_max_size: int = setting(
        "ingest.bulk-max-size", "128MiB", "refuse (ERR) bulk uploads larger than this",
        ("ingest",), parse=_bulk_size, metavar="SIZE")
    ingest_path: Path = setting("ingest.path", "data/ingest", "directory for ingest segments",
                                ("ingest",), parse=Path, metavar="DIR")
    ingest_flush_size: int = setting("ingest.segment-flush-size", "16MiB",
                                     "flush the active segment after this many bytes", ("ingest",),
                                     parse=parse_size, metavar="SIZE")
    ingest_flush_age: float = setting("ingest.segment-flush-age", "500ms",
                                      "flush the active segment after this long (how fresh "
                                      "queries are)", ("ingest",),
                                      parse=parse_seconds, metavar="DURATION")
    ingest_pending_timeout: float = setting(
        "ingest.segment-pending-timeout", "1m",
        "claimed but uncommitted segments return to the queue after this long", ("ingest",),
        parse=parse_seconds, metavar="DURATION")
    ingest_shutdown_timeout: float = setting(
        "ingest.shutdown-timeout", "1m",
        "on shutdown, wait this long for the store tier to take flushed segments", ("ingest",),
        parse=parse_seconds, metavar="DURATION")
    ingest_max_record_size: int = setting(
        "ingest.max-record-size", "1MiB", "longer records are rejected and counted (at most 64MiB)",
        ("ingest",), parse=_record_size, metavar="SIZE")
    ingest_topic_mode: str = setting(
        "ingest.topic-mode", "static",
        "static: every record gets -ingest.topic; dynamic: each line is TOPIC SP PAYLOAD "
        "(lines without a valid topic are rejected and counted)", ("ingest",),
        parse=_topic_mode, metavar="static|dynamic")
    ingest_topic: str = setting(
        "ingest.topic", "default", "the topic of every record in static topic mode", ("ingest",),
        parse=_topic, metavar="TOPIC")
    store_path: Path = setting("store.path", "data/store", "directory for store segments",
                               ("store",), parse=Path, metavar="DIR")
    store_consumers: int = setting("store.segment-consumers", 1, "concurrent segment consumers",
                                   ("store",), parse=_positive, kind=int, metavar="N")
    store_target_size: int = setting("store.segment-target-size", "128MiB",
                                     "try to make store segments this big", ("store",),
                                     parse=parse_size, metavar="SIZE")
    store_target_age: float = setting("store.segment-target-age", "3s",
                                      "gather segments for at most this long", ("store",),
                                      parse=parse_seconds, metavar="DURATION")
    store_retain: float = setting(
        "store.segment-retain", "7d",
        "trash segments whose newest record is older than this (3s, 1h, 7d; 0: keep forever)", ("store",),
        parse=parse_seconds, metavar="DURATION")
    store_retain_size: int = setting(
        "store.segment-retain-size", "off",
        "disk budget for segments (500MB, 2GiB): trash the oldest beyond it (off: no budget)",
        ("store",), parse=_budget, metavar="SIZE")
    store_purge: float = setting(
        "store.segment-purge", "24h", "remove trashed segments after this long", ("store",),
        parse=parse_seconds, metavar="DURATION")
    store_compaction_interval: float = setting(
        "store.compaction-interval", "1s",
        "run at most one compaction job this often (0: never compact; retention still runs)",
        ("store",), parse=parse_seconds, metavar="DURATION")
    store_replication_factor: int = setting(
        "store.segment-replication-factor", 2,
        "copies of each record across distinct store nodes (a lone node needs 1)", ("store",),
        parse=_positive, kind=int, metavar="N")
    store_block_size: int = setting(
        "store.block-size", "1MiB",
        "records per block of a store segment, in bytes (the unit of compression and of reads)",
        ("store",), parse=_block_size, metavar="SIZE")
    store_compression: str = setting(
        "store.compression", "zstd",
        "store segment blocks: zstd (zstdcat/zstdgrep read them) or none (plain, grep-able)",
        ("store",), parse=_compression, metavar="zstd|none")
    store_scan_workers: int = setting(
        "store.scan-workers", 2,
        "query scan worker processes, at a lower CPU priority (0: threads of the node)",
        ("store",), parse=_count, kind=int, metavar="N")
    store_repair_grace: float = setting(
        "store.repair-grace", "5s",
        "read repair and oklog repair leave records younger than this alone (they may still be "
        "on their way to their replicas)", ("store",), parse=parse_seconds, metavar="DURATION")
    store_read_repair_buffer: int = setting(
        "store.read-repair-buffer", "8MiB",
        "under-replicated records one query keeps in memory for read repair; past that, read "
        "repair fetches them from their holders (0: no read repair on queries)", ("store",),
        parse=parse_size, metavar="SIZE")

    # --- security (docs/security.md; files are read and checked at start by oklog.security)
    api_token_file: Path | None = setting(
        "api.token-file", "",
        "require Authorization: Bearer <first line of FILE> on every API call except "
        "/health, /healthz, /readyz (and /metrics with -api.metrics-public); "
        "this node sends it to its peers", parse=_optional_path, metavar="FILE")
    api_metrics_public: bool = setting(
        "api.metrics-public", False, "serve /metrics without the token", parse=bool, kind=bool)
    api_tls_cert: Path | None = setting(
        "api.tls-cert", "", "serve the API over HTTPS with this certificate (PEM: it, then its chain); "
        "also this node's client certificate toward its peers", parse=_optional_path, metavar="FILE")
    api_tls_key: Path | None = setting(
        "api.tls-key", "", "private key (PEM) of -api.tls-cert", parse=_optional_path, metavar="FILE")
    api_tls_ca: Path | None = setting(
        "api.tls-ca", "",
        "require API clients (and peers) to present a certificate signed by this CA (mTLS)",
        parse=_optional_path, metavar="FILE")
    ca_file: Path | None = setting(
        "ca-file", "", "CA bundle to verify the HTTPS APIs of other nodes "
        "(default: -api.tls-ca if given, else the system's trust store)",
        parse=_optional_path, metavar="FILE")
    ingest_tls_cert: Path | None = setting(
        "ingest.tls-cert", "", "forwarders must connect with TLS (oklog forward tls://host:port) "
        "to the ingest ports; this certificate (PEM; may be -api.tls-cert's)", ("ingest",),
        parse=_optional_path, metavar="FILE")
    ingest_tls_key: Path | None = setting(
        "ingest.tls-key", "", "private key (PEM) of -ingest.tls-cert", ("ingest",),
        parse=_optional_path, metavar="FILE")
    ingest_tls_ca: Path | None = setting(
        "ingest.tls-ca", "", "forwarders must present a certificate signed by this CA",
        ("ingest",), parse=_optional_path, metavar="FILE")
    cluster_key_file: Path | None = setting(
        "cluster.key-file", "",
        "encrypt gossip with the base64 16/24/32-byte key in FILE (`serf keygen`); "
        "every node of the cluster needs the same key", parse=_optional_path, metavar="FILE")
    ingest_max_connections: int = setting(
        "ingest.max-connections", 0,
        "refuse new forwarder connections (fast, durable and bulk ports together) while this "
        "many are open; forwarders fail over to another ingester (0: no limit)", ("ingest",),
        parse=_count, kind=int, metavar="N")
    ingest_shed_factor: float = setting(
        "ingest.shed-factor", "0",
        "refuse new forwarder connections while this ingester's load (its share of the ingest "
        "tier's connections plus its share of its bytes/s) exceeds this many times the other "
        "ingesters' mean, unless a quarter of them (at least one) refuse already "
        "(needs Serf; 0: off; e.g. 2)", ("ingest",),
        parse=_shed_factor, metavar="F")

    # --- limits against hostile or runaway clients (oklog.apiserver, oklog.query.limits)
    api_max_connections: int = setting(
        "api.max-connections", 1024,
        "refuse new API connections (503 with a one-line reason) while this many are open, "
        "idle ones included (0: no limit)", parse=_count, kind=int, metavar="N")
    api_idle_timeout: float = setting(
        "api.idle-timeout", "20s",
        "close an API connection that has not sent a complete request head within this long "
        "of opening or of its last response (idle keep-alive, slow or half-sent request heads); "
        "a request body that stalls this long is answered 408",
        parse=_timeout, metavar="DURATION")
    store_query_timeout: float = setting(
        "store.query-timeout", "5m",
        "cut a query or histogram that runs longer (503 before its headers; after them the "
        "connection is broken, so the answer cannot pass for complete; 0: no limit)", ("store",),
        parse=parse_seconds, metavar="DURATION")
    store_max_concurrent_queries: int = setting(
        "store.max-concurrent-queries", 32,
        "answer 503 with Retry-After to queries and histograms beyond this many running "
        "(0: no limit)", ("store",), parse=_count, kind=int, metavar="N")

    @property
    def roles(self) -> tuple[str, ...]:
        return tiers(self.mode)


def flags(mode: str) -> Iterator[tuple[str, Flag]]:
    """``(field name, Flag)`` of every flag a node of ``mode`` takes."""
    roles = set(tiers(mode))
    for f in dataclasses.fields(NodeConfig):
        meta = f.metadata.get("flag")
        if meta is not None and roles & set(meta.roles):
            yield f.name, meta
