"""Run a ``serf agent`` as a child process of an oklog node.

Theory of operation
-------------------
``run_agent`` spawns the agent with its output appended to a log file (an
undrained pipe would freeze it), waits until its RPC port answers a
handshake, reports the RPC address through ``task_status``, then waits for
the child.  The agent is part of the node: if it exits for any reason while
we still want it (crash, port in use, duplicate node name → exit 0), we raise
``ClusterError`` and the node's nursery goes down with it.

On cancellation the agent is stopped politely, then less so: RPC ``leave``
(peers see ``left`` at once), wait; SIGINT (also a graceful leave); SIGKILL.
``PR_SET_PDEATHSIG`` makes the kernel send SIGINT if this process dies
without cleaning up, so a dead node never stays advertised as alive.

The child is forked from the trio thread with ``subprocess.Popen`` rather
than ``trio.lowlevel.open_process``: the latter forks from a worker thread,
and PDEATHSIG fires when the *thread* that forked exits — trio's idle worker
threads exit after a few seconds, which would kill a healthy agent.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from oklog.cluster.serf import open_serf_client, split_host_port
from oklog.errors import ClusterError

INSTALL_HINT = "install it with `apt-get install serf`"
START_TIMEOUT = 15.0
LEAVE_TIMEOUT = 3.0
EXIT_TIMEOUT = 3.0
_PR_SET_PDEATHSIG = 1


@dataclass
class AgentConfig:
    """How to start one agent; ``fast`` shortens every timeout for tests."""

    node_name: str
    bind: str
    rpc_addr: str = ""
    advertise: str | None = None
    peers: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    log_path: Path = Path("serf.log")
    profile: str = "lan"
    fast: bool = False
    rpc_auth: str | None = field(default=None, repr=False)  # RPC clients must then send this key
    encrypt_key: str | None = field(default=None, repr=False)  # gossip encryption (base64)


def serf_binary() -> str | None:
    return shutil.which("serf")


def available() -> bool:
    """Whether a ``serf`` binary is on PATH."""
    return serf_binary() is not None


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (racy, but cheap)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_config_json(config: AgentConfig) -> dict[str, Any]:
    """Settings that exist only in a ``-config-file``, not as flags."""
    settings: dict[str, Any] = {"leave_on_terminate": True}
    if config.rpc_auth:
        settings["rpc_auth"] = config.rpc_auth
    if config.encrypt_key:
        settings["encrypt_key"] = config.encrypt_key
    if config.fast:
        settings.update(
            reconnect_interval="1s", reconnect_timeout="3s", tombstone_timeout="3s"
        )
    return settings


def agent_argv(serf: str, config: AgentConfig, config_file: Path) -> list[str]:
    """The ``serf agent`` command line for ``config``."""
    argv = [
        serf,
        "agent",
        f"-node={config.node_name}",
        f"-bind={config.bind.removeprefix('tcp://')}",
        f"-rpc-addr={config.rpc_addr}",
        f"-profile={'local' if config.fast else config.profile}",
        f"-config-file={config_file}",
    ]
    if config.advertise:
        argv.append(f"-advertise={config.advertise.removeprefix('tcp://')}")
    if config.peers:
        argv.append(f"-retry-interval={'1s' if config.fast else '5s'}")
        argv += [f"-retry-join={p.removeprefix('tcp://')}" for p in config.peers]
    for key, value in sorted(config.tags.items()):
        argv += ["-tag", f"{key}={value}"]
    return argv


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` readable by its owner only (0600, even if it existed):
    the agent's config file may hold the gossip key and the RPC key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _pdeathsig_setup() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGINT when we die.

    libc is loaded here, in the parent: ``dlopen`` after ``fork`` in a
    threaded process can deadlock on a lock held by another thread.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def setup() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return setup


class _Child:
    """A Popen we can await without a thread (pidfd, or polling)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        try:
            self._pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        while (code := self.popen.poll()) is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.sleep(0.05)
        self.close()
        return code

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def close(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    tail = " | ".join(line.strip() for line in text[-lines:])
    return f" (last lines: {tail})" if tail else ""


def _exited(code: int, log_path: Path) -> ClusterError:
    return ClusterError(f"serf agent exited with code {code}; see {log_path}{_log_tail(log_path)}")


async def run_agent(
    config: AgentConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run an agent until cancelled; ``started`` with its RPC ``host:port``.

    An empty ``config.rpc_addr`` is filled in with a free loopback port.

    Raises ``ClusterError`` if serf is missing, does not come up in time, or
    exits while we still need it.
    """
    serf = serf_binary()
    if serf is None:
        raise ClusterError(f"the `serf` binary is not on PATH; {INSTALL_HINT}")
    if not config.rpc_addr:
        config.rpc_addr = f"127.0.0.1:{free_loopback_port()}"
    rpc_host, rpc_port = split_host_port(config.rpc_addr)
    log_path = config.log_path
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config_file = log_path.with_name(log_path.stem + "-config.json")
    write_private(config_file, json.dumps(agent_config_json(config)).encode())
    argv = agent_argv(serf, config, config_file)
    try:
        with open(log_path, "ab") as log:
            log.write(f"==> oklog: {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig_setup(),
                start_new_session=True,  # a terminal ^C is the node's to handle
            )
    except OSError as exc:
        raise ClusterError(f"cannot start serf agent: {exc}") from exc
    child = _Child(popen)
    try:
        await _wait_for_rpc(child, rpc_host, rpc_port, config.rpc_auth, log_path)
        task_status.started(config.rpc_addr)
        code = await child.wait()
        raise _exited(code, log_path)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(child, rpc_host, rpc_port, config.rpc_auth)


async def _wait_for_rpc(
    child: _Child, host: str, port: int, auth_key: str | None, log_path: Path
) -> None:
    """Poll until the agent answers a handshake, or give up."""
    last: Exception | None = None
    with trio.move_on_after(START_TIMEOUT):
        while True:
            code = child.returncode
            if code is not None:
                raise _exited(code, log_path)
            try:
                async with open_serf_client(host, port, auth_key=auth_key, timeout=1.0):
                    return
            except ClusterError as exc:
                last = exc
            await trio.sleep(0.05)
    raise ClusterError(
        f"serf agent RPC {host}:{port} not ready after {START_TIMEOUT:g}s: {last}; see {log_path}"
    )


async def _stop(child: _Child, host: str, port: int, auth_key: str | None) -> None:
    """leave → SIGINT → SIGKILL, each bounded; always reaps the child."""
    left = False
    if child.returncode is None:
        with trio.move_on_after(LEAVE_TIMEOUT):
            try:
                async with open_serf_client(
                    host, port, auth_key=auth_key, timeout=LEAVE_TIMEOUT
                ) as client:
                    await client.leave()
                left = True
            except ClusterError:
                pass
    for sig in (None, signal.SIGINT, signal.SIGKILL):
        if sig is None and not left:
            continue
        if sig is not None:
            child.signal(sig)
        with trio.move_on_after(EXIT_TIMEOUT):
            await child.wait()
            return
    child.close()
