"""``oklog repair``: walk a time range step by step, repairing each step.

For cron: ``oklog repair -store host:port -from 30d [-to now] [-step 1h]
[-dry-run]``.  ``from``/``to`` are resolved once (``oklog.timespec``) and
cut into steps of ``step``; for each, ``POST /store/repair?from=&to=`` asks
the store node at ``-store`` to check that range (it scatters an id-only
query to every live store, so a healthy range moves ULIDs, not payloads)
and copy every under-replicated record to stores that lack it; it answers
JSON statistics.  Progress goes to stderr: a progress bar (rich) on a
terminal, one plain line per step otherwise; the summary goes to stdout.

Exit status: 0 when every step was checked without an error; 1 when a step
failed or reported errors, or the store cannot be reached (the walk stops
at once: nothing else could work).  Running it twice, or two at once, can
only over-replicate (duplicates are dropped by ULID at read time).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from oklog import timespec
from oklog.addr import api_url
from oklog.clientconf import ClientConf
from oklog.querycli import _connect_reason, _first_line
from oklog.ulid import ms_of, ulid_for_ms

__all__ = ["Summary", "plan_steps", "run_repair"]

CONNECT_TIMEOUT = 5.0
COUNTS = ("checked", "under_replicated", "repaired", "deferred", "errors")


def plan_steps(from_ms: int, to_ms: int, step_ms: int) -> list[tuple[int, int]]:
    """Inclusive millisecond ranges ``[a, b]`` covering ``[from_ms, to_ms]``,
    oldest first: ``step_ms`` each, the last one up to ``to_ms`` (so
    ``-from 1h -step 5m`` is 12 steps, not 12 and a millisecond)."""
    if to_ms < from_ms:
        return []
    n = max(1, -(-(to_ms - from_ms) // step_ms))
    return [(from_ms + k * step_ms, to_ms if k == n - 1 else from_ms + (k + 1) * step_ms - 1)
            for k in range(n)]


@dataclass
class Summary:
    checked: int = 0
    under_replicated: int = 0
    repaired: int = 0
    deferred: int = 0
    errors: int = 0
    steps: int = 0
    failed_steps: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, stats: dict[str, Any]) -> None:
        for name in COUNTS:
            value = stats.get(name, 0)
            setattr(self, name, getattr(self, name) + (value if isinstance(value, int) else 0))

    def line(self, dry_run: bool) -> str:
        text = (f"checked={self.checked} under_replicated={self.under_replicated} "
                f"repaired={self.repaired} deferred={self.deferred} errors={self.errors} "
                f"steps={self.steps} failed_steps={self.failed_steps}")
        return text + (" (dry run: nothing written)" if dry_run else "")


def _ms(value: str, now_ms: int, flag: str) -> int:
    try:
        resolved = timespec.resolve(value, now_ms)
    except ValueError as exc:
        raise ValueError(f"{flag} {value[:64]!r}: {exc}") from None
    return ms_of(resolved) if isinstance(resolved, bytes) else resolved


def run_repair(
    store: str = "localhost:7650",
    *,
    from_: str = "1h",
    to: str = "now",
    step: str = "1h",
    dry_run: bool = False,
    timeout: str = "10m",
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: float | None = None,
    progress: bool | None = None,
    transport: httpx.BaseTransport | None = None,
    conf: ClientConf | None = None,
) -> int:
    """Walk ``[from_, to]`` in steps against ``store``; the exit status.

    ``progress``: a rich progress bar (default: when ``err`` is a terminal),
    else one line per step.  ``timeout`` bounds each step's answer.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    now_ms = int((time.time() if now is None else now) * 1000)
    try:
        base = api_url(store)
        lo, hi = _ms(from_, now_ms, "-from"), _ms(to, now_ms, "-to")
        step_s = timespec.parse_duration(step)
        wait = timespec.parse_duration(timeout)
        if step_s * 1000 < 1:
            raise ValueError(f"-step {step!r}: must be at least 1ms")
        if wait <= 0:
            raise ValueError(f"-timeout {timeout!r}: must be more than 0")
        if lo > hi:
            raise ValueError(f"-from {from_!r} is after -to {to!r}")
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 1
    steps = plan_steps(lo, hi, int(step_s * 1000))
    if progress is None:
        progress = err.isatty()
    summary = Summary()
    timeouts = httpx.Timeout(connect=CONNECT_TIMEOUT, read=wait, write=30.0, pool=CONNECT_TIMEOUT)
    with (conf or ClientConf()).client(timeout=timeouts, transport=transport) as client, \
            _Progress(len(steps), err, progress) as bar:
        for n, (a, b) in enumerate(steps, 1):
            label = f"{timespec.format_rfc3339(a)} .. {timespec.format_rfc3339(b)}"
            url = (f"{base}/store/repair?from={ulid_for_ms(a).decode()}"
                   f"&to={ulid_for_ms(b, upper=True).decode()}" + ("&dry-run=true" if dry_run else ""))
            try:
                resp = client.post(url)
            except httpx.ConnectError as exc:
                bar.stop()
                print(f"error: cannot connect to store at {base}: {_connect_reason(exc)}", file=err)
                return 1
            except httpx.TimeoutException:
                problem = f"step {label}: no answer within {wait:g}s"
                stats: dict[str, Any] | None = None
            except httpx.HTTPError as exc:
                problem = f"step {label}: {type(exc).__name__}: {exc}"
                stats = None
            else:
                stats, problem = _answer(resp, label)
            summary.steps += 1
            if stats is None:
                summary.failed_steps += 1
                summary.problems.append(problem)
                bar.note(f"error: {problem}")
            else:
                summary.add(stats)
                for p in stats.get("problems") or []:
                    bar.note(f"error: step {label}: {p}")
                for u in stats.get("unreachable") or []:
                    bar.note(f"warning: step {label}: a store did not answer: {u}")
            bar.step(n, label, stats, summary)
    print(summary.line(dry_run), file=out)
    return 1 if summary.errors or summary.failed_steps else 0


def _answer(resp: httpx.Response, label: str) -> tuple[dict[str, Any] | None, str]:
    if resp.status_code != 200:
        reason = _first_line(resp.content, 300)
        return None, f"step {label}: HTTP {resp.status_code}" + (f": {reason}" if reason else "")
    try:
        stats = json.loads(resp.content)
    except ValueError:
        return None, f"step {label}: the store's answer is not JSON"
    if not isinstance(stats, dict):
        return None, f"step {label}: the store's answer is not a JSON object"
    return stats, ""


class _Progress:
    """A rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, err: TextIO, fancy: bool) -> None:
        self.total = total
        self.err = err
        self.bar: Any = None
        self.task: Any = None
        if fancy:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
                    TimeElapsedColumn
            except ImportError:  # pragma: no cover - rich comes with typer
                return
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                console=Console(file=err), transient=False)
            self.task = self.bar.add_task("repair", total=total, counts="")

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.err, flush=True)

    def step(self, n: int, label: str, stats: dict[str, Any] | None, summary: Summary) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=n, description=label,
                            counts=f"checked {summary.checked} repaired {summary.repaired}")
            return
        if stats is None:
            state = "failed"
        else:
            state = " ".join(f"{name}={stats.get(name, 0)}" for name in COUNTS)
        print(f"step {n}/{self.total} {label} {state}", file=self.err, flush=True)
