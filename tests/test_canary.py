"""oklog canary: the IO-free book, the whole canary against a fake ingester
and store in-process, and the command against real nodes."""

from __future__ import annotations

import io
import math
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from oklog.canary import CanaryConfig, CanaryMetrics, answer_pattern, canary_line, parse_answer, run_canary
from oklog.canarybook import CanaryBook, percentile
from oklog.errors import ConfigError
from oklog.ulid import Stamper
from tests.nodeutil import ROOT, Node, free_port, oklog_cmd


def ulid(n: int) -> bytes:
    """A fake ULID that sorts as n."""
    return b"%026d" % n


# --- the book -------------------------------------------------------------------------


def test_all_seen_in_order() -> None:
    book = CanaryBook(max_wait=5)
    seqs = book.send(3, now=100.0)
    assert list(seqs) == [0, 1, 2]
    lat = book.observe([(ulid(i), i) for i in seqs], now=101.5)
    assert lat == [1.5, 1.5, 1.5]
    assert book.settled() and book.ok()
    assert (book.stats.seen, book.stats.duplicates, book.stats.out_of_order) == (3, 0, 0)
    book._check()


def test_missing_after_max_wait_then_late() -> None:
    book = CanaryBook(max_wait=5)
    book.send(2, now=100.0)
    book.observe([(ulid(1), 1)], now=101.0)
    assert book.expire(104.9) == []
    assert book.expire(105.0) == [0]
    assert book.lost == 1 and book.stats.missing == 1 and not book.ok() and book.settled()
    # it shows up after all: late, no longer lost; its latency counts from its send
    assert book.observe([(ulid(0), 0), (ulid(1), 1)], now=107.0) == [7.0]
    assert book.lost == 0 and book.stats.late == 1 and book.stats.missing == 1 and book.ok()
    book._check()


def test_duplicates_other_ulid_and_same_ulid_in_one_answer() -> None:
    book = CanaryBook(max_wait=5)
    book.send(2, now=100.0)
    book.observe([(ulid(10), 0), (ulid(11), 1)], now=101.0)
    book.observe([(ulid(10), 0), (ulid(11), 1)], now=102.0)  # the same records again: nothing
    assert book.stats.duplicates == 0
    book.observe([(ulid(10), 0), (ulid(11), 1), (ulid(12), 1)], now=103.0)  # line 1 stored twice
    assert book.stats.duplicates == 1 and not book.ok()
    book.observe([(ulid(10), 0), (ulid(10), 0)], now=104.0)  # the query did not de-duplicate
    assert book.stats.duplicates == 2
    assert book.stats.seen == 2
    book._check()


def test_out_of_order() -> None:
    book = CanaryBook(max_wait=5)
    book.send(4, now=100.0)
    # ULID order: seq 0, 2, 1, 3 -> seq 1 comes after a higher one
    book.observe([(ulid(1), 0), (ulid(2), 2), (ulid(3), 1), (ulid(4), 3)], now=101.0)
    assert book.stats.out_of_order == 1
    book._check()
    # a successor inserted later with a lower seq than its predecessor
    book2 = CanaryBook(max_wait=5)
    book2.send(3, now=100.0)
    book2.observe([(ulid(5), 2)], now=101.0)
    book2.observe([(ulid(1), 0), (ulid(9), 1)], now=101.0)
    assert book2.stats.out_of_order == 1
    book2._check()


def test_foreign_sequence_numbers_are_not_ours() -> None:
    book = CanaryBook(max_wait=5)
    book.send(1, now=100.0)
    book.observe([(ulid(1), 7), (ulid(2), -1)], now=101.0)
    assert book.stats.foreign == 2 and book.stats.seen == 0


def test_unconfirmed_lines_that_go_missing_are_counted_apart() -> None:
    book = CanaryBook(max_wait=5)
    book.send(4, now=100.0)
    book.observe([(ulid(0), 0)], now=100.5)
    assert book.unconfirmed(range(0, 4)) == 3  # 0 was seen already
    book.observe([(ulid(1), 1)], now=101.0)
    book.expire(106.0)
    assert book.stats.missing == 2 and book.stats.missing_unconfirmed == 2 and book.stats.unconfirmed == 3
    book._check()


def test_unconfirmed_then_late_is_not_lost() -> None:
    book = CanaryBook(max_wait=5)
    book.send(2, now=100.0)
    book.unconfirmed(range(0, 2))
    book.expire(105.0)
    assert book.lost == 2 and book.lost_unconfirmed == 2
    book.observe([(ulid(1), 1)], now=106.0)
    assert book.lost == 1 and book.lost_unconfirmed == 1 and book.stats.missing_unconfirmed == 2
    book._check()


