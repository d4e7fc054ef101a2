"""``oklog repair``, the walker's command line, against a mock store."""

from __future__ import annotations

import io
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from oklog.repaircli import plan_steps, run_repair
from oklog.ulid import ms_of

NOW = 1_800_000_000.0


def test_plan_steps_cover_the_range_without_overlap() -> None:
    assert plan_steps(0, 9, 5) == [(0, 4), (5, 9)]
    assert plan_steps(0, 10, 5) == [(0, 4), (5, 10)]
    assert plan_steps(0, 11, 5) == [(0, 4), (5, 9), (10, 11)]
    assert plan_steps(7, 7, 1000) == [(7, 7)]
    assert plan_steps(8, 7, 10) == []


def store(answers: dict[int, dict | int] | None = None, seen: list | None = None) -> httpx.MockTransport:
    """Step n (1-based) answers ``answers[n]``: stats, or a bare HTTP status."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if seen is not None:
            seen.append(request)
        assert request.method == "POST" and request.url.path == "/store/repair"
        answer = (answers or {}).get(len(calls), {"checked": 10, "under_replicated": 1, "repaired": 1,
                                                 "deferred": 0, "errors": 0, "problems": [],
                                                 "unreachable": []})
        if isinstance(answer, int):
            return httpx.Response(answer, text="boom\n")
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handler)


def walk(transport: httpx.MockTransport, **kw: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_repair("store:7650", out=out, err=err, now=NOW, transport=transport,  # type: ignore[arg-type]
                      progress=False, **kw)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


def test_walk_steps_through_the_range_and_sums_up() -> None:
    seen: list[httpx.Request] = []
    code, out, err = walk(store(seen=seen), from_="1h", step="5m")
    assert code == 0
    assert out.strip() == ("checked=120 under_replicated=12 repaired=12 deferred=0 errors=0 "
                           "steps=12 failed_steps=0")
    assert err.count("\n") == 12 and err.startswith("step 1/12 ")
    bounds = [(parse_qs(urlsplit(str(r.url)).query)) for r in seen]
    assert all("dry-run" not in b for b in bounds)
    los = [ms_of(b["from"][0]) for b in bounds]
    his = [ms_of(b["to"][0]) for b in bounds]
    assert los[0] == int(NOW * 1000) - 3_600_000 and his[-1] == int(NOW * 1000)
    assert all(lo == hi + 1 for lo, hi in zip(los[1:], his))  # contiguous, no overlap


def test_dry_run_is_passed_on_and_said() -> None:
    seen: list[httpx.Request] = []
    code, out, _ = walk(store(seen=seen), from_="10m", step="10m", dry_run=True)
    assert code == 0 and "dry run: nothing written" in out
    assert all("dry-run=true" in str(r.url) for r in seen)


def test_a_failing_step_goes_on_and_exits_1() -> None:
    code, out, err = walk(store({2: 500}), from_="30m", step="10m")
    assert code == 1 and "failed_steps=1" in out and "steps=3" in out
    assert "HTTP 500: boom" in err


def test_errors_reported_by_a_step_exit_1() -> None:
    bad = {"checked": 5, "under_replicated": 5, "repaired": 0, "errors": 1,
           "problems": ["replicating to http://x failed"], "unreachable": ["http://y: refused"]}
    code, out, err = walk(store({1: bad}), from_="10m", step="10m")
    assert code == 1 and "errors=1" in out
    assert "error: step" in err and "replicating to http://x failed" in err
    assert "warning: step" in err and "http://y" in err


def test_unreachable_store_stops_at_once() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    code, out, err = walk(httpx.MockTransport(refuse), from_="1h", step="5m")
    assert code == 1 and out == ""
    assert err.strip() == "error: cannot connect to store at http://store:7650: connection refused"


def test_a_tls_failure_to_connect_says_what_to_give() -> None:
    import ssl

    def untrusted(request: httpx.Request) -> httpx.Response:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as exc:
            raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]") from exc

    code, out, err = walk(httpx.MockTransport(untrusted), from_="1h", step="5m")
    assert code == 1 and out == ""
    assert "cannot connect to store" in err and "TLS certificate verify failed" in err and "-ca-file" in err


def test_a_step_that_is_not_json_fails() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="OK\n")

    code, out, err = walk(httpx.MockTransport(handler), from_="5m", step="5m")
    assert code == 1 and "not JSON" in err


@pytest.mark.parametrize("kw, message", [
    ({"from_": "yesterday"}, "-from 'yesterday'"),
    ({"step": "0s"}, "-step"),
    ({"from_": "1h", "to": "2h"}, "is after -to"),
    ({"timeout": "-1s"}, "-timeout"),
])
def test_bad_arguments_are_one_line_errors(kw: dict, message: str) -> None:
    code, out, err = walk(store(), **kw)
    assert code == 1 and out == "" and err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_progress_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, err = io.StringIO(), Tty()
    code = run_repair("store:7650", from_="20m", step="10m", out=out, err=err, now=NOW,
                      transport=store())
    assert code == 0 and "checked 20 repaired 2" in err.getvalue()
    assert "checked=20" in out.getvalue()


def test_cli_entry_point_has_single_dash_flags() -> None:
    from typer.testing import CliRunner

    from oklog.cli import app

    from tests.nodeutil import free_ports

    port = free_ports(1)[0]  # nothing listens there (not port 1: another test may bind it)
    result = CliRunner().invoke(app, ["repair", "-store", f"127.0.0.1:{port}", "-from", "1h", "-step", "30m",
                                      "-dry-run", "-timeout", "5s"])
    assert result.exit_code == 1
    assert f"cannot connect to store at http://127.0.0.1:{port}" in result.output
    assert json.dumps  # (imported for the answers above)
