"""End-to-end benchmark of one ingeststore node, reported as ratios.

Run it with ``scripts/bench`` (``--quick`` for a smoke run, ``--help`` for
options).  What it does, in order:

1. Generates N access-log lines (combined log format plus a few extra
   fields, ~290 bytes a line like FACTS.md's data set) into a temp file,
   with ~1% ``ERROR ... timeout`` application lines, some ``ERROR`` lines
   without ``timeout`` and some ``timeout`` lines without ``ERROR`` (so the
   regex has to work), and planted rare tokens.  Every query term is
   chosen so it can never occur in a record header (``ULID SP default SP``):
   they contain characters outside the ULID alphabet, so grep's whole-line
   counts must equal oklog's payload-only counts exactly.
2. Ingest baselines, on the same file: ``cat FILE > /dev/null`` (raw read),
   and a raw TCP send of the file's bytes over loopback to a sink that
   discards them, and to one that writes them to a file (the least any
   ingester must do).  Sender and sink are small Python processes doing
   ``sendall``/``recv_into`` with large buffers: kernel-bound, no per-line
   work.  Timed from connect to the sink closing after EOF.
3. Starts a fresh node in a temp dir on free 127.0.0.1 ports, runs
   ``oklog forward`` once with empty stdin (its fixed cost: interpreter start,
   imports, connect, close), then forwards the file.  "forward" is the
   forwarder's wall time minus that fixed cost (≈ connect → server done);
   "queryable" is from the same start until ``HEAD /store/query`` reports a
   data set of exactly the expected size (input + 35 header bytes a line),
   confirmed by a GET for the token planted in the very last line.  Peak
   RSS is the node's ``VmHWM``.
4. Queries through ``GET /store/query`` (the client reads and saves the
   whole body): rare literal, common literal, regex ``ERROR.*timeout``;
   baseline ``LC_ALL=C grep -h -F``/``-E`` over the same ``*.flushed``
   files with output captured to a file (grep to /dev/null stops at the
   first match).  Counts must agree with grep and with the generator, and
   the bodies must be byte-identical to grep's output (in ULID order).
   ``HEAD`` (stats only) is compared with ``GET /readyz`` on the same node.

Ratios are "our time / baseline time" (> 1 means slower than the baseline).
The Go OK Log column comes from FACTS.md (same kind of machine, not this
run): its ingest rate, peak RSS / input, query time / grep's, HEAD time.

Exit status: 0 when every check passed, 1 when the node or a client failed
or a result is wrong, 2 on bad usage, 130 on Ctrl-C.  Never because
something is slow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

HEADER_BYTES = 26 + 1 + len("default") + 1  # "ULID SP default SP" before every payload
FULL_RANGE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}

# Planted tokens: lowercase letters and '-' never occur in a ULID or in "default".
RARE_TOKEN = "needle-7f3a9c"
FIRST_TOKEN = "needle-first-2b8e"
LAST_TOKEN = "needle-last-91d0"
RARE_COUNT = 7
COMMON_LITERAL = "HTTP/1.1"  # '/' and '.' are outside the ULID alphabet
REGEX = "ERROR.*timeout"  # 'O' is outside the ULID alphabet

# OK Log (Go) on this kind of machine, from /work/shared/FACTS.md.
GO: dict[str, Any] = {
    "forward_lines_per_s": 181_000,
    "queryable_lines_per_s": 2_000_000 / 13.1,
    "peak_rss_per_input_byte": 1.24e9 / 578e6,
    "query_ratio_to_grep": {"rare literal": 0.215 / 0.25, "common literal": 1.58 / 0.82, "regex": 0.26 / 0.37},
    "head_s": 0.018,
}


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


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# --- data --------------------------------------------------------------------


@dataclass
class Dataset:
    path: str
    lines: int
    bytes: int
    expected: dict[str, int]  # query name -> number of matching lines
    seconds: float


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


def generate(path: Path, n: int, seed: int) -> Dataset:
    """Write ``n`` lines; returns the exact expected match count of every query."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    ips = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
           for _ in range(2000)]
    upstreams = [f"10.0.{rng.randrange(8)}.{rng.randrange(2, 250)}:{rng.choice((8080, 8443, 9000))}"
                 for _ in range(64)]
    rare_at = set(rng.sample(range(1, max(2, n - 1)), min(RARE_COUNT, max(0, n - 2))))
    expected = {"rare literal": 0, "common literal": 0, "regex": 0}
    t = int(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    clf_cache: dict[int, str] = {}
    iso_cache: dict[int, str] = {}
    methods = ("GET", "POST", "PUT", "DELETE", "HEAD")
    protos = ("HTTP/1.1", "HTTP/2.0", "HTTP/1.0")
    statuses = (200, 201, 204, 301, 304, 400, 401, 403, 404, 499, 500, 502, 503)
    status_w = (70, 3, 2, 2, 8, 2, 2, 1, 5, 1, 2, 1, 1)
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
                    elif i == 0:
                        p += "?trace=" + FIRST_TOKEN
                    elif i == n - 1:
                        p += "?trace=" + LAST_TOKEN
                    ts = clf_cache.get(sec)
                    if ts is None:
                        d = dt.datetime.fromtimestamp(sec, dt.timezone.utc)
                        ts = f"{d.day:02d}/{_MONTHS[d.month - 1]}/{d.year}:{d:%H:%M:%S} +0000"
                        clf_cache = {sec: ts}
                    if proto[j] == COMMON_LITERAL:
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
    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.dir = workdir
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
            "-ingest.path", str(self.dir / "ingest"), "-store.path", str(self.dir / "store"),
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

    def query_path(self, q: str, regex: bool = False) -> str:
        params = dict(FULL_RANGE, q=q)
        if regex:
            params["regex"] = "true"
        return "/store/query?" + urllib.parse.urlencode(params)

    def query_to_file(self, q: str, regex: bool, out: Path) -> tuple[float, int, int, int]:
        """GET a query, saving the whole body; (seconds, status, lines, bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=600)
        lines = nbytes = 0
        try:
            t0 = time.perf_counter()
            conn.request("GET", self.query_path(q, regex))
            r = conn.getresponse()
            with open(out, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    lines += chunk.count(b"\n")
                    nbytes += len(chunk)
            secs = time.perf_counter() - t0
            return secs, r.status, lines, nbytes
        finally:
            conn.close()

    def stop(self) -> int | None:
        if self.proc is None:
            return 0
        rc = self.procs.stop(self.proc, grace=30.0)
        self.logf.close()
        return rc

    def store_files(self) -> list[str]:
        return sorted(str(p) for p in (self.dir / "store").glob("*.flushed"))

    def log_errors(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if "level=ERROR" in ln or "Traceback" in ln]


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
    sent = None
    for word in text.split():
        if word.startswith("lines_sent="):
            sent = int(word.split("=", 1)[1])
    return ForwardRun(start, connect, done, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, sent)


# --- grep --------------------------------------------------------------------


def grep_to_file(procs: Procs, q: str, regex: bool, files: list[str], out: Path) -> tuple[float, int, int]:
    """(seconds, lines, bytes) of ``LC_ALL=C grep -h -F|-E q FILES > out``."""
    env = dict(os.environ, LC_ALL="C")
    with open(out, "wb") as f:
        p, secs = procs.run(["grep", "-h", "-E" if regex else "-F", "-e", q, "--", *files],
                            stdout=f, env=env, timeout=3600)
    if p.returncode not in (0, 1):
        raise BenchFailure(f"grep failed with status {p.returncode}")
    return secs, count_lines(out), out.stat().st_size


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
    data: dict = field(default_factory=dict)

    def problem(self, msg: str) -> None:
        self.ok = False
        self.problems.append(msg)
        print(f"PROBLEM: {msg}", file=sys.stderr, flush=True)


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def bench(args: argparse.Namespace, procs: Procs, work: Path, res: Results) -> None:
    d = res.data
    d["machine"] = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "grep": subprocess.run(["grep", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
    }
    d["config"] = {"lines": args.lines, "seed": args.seed, "repeat": args.repeat, "quick": args.quick}

    say(f"generating {args.lines:,} lines")
    data = generate(work / "input.log", args.lines, args.seed)
    d["input"] = asdict(data) | {"path": None}
    say(f"  {fmt_b(data.bytes)} in {data.seconds:.1f} s; expected matches {data.expected}")

    # -- ingest baselines
    say("ingest baselines: cat, raw TCP (discard / write to file)")
    read_s = statistics.median(raw_read(procs, data.path) for _ in range(3))
    tcp_s = statistics.median(raw_tcp(procs, data.path, data.bytes, None) for _ in range(3))
    tcp_file_s = statistics.median(raw_tcp(procs, data.path, data.bytes, str(work / "sink.out")) for _ in range(3))

    # -- ingest
    node = Node(procs, work)
    say(f"starting node (api 127.0.0.1:{node.api}, data {work})")
    node.start()
    idle_hwm = proc_status(node.pid, "VmHWM")
    empty = work / "empty"
    empty.write_bytes(b"")
    empty_runs = [run_forward(procs, node, str(empty)) for _ in range(3)]
    fwd_fixed = statistics.median(r.wall for r in empty_runs)
    cpu0 = proc_cpu(node.pid)

    say("forwarding")
    fwd = run_forward(procs, node, data.path)
    node.check_alive()
    if fwd.lines_sent != data.lines:
        res.problem(f"forward sent {fwd.lines_sent} lines, not {data.lines}")
    if fwd.connect is None:
        say("  did not see the forwarder connect (too fast?): subtracting the empty run's wall time instead")
        t0 = fwd.start + fwd_fixed
    else:
        t0 = fwd.connect
    expected_store = data.bytes + HEADER_BYTES * data.lines
    say(f"  forward done in {fwd.done - t0:.2f} s after connecting; waiting until {fmt_b(expected_store)} are queryable")
    last_size, last_change = -1, time.monotonic()
    head_path = node.query_path("")
    while True:
        node.check_alive()
        status, headers, _ = node.request("HEAD", head_path, timeout=60)
        size = int(headers.get("x-oklog-max-data-set-size", "0"))
        if status != 200:
            raise BenchFailure(f"HEAD /store/query answered {status}")
        if size >= expected_store:
            break
        if size != last_size:
            last_size, last_change = size, time.monotonic()
        elif time.monotonic() - last_change > args.stall_timeout:
            raise BenchFailure(
                f"store stuck at {size} of {expected_store} bytes for {args.stall_timeout:.0f} s\n{node.log_tail()}")
        time.sleep(0.1)
    queryable_s = time.perf_counter() - t0
    cpu1 = proc_cpu(node.pid)
    peak_hwm = proc_status(node.pid, "VmHWM")
    if size != expected_store:
        res.problem(f"store holds {size} bytes, expected exactly {expected_store} (duplicates?)")
    for token in (FIRST_TOKEN, LAST_TOKEN):
        st, _, body = node.request("GET", node.query_path(token))
        hits = body.count(b"\n")
        if st != 200 or hits != 1:
            res.problem(f"first/last planted token {token!r}: status {st}, {hits} lines (want 1)")
    files = node.store_files()
    store_bytes = sum(os.path.getsize(f) for f in files)

    fwd_s = fwd.done - t0
    d["ingest"] = {
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
    d["store"] = {"segments": len(files), "bytes": store_bytes, "expected_bytes": expected_store}
    say(f"  queryable {queryable_s:.2f} s after connecting; {len(files)} segments, {fmt_b(store_bytes)}; "
        f"node peak RSS {fmt_b(peak_hwm)}")

    # -- queries
    queries = [("rare literal", RARE_TOKEN, False), ("common literal", COMMON_LITERAL, False), ("regex", REGEX, True)]
    d["queries"] = []
    for name, q, regex in queries:
        say(f"query {name}: {q!r} (x{args.repeat}, and grep)")
        ours_out, grep_out = work / "ours.out", work / "grep.out"
        # grep first, then ours: both see the same warm page cache
        g_med, g_min, g_all, (_, g_lines, g_bytes) = timed_runs(
            lambda: grep_to_file(procs, q, regex, files, grep_out), args.repeat)
        o_med, o_min, o_all, (_, status, o_lines, o_bytes) = timed_runs(
            lambda: node.query_to_file(q, regex, ours_out), args.repeat)
        node.check_alive()
        want = data.expected[name]
        agree = status == 200 and o_lines == g_lines == want
        content = same_records(ours_out, grep_out) if status == 200 else f"status {status}"
        if status != 200:
            res.problem(f"{name}: /store/query answered {status}")
        if not (o_lines == g_lines == want):
            res.problem(f"{name}: counts disagree: oklog {o_lines}, grep {g_lines}, generated {want}")
        if content != "identical":
            res.problem(f"{name}: bodies differ from grep's output: {content}")
        d["queries"].append({
            "name": name, "q": q, "regex": regex, "expected_count": want,
            "ours": {"median_s": o_med, "min_s": o_min, "runs_s": o_all, "status": status,
                     "count": o_lines, "bytes": o_bytes, "mb_per_s_scanned": store_bytes / o_med / 1e6},
            "grep": {"median_s": g_med, "min_s": g_min, "runs_s": g_all, "count": g_lines, "bytes": g_bytes},
            "ratio_to_grep": ratio(o_med, g_med),
            "go_ratio_to_grep": GO["query_ratio_to_grep"][name],
            "counts_agree": agree, "content": content,
        })
        for p in (ours_out, grep_out):
            p.unlink(missing_ok=True)

    # -- stats only
    say("stats-only HEAD vs GET /readyz")
    n = max(10, args.repeat * 5)

    def timed(method: str, path: str) -> tuple[float, int, dict]:
        t = time.perf_counter()
        st, h, _ = node.request(method, path)
        return time.perf_counter() - t, st, h

    ready_med, ready_min, _, _ = timed_runs(lambda: timed("GET", "/readyz"), n)
    head_med, head_min, _, (_, st, h) = timed_runs(lambda: timed("HEAD", node.query_path(REGEX, True)), n)
    if st != 200 or int(h.get("x-oklog-max-data-set-size", -1)) != store_bytes:
        res.problem(f"HEAD: status {st}, data set size {h.get('x-oklog-max-data-set-size')} != {store_bytes}")
    d["stats_head"] = {"median_s": head_med, "min_s": head_min, "readyz_median_s": ready_med,
                       "ratio_to_readyz": ratio(head_med, ready_med), "go_head_s": GO["head_s"],
                       "segments_queried": int(h.get("x-oklog-segments-queried", -1))}

    d["ingest"]["node_rss"]["peak_hwm_end"] = proc_status(node.pid, "VmHWM")
    node.check_alive()
    errors = node.log_errors()
    d["node_log_errors"] = errors[:20]
    say("stopping node")
    rc = node.stop()
    if rc is None:
        res.problem("node did not stop within 30 s of SIGTERM (killed)")
    elif rc != 0:
        res.problem(f"node exited with status {rc} on SIGTERM\n{node.log_tail()}")
    if errors:
        say(f"note: node log has {len(errors)} ERROR/Traceback lines (see JSON)")


def table(d: dict) -> str:
    inp, ing = d["input"], d["ingest"]
    b, r = ing["baseline"], ing["ratios"]
    rows: list[str] = []
    add = rows.append
    mbs = lambda secs: f"{inp['bytes'] / secs / 1e6:>9.0f} MB/s"  # noqa: E731
    add(f"oklog bench: {inp['lines']:,} lines, {fmt_b(inp['bytes'])} input; store {d['store']['segments']} "
        f"segments, {fmt_b(d['store']['bytes'])}; {d['machine']['cpus']} CPUs")
    add("")
    add(f"{'ingest':36} {'time':>9} {'rate':>14}  {'ratio':>7} {'baseline':<15} {'Go OK Log':>12}")
    add(f"{'  raw read (cat > /dev/null)':36} {fmt_s(b['raw_read_s']):>9} {mbs(b['raw_read_s'])}")
    add(f"{'  raw TCP send → discarding sink':36} {fmt_s(b['raw_tcp_discard_s']):>9} {mbs(b['raw_tcp_discard_s'])}")
    add(f"{'  raw TCP send → sink writing file':36} {fmt_s(b['raw_tcp_to_file_s']):>9} {mbs(b['raw_tcp_to_file_s'])}")
    add(f"{'  oklog forward, connect → done':36} {fmt_s(ing['forward_s']):>9} "
        f"{ing['forward_lines_per_s'] / 1e3:>7.0f}k lines/s  {fmt_r(r['forward_vs_raw_tcp_to_file']):>7} "
        f"{'TCP → file':<15} {GO['forward_lines_per_s'] / 1e3:>3.0f}k lines/s")
    add(f"{'':36} {'':>9} {ing['forward_mb_per_s']:>9.0f} MB/s  {fmt_r(r['forward_vs_raw_tcp_discard']):>7} "
        f"{'TCP → discard':<15}")
    add(f"{'  oklog forward, connect → queryable':36} {fmt_s(ing['queryable_s']):>9} "
        f"{ing['queryable_lines_per_s'] / 1e3:>7.0f}k lines/s  {fmt_r(r['queryable_vs_raw_tcp_to_file']):>7} "
        f"{'TCP → file':<15} {GO['queryable_lines_per_s'] / 1e3:>3.0f}k lines/s")
    rss = ing["node_rss"]
    add(f"{'  node peak RSS (VmHWM)':36} {fmt_b(rss['peak_hwm_after_ingest']):>9} {'':>14}  "
        f"{fmt_r(rss['peak_per_input_byte']):>7} {'input size':<15} {fmt_r(GO['peak_rss_per_input_byte']):>12}")
    fp = ing["forward_process"]
    add(f"  (forwarder start-up before connecting, {fmt_s(fp['start_to_connect_s'])}, not counted;"
        f" CPU: node {ing['node_cpu_s']:.1f} s, forwarder {fp['cpu_s']:.1f} s)")
    add("")
    add(f"{'query (client reads whole body)':36} {'oklog':>9} {'grep':>9} {'hits':>9}  {'ratio':>7} "
        f"{'check':<15} {'Go OK Log':>12}")
    for q in d["queries"]:
        check = "ok" if q["counts_agree"] and q["content"] == "identical" else "MISMATCH"
        add(f"  {q['name'] + ' ' + repr(q['q']):34} {fmt_s(q['ours']['median_s']):>9} "
            f"{fmt_s(q['grep']['median_s']):>9} {q['ours']['count']:>9,}  {fmt_r(q['ratio_to_grep']):>7} "
            f"{check:<15} {fmt_r(q['go_ratio_to_grep']):>12}")
    h = d["stats_head"]
    add(f"  {'stats only (HEAD); vs GET /readyz':34} {fmt_s(h['median_s']):>9} {fmt_s(h['readyz_median_s']):>9} "
        f"{'':>9}  {fmt_r(h['ratio_to_readyz']):>7} {'':<15} {fmt_s(GO['head_s']):>12}")
    add("")
    add("ratio = our time / the baseline's time in this run (> 1: slower than the baseline).")
    add("Go OK Log = the original's numbers from FACTS.md (same kind of machine, not this run):")
    add("its rate, its RSS / input, its query time / grep's, its HEAD time.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=None, help="lines to generate (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200,000 lines, 2 repeats")
    ap.add_argument("--repeat", type=int, default=None, help="runs per query (median reported; default 3)")
    ap.add_argument("--seed", type=int, default=1, help="data generator seed")
    ap.add_argument("--output", default="bench-results/latest.json", help="JSON results file")
    ap.add_argument("--tmpdir", default=None, help="where the temp work dir goes (needs ~4x the input size)")
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir (input, node data, logs)")
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

    res.data["ok"] = res.ok
    res.data["problems"] = res.problems
    res.data["started"] = dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat()
    res.data["duration_s"] = time.time() - started
    out = Path(args.output)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res.data, indent=2) + "\n")
    if "queries" in res.data and "stats_head" in res.data:
        print(table(res.data))
    print(f"\n{'OK' if res.ok else 'FAILED: ' + '; '.join(p.splitlines()[0] for p in res.problems)}"
          f" — results in {out}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