def test_a_forgotten_line_that_turns_up_again_is_a_duplicate() -> None:
    book = CanaryBook(max_wait=5, skew=1)
    book.send(1, now=100.0)
    book.observe([(ulid(1), 0)], now=101.0)
    book.send(1, now=195.0)
    book.observe([(ulid(40), 1)], now=196.0)
    book.expire(200.0)  # the window moved on: line 0 is forgotten
    assert 0 not in book._seen
    book.observe([(ulid(50), 0)], now=200.5)  # its ULID is in the window: a new copy
    book.observe([(ulid(50), 0)], now=201.0)  # the same copy again: counted once
    assert book.stats.duplicates == 1
    book._check()


def test_window_follows_the_oldest_pending_line_and_memory_is_bounded() -> None:
    book = CanaryBook(max_wait=30, skew=10)
    assert book.window(1000.0) == (990.0, 1010.0)
    t = 1000.0
    for i in range(2000):  # 200 s of lines, each seen one second after its write
        book.send(1, t)
        book.observe([(ulid(i), i)], t + 1)
        t += 0.1
        book.expire(t + 1)
    lo, hi = book.window(t)
    assert t - 11 <= lo <= t and hi == t + 10
    assert len(book._seen) < 1000 and len(book._by_ulid) < 1000  # forgotten as time passed
    book.send(1, t)
    assert book.window(t + 20)[0] == t - 10  # a pending line holds the window open
    book._check()


def test_percentile() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([1.0], 99) == 1.0
    assert percentile([float(i) for i in range(1, 101)], 50) == 50.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "see", "dup", "expire", "break"]),
                          st.integers(0, 30), st.floats(0, 3)), max_size=60))
def test_book_against_a_model(ops: list[tuple[str, int, float]]) -> None:
    """Random runs: the book's counts equal a plain model's, and its
    invariants hold after every step."""
    book = CanaryBook(max_wait=5, skew=1)
    now = 1000.0
    sent: dict[int, float] = {}
    first_seen: dict[int, float] = {}
    copies: dict[int, int] = {}
    declared: set[int] = set()
    u = 0
    for op, n, dt in ops:
        now += dt
        if op == "send":
            for seq in book.send(n % 5, now):
                sent[seq] = now
        elif op in ("see", "dup") and sent:
            seq = sorted(sent)[n % len(sent)]
            if op == "dup" and seq not in first_seen:
                continue
            u += 1
            book.observe([(b"%026d" % u, seq)], now)
            if seq not in first_seen:
                first_seen[seq] = now
            else:
                copies[seq] = copies.get(seq, 1) + 1
        elif op == "expire":
            book.expire(now)
            declared |= {s for s, t in sent.items() if t + 5 <= now and s not in first_seen}
        elif op == "break":
            book.unconfirmed(range(0, book.next_seq))
        book._check()
    assert book.stats.sent == len(sent)
    assert book.stats.seen == len(first_seen)
    assert book.stats.duplicates == sum(c - 1 for c in copies.values())
    assert book.lost == len(declared - set(first_seen))
    assert book.stats.late == len(declared & set(first_seen))
    assert book.pending == len(set(sent) - set(first_seen) - declared)


# --- the whole canary, in-process, against fakes ------------------------------------------


class FakeCluster:
    """A line port that stores what it reads (stamped), and a store API
    (an httpx transport) that answers queries from them.

    ``drop``: sequence numbers never stored; ``twice``: stored twice;
    ``break_after``: close the first connection after that many lines
    and keep none of them (a crashed ingester)."""

    def __init__(self, drop: set[int] = frozenset(), twice: set[int] = frozenset(),  # type: ignore[assignment]
                 break_after: int | None = None) -> None:
        self.drop = drop
        self.twice = twice
        self.break_after = break_after
        self.records: list[bytes] = []
        self.stamper = Stamper()
        self.connections = 0
        self.port = 0
        self.queries: list[httpx.URL] = []

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        crash = self.connections == 1 and self.break_after is not None
        buf = b""
        got = 0
        async with stream:
            while data := await stream.receive_some(65536):
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    got += 1
                    if crash:
                        continue
                    seq = int(re.search(rb"seq=(\d+)", line).group(1))  # type: ignore[union-attr]
                    if seq in self.drop:
                        continue
                    for _ in range(2 if seq in self.twice else 1):
                        self.records.append(self.stamper.one() + b" default " + line + b"\n")
                if crash and got >= self.break_after:  # type: ignore[operator]
                    return

    def transport(self) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            self.queries.append(request.url)
            q = request.url.params["q"].encode()
            return httpx.Response(200, content=b"".join(r for r in self.records if q in r))
        return httpx.MockTransport(answer)


