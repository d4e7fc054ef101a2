"""Node settings: one table for defaults, flags and help; size parsing."""

from __future__ import annotations

import dataclasses

import pytest

from oklog.config import NodeConfig, flags, parse_seconds, parse_size
from oklog.errors import ConfigError


@pytest.mark.parametrize(
    "s, want",
    [
        ("0", 0),
        ("1048576", 1048576),
        (1234, 1234),
        ("16MiB", 16 * 1024 * 1024),
        ("128MB", 128_000_000),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("1K", 1024),
        ("1KB", 1000),
        ("1.5MiB", 1572864),
        ("2 GiB", 2 * 1024**3),
        ("1G", 1024**3),
        ("1TB", 10**12),
        ("10B", 10),
        ("18446744073709551616", 2**64),
    ],
)
def test_parse_size_ok(s, want):
    assert parse_size(s) == want


@pytest.mark.parametrize("s", ["", "MiB", "1.5", "1.5B", "-1", "1PiB", "1 2", "x", -5, True])
def test_parse_size_bad(s):
    with pytest.raises(ConfigError):
        parse_size(s)


def test_parse_seconds() -> None:
    assert parse_seconds("1h30m") == 5400
    assert parse_seconds("1w") == 7 * 86400
    for bad in ("-5m", "5", "soon"):
        with pytest.raises(ConfigError):
            parse_seconds(bad)


def test_every_flag_default_is_the_field_default() -> None:
    cfg = NodeConfig()
    for mode in ("ingest", "store", "ingeststore"):
        for field, flag in flags(mode):
            want = [] if flag.repeatable else flag.parse(flag.default)
            assert getattr(cfg, field) == want, field


def test_modes_get_the_flags_of_their_roles() -> None:
    ingest = {f.name for _, f in flags("ingest")}
    store = {f.name for _, f in flags("store")}
    both = {f.name for _, f in flags("ingeststore")}
    assert "ingest.path" in ingest and "ingest.path" not in store
    assert "store.path" in store and "store.path" not in ingest
    assert both == ingest | store
    assert {"api", "cluster", "peer"} <= ingest & store


def test_ok_log_defaults() -> None:
    cfg = NodeConfig()
    assert cfg.store_replication_factor == 2  # OK Log's default, kept
    assert cfg.ingest_flush_size == 16 << 20
    assert cfg.ingest_flush_age == 0.5  # OK Log's 3s made every record wait 3s (docs/performance.md)
    assert (cfg.store_block_size, cfg.store_compression, cfg.store_scan_workers) == (1 << 20, "zstd", 2)
    assert cfg.store_target_size == 128 << 20 and cfg.ingest_pending_timeout == 60.0
    names = {f.metadata["flag"].name for f in dataclasses.fields(NodeConfig) if "flag" in f.metadata}
    assert {"api", "ingest.fast", "ingest.durable", "ingest.bulk", "store.segment-replication-factor"} <= names


def test_record_size_has_a_ceiling() -> None:
    from oklog.config import _record_size

    assert _record_size("64MiB") == 64 << 20
    for bad in ("65MiB", "0", "-1"):
        with pytest.raises(ConfigError):
            _record_size(bad)


def test_bad_serf_mode_and_counts() -> None:
    from oklog.config import _positive, _serf_mode

    assert (_serf_mode("auto"), _serf_mode("on"), _serf_mode("off")) == (None, True, False)
    assert _positive("3") == 3
    for fn, bad in ((_serf_mode, "yes"), (_positive, "0"), (_positive, "two")):
        with pytest.raises(ConfigError):
            fn(bad)


def test_ingest_topic_is_checked_like_a_record_topic() -> None:
    from oklog.config import _topic

    assert [_topic(t) for t in ("web", "a_b-1", "0")] == ["web", "a_b-1", "0"]
    for bad in ("", "-a", "_a", "a b", "a.b", "a/b", "a\n", "é"):
        with pytest.raises(ConfigError, match="invalid topic"):
            _topic(bad)
