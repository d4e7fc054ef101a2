"""End-to-end benchmark of one ingeststore node, reported as ratios.

Run it with ``scripts/bench`` (``--quick`` for a smoke run, ``--help`` for
options).  Everything runs on one fresh node in one run, and every number
is set against a baseline measured in the same run.  What it does, in
order (table rows in [brackets]):

1. Generates N access-log lines (combined log format plus a few extra
   fields, ~290 bytes a line like FACTS.md's data set) into a temp file,
   with ~1% ``ERROR ... timeout`` application lines, some ``ERROR`` lines
   without ``timeout`` and some ``timeout`` lines without ``ERROR`` (so the
   regex has to work), and planted rare tokens.  Every query term is
   chosen so it can never occur in a record header (``ULID SP default SP``):
   they contain characters outside the ULID alphabet, so grep's whole-line
   counts must equal oklog's payload-only counts exactly.
2. Ingest baselines, on the same file [raw read, raw TCP send → ...]:
   ``cat FILE > /dev/null``, and a raw TCP send of the file's bytes over
   loopback to a sink that discards them, and to one that writes them to a
   file (the least any ingester must do).  Sender and sink are small
   Python processes doing ``sendall``/``recv_into`` with large buffers:
   kernel-bound, no per-line work.  Timed from connect to the sink closing
   after EOF.
3. Starts a fresh node in a temp dir on free 127.0.0.1 ports, runs
   ``oklog forward`` once with empty stdin (its fixed cost: interpreter start,
   imports, connect, close), then forwards the file.  [oklog forward,
   connect → done] is the forwarder's wall time minus that fixed cost
   (≈ connect → server done); [connect → queryable] is from the same start
   until ``HEAD /store/query`` reports a data set
   (``X-Oklog-Max-Data-Set-Size``: uncompressed record bytes) of exactly
   input + 35 header bytes a line, confirmed by a GET for the tokens
   planted in the first and the very last line.  [node peak RSS] is the
   node's ``VmHWM`` then.  The bench then waits until compaction has
   settled (no ``.reading`` or ``.active`` file and the ``*.flushed`` set
   unchanged for 12 s: the planner's 10 s settle time plus a tick or two)
   and every segment has its sidecar (``NAME.flushed.idx``: block table +
   n-gram index), so that what follows meets an idle, indexed node.
4. [bytes on disk]: every file under the store directory (segments,
   sidecars, anything else) against the input size; [segments only]: the
   ``*.flushed`` files alone.
5. A plain copy of the store's records: ``zstdcat -f`` of every
   ``*.flushed`` file (in name order; ``-f`` passes plain files through)
   into ``records.txt``.  Acceptance check: it must hold exactly the
   expected lines and record bytes.
6. Queries through ``GET /store/query`` over the full range: [rare literal],
   [common literal] ``" 404 `` (the status field of a 404, ~20% of the
   lines: the issue's ``status=404``-like term), [dense literal]
   ``HTTP/1.1`` (~84% of the lines, a huge answer; informational, no
   target), [regex] ``ERROR.*timeout`` and [match everything] (empty ``q``).
   Two clients: [oklog] is a Python ``http.client`` reading the whole body
   with ``readinto`` into one reused 4 MiB buffer and counting it (what the
   target is judged on: the node's time, not the client's file writes,
   which cost ~1 s per GB on this kind of VM); [curl>file] is ``curl -s -o
   FILE``, and its file is the body checked.  [node CPU] is user+sys of the
   node and its scan workers per query.
   Baselines, each with its output captured to a file (grep to /dev/null
   stops at the first match): ``LC_ALL=C grep -F``/``-E`` over
   records.txt (the primary one), ripgrep ``rg -F``/``-e`` over records.txt
   (skipped with a note when ``rg`` is not installed) and ``zstdgrep -h
   -F``/``-E`` over the ``*.flushed`` files; for match everything
   ``cat records.txt`` (in the grep column) and ``zstdcat`` of the segment
   files (in the zstdgrep column), and [like for like] ``cat records.txt``
   read through a pipe by the [oklog] client's own reader: the baseline
   its target is judged on (both sides then hand the same bytes to the
   same reader; ``cat > file`` runs at page-cache speed, 3-9 GB/s here,
   which no answer over loopback TCP approaches: docs/performance.md).
   Counts must agree with grep and with
   the generator, our bodies must be byte-identical to grep's output (in
   ULID order; match everything: to records.txt), and rg's and zstdgrep's
   outputs must equal grep's.  [blocks] is ``X-Oklog-Blocks-Queried`` /
   ``X-Oklog-Blocks-In-Range`` of our last response: blocks decompressed
   and scanned, of those in the time range (the rest the n-gram index
   pruned).
7. [stats only (HEAD)]: ``HEAD /store/query`` against ``GET /readyz`` on the
   same node; its data set size must equal the record bytes stored.
8. [freshness]: one long-lived ``oklog forward`` whose stdin is a pipe kept
   open; 7 times, after a random 0.5-2 s pause, one line holding a new
   unique token (``fresh-`` and lowercase letters) is written and flushed,
   then ``GET /store/query?q=TOKEN`` (a narrow time range) is polled every
   ~20 ms until it returns exactly that one record; median and max seconds
   from the write to that answer.  The forwarder is closed at the end and
   must exit 0.
9. [ingest, idle node] and [ingest while queries run]: two more data sets
   (other seeds, no planted tokens, max(50,000, N/4) lines each) forwarded
   into the same node, the first while it is idle, the second while a
   background thread runs queries in a loop (dense literal and regex in
   turn, full range, whole bodies read).  Each is timed from connect until
   ``HEAD`` shows the data set grew by exactly its record bytes; the ratio
   is the loaded rate / the idle rate, with the queries the loop completed.
10. [compaction: write amplification]: once compaction has settled again,
   the node's counters: segment bytes compaction wrote
   (``oklog_store_compaction_bytes_total{direction="out"}``) / segment
   bytes ``/store/replicate`` wrote (``oklog_store_replicated_bytes_total``),
   both on disk, over the whole run.
11. [restart without sidecars]: every query answered once more (its
   SHA-256 kept), the node stopped, every file of the store directory
   but the ``*.flushed`` segments deleted, the node started again (it
   rebuilds the sidecars): every answer must be the same bytes.  [node
   peak RSS, whole run] is the highest ``VmHWM`` of the node: at the end
   of the run and of the restarted node (target ≤ 200 MiB).

Ratios are "our time / baseline time" (> 1 means slower than the baseline),
except for bytes on disk (/ input size) and the loaded ingest (/ idle rate).
The target column holds the goals of the store-format work (freshness,
bytes on disk, the queries' ratios to grep, HEAD time, loaded / idle
ingest) and of the self-healing work (write amplification); a row that misses its target is marked MISS and listed at the end.
The Go OK Log column comes from FACTS.md (same kind of machine, not this
run): its ingest rate, peak RSS / input, query time / grep's, HEAD time.

Exit status: 0 when every check passed, 1 when the node or a client failed
or a result is wrong, 2 on bad usage, 130 on Ctrl-C.  Never because
something is slow or misses a target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

HEADER_BYTES = 26 + 1 + len("default") + 1  # "ULID SP default SP" before every payload
FULL_RANGE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Planted tokens: lowercase letters and '-' never occur in a ULID or in "default".
RARE_TOKEN = "needle-7f3a9c"
FIRST_TOKEN = "needle-first-2b8e"
LAST_TOKEN = "needle-last-91d0"
RARE_COUNT = 7
# The "common literal" is a term on ~20% of the lines (``status=404``):
# here the access log's status field of a 404, ~20% of the lines.  The quote
# before it keeps it out of the response-size field (which may be 404 too).
COMMON_LITERAL = '" 404 '  # '"' and ' ' are outside the ULID alphabet
COMMON_SHARE = 20  # % of access lines with status 404
# A term on ~84% of the lines (a huge answer), an extra, informational row.
DENSE_LITERAL = "HTTP/1.1"  # '/' and '.' are outside the ULID alphabet
REGEX = "ERROR.*timeout"  # 'O' is outside the ULID alphabet

FRESH_PROBES = 7
FRESH_PAUSE = (0.5, 2.0)  # seconds between probes, uniformly random
FRESH_POLL = 0.02  # seconds between GETs while waiting for a probe
FRESH_TIMEOUT = 30.0  # a probe not queryable by then is a failure

# OK Log (Go) on this kind of machine, from /work/shared/FACTS.md.
GO: dict[str, Any] = {
    "forward_lines_per_s": 181_000,
    "queryable_lines_per_s": 2_000_000 / 13.1,
    "peak_rss_per_input_byte": 1.24e9 / 578e6,
    "query_ratio_to_grep": {"rare literal": 0.215 / 0.25, "common literal": 1.58 / 0.82, "regex": 0.26 / 0.37},
    "head_s": 0.018,
}


@dataclass(frozen=True)
class Goal:
    """A target from the store-format issue: ``value op limit`` must hold."""

    op: str  # "<=" or ">="
    limit: float
    text: str  # as the table prints it

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value <= self.limit if self.op == "<=" else value >= self.limit


GOALS: dict[str, Goal] = {
    "ingest": Goal(">=", 350_000, "≥ 350k/s"),  # lines per second, connect -> last record queryable
    "freshness": Goal("<=", 1.0, "≤ 1.0 s"),  # median seconds
    "node peak RSS": Goal("<=", 200 * 2**20, "≤ 200 MiB"),  # VmHWM over the whole run, restart included
    "bytes on disk": Goal("<=", 0.30, "≤ 0.30x"),  # all store files / input bytes
    "rare literal": Goal("<=", 0.1, "≤ 0.10x"),  # ours / grep
    "common literal": Goal("<=", 1.5, "≤ 1.50x"),
    "regex": Goal("<=", 1.0, "≤ 1.00x"),
    "match everything": Goal("<=", 3.0, "≤ 3.00x"),  # ours / (cat | the same reader): see docs/performance.md
    "stats HEAD": Goal("<=", 0.025, "≤ 25 ms"),  # median seconds
    "ingest under queries": Goal(">=", 0.60, "≥ 60%"),  # loaded rate / idle rate
    "write amplification": Goal("<=", 3.0, "≤ 3.00x"),  # compaction bytes written / bytes replicated
}
#: Seconds without a change to the store's segment files before compaction
#: counts as settled: the planner's settle time (10 s) plus a tick or two.
COMPACTION_QUIET = 12.0


class BenchFailure(Exception):
    """The node or a client failed, or a result is wrong."""


# --- processes ---------------------------------------------------------------


class Procs:
    """Every process we start, so that all of them are stopped on any exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        # Own session: a terminal Ctrl-C reaches only us; we stop the children.
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, args: list[str], timeout: float | None = None, **kw) -> tuple[subprocess.Popen, float]:
        """Run to completion; returns the process and its wall time."""
        t0 = time.perf_counter()
        p = self.start(args, **kw)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(p, grace=0)
            raise BenchFailure(f"{args[0]} did not finish within {timeout:.0f} s") from None
        return p, time.perf_counter() - t0

    def stop(self, p: subprocess.Popen, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal one process by pid, wait ``grace`` seconds, then SIGKILL it."""
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                return None  # did not stop by itself
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            try:
                self.stop(p, grace=5.0)
            except Exception:  # noqa: BLE001 - best effort, keep stopping the rest
                pass


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def proc_status(pid: int, key: str) -> int | None:
    """A kB field of /proc/PID/status (VmHWM, VmRSS) in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def proc_cpu(pid: int) -> float | None:
    """utime + stime of a live process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """utime + stime of a process and all its live descendants (the node and
    its scan workers), in seconds."""
    return (proc_cpu(pid) or 0.0) + sum(tree_cpu(c) for c in children(pid))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def has_event_loop(pid: int) -> bool:
    """Whether the process has an epoll fd open (trio's run loop has started)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]":
                return True
        except OSError:
            continue
    return False


def tool_version(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    return out.splitlines()[0] if out else None


# --- data --------------------------------------------------------------------


@dataclass
class Dataset:
    path: str
    lines: int
    bytes: int
    expected: dict[str, int]  # query name -> number of matching lines
    seconds: float

    @property
    def record_bytes(self) -> int:
        """What the store holds for it: every line with its record header."""
        return self.bytes + HEADER_BYTES * self.lines


_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0",
    "Go-http-client/1.1",
    "python-requests/2.31.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "kube-probe/1.29",
]
_PATHS = [
    "/", "/index.html", "/api/v1/users/{id}", "/api/v1/orders/{id}/items", "/api/v2/search?q=shoes&page={n}",
    "/static/js/app.{hex}.js", "/static/css/main.{hex}.css", "/images/products/{id}.jpg", "/healthz",
    "/cart/checkout", "/login", "/logout", "/account/settings", "/api/v1/payments/{id}/capture",
    "/favicon.ico", "/robots.txt", "/blog/2024/05/{n}/how-we-scaled-our-logging", "/graphql",
]
_REFERERS = ["-", "https://www.example.com/", "https://www.google.com/", "https://shop.example.com/cart",
             "https://www.example.com/blog", "https://t.co/xyz"]
_HOSTS = ["www.example.com", "shop.example.com", "api.example.com", "static.example-cdn.net"]
_SERVICES = ["checkout-api", "payments", "search", "inventory", "auth", "gateway"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def generate(path: Path, n: int, seed: int, plant: bool = True) -> Dataset:
    """Write ``n`` lines; returns the exact expected match count of every query.

    ``plant=False``: no planted tokens (for the extra data sets of the
    ingest-under-load rows, which nothing looks up by token)."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    ips = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
           for _ in range(2000)]
    upstreams = [f"10.0.{rng.randrange(8)}.{rng.randrange(2, 250)}:{rng.choice((8080, 8443, 9000))}"
                 for _ in range(64)]
    rare_at = set(rng.sample(range(1, max(2, n - 1)), min(RARE_COUNT, max(0, n - 2)))) if plant else set()
    expected = {"rare literal": 0, "common literal": 0, "dense literal": 0, "regex": 0, "match everything": n}
    t = int(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    clf_cache: dict[int, str] = {}
    iso_cache: dict[int, str] = {}
    methods = ("GET", "POST", "PUT", "DELETE", "HEAD")
    protos = ("HTTP/1.1", "HTTP/2.0", "HTTP/1.0")
    statuses = (200, 201, 204, 301, 304, 400, 401, 403, 404, 499, 500, 502, 503)
    status_w = (75 - COMMON_SHARE, 3, 2, 2, 8, 2, 2, 1, COMMON_SHARE, 1, 2, 1, 1)  # sum 100
    chunk = 50_000
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            kinds = rng.choices(("access", "err_timeout", "err_other", "warn_timeout"), (98.4, 1.0, 0.3, 0.3), k=k)
            ip = rng.choices(ips, k=k)
            meth = rng.choices(methods, (80, 12, 4, 2, 2), k=k)
            proto = rng.choices(protos, (85, 12, 3), k=k)
            status = rng.choices(statuses, status_w, k=k)
            paths = rng.choices(_PATHS, k=k)
            refs = rng.choices(_REFERERS, k=k)
            uas = rng.choices(_UAS, k=k)
            hosts = rng.choices(_HOSTS, k=k)
            tls = rng.choices(("TLSv1.3", "TLSv1.2", "-"), (70, 25, 5), k=k)
            out = []
            for j in range(k):
                i = start + j
                t += rng.randrange(0, 25)
                sec = t // 1000
                kind = kinds[j]
                if kind == "access" or i == 0 or i == n - 1 or i in rare_at:
                    p = paths[j]
                    if "{" in p:
                        p = p.format(id=rng.randrange(1, 10**6), n=rng.randrange(1, 50), hex=f"{rng.getrandbits(32):08x}")
                    if i in rare_at:
                        p += ("&" if "?" in p else "?") + "trace=" + RARE_TOKEN
                        expected["rare literal"] += 1
                    elif plant and i == 0:
                        p += "?trace=" + FIRST_TOKEN
                    elif plant and i == n - 1:
                        p += "?trace=" + LAST_TOKEN
                    ts = clf_cache.get(sec)
                    if ts is None:
                        d = dt.datetime.fromtimestamp(sec, dt.timezone.utc)
                        ts = f"{d.day:02d}/{_MONTHS[d.month - 1]}/{d.year}:{d:%H:%M:%S} +0000"
                        clf_cache = {sec: ts}
                    if proto[j] == DENSE_LITERAL:
                        expected["dense literal"] += 1
                    if status[j] == 404:
                        expected["common literal"] += 1
                    out.append(
                        f'{ip[j]} - - [{ts}] "{meth[j]} {p} {proto[j]}" {status[j]} {rng.randrange(200, 60000)} '
                        f'"{refs[j]}" "{uas[j]}" rt={rng.randrange(1, 3000) / 1000:.3f} '
                        f"upstream={rng.choice(upstreams)} host={hosts[j]} tls={tls[j]} "
                        f"req_id={rng.getrandbits(64):016x} span={rng.getrandbits(64):016x}\n"
                    )
                    continue
                ts = iso_cache.get(sec)
                if ts is None:
                    ts = dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
                    iso_cache = {sec: ts}
                ts = f"{ts}.{t % 1000:03d}Z"
                svc = rng.choice(_SERVICES)
                up = rng.choice(upstreams)
                rid = f"{rng.getrandbits(64):016x}"
                if kind == "err_timeout":
                    expected["regex"] += 1
                    out.append(f"{ts} ERROR [{svc}] upstream {up} request req_id={rid} failed: "
                               f"read timeout after {rng.choice((5000, 10000, 30000))}ms "
                               f"(attempt {rng.randrange(1, 4)}/3) pool=default conns_active={rng.randrange(1, 512)}\n")
                elif kind == "err_other":
                    out.append(f"{ts} ERROR [{svc}] upstream {up} request req_id={rid} failed: "
                               f"connection refused (attempt {rng.randrange(1, 4)}/3) pool=default\n")
                else:
                    out.append(f"{ts} WARN [{svc}] upstream {up} slow: request req_id={rid} used "
                               f"{rng.randrange(60, 99)}% of its timeout budget pool=default\n")
            f.write("".join(out))
    size = path.stat().st_size
    return Dataset(str(path), n, size, expected, time.perf_counter() - t0)


# --- ingest baselines --------------------------------------------------------

_SINK = r"""
import socket, sys
out = open(sys.argv[1], "wb") if len(sys.argv) > 1 else None
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
c, _ = ls.accept()
buf = bytearray(1 << 20); view = memoryview(buf); total = 0
while True:
    n = c.recv_into(buf)
    if not n:
        break
    total += n
    if out is not None:
        out.write(view[:n])
if out is not None:
    out.close()
c.close()
print(total, flush=True)
"""

_SENDER = r"""
import socket, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
with open(path, "rb", buffering=0) as f:
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    total = 0
    while True:
        data = f.read(256 * 1024)
        if not data:
            break
        s.sendall(data); total += len(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the sink closes once it has read everything
    print(time.perf_counter() - t0, total, flush=True)
"""


def raw_tcp(procs: Procs, path: str, size: int, sink_file: str | None) -> float:
    sink = procs.start([PY, "-c", _SINK] + ([sink_file] if sink_file else []),
                       stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    port = int(sink.stdout.readline())
    sender, _ = procs.run([PY, "-c", _SENDER, str(port), path], stdout=subprocess.PIPE, text=True, timeout=600)
    assert sender.stdout is not None
    secs, sent = sender.stdout.read().split()
    received = int(sink.stdout.readline() or -1)
    sink.wait(timeout=30)
    if sender.returncode or sink.returncode or int(sent) != size or received != size:
        raise BenchFailure(f"raw TCP baseline failed: sent {sent}, received {received} of {size} bytes")
    if sink_file:
        os.unlink(sink_file)
    return float(secs)


def raw_read(procs: Procs, path: str) -> float:
    p, secs = procs.run(["cat", path], stdout=subprocess.DEVNULL, timeout=600)
    if p.returncode:
        raise BenchFailure(f"cat {path} failed with status {p.returncode}")
    return secs


# --- the node ----------------------------------------------------------------


class Node:
    def __init__(self, procs: Procs, workdir: Path, extra: list[str] | None = None) -> None:
        self.procs = procs
        self.extra = [part for flag in (extra or []) for part in flag.split("=", 1)]
        self.dir = workdir
        self.store_dir = workdir / "store"
        self.api, self.fast, self.durable, self.bulk, self.cluster = free_ports(5)
        self.log_path = workdir / "node.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        args = [
            PY, "-m", "oklog", "ingeststore",
            "-store.segment-replication-factor", "1", "-cluster.serf", "off",
            "-api", f"127.0.0.1:{self.api}", "-ingest.fast", f"127.0.0.1:{self.fast}",
            "-ingest.durable", f"127.0.0.1:{self.durable}", "-ingest.bulk", f"127.0.0.1:{self.bulk}",
            "-cluster", f"127.0.0.1:{self.cluster}",
            "-ingest.path", str(self.dir / "ingest"), "-store.path", str(self.store_dir),
            *self.extra,
        ]
        self.logf = open(self.log_path, "wb")
        self.proc = self.procs.start(args, stdout=self.logf, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if self.request("GET", "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchFailure(f"node not ready within {timeout:.0f} s\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchFailure(f"node exited with status {self.proc.returncode}\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "node log (last lines):\n  " + "\n  ".join(lines[-n:])

    def request(self, method: str, path: str, timeout: float = 600) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=timeout)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            body = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, body
        finally:
            conn.close()

    def query_path(self, q: str, regex: bool = False, time_range: dict[str, str] = FULL_RANGE) -> str:
        params = dict(time_range, q=q)
        if regex:
            params["regex"] = "true"
        return "/store/query?" + urllib.parse.urlencode(params)

    def query_to_file(self, q: str, regex: bool, out: Path | None) -> tuple[float, int, int, int, dict[str, str]]:
        """GET a query and read the whole body; (seconds, status, lines, bytes, headers).

        The body is read with ``readinto`` into one reused 4 MiB buffer (no
        allocation per read) and counted; it is saved to ``out`` only when
        given -- writing a file costs the client ~1 s per GB on this kind
        of VM (page-cache allocation), which is the client's work, not the
        node's.  The ``curl`` runs write a file (see ``curl_to_file``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=600)
        try:
            t0 = time.perf_counter()
            conn.request("GET", self.query_path(q, regex))
            r = conn.getresponse()
            f = open(out, "wb") if out is not None else None
            try:
                lines, nbytes = read_counting(r, f)
            finally:
                if f is not None:
                    f.close()
            secs = time.perf_counter() - t0
            return secs, r.status, lines, nbytes, {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()

    def curl_to_file(self, curl: str, q: str, regex: bool, out: Path) -> tuple[float]:
        """``curl -s -o OUT URL``: (seconds,) (a C client writing the body to a file)."""
        url = f"http://127.0.0.1:{self.api}{self.query_path(q, regex)}"
        p, secs = self.procs.run([curl, "-s", "-f", "-o", str(out), url], timeout=3600)
        if p.returncode:
            raise BenchFailure(f"curl {url} failed with status {p.returncode}")
        return (secs,)

    def data_set_size(self) -> int:
        """``X-Oklog-Max-Data-Set-Size`` of the full range: the record bytes stored."""
        status, headers, _ = self.request("HEAD", self.query_path(""), timeout=60)
        if status != 200:
            raise BenchFailure(f"HEAD /store/query answered {status}")
        return int(headers.get("x-oklog-max-data-set-size", "0"))

    def stop(self) -> int | None:
        if self.proc is None:
            return 0
        rc = self.procs.stop(self.proc, grace=30.0)
        self.logf.close()
        return rc

    def store_files(self) -> list[str]:
        """The segment files, by name."""
        return sorted(str(p) for p in self.store_dir.glob("*.flushed"))

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {'name{labels}': value}."""
        status, _, body = self.request("GET", "/metrics", timeout=60)
        if status != 200:
            raise BenchFailure(f"GET /metrics answered {status}")
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

    def unindexed(self) -> list[str]:
        """Segment files without a sidecar (its n-gram index not built yet)."""
        return [f for f in self.store_files() if not os.path.exists(f + ".idx")]

    def disk_usage(self) -> dict[str, int]:
        """Bytes of every file under the store directory, by kind."""
        use = {"segments": 0, "sidecars": 0, "other": 0, "total": 0, "segment_files": 0, "zstd_segments": 0}
        for p in self.store_dir.rglob("*"):
            try:
                if not p.is_file():
                    continue
                size = p.stat().st_size
            except OSError:
                continue  # renamed or removed meanwhile
            kind = "segments" if p.name.endswith(".flushed") else \
                "sidecars" if p.name.endswith(".flushed.idx") else "other"
            use[kind] += size
            use["total"] += size
            if kind == "segments":
                use["segment_files"] += 1
                use["zstd_segments"] += is_zstd(p)
        return use

    def log_errors(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if "level=ERROR" in ln or "Traceback" in ln]


def is_zstd(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZSTD_MAGIC
    except OSError:
        return False


def wait_queryable(node: Node, want: int, stall_timeout: float, poll: float = 0.05) -> int:
    """Poll ``HEAD`` until the data set holds at least ``want`` record bytes;
    returns the size seen then.  Fails when it makes no progress for
    ``stall_timeout`` seconds."""
    last_size, last_change = -1, time.monotonic()
    while True:
        node.check_alive()
        size = node.data_set_size()
        if size >= want:
            return size
        if size != last_size:
            last_size, last_change = size, time.monotonic()
        elif time.monotonic() - last_change > stall_timeout:
            raise BenchFailure(f"store stuck at {size} of {want} bytes for {stall_timeout:.0f} s\n{node.log_tail()}")
        time.sleep(poll)


def wait_compacted(node: Node, timeout: float) -> float | None:
    """Wait until compaction has settled: no job running and the segment
    files unchanged for ``COMPACTION_QUIET`` s; seconds waited (None: timed out)."""
    t0 = time.perf_counter()
    last, since = None, t0
    while True:
        node.check_alive()
        now = time.perf_counter()
        busy = any(node.store_dir.glob("*.reading")) or any(node.store_dir.glob("*.active"))
        state = (tuple(node.store_files()), busy)
        if state != last:
            last, since = state, now
        elif not busy and now - since >= COMPACTION_QUIET:
            return now - t0
        if now - t0 > timeout:
            return None
        time.sleep(0.25)


def compaction_stats(node: Node) -> dict:
    """What compaction did, from the node's counters; write amplification =
    segment bytes compaction wrote / segment bytes replicate uploads wrote."""
    m = node.metrics()
    out = m.get('oklog_store_compaction_bytes_total{direction="out"}', 0.0)
    read = m.get('oklog_store_compaction_bytes_total{direction="in"}', 0.0)
    replicated = m.get("oklog_store_replicated_bytes_total", 0.0)
    jobs = sum(v for k, v in m.items() if k.startswith("oklog_store_compactions_total") and 'outcome="done"' in k)
    failed = sum(v for k, v in m.items() if k.startswith("oklog_store_compactions_total") and 'outcome="failed"' in k)
    return {"jobs": int(jobs), "failed": int(failed), "bytes_read": int(read), "bytes_written": int(out),
            "bytes_replicated": int(replicated), "segment_files": len(node.store_files()),
            "write_amplification": ratio(out, replicated)}


def wait_indexed(node: Node, timeout: float) -> float | None:
    """Wait until every segment has its sidecar; seconds waited (None: timed out)."""
    t0 = time.perf_counter()
    while node.unindexed():
        node.check_alive()
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(0.05)
    return time.perf_counter() - t0


# --- the forwarder -----------------------------------------------------------


def established_to(port: int) -> bool:
    """Whether the kernel shows an established TCP connection to local ``port``."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and fields[1].endswith(want):
                        return True
        except OSError:
            continue
    return False


@dataclass
class ForwardRun:
    start: float  # perf_counter at spawn
    connect: float | None  # first established connection to the fast port (None: not seen)
    done: float  # process exit
    cpu_s: float
    max_rss: int
    lines_sent: int | None

    @property
    def wall(self) -> float:
        return self.done - self.start


def run_forward(procs: Procs, node: Node, stdin_path: str) -> ForwardRun:
    """Run ``oklog forward`` with stdin from a file, noting when it connects.

    The connect moment is when ``/proc/net/tcp`` first shows an established
    connection to the node's fast port (polled every ~0.5 ms), so interpreter
    start-up is not counted; the end is the forwarder's exit, which comes
    after the ingester has read everything and closed its side.
    """
    log = node.dir / "forward.log"
    with open(stdin_path, "rb") as src, open(log, "wb") as errf:
        start = time.perf_counter()
        p = procs.start([PY, "-m", "oklog", "forward", f"127.0.0.1:{node.fast}"],
                        stdin=src, stdout=errf, stderr=subprocess.STDOUT, cwd=ROOT)
        connect = None
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if connect is None and established_to(node.fast):
                connect = time.perf_counter()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.0005)
        done = time.perf_counter()
        p.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if p.returncode != 0:
        raise BenchFailure(f"oklog forward exited with status {p.returncode}:\n{text[-2000:]}")
    return ForwardRun(start, connect, done, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, lines_sent(text))


def lines_sent(forward_log: str) -> int | None:
    """``lines_sent=N`` from the forwarder's final log line."""
    sent = None
    for word in forward_log.split():
        if word.startswith("lines_sent="):
            sent = int(word.split("=", 1)[1])
    return sent


def ingest(procs: Procs, node: Node, data: Dataset, before: int, fwd_fixed: float, stall_timeout: float,
           res: Results, label: str) -> tuple[ForwardRun, float, float]:
    """Forward a data set into a store that holds ``before`` record bytes;
    (the forwarder run, its start time, seconds to queryable).

    The start is the forwarder's connect; queryable is when ``HEAD`` first
    shows the data set grown by exactly the set's record bytes."""
    base = node.data_set_size()
    if base != before:
        res.problem(f"{label}: store held {base} record bytes before, expected {before}")
    fwd = run_forward(procs, node, data.path)
    node.check_alive()
    if fwd.lines_sent != data.lines:
        res.problem(f"{label}: forward sent {fwd.lines_sent} lines, not {data.lines}")
    if fwd.connect is None:
        say("  did not see the forwarder connect (too fast?): subtracting the empty run's wall time instead")
        t0 = fwd.start + fwd_fixed
    else:
        t0 = fwd.connect
    want = base + data.record_bytes
    say(f"  forward done in {fwd.done - t0:.2f} s after connecting; waiting until {fmt_b(want)} are queryable")
    size = wait_queryable(node, want, stall_timeout)
    queryable_s = time.perf_counter() - t0
    if size != want:
        res.problem(f"{label}: store holds {size} bytes, expected exactly {want} (duplicates?)")
    return fwd, t0, queryable_s


# --- freshness ---------------------------------------------------------------


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fresh_token(rng: random.Random) -> str:
    """A token no generated line holds (and no record header: lowercase and '-')."""
    return "fresh-" + "".join(rng.choices(string.ascii_lowercase, k=16))


def probe(node: Node, stdin: Any, line: bytes, token: str) -> tuple[float | None, str | None]:
    """Write one line to the forwarder, then poll until its record is
    returned: (seconds from the write, what went wrong or None)."""
    now = time.time()
    path = node.query_path(token, time_range={"from": rfc3339(now - 60), "to": rfc3339(now + 3600)})
    t0 = time.perf_counter()
    stdin.write(line + b"\n")
    stdin.flush()
    while True:
        t = time.perf_counter()
        status, _, body = node.request("GET", path, timeout=FRESH_TIMEOUT)
        if status != 200:
            return None, f"GET /store/query answered {status}"
        records = body.splitlines()
        if records:
            secs = time.perf_counter() - t0
            if len(records) != 1 or records[0][HEADER_BYTES:] != line:
                return secs, f"{len(records)} records returned, want exactly the one written: {body[:300]!r}"
            return secs, None
        if t - t0 > FRESH_TIMEOUT:
            return None, f"not queryable within {FRESH_TIMEOUT:.0f} s"
        node.check_alive()
        time.sleep(max(0.0, FRESH_POLL - (time.perf_counter() - t)))


def freshness(procs: Procs, node: Node, res: Results) -> dict:
    """Single lines through one long-lived forwarder on a pipe: how soon each is queryable."""
    rng = random.SystemRandom()
    log = node.dir / "forward-fresh.log"
    with open(log, "wb") as errf:
        p = procs.start([PY, "-m", "oklog", "forward", f"127.0.0.1:{node.fast}"],
                        stdin=subprocess.PIPE, stdout=errf, stderr=subprocess.STDOUT, cwd=ROOT)
    assert p.stdin is not None
    deadline = time.monotonic() + 60
    while not has_event_loop(p.pid) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # start-up (interpreter, imports) is not what we measure
    times: list[float] = []
    written: list[bytes] = []
    for i in range(FRESH_PROBES):
        time.sleep(rng.uniform(*FRESH_PAUSE))
        token = fresh_token(rng)
        line = f"bench freshness probe {i + 1} {token}".encode()
        try:
            secs, trouble = probe(node, p.stdin, line, token)
        except BrokenPipeError:
            raise BenchFailure(f"oklog forward (freshness) died:\n{log.read_text(errors='replace')[-2000:]}") from None
        written.append(line)
        if trouble:
            res.problem(f"freshness probe {i + 1} ({token}): {trouble}")
        if secs is None:
            break
        times.append(secs)
    p.stdin.close()
    rc: int | None
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = procs.stop(p)
        res.problem("freshness: oklog forward did not exit within 30 s of its stdin closing")
    text = log.read_text(errors="replace")
    if rc != 0:
        res.problem(f"freshness: oklog forward exited with status {rc}:\n{text[-2000:]}")
    sent = lines_sent(text)
    if sent != len(written):
        res.problem(f"freshness: oklog forward sent {sent} lines, not {len(written)}")
    return {
        "probes": len(written), "probes_s": times,
        "median_s": statistics.median(times) if times else None, "max_s": max(times) if times else None,
        "record_bytes": sum(HEADER_BYTES + len(line) + 1 for line in written),
        "forwarder_exit_status": rc, "lines_sent": sent,
    }


# --- ingest while queries run ------------------------------------------------


class QueryLoop(threading.Thread):
    """Full-range queries in a loop (dense literal and regex in turn, whole
    bodies read) until stopped."""

    def __init__(self, node: Node) -> None:
        super().__init__(name="query-loop", daemon=True)
        self.node = node
        self.halt = threading.Event()
        self.started = 0
        self.completed = 0
        self.body_bytes = 0
        self.error: str | None = None

    def run(self) -> None:
        queries = [(DENSE_LITERAL, False), (REGEX, True)]
        while not self.halt.is_set():
            q, regex = queries[self.started % 2]
            self.started += 1
            try:
                _, status, _, nbytes, _ = self.node.query_to_file(q, regex, None)
            except Exception as exc:  # noqa: BLE001 - reported by the caller
                self.error = repr(exc)
                return
            if status != 200:
                self.error = f"/store/query answered {status}"
                return
            self.completed += 1
            self.body_bytes += nbytes

    def stop(self) -> tuple[int, int]:
        """Stop after the query in flight; (started, completed) before this call."""
        counts = self.started, self.completed
        self.halt.set()
        self.join()
        return counts


# --- query baselines ---------------------------------------------------------

QUERIES = [  # (name, q, regex)
    ("rare literal", RARE_TOKEN, False),
    ("common literal", COMMON_LITERAL, False),
    ("dense literal", DENSE_LITERAL, False),  # informational: no target
    ("regex", REGEX, True),
    ("match everything", "", False),
]
BASELINES = ("grep", "rg", "zstdgrep")  # the columns; match everything: cat, -, zstdcat


def copy_records(procs: Procs, files: list[str], out: Path) -> float:
    """``zstdcat -f FILES > out`` (plain files pass through); its seconds."""
    with open(out, "wb") as f:
        p, secs = procs.run(["zstdcat", "-f", "--", *files], stdout=f, timeout=3600)
    if p.returncode:
        raise BenchFailure(f"zstdcat -f over the store's segment files failed with status {p.returncode}")
    return secs


def baseline_commands(q: str, regex: bool, records: Path, files: list[str],
                      rg: str | None, zstd: bool) -> dict[str, list[str] | None]:
    """Each baseline column's command for one query (None: skipped)."""
    if q == "":  # match everything
        return {"grep": ["cat", str(records)], "rg": None,
                "zstdgrep": ["zstdcat", "-f", "--", *files]}
    mode = "-E" if regex else "-F"
    return {
        "grep": ["grep", "-h", mode, "-e", q, "--", str(records)],
        "rg": None if rg is None else [rg, "--no-config", "--no-filename", "--no-line-number",
                                       *([] if regex else ["-F"]), "-e", q, "--", str(records)],
        # zstdgrep takes everything after "-e PATTERN" as files: no "--"
        "zstdgrep": ["zstdgrep", "-h", mode, "-e", q, *files] if zstd else None,
    }


def shown(argv: list[str], files: list[str]) -> str:
    """A command as the JSON shows it, the segment files as one word."""
    out = [a for a in argv if a not in files]
    if len(out) < len(argv):
        out.append(f"<{len(files)} segment files>")
    return " ".join(out)


def run_to_file(procs: Procs, argv: list[str], out: Path) -> tuple[float, int, int]:
    """(seconds, lines, bytes) of ``LC_ALL=C argv > out``; status 1 (no match) is fine."""
    env = dict(os.environ, LC_ALL="C")
    with open(out, "wb") as f:
        p, secs = procs.run(argv, stdout=f, env=env, timeout=3600)
    if p.returncode not in (0, 1):
        raise BenchFailure(f"{' '.join(argv[:4])} ... failed with status {p.returncode}")
    return secs, count_lines(out), out.stat().st_size


def read_counting(source: Any, out: Any = None) -> tuple[int, int]:
    """Read ``source`` (anything with ``readinto``) to its end into one
    reused 4 MiB buffer; (lines, bytes).  The one reader of both our
    answers and the like-for-like baseline (``read_pipe``), so that both
    sides pay the same client work."""
    lines = nbytes = 0
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    while n := source.readinto(buf):
        lines += buf.count(b"\n", 0, n)
        nbytes += n
        if out is not None:
            out.write(view[:n])
    return lines, nbytes


def read_pipe(procs: Procs, argv: list[str]) -> tuple[float, int, int]:
    """(seconds, lines, bytes) of ``argv``'s output read through a pipe by
    ``read_counting``: a baseline that hands its bytes to the same client
    as our answers (for match everything: ``cat records.txt | reader``)."""
    t0 = time.perf_counter()
    p = procs.start(argv, stdout=subprocess.PIPE, env=dict(os.environ, LC_ALL="C"))
    assert p.stdout is not None
    with p.stdout:
        lines, nbytes = read_counting(p.stdout)
    if p.wait(timeout=3600):
        raise BenchFailure(f"{' '.join(argv[:4])} ... failed with status {p.returncode}")
    return time.perf_counter() - t0, lines, nbytes


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            n += chunk.count(b"\n")
    return n


def same_records(ours: Path, grep: Path) -> str:
    """'identical', or a description of how the bodies differ."""
    if filecmp.cmp(ours, grep, shallow=False):
        return "identical"
    a = ours.read_bytes().splitlines()
    b = grep.read_bytes().splitlines()
    if a == sorted(b):
        return "identical"  # grep read overlapping segments out of ULID order; same records
    sa, sb = set(a), set(b)
    if sa == sb:
        return "same records, different order" if len(a) == len(b) else "same records, duplicates differ"
    return f"different records: {len(sa - sb)} only in ours, {len(sb - sa)} only in grep's"


def header_int(headers: dict[str, str], name: str) -> int | None:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return None


# --- helpers -----------------------------------------------------------------


def fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def fmt_b(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_r(r: float | None) -> str:
    return "-" if r is None else (f"{r:.1f}x" if r >= 10 else f"{r:.2f}x")


def fmt_pct(r: float | None) -> str:
    return "-" if r is None else f"{r * 100:.0f}%"


def lines_s(rate: float | None) -> str:
    return "-" if rate is None else f"{rate / 1e3:>7.0f}k lines/s"


def timed_runs(fn: Callable[[], Any], repeat: int) -> tuple[float, float, list[float], Any]:
    """Run ``fn`` (returning (seconds, ...)) ``repeat`` times: median, min, all, last result."""
    times: list[float] = []
    last: Any = None
    for _ in range(repeat):
        last = fn()
        times.append(last[0])
    return statistics.median(times), min(times), times, last


# --- the benchmark -----------------------------------------------------------


@dataclass
class Results:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def problem(self, msg: str) -> None:
        self.ok = False
        self.problems.append(msg)
        print(f"PROBLEM: {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        say(f"note: {msg}")


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def bench(args: argparse.Namespace, procs: Procs, work: Path, res: Results) -> None:
    d = res.data
    rg = shutil.which("rg")
    d["machine"] = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "grep": tool_version(["grep", "--version"]), "rg": rg and tool_version([rg, "--version"]),
        "zstd": tool_version(["zstd", "--version"]),
    }
    d["config"] = {"lines": args.lines, "seed": args.seed, "repeat": args.repeat, "quick": args.quick,
                   "node_flags": args.node_flag}
    for tool in ("zstdcat", "zstdgrep"):
        if shutil.which(tool) is None:
            raise BenchFailure(f"{tool} is not installed (Debian/Ubuntu: apt-get install zstd)")
    if rg is None:
        res.note("rg (ripgrep) is not installed: the rg column is skipped")

    say(f"generating {args.lines:,} lines")
    data = generate(work / "input.log", args.lines, args.seed)
    d["input"] = asdict(data) | {"path": None, "record_bytes": data.record_bytes}
    say(f"  {fmt_b(data.bytes)} in {data.seconds:.1f} s; expected matches {data.expected}")

    node = Node(procs, work, args.node_flag)
    fwd_fixed = measure_ingest(args, procs, node, data, res)
    stored = data.record_bytes  # record bytes the store holds from here on
    say(f"waiting for compaction to settle (segment files unchanged for {COMPACTION_QUIET:.0f} s)")
    settle_s = wait_compacted(node, args.stall_timeout)
    if settle_s is None:
        res.note(f"compaction still busy after {args.stall_timeout:.0f} s")
    d["compaction"] = {"settle_after_ingest_s": settle_s, "after_ingest": compaction_stats(node)}
    say(f"  {d['compaction']['after_ingest']['jobs']} jobs; {d['compaction']['after_ingest']['segment_files']} "
        f"segment files")

    files, records = measure_store(args, procs, node, data, res)
    measure_queries(args, procs, node, data, files, records, rg, res)
    records.unlink(missing_ok=True)
    measure_head(args, node, stored, res)

    say(f"freshness: {FRESH_PROBES} single lines through one open forwarder, idle node")
    d["freshness"] = fresh = freshness(procs, node, res)
    stored += fresh["record_bytes"]
    say(f"  median {fmt_s(fresh['median_s'])}, max {fmt_s(fresh['max_s'])}")

    measure_ingest_under_queries(args, procs, node, work, stored, fwd_fixed, res)

    d["ingest"]["node_rss"]["peak_hwm_end"] = proc_status(node.pid, "VmHWM")
    say("waiting for compaction to settle")
    if wait_compacted(node, args.stall_timeout) is None:
        res.note(f"compaction still busy after {args.stall_timeout:.0f} s")
    d["compaction"]["end"] = end = compaction_stats(node)
    say(f"  {end['jobs']} jobs, {fmt_b(end['bytes_written'])} written for {fmt_b(end['bytes_replicated'])} "
        f"replicated: write amplification {fmt_r(end['write_amplification'])}; {end['segment_files']} segment files")
    node.check_alive()
    errors = node.log_errors()
    d["node_log_errors"] = errors[:20]
    digests = answer_digests(node, res)  # what the restart without sidecars must answer
    say("stopping node")
    rc = node.stop()
    if rc is None:
        res.problem("node did not stop within 30 s of SIGTERM (killed)")
    elif rc != 0:
        res.problem(f"node exited with status {rc} on SIGTERM\n{node.log_tail()}")
    if errors:
        res.note(f"node log has {len(errors)} ERROR/Traceback lines (see node_log_errors in the JSON)")
    restart_without_sidecars(node, digests, res)


def answer_digests(node: Node, res: Results) -> dict[str, str]:
    """Each query's answer (SHA-256), as the node answers now."""
    digests = {}
    out = node.dir / "answer.out"
    for q in res.data.get("queries", []):
        node.query_to_file(q["q"], q["regex"], out)
        digests[q["name"]] = file_sha256(out)
    out.unlink(missing_ok=True)
    return digests


def restart_without_sidecars(node: Node, digests: dict[str, str], res: Results) -> None:
    """The acceptance check of the storage engine: every file of the store
    directory but the segments deleted, the node restarted (it rebuilds the
    sidecars), and every query must answer the same bytes as before.  The
    restarted node's peak RSS counts in the whole-run peak."""
    say("restart without sidecars: deleting every non-segment file of the store, restarting")
    removed = 0
    for p in node.store_dir.iterdir():
        if not p.name.endswith(".flushed"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed += 1
    t0 = time.perf_counter()
    node.start()
    same: dict[str, bool] = {}
    out = node.dir / "restart.out"
    for q in res.data.get("queries", []):
        node.query_to_file(q["q"], q["regex"], out)
        same[q["name"]] = file_sha256(out) == digests.get(q["name"])
    out.unlink(missing_ok=True)
    hwm = proc_status(node.pid, "VmHWM")
    res.data["restart_without_sidecars"] = {"files_removed": removed, "same_answers": same,
                                           "queries_done_s": time.perf_counter() - t0, "peak_hwm": hwm}
    for name, ok in same.items():
        if not ok:
            res.problem(f"restart without sidecars: {name} answers differently than before")
    rss = res.data["ingest"]["node_rss"]
    rss["peak_hwm_run"] = max(rss.get("peak_hwm_end") or 0, hwm or 0)
    say(f"  {removed} files removed; every answer the same: {all(same.values())}; peak RSS {fmt_b(hwm)}")
    if node.stop() != 0:
        res.problem(f"the restarted node did not stop cleanly\n{node.log_tail()}")


def measure_ingest(args: argparse.Namespace, procs: Procs, node: Node, data: Dataset, res: Results) -> float:
    """Ingest baselines, then the main ingest into a fresh node; returns the
    forwarder's fixed cost (an empty run's wall time)."""
    work = node.dir
    say("ingest baselines: cat, raw TCP (discard / write to file)")
    read_s = statistics.median(raw_read(procs, data.path) for _ in range(3))
    tcp_s = statistics.median(raw_tcp(procs, data.path, data.bytes, None) for _ in range(3))
    tcp_file_s = statistics.median(raw_tcp(procs, data.path, data.bytes, str(work / "sink.out")) for _ in range(3))

    say(f"starting node (api 127.0.0.1:{node.api}, data {work})")
    node.start()
    idle_hwm = proc_status(node.pid, "VmHWM")
    empty = work / "empty"
    empty.write_bytes(b"")
    empty_runs = [run_forward(procs, node, str(empty)) for _ in range(3)]
    fwd_fixed = statistics.median(r.wall for r in empty_runs)
    cpu0 = proc_cpu(node.pid)

    say("forwarding")
    fwd, t0, queryable_s = ingest(procs, node, data, 0, fwd_fixed, args.stall_timeout, res, "ingest")
    cpu1 = proc_cpu(node.pid)
    peak_hwm = proc_status(node.pid, "VmHWM")
    for token in (FIRST_TOKEN, LAST_TOKEN):
        st, _, body = node.request("GET", node.query_path(token))
        hits = body.count(b"\n")
        if st != 200 or hits != 1:
            res.problem(f"first/last planted token {token!r}: status {st}, {hits} lines (want 1)")

    fwd_s = fwd.done - t0
    res.data["ingest"] = {
        "baseline": {"raw_read_s": read_s, "raw_tcp_discard_s": tcp_s, "raw_tcp_to_file_s": tcp_file_s},
        "forward_s": fwd_s,
        "queryable_s": queryable_s,
        "forward_lines_per_s": data.lines / fwd_s,
        "forward_mb_per_s": data.bytes / fwd_s / 1e6,
        "queryable_lines_per_s": data.lines / queryable_s,
        "forward_process": {"wall_s": fwd.wall, "start_to_connect_s": None if fwd.connect is None else fwd.connect - fwd.start,
                            "empty_run_wall_s": fwd_fixed, "cpu_s": fwd.cpu_s, "max_rss": fwd.max_rss,
                            "lines_sent": fwd.lines_sent},
        "node_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "node_rss": {"idle_hwm": idle_hwm, "peak_hwm_after_ingest": peak_hwm,
                     "peak_per_input_byte": ratio(peak_hwm, data.bytes), "children": len(children(node.pid))},
        "ratios": {
            "forward_vs_raw_tcp_to_file": ratio(fwd_s, tcp_file_s),
            "forward_vs_raw_tcp_discard": ratio(fwd_s, tcp_s),
            "forward_vs_raw_read": ratio(fwd_s, read_s),
            "queryable_vs_raw_tcp_to_file": ratio(queryable_s, tcp_file_s),
            "queryable_vs_raw_tcp_discard": ratio(queryable_s, tcp_s),
            "go_forward_time_ratio": GO["forward_lines_per_s"] / (data.lines / fwd_s),
            "go_queryable_time_ratio": GO["queryable_lines_per_s"] / (data.lines / queryable_s),
        },
    }
    say(f"  queryable {queryable_s:.2f} s after connecting; node peak RSS {fmt_b(peak_hwm)}")
    return fwd_fixed


def measure_store(args: argparse.Namespace, procs: Procs, node: Node, data: Dataset,
                  res: Results) -> tuple[list[str], Path]:
    """Bytes on disk once every segment is indexed, and the plain copy of the
    records (the acceptance check); returns the segment files and the copy."""
    say("waiting until every segment has its sidecar (n-gram index)")
    index_s = wait_indexed(node, args.stall_timeout)
    if index_s is None:
        res.note(f"segments still without a sidecar after {args.stall_timeout:.0f} s: {node.unindexed()}")
    use = node.disk_usage()
    files = node.store_files()
    names = [Path(f).name.split(".")[0] for f in files]  # FROM-TO: the queries meet these
    use["segment_names"] = names
    use["overlapping_segments"] = sum(
        1 for a, b in zip(names, names[1:]) if b.split("-")[0] <= a.split("-")[1])
    say(f"  {use['segment_files']} segments ({use['zstd_segments']} zstd, "
        f"{use['overlapping_segments']} overlapping the one before), {fmt_b(use['segments'])}; "
        f"sidecars {fmt_b(use['sidecars'])}; all store files {fmt_b(use['total'])}")

    records = node.dir / "records.txt"
    say("plain copy of the records: zstdcat -f over the segment files")
    copy_s = copy_records(procs, files, records)
    lines, size = count_lines(records), records.stat().st_size
    copy_ok = lines == data.lines and size == data.record_bytes
    if not copy_ok:
        res.problem(f"acceptance: zstdcat over the store's .flushed files yields {lines} lines, {size} bytes; "
                    f"want every record: {data.lines} lines, {data.record_bytes} bytes")
    res.data["store"] = use | {
        "index_wait_s": index_s,
        "expected_record_bytes": data.record_bytes,
        "total_per_input": ratio(use["total"], data.bytes),
        "segments_per_input": ratio(use["segments"], data.bytes),
        "records_copy": {"seconds": copy_s, "lines": lines, "bytes": size, "every_record": copy_ok},
    }
    return files, records


def measure_queries(args: argparse.Namespace, procs: Procs, node: Node, data: Dataset, files: list[str],
                    records: Path, rg: str | None, res: Results) -> None:
    work = node.dir
    zstd = res.data["store"]["zstd_segments"] == len(files)
    if not zstd:
        res.note("not every segment is zstd-compressed: the zstdgrep column is skipped")
    res.data["queries"] = []
    for name, q, regex in QUERIES:
        say(f"query {name}: {q!r} (x{args.repeat}, and the baselines)")
        commands = baseline_commands(q, regex, records, files, rg, zstd)
        entry: dict[str, Any] = {"name": name, "q": q, "regex": regex, "expected_count": data.expected[name]}
        outs: dict[str, Path] = {}
        # the baselines first, then ours: all see the same warm page cache
        for col, argv in commands.items():
            if argv is None:
                entry[col] = None
                continue
            outs[col] = work / f"{col}.out"
            entry[col] = time_baseline(procs, argv, outs[col], files, args.repeat)
        ours_out = work / "ours.out"
        cpu0 = tree_cpu(node.pid)
        o_med, o_min, o_all, (_, status, o_lines, o_bytes, headers) = timed_runs(
            lambda: node.query_to_file(q, regex, None), args.repeat)
        node_cpu = (tree_cpu(node.pid) - cpu0) / args.repeat  # per query: robust on a busy machine
        node.check_alive()
        curl = shutil.which("curl")
        if curl:  # a C client writing the body to a file; its file is the one checked
            c_med, c_min, c_all, _ = timed_runs(lambda: node.curl_to_file(curl, q, regex, ours_out), args.repeat)
            entry["curl"] = {"median_s": c_med, "min_s": c_min, "runs_s": c_all,
                             "ratio_to_grep": ratio(c_med, entry["grep"]["median_s"])}
        else:
            entry["curl"] = None
            node.query_to_file(q, regex, ours_out)  # untimed: the body to check
        if ours_out.stat().st_size != o_bytes:
            res.problem(f"{name}: the saved body has {ours_out.stat().st_size} bytes, the timed reads {o_bytes}")
        entry["ours"] = {"median_s": o_med, "min_s": o_min, "runs_s": o_all, "status": status,
                         "count": o_lines, "bytes": o_bytes, "node_cpu_s": node_cpu,
                         "record_mb_per_s": data.record_bytes / o_med / 1e6,
                         "blocks_queried": header_int(headers, "x-oklog-blocks-queried"),
                         "blocks_in_range": header_int(headers, "x-oklog-blocks-in-range")}
        check_query(entry, ours_out, records if q == "" else outs["grep"], outs, res)
        entry["ratio_to"] = {col: ratio(o_med, entry[col] and entry[col]["median_s"]) for col in BASELINES}
        entry["ratio_to_grep"] = entry["ratio_to"]["grep"]  # match everything: to cat
        if q == "":  # like for like: cat's bytes through a pipe into our client's reader
            p_med, p_min, p_all, (_, p_lines, p_bytes) = timed_runs(
                lambda: read_pipe(procs, commands["grep"]), args.repeat)
            if (p_lines, p_bytes) != (o_lines, o_bytes):
                res.problem(f"{name}: cat | reader read {p_lines} lines, {p_bytes} bytes; we answered "
                            f"{o_lines}, {o_bytes}")
            entry["cat_pipe"] = {"command": shown(commands["grep"], files) + " | reader", "median_s": p_med,
                                 "min_s": p_min, "runs_s": p_all, "ratio": ratio(o_med, p_med)}
        entry["go_ratio_to_grep"] = GO["query_ratio_to_grep"].get(name)
        res.data["queries"].append(entry)
        for p in (ours_out, *outs.values()):
            p.unlink(missing_ok=True)


def time_baseline(procs: Procs, argv: list[str], out: Path, files: list[str], repeat: int) -> dict:
    med, mn, runs, (_, lines, nbytes) = timed_runs(lambda: run_to_file(procs, argv, out), repeat)
    return {"command": shown(argv, files), "median_s": med, "min_s": mn, "runs_s": runs,
            "count": lines, "bytes": nbytes}


def check_query(entry: dict, ours: Path, reference: Path, outs: dict[str, Path], res: Results) -> None:
    """Our answer against the generator's count and the reference output
    (grep's, or records.txt for match everything); the other baselines'
    outputs against grep's."""
    name, o, g = entry["name"], entry["ours"], entry["grep"]
    want = entry["expected_count"]
    if o["status"] != 200:
        res.problem(f"{name}: /store/query answered {o['status']}")
    if not (o["count"] == g["count"] == want):
        res.problem(f"{name}: counts disagree: oklog {o['count']}, {g['command'].split()[0]} {g['count']}, "
                    f"generated {want}")
    entry["content"] = same_records(ours, reference) if o["status"] == 200 else f"status {o['status']}"
    if entry["content"] != "identical":
        res.problem(f"{name}: bodies differ from {reference.name}: {entry['content']}")
    entry["counts_agree"] = o["status"] == 200 and o["count"] == g["count"] == want
    for col in ("rg", "zstdgrep"):
        if col in outs and not filecmp.cmp(outs[col], outs["grep"], shallow=False):
            res.problem(f"{name}: the {col} baseline's output differs from grep's "
                        f"({entry[col]['count']} lines, grep {g['count']})")


def measure_head(args: argparse.Namespace, node: Node, stored: int, res: Results) -> None:
    say("stats-only HEAD vs GET /readyz")
    n = max(10, args.repeat * 5)

    def timed(method: str, path: str) -> tuple[float, int, dict]:
        t = time.perf_counter()
        st, h, _ = node.request(method, path)
        return time.perf_counter() - t, st, h

    ready_med, ready_min, _, _ = timed_runs(lambda: timed("GET", "/readyz"), n)
    head_med, head_min, _, (_, st, h) = timed_runs(lambda: timed("HEAD", node.query_path(REGEX, True)), n)
    size = header_int(h, "x-oklog-max-data-set-size")
    if st != 200 or size != stored:
        res.problem(f"HEAD: status {st}, data set size {size} != {stored} record bytes stored")
    res.data["stats_head"] = {
        "median_s": head_med, "min_s": head_min, "readyz_median_s": ready_med,
        "ratio_to_readyz": ratio(head_med, ready_med), "go_head_s": GO["head_s"],
        "max_data_set_size": size, "expected_record_bytes": stored,
        "segments_queried": header_int(h, "x-oklog-segments-queried"),
        "blocks_queried": header_int(h, "x-oklog-blocks-queried"),
        "blocks_in_range": header_int(h, "x-oklog-blocks-in-range"),
    }


def measure_ingest_under_queries(args: argparse.Namespace, procs: Procs, node: Node, work: Path, stored: int,
                                 fwd_fixed: float, res: Results) -> None:
    """Two more data sets: one ingested into the idle node, one while a query loop runs."""
    n = max(50_000, args.lines // 4)
    say(f"ingest while queries run: generating two more data sets of {n:,} lines")
    sets = [generate(work / f"more-{k}.log", n, args.seed + 1000 + k, plant=False) for k in (1, 2)]
    runs: dict[str, dict] = {}
    for label, data in zip(("idle", "loaded"), sets):
        if wait_indexed(node, args.stall_timeout) is None:
            res.note(f"ingest {label}: segments still without a sidecar before it: {node.unindexed()}")
        loop = QueryLoop(node) if label == "loaded" else None
        if loop is not None:
            loop.start()
            time.sleep(0.2)  # the first query is under way
        say(f"  forwarding {fmt_b(data.bytes)}, {label}")
        try:
            fwd, t0, secs = ingest(procs, node, data, stored, fwd_fixed, args.stall_timeout, res, f"ingest {label}")
        finally:
            counts = loop.stop() if loop is not None else (0, 0)
        stored += data.record_bytes
        runs[label] = {"lines": data.lines, "bytes": data.bytes, "queryable_s": secs, "lines_per_s": data.lines / secs,
                       "forward_s": fwd.done - t0}
        if loop is not None:
            runs[label] |= {"queries_started": counts[0], "queries_completed": counts[1],
                            "query_body_bytes": loop.body_bytes, "query_error": loop.error}
            if loop.error:
                res.problem(f"query loop during the loaded ingest failed: {loop.error}")
        say(f"  {label}: {secs:.2f} s, {data.lines / secs / 1e3:.0f}k lines/s")
        Path(data.path).unlink(missing_ok=True)
    res.data["ingest_under_queries"] = runs | {
        "loaded_per_idle": ratio(runs["loaded"]["lines_per_s"], runs["idle"]["lines_per_s"]),
        "forward_loaded_per_idle": ratio(runs["idle"]["forward_s"], runs["loaded"]["forward_s"]),
    }


def check_goals(d: dict) -> None:
    """The target of every row that has one, the value measured, and whether it was met."""
    queries = {q["name"]: q for q in d.get("queries", [])}
    values = {
        "ingest": d.get("ingest", {}).get("queryable_lines_per_s"),
        "freshness": d.get("freshness", {}).get("median_s"),
        "node peak RSS": d.get("ingest", {}).get("node_rss", {}).get("peak_hwm_run"),
        "bytes on disk": d.get("store", {}).get("total_per_input"),
        **{name: q["ratio_to_grep"] for name, q in queries.items()},
        # like for like: cat's bytes read by our client's reader (cat > file: reported, see docs)
        "match everything": (queries.get("match everything", {}).get("cat_pipe") or {}).get("ratio"),
        "stats HEAD": d.get("stats_head", {}).get("median_s"),
        "ingest under queries": d.get("ingest_under_queries", {}).get("loaded_per_idle"),
        "write amplification": d.get("compaction", {}).get("end", {}).get("write_amplification"),
    }
    d["targets"] = {key: {"target": g.text, "value": values.get(key), "met": g.met(values.get(key))}
                    for key, g in GOALS.items()}


def missed(d: dict) -> list[str]:
    return [key for key, t in d.get("targets", {}).items() if t["met"] is False]


# --- the table ---------------------------------------------------------------


def _row(label: str = "", time: str = "", rate: str = "", ratio: str = "", base: str = "",
         go: str = "", target: str = "") -> str:
    return f"{label:38} {time:>9} {rate:>14}  {ratio:>7} {base:<15} {go:>12}  {target}".rstrip()


def _target(d: dict, key: str) -> str:
    t = d.get("targets", {}).get(key)
    if t is None:
        return ""
    return t["target"] + ("  MISS" if t["met"] is False else "")


def table(d: dict) -> str:
    rows: list[str] = []
    inp, st = d["input"], d["store"]
    rows.append(f"oklog bench: {inp['lines']:,} lines, {fmt_b(inp['bytes'])} input; store {st['segment_files']} "
                f"segments ({st['zstd_segments']} zstd), {fmt_b(st['total'])} on disk; {d['machine']['cpus']} CPUs")
    rows += ingest_rows(d)
    rows += store_rows(d)
    rows += query_rows(d)
    rows.append("")
    rows.append("ratio = our time / the baseline's time in this run (> 1: slower than the baseline); bytes on disk:")
    rows.append("/ input size; ingest while queries run: / the idle rate.  Go OK Log = the original's numbers from")
    rows.append("FACTS.md (same kind of machine, not this run): its rate, its RSS / input, its query time / grep's,")
    rows.append("its HEAD time.  MISS: the row misses its target (slow is never a failure).")
    miss = missed(d)
    rows.append(f"targets missed: {', '.join(miss)}" if miss else "every target met")
    return "\n".join(rows)


def ingest_rows(d: dict) -> list[str]:
    inp, ing = d["input"], d["ingest"]
    b, r = ing["baseline"], ing["ratios"]
    mbs = lambda secs: f"{inp['bytes'] / secs / 1e6:>9.0f} MB/s"  # noqa: E731
    rss, fp = ing["node_rss"], ing["forward_process"]
    rows = [
        "",
        _row("ingest", "time", "rate", "ratio", "baseline", "Go OK Log", "target"),
        _row("  raw read (cat > /dev/null)", fmt_s(b["raw_read_s"]), mbs(b["raw_read_s"])),
        _row("  raw TCP send → discarding sink", fmt_s(b["raw_tcp_discard_s"]), mbs(b["raw_tcp_discard_s"])),
        _row("  raw TCP send → sink writing file", fmt_s(b["raw_tcp_to_file_s"]), mbs(b["raw_tcp_to_file_s"])),
        _row("  oklog forward, connect → done", fmt_s(ing["forward_s"]), lines_s(ing["forward_lines_per_s"]),
             fmt_r(r["forward_vs_raw_tcp_to_file"]), "TCP → file", lines_s(GO["forward_lines_per_s"]).strip()),
        _row("", "", f"{ing['forward_mb_per_s']:>9.0f} MB/s", fmt_r(r["forward_vs_raw_tcp_discard"]), "TCP → discard"),
        _row("  oklog forward, connect → queryable", fmt_s(ing["queryable_s"]), lines_s(ing["queryable_lines_per_s"]),
             fmt_r(r["queryable_vs_raw_tcp_to_file"]), "TCP → file", lines_s(GO["queryable_lines_per_s"]).strip(),
             _target(d, "ingest")),
        _row("  node peak RSS (VmHWM)", fmt_b(rss["peak_hwm_after_ingest"]), "",
             fmt_r(rss["peak_per_input_byte"]), "input size", fmt_r(GO["peak_rss_per_input_byte"])),
        _row("  node peak RSS, whole run", fmt_b(rss.get("peak_hwm_run")), "", "", "restart incl.", "",
             _target(d, "node peak RSS")),
        f"  (forwarder start-up before connecting, {fmt_s(fp['start_to_connect_s'])}, not counted;"
        f" CPU: node {ing['node_cpu_s']:.1f} s, forwarder {fp['cpu_s']:.1f} s)",
    ]
    load = d.get("ingest_under_queries")
    if load:
        idle, loaded = load["idle"], load["loaded"]
        rows += [
            _row(f"  ingest {idle['lines']:,} more lines, idle node", fmt_s(idle["queryable_s"]),
                 lines_s(idle["lines_per_s"])),
            _row(f"  ingest {loaded['lines']:,} more, queries running", fmt_s(loaded["queryable_s"]),
                 lines_s(loaded["lines_per_s"]), fmt_pct(load["loaded_per_idle"]), "of idle rate", "",
                 _target(d, "ingest under queries")),
            f"  (other data sets, each connect → queryable; connect → done: {fmt_s(idle['forward_s'])} idle,"
            f" {fmt_s(loaded['forward_s'])} loaded; meanwhile",
            f"   a loop ran {loaded['queries_started']} full-range queries ({loaded['queries_completed']} finished),"
            f" dense literal / regex in turn)",
        ]
    return rows


def store_rows(d: dict) -> list[str]:
    st = d["store"]
    rows = [
        "",
        _row("freshness, storage, stats", "time/size", "", "ratio", "baseline", "Go OK Log", "target"),
    ]
    fr = d.get("freshness")
    if fr:
        rows.append(_row(f"  freshness: line → queryable (x{len(fr['probes_s'])})", fmt_s(fr["median_s"]),
                         f"max {fmt_s(fr['max_s'])}", "", "median, idle", "", _target(d, "freshness")))
    rows += [
        _row("  bytes on disk (all store files)", fmt_b(st["total"]), "", fmt_r(st["total_per_input"]),
             "input size", "", _target(d, "bytes on disk")),
        _row("  segments only (*.flushed)", fmt_b(st["segments"]), "", fmt_r(st["segments_per_input"]), "input size"),
    ]
    h = d.get("stats_head")
    if h:
        rows.append(_row("  stats only (HEAD /store/query)", fmt_s(h["median_s"]), "", fmt_r(h["ratio_to_readyz"]),
                         "GET /readyz", fmt_s(GO["head_s"]), _target(d, "stats HEAD")))
    comp = d.get("compaction", {}).get("end")
    if comp:
        rows.append(_row("  compaction: write amplification", fmt_b(comp["bytes_written"]), f"{comp['jobs']} jobs",
                         fmt_r(comp["write_amplification"]), "replicated", "", _target(d, "write amplification")))
        rows.append(f"  (compaction wrote {fmt_b(comp['bytes_written'])} and read {fmt_b(comp['bytes_read'])} for "
                    f"{fmt_b(comp['bytes_replicated'])} of uploaded segments; {comp['segment_files']} segment files "
                    f"at the end; {comp['failed']} failed jobs)")
    copy = st["records_copy"]
    rows.append(f"  (zstdcat over the .flushed files: {copy['lines']:,} lines, {fmt_b(copy['bytes'])}: "
                f"{'every record' if copy['every_record'] else 'NOT every record'}; "
                f"indexes written {fmt_s(st['index_wait_s'])} after queryable)")
    rs = d.get("restart_without_sidecars")
    if rs:
        same = all(rs["same_answers"].values())
        rows.append(f"  (restart without sidecars: {rs['files_removed']} non-segment files deleted, node restarted: "
                    f"{'every answer the same' if same else 'ANSWERS DIFFER'}, in {fmt_s(rs['queries_done_s'])}; "
                    f"its peak RSS {fmt_b(rs['peak_hwm'])})")
    return rows


def query_rows(d: dict) -> list[str]:
    qs = d["queries"]
    secs = lambda q, col: fmt_s(q[col]["median_s"]) if q.get(col) else "-"  # noqa: E731
    rows = [
        "",
        f"{'query (client reads whole body)':36} {'oklog':>9} {'curl>file':>9} {'grep':>9} {'rg':>9} {'zstdgrep':>9} "
        f"{'hits':>10} {'blocks read':>12} {'node CPU':>9}",
    ]
    for q in qs:
        o = q["ours"]
        blocks = f"{o['blocks_queried']}/{o['blocks_in_range']}"
        rows.append(f"  {q['name'] + ' ' + repr(q['q']):34} {fmt_s(o['median_s']):>9} {secs(q, 'curl'):>9} "
                    f"{secs(q, 'grep'):>9} {secs(q, 'rg'):>9} {secs(q, 'zstdgrep'):>9} {o['count']:>10,} {blocks:>12} "
                    f"{fmt_s(o.get('node_cpu_s')):>9}")
    rows += [
        "",
        f"{'query ratios (oklog / baseline)':36} {'/ grep':>9} {'/ rg':>9} {'/ zstdgrep':>10} {'curl / grep':>11}  "
        f"{'check':<9} {'Go OK Log':>9}  target",
    ]
    for q in qs:
        rt = q["ratio_to"]
        check = "ok" if q["counts_agree"] and q["content"] == "identical" else "MISMATCH"
        curl_r = fmt_r(q["curl"]["ratio_to_grep"]) if q.get("curl") else "-"
        rows.append(f"  {q['name']:34} {fmt_r(rt['grep']):>9} {fmt_r(rt['rg']):>9} {fmt_r(rt['zstdgrep']):>10} "
                    f"{curl_r:>11}  {check:<9} {fmt_r(q['go_ratio_to_grep']):>9}  "
                    f"{'(below)' if q.get('cat_pipe') else _target(d, q['name'])}".rstrip())
    for q in qs:
        if q.get("cat_pipe"):
            cp = q["cat_pipe"]
            rows.append(f"  {q['name'] + ', like for like':34} {fmt_r(cp['ratio']):>9} {'':>9} {'':>10} {'':>11}  "
                        f"{'':<9} {'':>9}  {_target(d, q['name'])}".rstrip())
    rows.append("  (oklog: a Python client reading the body into a reused buffer; curl>file: `curl -s -o FILE`,")
    rows.append("   whose file is the body checked against grep's output; baselines write their output to a file;")
    rows.append("   match everything: the grep column is `cat records.txt`, zstdgrep's is zstdcat of the segments;")
    rows.append("   like for like: / `cat records.txt` read through a pipe by the oklog column's own reader,")
    rows.append("   the baseline the target is judged on: see docs/performance.md;")
    rows.append("   dense literal: informational, no target; blocks read = X-Oklog-Blocks-Queried /")
    rows.append("   X-Oklog-Blocks-In-Range of our response; node CPU: user+sys of the node and its scan")
    rows.append("   workers per query, which a busy machine disturbs less than wall time)")
    if not any(q.get("rg") for q in qs):
        rows.append("  (rg is not installed: its column is skipped)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=None, help="lines to generate (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200,000 lines, 2 repeats")
    ap.add_argument("--repeat", type=int, default=None, help="runs per query (median reported; default 3)")
    ap.add_argument("--seed", type=int, default=1, help="data generator seed")
    ap.add_argument("--output", default="bench-results/latest.json", help="JSON results file")
    ap.add_argument("--tmpdir", default=None, help="where the temp work dir goes (needs ~7x the input size)")
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir (input, node data, logs)")
    ap.add_argument("--node-flag", action="append", default=[], metavar="FLAG",
                    help="extra flag for the node, e.g. --node-flag=-store.scan-workers=0 (repeatable)")
    ap.add_argument("--stall-timeout", type=float, default=120.0,
                    help="fail when the store makes no progress for this many seconds")
    args = ap.parse_args(argv)
    if args.lines is None:
        args.lines = 200_000 if args.quick else 1_000_000
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    if args.lines < 10 or args.repeat < 1:
        ap.error("--lines must be >= 10 and --repeat >= 1")

    def on_signal(signum, frame):  # SIGTERM/SIGHUP behave like Ctrl-C: clean up, exit
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    procs = Procs()
    work = Path(tempfile.mkdtemp(prefix="oklog-bench-", dir=args.tmpdir))
    res = Results()
    started = time.time()
    try:
        bench(args, procs, work, res)
    except BenchFailure as e:
        res.problem(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    check_goals(res.data)
    res.data["ok"] = res.ok
    res.data["problems"] = res.problems
    res.data["notes"] = res.notes
    res.data["started"] = dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat()
    res.data["duration_s"] = time.time() - started
    out = Path(args.output)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res.data, indent=2) + "\n")
    if "queries" in res.data and "stats_head" in res.data:
        print(table(res.data))
    for note in res.notes:
        print(f"note: {note.splitlines()[0]}")
    print(f"\n{'OK' if res.ok else 'FAILED: ' + '; '.join(p.splitlines()[0] for p in res.problems)}"
          f" — results in {out}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
