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

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def oklog_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "oklog", *args]


@dataclass
class Node:
    mode: str
    data: Path
    extra: list[str] = field(default_factory=list)
    api_port: int = field(default_factory=free_port)
    fast_port: int = field(default_factory=free_port)
    durable_port: int = field(default_factory=free_port)
    bulk_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

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
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(oklog_cmd(*self.args()), stdout=log, stderr=log, cwd=ROOT,
                                     stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.api}/readyz", timeout=1).status_code == 200:
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


def start_forwarders(*feeds: tuple[bytes, str]) -> list[threading.Thread]:
    """One real `oklog forward` per (lines, target), all sending at once."""
    threads = [threading.Thread(target=forward, args=feed) for feed in feeds]
    for t in threads:
        t.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join()


def query(api: str, **params: str) -> httpx.Response:
    return httpx.get(f"{api}/store/query", params=params, timeout=60)


def wait_for_records(api: str, count: int, timeout: float = 30.0, **params: str) -> bytes:
    """Poll a full-range query until it returns ``count`` records."""
    params = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", **params}
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        body = query(api, **params).content
        if body.count(b"\n") >= count:
            return body
        time.sleep(0.2)
    have = body.count(b"\n")
    raise AssertionError(f"expected {count} records, have {have}")

