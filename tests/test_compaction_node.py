"""Compaction and retention in real node processes.

A node is SIGKILLed while a compaction job is parked at each of its steps
(``OKLOG_TEST_PAUSE_COMPACTION``) and restarted: every record is queryable
exactly once.  A node fed many small batches ends with a few segment
files that do not overlap.  A node with a 3 s retention ends with no
record and no segment file.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from oklog.segment.name import SegmentName
from oklog.store.compactor import PAUSE_ENV, STEPS
from tests.nodeutil import Node, forward, query, wait_for_records

pytestmark = pytest.mark.slow

ALL = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
BASE = ["-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-ingest.segment-flush-age", "200ms", "-store.segment-target-age", "200ms"]


def segment_names(store: Path, state: str = "flushed") -> list[SegmentName]:
    return sorted(SegmentName.parse(p.name)[0] for p in store.glob(f"*.{state}"))


def wait_for(what: str, check, timeout: float = 40.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f}s")
        time.sleep(0.2)


def batch(k: int, n: int = 200) -> bytes:
    return b"".join(b"batch %d line %04d %s\n" % (k, i, b"q" * 40) for i in range(n))


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_compaction_step_loses_and_doubles_nothing(
        tmp_path: Path, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PAUSE_ENV, step)
    n = Node("ingeststore", tmp_path / "n", extra=BASE)
    n.start()
    try:
        for k in range(3):  # three segments of about one size: a small-merge job
            forward(batch(k), f"127.0.0.1:{n.fast_port}")
            wait_for_records(n.api, 200 * (k + 1))
        wait_for(f"paused at {step}", lambda: f"event=compaction_paused step={step}" in n.log())
        n.kill()  # SIGKILL, parked right after ``step``
    finally:
        n.kill()
    store = tmp_path / "n" / "store"
    if step == "claimed":
        assert list(store.glob("*.reading"))
    monkeypatch.delenv(PAUSE_ENV)
    n2 = Node("ingeststore", tmp_path / "n", extra=BASE)
    n2.start()
    try:
        body = wait_for_records(n2.api, 600)
        assert sorted(line.split(b" ", 2)[2] for line in body.splitlines()) == sorted(
            batch(0).splitlines() + batch(1).splitlines() + batch(2).splitlines())
        assert not list(store.glob("*.reading"))
    finally:
        n2.kill()


def test_many_small_batches_end_in_few_segments_that_do_not_overlap(tmp_path: Path) -> None:
    n = Node("ingeststore", tmp_path / "n", extra=BASE + ["-store.segment-consumers", "2"])
    n.start()
    try:
        sent = 0
        for k in range(12):
            forward(batch(k, 50 + 10 * k), f"127.0.0.1:{n.fast_port}")
            sent += 50 + 10 * k
            time.sleep(0.3)
        body = wait_for_records(n.api, sent)
        store = tmp_path / "n" / "store"

        def settled() -> bool:
            names = segment_names(store)
            return len(names) <= 2 and all(a.hi < b.lo for a, b in zip(names, names[1:]))

        wait_for("compacted into at most two segments", settled, timeout=45)
        assert query(n.api, **ALL).content == body
        assert not list(store.glob("*.reading")) and not list(store.glob("*.active"))
        metrics = httpx.get(f"{n.api}/metrics").text
        assert 'oklog_store_compactions_total{kind="small",outcome="done"}' in metrics
    finally:
        n.kill()


def test_retention_removes_every_record_and_file(tmp_path: Path) -> None:
    n = Node("ingeststore", tmp_path / "n", extra=BASE + [
        "-store.segment-retain", "3s", "-store.segment-purge", "1s"])
    n.start()
    try:
        forward(batch(0), f"127.0.0.1:{n.fast_port}")
        wait_for_records(n.api, 200)
        store = tmp_path / "n" / "store"

        def gone() -> bool:
            files = [p for p in store.iterdir() if p.is_file() and p.name != "LOCK"]
            return not files and query(n.api, **ALL).content == b""

        wait_for("aged out and purged", gone, timeout=30)
        assert "event=segment_trashed" in n.log() and "event=segment_purged" in n.log()
    finally:
        n.kill()
