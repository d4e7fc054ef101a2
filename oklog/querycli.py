"""``oklog query``: ask a store node for records and print them.

``run_query`` builds ``GET /store/query?from=&to=&q=[&regex=true][&topic=]``
(``HEAD`` for ``stats``), streams the answer and writes each record's
payload (or ``ULID SP PAYLOAD`` with ``with_ulid``) to ``out``, a block of
lines at a time: memory stays bounded whatever the result size.

Unlike OK Log's CLI, a 206 (some store node failed to answer) still prints
the results, with a warning on stderr.  Errors are one line on ``err`` and
exit code 1; nothing here raises for a bad argument or an unreachable store.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from typing import BinaryIO, TextIO
from urllib.parse import quote

import httpx

from oklog.addr import api_url, parse_duration
from oklog.errors import ConfigError

__all__ = ["run_query", "resolve_time", "query_url", "RecordStripper", "human_bytes"]

_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=5.0)

_HEADERS = [
    "X-Oklog-From",
    "X-Oklog-To",
    "X-Oklog-Q",
    "X-Oklog-Regex",
    "X-Oklog-Nodes-Queried",
    "X-Oklog-Segments-Queried",
    "X-Oklog-Max-Data-Set-Size",
    "X-Oklog-Error-Count",
    "X-Oklog-Duration",
]


def format_time(t: float) -> str:
    """RFC3339Nano UTC with microseconds: ``2026-11-21T12:00:00.123456Z``."""
    d = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def resolve_time(value: str, now: float, flag: str = "-from") -> str:
    """The ``from``/``to`` parameter for ``value``.

    ``now`` → now; a duration (``5m``, ``1h30m``, ``7d``) → that long before
    now (the sign is ignored, as in OK Log); an RFC3339 time or a ULID is
    validated and passed on unchanged.  ConfigError otherwise.
    """
    v = value.strip()
    if v.lower() == "now":
        return format_time(now)
    if _RFC3339.match(v):
        try:
            dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", v).replace("z", "Z"))
        except ValueError:
            raise ConfigError(f"couldn't parse {flag} {value!r}: invalid date or time") from None
        return v
    if _ULID.match(v):
        if v[0] > "7":
            raise ConfigError(f"couldn't parse {flag} {value!r}: ULID out of range")
        return v.upper()
    try:
        seconds = abs(parse_duration(v))
    except ConfigError:
        raise ConfigError(
            f"couldn't parse {flag} {value!r} as a duration (5m, 1h, 7d), an RFC3339 time or a ULID"
        ) from None
    return format_time(now - seconds)


def query_url(
    base: str, from_: str, to: str, q: str, regex: bool = False, topic: str | None = None
) -> str:
    """``{base}/store/query?...`` with every value percent-encoded."""

    def enc(s: str) -> str:
        return quote(s, safe="")

    url = f"{base}/store/query?from={enc(from_)}&to={enc(to)}&q={enc(q)}"
    if regex:
        url += "&regex=true"
    if topic is not None:
        url += f"&topic={enc(topic)}"
    return url


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n}B" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


# --- record output -------------------------------------------------------------

_PAYLOAD = re.compile(rb"[0-9A-Z]{26} [^ \n]* ([^\n]*\n)")


def _strip_topic_lines(block: bytes) -> bytes:
    # ULID SP TOPIC SP PAYLOAD -> ULID SP PAYLOAD; malformed lines unchanged.
    lines = block.split(b"\n")
    lines.pop()  # block ends with LF
    return b"\n".join([ln[:27] + ln[i + 1 :] if ln[26:27] == b" " and (i := ln.find(b" ", 27)) > 0 else ln
                       for ln in lines]) + b"\n"


def _payload_lines(block: bytes) -> bytes:
    # ULID SP TOPIC SP PAYLOAD -> PAYLOAD.  One findall over the block is the
    # fast path; if some line does not have the record shape (count differs),
    # redo the block line by line, leaving malformed lines unchanged.
    found = _PAYLOAD.findall(block)
    if len(found) == block.count(b"\n"):
        return b"".join(found)
    lines = block.split(b"\n")
    lines.pop()
    out = []
    for ln in lines:
        i = ln.find(b" ", 27) if len(ln) > 27 and ln[26:27] == b" " else -1
        out.append(ln[i + 1 :] if i > 0 else ln)
    return b"\n".join(out) + b"\n"


class RecordStripper:
    """Turns a stream of ``ULID SP TOPIC SP PAYLOAD LF`` records, cut at
    arbitrary points, into payloads (``with_ulid``: ``ULID SP PAYLOAD``).

    ``feed(chunk)`` returns the output for every whole line received so far;
    ``finish()`` returns the output for a final line without LF (with an LF).
    """

    def __init__(self, with_ulid: bool = False) -> None:
        self._convert = _strip_topic_lines if with_ulid else _payload_lines
        self._carry: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        cut = chunk.rfind(b"\n")
        if cut < 0:
            if chunk:
                self._carry.append(chunk)
            return b""
        head = chunk[: cut + 1]
        if self._carry:
            self._carry.append(head)
            head = b"".join(self._carry)
            self._carry = []
        if cut + 1 < len(chunk):
            self._carry.append(chunk[cut + 1 :])
        return self._convert(head)

    def finish(self) -> bytes:
        if not self._carry:
            return b""
        rest = b"".join(self._carry) + b"\n"
        self._carry = []
        return self._convert(rest)


# --- the command ----------------------------------------------------------------


def _go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _first_line(body: bytes, limit: int = 500) -> str:
    text = body.decode("utf-8", "replace").strip()
    line = text.splitlines()[0] if text else ""
    return line[:limit]


def _print_stats(resp: httpx.Response, elapsed: float, err: TextIO) -> None:
    h = resp.headers
    qtype = "regular expression" if h.get("X-Oklog-Regex", "").lower() == "true" else "normal string"
    size_s = h.get("X-Oklog-Max-Data-Set-Size", "")
    try:
        size = int(size_s)
        size_text = f"{size}B ({human_bytes(size)})"
    except ValueError:
        size_text = f"{size_s or '?'}B"
    print(f"Response in {elapsed * 1000:.1f}ms", file=err)
    print(f"Queried from {h.get('X-Oklog-From', '?')}", file=err)
    print(f"Queried to {h.get('X-Oklog-To', '?')}", file=err)
    print(f"Queried {qtype} {_go_quote(h.get('X-Oklog-Q', ''))}", file=err)
    print(f"{h.get('X-Oklog-Nodes-Queried', '?')} node(s) queried", file=err)
    print(f"{h.get('X-Oklog-Segments-Queried', '?')} segment(s) queried", file=err)
    print(f"{size_text} maximum data set size", file=err)
    print(f"{h.get('X-Oklog-Error-Count', '?')} error(s)", file=err)
    print(f"{h.get('X-Oklog-Duration', '?')} server-reported duration", file=err)


def run_query(
    store: str = "localhost:7650",
    *,
    from_: str = "1h",  # the CLI's -from default, as in OK Log
    to: str = "now",
    q: str = "",
    regex: bool = False,
    stats: bool = False,
    with_ulid: bool = False,
    verbose: bool = False,
    topic: str | None = None,
    out: BinaryIO | None = None,
    err: TextIO | None = None,
    now: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run one query against ``store``; return the process exit code.

    Prints records on ``out`` (default ``sys.stdout.buffer``), statistics
    (``stats``), the request and X-Oklog-* headers (``verbose``), warnings
    and errors on ``err`` (default ``sys.stderr``).  ``now`` (Unix seconds)
    fixes the clock for relative ``from_``/``to``.  ``transport`` is for
    tests (e.g. ``httpx.MockTransport``).
    """
    if out is None:
        out = sys.stdout.buffer
    if err is None:
        err = sys.stderr
    if now is None:
        now = time.time()
    try:
        base = api_url(store)
        from_s = resolve_time(from_, now, "-from")
        to_s = resolve_time(to, now, "-to")
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return 1

    url = query_url(base, from_s, to_s, q, regex, topic)
    method = "HEAD" if stats else "GET"
    if verbose or stats:
        print(f"-from {from_s} -to {to_s}", file=err)
    if verbose:
        print(f"{method} {url}", file=err)

    begin = time.monotonic()
    client = httpx.Client(timeout=_TIMEOUT, transport=transport)
    try:
        with client.stream(method, url) as resp:
            if verbose:
                print(f"HTTP {resp.status_code} {resp.reason_phrase}", file=err)
                for name in _HEADERS:
                    if name in resp.headers:
                        print(f"{name}: {resp.headers[name]}", file=err)
            status = resp.status_code
            if status not in (200, 206):
                body = b""
                if method == "GET":
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) > 4096:
                            break
                reason = _first_line(body)
                if status == 400:
                    print(f"error: bad query: {reason or 'HTTP 400'}", file=err)
                else:
                    print(f"error: store {base} answered HTTP {status}"
                          + (f": {reason}" if reason else ""), file=err)
                return 1
            if stats:
                _print_stats(resp, time.monotonic() - begin, err)
            else:
                stripper = RecordStripper(with_ulid)
                try:
                    for chunk in resp.iter_bytes():
                        data = stripper.feed(chunk)
                        if data:
                            out.write(data)
                    out.write(stripper.finish())
                    out.flush()
                except BrokenPipeError:
                    return 0  # e.g. `oklog query | head`: the reader has enough
            if status == 206:
                n = resp.headers.get("X-Oklog-Error-Count", "some")
                print(f"warning: partial results: {n} store node(s) failed to answer", file=err)
            return 0
    except httpx.ConnectError as e:
        reason = str(e) or type(e).__name__
        if "refused" in reason.lower():
            reason = "connection refused"
        print(f"error: cannot connect to store at {base}: {reason}", file=err)
        return 1
    except httpx.TimeoutException as e:
        print(f"error: store at {base} timed out: {e or type(e).__name__}", file=err)
        return 1
    except httpx.HTTPError as e:
        print(f"error: query to {base} failed: {e or type(e).__name__}", file=err)
        return 1
    finally:
        client.close()
