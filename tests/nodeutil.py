"""Start real oklog node processes on 127.0.0.1 for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


_GIVEN: set[int] = set()


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (all bound at once).

    Another process may still take one before a node binds it: ``Node``
    notices ("address already in use") and starts again on fresh ports.
    Ports handed out before in this test process are never handed out
    again (the kernel readily gives a just-closed port to the next caller:
    two nodes of one test once got the same API port).
    """
    ports: list[int] = []
    while len(ports) < n:
        socks = [socket.socket() for _ in range(n)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            for s in socks:
                port = s.getsockname()[1]
                if port not in _GIVEN and len(ports) < n:
                    ports.append(port)
                    _GIVEN.add(port)
        finally:
            for s in socks:
                s.close()
    return ports


def free_port() -> int:
    return free_ports(1)[0]


PORT_RETRIES = 5


def oklog_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "oklog", *args]


@dataclass
class Node:
    mode: str
    data: Path
    extra: list[str] = field(default_factory=list)
    api_port: int = 0
    fast_port: int = 0
    durable_port: int = 0
    bulk_port: int = 0
    cluster_port: int = 0
    proc: subprocess.Popen | None = None
    port_retries: int = PORT_RETRIES
    scheme: str = "http"  # "https" for a node run with -api.tls-cert
    verify: Any = True  # httpx's verify for /readyz (an SSLContext for TLS nodes)

    def __post_init__(self) -> None:
        if not self.api_port:
            self.new_ports()

    def new_ports(self) -> None:
        (self.api_port, self.fast_port, self.durable_port, self.bulk_port,
         self.cluster_port) = free_ports(5)

    @property
    def api(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.data / f"{self.mode}-{self.api_port}.log"

    def args(self) -> list[str]:
        a = [self.mode, "-api", f"tcp://127.0.0.1:{self.api_port}",
             "-cluster", f"127.0.0.1:{self.cluster_port}"]
        if self.mode in ("ingest", "ingeststore"):
            a += ["-ingest.fast", f"127.0.0.1:{self.fast_port}",
                  "-ingest.durable", f"tcp://127.0.0.1:{self.durable_port}",
                  "-ingest.bulk", f"127.0.0.1:{self.bulk_port}",
                  "-ingest.path", str(self.data / "ingest")]
        if self.mode in ("store", "ingeststore"):
            a += ["-store.path", str(self.data / "store")]
        return a + self.extra

    def start(self, wait: bool = True) -> "Node":
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(oklog_cmd(*self.args()), stdout=log, stderr=log, cwd=ROOT,
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait for ``/readyz``; a node that lost a race for one of its
        ports is started again on fresh ones (ports of its own only: other
        nodes' addresses in ``extra`` stay as they are)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                if "address already in use" in self.log().lower() and self.port_retries > 0:
                    self.port_retries -= 1
                    self.new_ports()
                    self.start(wait=False)
                    deadline = time.monotonic() + timeout
                    continue
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.api}/readyz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def forward(lines: bytes, *targets: str, extra: tuple[str, ...] = (), timeout: float = 60) -> None:
    """Pipe bytes through a real `oklog forward` process."""
    subprocess.run(oklog_cmd("forward", *extra, *targets), input=lines, check=True, timeout=timeout,
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Forwarder(threading.Thread):
    """A thread running one real `oklog forward`; ``join`` re-raises its failure."""

    def __init__(self, lines: bytes, target: str, extra: tuple[str, ...] = (), timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.feed = (lines, target)
        self.extra, self.timeout = extra, timeout
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            forward(*self.feed, extra=self.extra, timeout=self.timeout)
        except BaseException as exc:  # re-raised in the test's thread
            self.error = exc


def start_forwarders(*feeds: tuple[bytes, str]) -> list[Forwarder]:
    """One real `oklog forward` per (lines, target), all sending at once."""
    threads = [Forwarder(*feed) for feed in feeds]
    for t in threads:
        t.start()
    return threads


def join(threads: list[Forwarder]) -> None:
    """Wait for every forwarder; raise the first one's failure, if any."""
    for t in threads:
        t.join()
    for t in threads:
        if t.error is not None:
            stderr = getattr(t.error, "stderr", None) or b""
            raise AssertionError(f"oklog forward to {t.feed[1]} failed: {t.error!r}\n"
                                 f"{stderr.decode(errors='replace')[-2000:]}") from t.error


def query(api: str, **params: str) -> httpx.Response:
    return httpx.get(f"{api}/store/query", params=params, timeout=60)


def wait_for_records(api: str, count: int, timeout: float = 30.0, **params: str) -> bytes:
    """Poll a full-range query until it returns exactly ``count`` records,
    each ULID once; more than ``count`` (duplicates, strays) fails at once."""
    params = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", **params}
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        body = query(api, **params).content
        have = body.count(b"\n")
        if have > count:
            raise AssertionError(f"expected {count} records, have {have}: duplicates or strays")
        if have == count:
            distinct = len({line[:26] for line in body.split(b"\n")[:-1]})
            assert distinct == count, f"{count - distinct} duplicate ULIDs in the result"
            return body
        time.sleep(0.2)
    have = body.count(b"\n")
    raise AssertionError(f"expected {count} records, have {have}")