def run_fake(cluster: FakeCluster, **cfg_args: object) -> tuple[CanaryBook, str, CanaryMetrics]:
    err = io.StringIO()
    metrics = CanaryMetrics()
    result: list[CanaryBook] = []

    async def main() -> None:
        with trio.fail_after(60):
            await serve_and_run()

    async def serve_and_run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster.serve)
            args: dict[str, object] = {"max_wait": 3.0, **cfg_args}  # generous: the box may be loaded
            cfg = CanaryConfig(ingest=f"127.0.0.1:{cluster.port}", store="127.0.0.1:1",
                               query_interval=0.05, report_interval=0.2, **args)  # type: ignore[arg-type]
            result.append(await run_canary(cfg, err=err, metrics=metrics, transport=cluster.transport()))
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result[0], err.getvalue(), metrics


def metric(metrics: CanaryMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_canary_against_fakes_all_good() -> None:
    cluster = FakeCluster()
    book, err, metrics = run_fake(cluster, rate=100, duration=1.0)
    assert book.ok(), err
    assert book.stats.sent == 100 and book.stats.seen == 100
    assert "canary summary:" in err and " OK after" in err and "missing 0" in err
    assert "canary run=" in err and "sent=" in err  # status lines
    assert metric(metrics, "oklog_canary_sent_total") == 100
    assert metric(metrics, "oklog_canary_seen_total") == 100
    assert metric(metrics, "oklog_canary_latency_seconds_count") == 100
    assert metric(metrics, "oklog_canary_missing_total") == 0
    # every query asked for this run's marker within a bounded window
    url = cluster.queries[-1]
    assert url.params["q"] == f"run={book_run(err)} seq="
    assert url.params["from"] < url.params["to"]


def book_run(err: str) -> str:
    m = re.search(r"run=([0-9a-f]+)", err)
    assert m
    return m.group(1)


def test_canary_reports_missing_and_duplicated_lines() -> None:
    cluster = FakeCluster(drop={5, 6}, twice={9})
    book, err, metrics = run_fake(cluster, rate=50, duration=0.5, max_wait=1.0)
    assert not book.ok()
    assert book.lost == 2 and book.stats.duplicates == 1
    assert "FAIL" in err and "missing 2" in err and "duplicates 1" in err
    assert metric(metrics, "oklog_canary_missing_total") == 2
    assert metric(metrics, "oklog_canary_duplicates_total") == 1
    assert book.stats.missing_unconfirmed == 0


def test_canary_reconnects_and_blames_the_broken_connection() -> None:
    cluster = FakeCluster(break_after=10)
    book, err, metrics = run_fake(cluster, rate=100, duration=1.0)
    assert cluster.connections >= 2
    assert not book.ok()
    assert book.lost >= 10 and book.stats.missing_unconfirmed == book.lost
    assert book.lost_unconfirmed == book.lost
    assert f"missing {book.lost} ({book.lost} of them written to a connection that broke" in err
    assert metric(metrics, "oklog_canary_reconnects_total") >= 1
    assert book.stats.seen > 0 and book.stats.seen + book.lost == book.stats.sent


def test_a_write_that_never_completes_breaks_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingester that accepts and never reads: the write times out, its
    lines are unconfirmed, the writer moves on (a -duration run still ends)."""
    from oklog import canary

    class Stuck:
        async def send_all(self, data: bytes) -> None:
            await trio.sleep_forever()

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(canary, "_SEND_TIMEOUT", 0.05)
    cfg = CanaryConfig(ingest="127.0.0.1:1", store="127.0.0.1:1")
    book = CanaryBook(max_wait=5)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            writer = canary._Writer(cfg, book, CanaryMetrics(), nursery, time.time)
            writer.conn = canary._Conn(Stuck(), 0)  # type: ignore[arg-type]
            await writer._write(5)
            assert writer.conn is None and "timed out" in writer.last_error
            assert writer.reconnects == 1

    trio.run(main)
    assert book.stats.sent == 5 and book.stats.unconfirmed == 5


def test_canary_line_and_answer_parsing() -> None:
    cfg = CanaryConfig(ingest="x", store="y", run_id="abc", topic="canary-t")
    line = canary_line(cfg, 42, 123)
    assert line == b"canary-t oklog-canary run=abc seq=42 ts=123\n"
    body = (b"01ARZ3NDEKTSV4RRFFQ69G5FAV default " + line
            + b"01ARZ3NDEKTSV4RRFFQ69G5FAW default oklog-canary run=abcd seq=1 ts=1\n"
            + b"garbage run=abc seq=7 ts=1\n")
    assert parse_answer(body, answer_pattern("abc")) == [(b"01ARZ3NDEKTSV4RRFFQ69G5FAV", 42)]


@pytest.mark.parametrize("change, message", [
    ({"rate": 0}, "-rate"), ({"rate": float("nan")}, "-rate"), ({"duration": 0}, "-duration"),
    ({"max_wait": 0}, "-max-wait"), ({"topic": "bad topic"}, "-topic"), ({"ingest": "h:99999"}, "port"),
    ({"store": "ftp://x"}, "scheme"), ({"metrics_addr": "h:x"}, "port"),
])
def test_config_errors(change: dict[str, object], message: str) -> None:
    cfg = CanaryConfig(ingest="127.0.0.1:7651", store="127.0.0.1:7650")
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(ConfigError, match=message):
        cfg.check()


def test_cli_rejects_bad_flags() -> None:
    r = subprocess.run(oklog_cmd("canary", "-duration", "5"), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "-duration" in r.stderr and "unit" in r.stderr


# --- real nodes ------------------------------------------------------------------------------


def canary_cmd(node: Node, *extra: str) -> list[str]:
    return oklog_cmd("canary", "-ingest", f"127.0.0.1:{node.fast_port}", "-store", node.api,
                     "-report-interval", "2s", *extra)


@pytest.mark.slow
def test_canary_against_a_real_node(tmp_path: Path) -> None:
    """Two canaries at once (their run ids keep them apart), one scraped;
    then a third without -duration, ended by SIGINT with its summary."""
    node = Node("ingeststore", tmp_path / "n", extra=["-store.segment-replication-factor", "1"]).start()
    metrics_port = free_port()
    try:
        procs = [subprocess.Popen(canary_cmd(node, "-rate", "200", "-duration", "5s",
                                             "-metrics-addr", f"127.0.0.1:{metrics_port}"),
                                  cwd=ROOT, stderr=subprocess.PIPE, text=True),
                 subprocess.Popen(canary_cmd(node, "-rate", "50", "-duration", "4s"),
                                  cwd=ROOT, stderr=subprocess.PIPE, text=True)]
        scraped = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "oklog_canary_seen_total" not in scraped:
            time.sleep(0.5)
            try:
                scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            except httpx.HTTPError:
                pass
        errs = [p.communicate(timeout=90)[1] for p in procs]

        endless = subprocess.Popen(canary_cmd(node, "-rate", "20"), cwd=ROOT, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        endless.send_signal(signal.SIGINT)
        endless_err = endless.communicate(timeout=60)[1]
    finally:
        node.kill()
    for proc, err in zip(procs, errs):
        assert proc.returncode == 0, err
        assert "missing 0 " in err and "duplicates 0" in err
        m = re.search(r"latency: p50 ([0-9.]+)s, p99 ([0-9.]+)s", err)
        assert m and 0 < float(m.group(1)) <= float(m.group(2)) < 30, err
    assert re.search(r"sent 1000, seen 1000", errs[0]), errs[0]
    assert re.search(r"sent 200, seen 200", errs[1]), errs[1]
    assert "oklog_canary_latency_seconds_bucket" in scraped
    assert endless.returncode == 0, endless_err
    assert "interrupted" in endless_err and "canary summary:" in endless_err and "missing 0 " in endless_err


@pytest.mark.slow
def test_canary_fails_when_the_node_dies(tmp_path: Path) -> None:
    node = Node("ingeststore", tmp_path / "n", extra=["-store.segment-replication-factor", "1"]).start()
    try:
        proc = subprocess.Popen(canary_cmd(node, "-rate", "100", "-duration", "6s", "-max-wait", "3s"),
                                cwd=ROOT, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        node.kill()  # SIGKILL mid-run: what it had not consumed is not queryable any more
        _out, err = proc.communicate(timeout=90)
    finally:
        node.kill()
    assert proc.returncode == 1, err
    m = re.search(r"missing (\d+) \(\d+ of them written", err)
    assert m and int(m.group(1)) > 0, err
    assert "FAIL" in err and "reconnects" in err


@pytest.mark.slow
def test_canary_with_a_topic_on_a_dynamic_topic_node(tmp_path: Path) -> None:
    """-topic T: every line starts with T, which a dynamic-topic ingester
    takes as the record's topic; the checks query that topic."""
    node = Node("ingeststore", tmp_path / "n", extra=[
        "-store.segment-replication-factor", "1", "-ingest.topic-mode", "dynamic"]).start()
    try:
        proc = subprocess.run(canary_cmd(node, "-topic", "canary", "-rate", "100", "-duration", "3s"),
                              cwd=ROOT, capture_output=True, text=True, timeout=90)
        body = httpx.get(f"{node.api}/store/query", params={"from": "1h", "to": "now", "topic": "canary"},
                         timeout=30).content
    finally:
        node.kill()
    assert proc.returncode == 0, proc.stderr
    assert "missing 0" in proc.stderr or "missing=0" in proc.stderr, proc.stderr
    records = body.split(b"\n")[:-1]
    assert len(records) >= 250 and all(r.split(b" ")[1] == b"canary" for r in records)
    assert all(r.split(b" ", 2)[2].startswith(b"oklog-canary run=") for r in records)
