"""``oklog query``: ask a store node for records and print them.

``run_query`` builds ``GET /store/query?from=&to=&q=[&regex=true][&topic=]``
(``HEAD`` for ``stats``), streams the answer and writes each record's
payload (or ``ULID SP PAYLOAD`` with ``with_ulid``) to ``out``, a block of
lines at a time: memory stays bounded whatever the result size.

Unlike OK Log's CLI, a 206 (some store node failed to answer) still prints
the results, with a warning on stderr, and so does every ``X-Oklog-Warning``
the store sends (e.g. too few live stores for the replication factor).
Errors are one line on ``err`` and exit code 1; nothing here raises for a
bad argument, an unreachable store or one that accepts and never answers:
connecting, the wait for the response headers (``timeout``) and every gap
between body chunks are bounded.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO, TextIO
from urllib.parse import quote, quote_from_bytes

import httpx
import trio

from oklog import payloads, timespec
from oklog.addr import api_url
from oklog.clientconf import ClientConf
from oklog.errors import ConfigError
from oklog.tls import describe as describe_tls
from oklog.lines import LineSplitter, Pieces

__all__ = ["run_query", "resolve_time", "query_url", "RecordStripper", "human_bytes"]

#: Connecting, and sending the request, are short; the wait for the response
#: headers is ``-timeout`` (a store answers with headers before it scans);
#: after that only the gaps between body chunks are timed, as generously as
#: between nodes (a rare-term scan may send nothing for a while).
CONNECT_TIMEOUT = 5.0
BODY_GAP = 300.0
#: Body bytes gathered before they are converted and written at once...
BLOCK = 1 << 20
#: ...unless a read brings less than this: the store paused (a sparse
#: answer), so what has come is printed now rather than held back.
SHORT_READ = 32 << 10

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
    "X-Oklog-Warning",
]


def resolve_time(value: str, now: float, flag: str = "-from") -> str:
    """The ``from``/``to`` parameter for ``value``, in the grammar of
    ``oklog.timespec`` (the server's too): a ULID is sent as it is (upper
    case), anything else as the RFC3339 time (UTC, milliseconds) it means
    relative to ``now`` (Unix seconds).  ConfigError naming the flag otherwise.
    """
    try:
        resolved = timespec.resolve(value, int(now * 1000))
    except ValueError as exc:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise ConfigError(f"couldn't parse {flag} {shown!r}: {exc}") from None
    if isinstance(resolved, bytes):
        return resolved.decode("ascii")
    return timespec.format_rfc3339(resolved)


def match_params(q: str | bytes, regex: bool = False, topic: str | None = None) -> str:
    """``q=...[&regex=true][&topic=...]``, percent-encoded (``q`` may be any bytes)."""
    qb = q if isinstance(q, bytes) else q.encode("utf-8", "surrogateescape")
    params = f"q={quote_from_bytes(qb, safe='')}"
    if regex:
        params += "&regex=true"
    if topic is not None:
        params += f"&topic={quote(topic, safe='')}"
    return params


def query_url(
    base: str, from_: str, to: str, q: str | bytes, regex: bool = False, topic: str | None = None
) -> str:
    """``{base}/store/query?...`` with every value percent-encoded."""
    return (f"{base}/store/query?from={quote(from_, safe='')}&to={quote(to, safe='')}&"
            + match_params(q, regex, topic))


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
    if len(block) >= payloads.MIN_BLOCK:
        cut = payloads.fixed_width(block, keep_ulid=True)
        if cut is not None:
            return cut
    lines = block.split(b"\n")
    lines.pop()  # block ends with LF
    return b"\n".join([ln[:27] + ln[i + 1 :] if ln[26:27] == b" " and (i := ln.find(b" ", 27)) > 0 else ln
                       for ln in lines]) + b"\n"


def _payload_lines(block: bytes) -> bytes:
    # ULID SP TOPIC SP PAYLOAD -> PAYLOAD.  A big block whose headers all
    # have one length is cut in vectorised passes (oklog.payloads); else one
    # findall over the block; if some line does not have the record shape
    # (count differs), redo the block line by line, leaving malformed lines
    # unchanged.
    if len(block) >= payloads.MIN_BLOCK:
        cut = payloads.fixed_width(block)
        if cut is not None:
            return cut
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
        self._lines = LineSplitter(final_tail="keep")

    def feed(self, chunk: bytes) -> bytes:
        block = self._lines.feed(chunk)
        return self._convert(block) if block else b""

    def finish(self) -> bytes:
        block = b"".join(self._lines.finish())
        return self._convert(block) if block else b""


# --- the command ----------------------------------------------------------------


def _go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _first_line(body: bytes, limit: int = 500) -> str:
    text = body.decode("utf-8", "replace").strip()
    line = text.splitlines()[0] if text else ""
    return line[:limit]


async def _error_reason(resp: httpx.Response) -> str:
    """The first line of an error answer (reading at most its first 4 KiB or so)."""
    body = b""
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > 4096:
            break
    return _first_line(body)


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
    q: str | bytes = "",
    regex: bool = False,
    stats: bool = False,
    with_ulid: bool = False,
    verbose: bool = False,
    topic: str | None = None,
    timeout: str | float = "20s",
    out: BinaryIO | None = None,
    err: TextIO | None = None,
    now: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    conf: ClientConf | None = None,
) -> int:
    """Run one query against ``store``; return the process exit code.

    Prints records on ``out`` (default ``sys.stdout.buffer``), statistics
    (``stats``), the request and X-Oklog-* headers (``verbose``), warnings
    and errors on ``err`` (default ``sys.stderr``).  ``q`` may be any bytes.
    ``timeout`` (a duration or seconds) bounds the wait for the store to
    start answering.  ``now`` (Unix seconds) fixes the clock for relative
    ``from_``/``to``.  ``transport`` is for tests (``httpx.MockTransport``).
    ``conf`` carries the token and TLS settings (``-token-file``, ``-ca-file``...).
    """
    out = sys.stdout.buffer if out is None else out
    err = sys.stderr if err is None else err
    now = time.time() if now is None else now
    try:
        base = api_url(store)
        from_s = resolve_time(from_, now, "-from")
        to_s = resolve_time(to, now, "-to")
        wait = timeout if isinstance(timeout, (int, float)) else timespec.parse_duration(timeout)
        if wait <= 0:
            raise ValueError(f"{timeout!r}: must be more than 0")
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return 1
    except ValueError as e:
        print(f"error: -timeout: {e}", file=err)
        return 1
    request = _Request(base, query_url(base, from_s, to_s, q, regex, topic),
                       "HEAD" if stats else "GET", float(wait))
    if verbose or stats:
        print(f"-from {from_s} -to {to_s}", file=err)
    if verbose:
        print(f"{request.method} {request.url}", file=err)
    try:
        return trio.run(_run, request, with_ulid, verbose, out, err, transport, conf or ClientConf())
    except httpx.ConnectError as e:
        print(f"error: cannot connect to store at {base}: {_connect_reason(e)}", file=err)
    except httpx.RemoteProtocolError as e:
        print(f"error: query to {base} failed: {e or type(e).__name__}{_closed_hint(base, conf)}",
              file=err)
    except trio.TooSlowError:
        print(f"error: store at {base} did not answer within {request.wait:g}s", file=err)
    except httpx.TimeoutException as e:
        print(f"error: store at {base} timed out: {e or type(e).__name__}", file=err)
    except httpx.HTTPError as e:
        reason = describe_tls(e) or f"{e or type(e).__name__}"
        if isinstance(e, httpx.NetworkError) and not describe_tls(e):  # reset, broken: maybe refused
            reason += _closed_hint(base, conf)
        print(f"error: query to {base} failed: {reason}", file=err)
    return 1


def _closed_hint(base: str, conf: ClientConf | None) -> str:
    """Why a node may close a connection without answering."""
    if base.startswith("http:"):
        return " (if the node serves HTTPS, use -store https://...)"
    if conf is None or conf.cert_file is None:
        return (" (a node that requires client certificates, -api.tls-ca, closes the connection: "
                "give -cert-file and -key-file)")
    return " (the node may not accept our client certificate: is it signed by the node's -api.tls-ca?)"


def _connect_reason(exc: BaseException) -> str:
    """The root cause of a failed connect, in a few words."""
    tls = describe_tls(exc)
    if tls is not None:
        return tls
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.append(e)
        if isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower():
            return "connection refused"
        if isinstance(e, BaseExceptionGroup):
            todo += e.exceptions
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class _Request:
    base: str  # the store's base URL, for messages
    url: str
    method: str
    wait: float  # seconds for the response headers


async def _run(request: _Request, with_ulid: bool, verbose: bool, out: BinaryIO, err: TextIO,
               transport: httpx.AsyncBaseTransport | None, conf: ClientConf) -> int:
    timeouts = httpx.Timeout(connect=CONNECT_TIMEOUT, read=BODY_GAP, write=30.0, pool=CONNECT_TIMEOUT)
    begin = time.monotonic()
    async with conf.async_client(timeout=timeouts, transport=transport) as client:
        with trio.fail_after(request.wait):
            resp = await client.send(client.build_request(request.method, request.url), stream=True)
        try:
            return await _answer(request, resp, with_ulid, verbose, out, err, begin)
        finally:
            await resp.aclose()


async def _answer(request: _Request, resp: httpx.Response, with_ulid: bool, verbose: bool,
                  out: BinaryIO, err: TextIO, begin: float) -> int:
    if verbose:
        print(f"HTTP {resp.status_code} {resp.reason_phrase}", file=err)
        for name in _HEADERS:
            if name in resp.headers:
                print(f"{name}: {resp.headers[name]}", file=err)
    status = resp.status_code
    if status not in (200, 206):
        reason = await _error_reason(resp) if request.method == "GET" else ""
        if status == 400:
            print(f"error: bad query: {reason or 'HTTP 400'}", file=err)
        elif status == 401:
            hint = "" if "-token-file" in reason else " (give the cluster's token with -token-file)"
            print(f"error: store {request.base} answered HTTP 401: {reason or 'unauthorized'}{hint}",
                  file=err)
        else:
            print(f"error: store {request.base} answered HTTP {status}"
                  + (f": {reason}" if reason else ""), file=err)
        return 1
    for warning in filter(None, resp.headers.get("X-Oklog-Warning", "").split(" | ")):
        print(f"warning: {warning}", file=err)
    if request.method == "HEAD":
        _print_stats(resp, time.monotonic() - begin, err)
    else:
        stripper = RecordStripper(with_ulid)
        held = Pieces()
        try:
            async for chunk in resp.aiter_bytes():
                held.add(chunk)
                if held.size >= BLOCK or len(chunk) < SHORT_READ:
                    data = stripper.feed(held.take())
                    if data:
                        out.write(data)
            if held:
                out.write(stripper.feed(held.take()))
            out.write(stripper.finish())
            out.flush()
        except BrokenPipeError:
            return 0  # e.g. `oklog query | head`: the reader has enough
    if status == 206:
        n = resp.headers.get("X-Oklog-Error-Count", "some")
        print(f"warning: partial results: {n} store node(s) failed to answer", file=err)
    return 0
