"""``oklog stream``: print matching records as the store tier writes them.

``run_stream`` opens ``GET /store/stream?q=&window=[&regex=true][&topic=]``
on one store node and prints every record line as ``oklog query`` does:
the payload, or ``ULID SP PAYLOAD`` with ``with_ulid`` (the topic is never
printed).  Notice lines (``oklog.stream.wire``) are not records: a
heartbeat is skipped, a ``#dropped N`` notice is printed on stderr as a
warning (the node, or a store on the way, dropped N matching records
because this client fell behind).

It runs until interrupted (Ctrl-C: exit 0, quietly) or stdout is closed.
If the node cannot be reached at the start, or refuses the request (a bad
regex: 400), that is a one-line error and exit 1.  Once streaming, a
connection that breaks or falls silent (no heartbeat for
``IDLE_TIMEOUT``) is opened again, with a back-off from 1 s to 5 s, and
a line on stderr says so; records written while it was down are not
replayed (query them with ``oklog query``).
"""

from __future__ import annotations

import sys
from typing import BinaryIO, TextIO

import httpx
import trio

from oklog import timespec
from oklog.addr import api_url
from oklog.clientconf import ClientConf
from oklog.errors import ConfigError
from oklog.lines import LineSplitter
from oklog.querycli import (CONNECT_TIMEOUT, _connect_reason, _error_reason, _payload_lines,
                            _strip_topic_lines, match_params)
from oklog.stream.params import MAX_WINDOW
from oklog.stream.wire import IDLE_TIMEOUT, parse_dropped, split_notices

__all__ = ["run_stream", "stream_url"]

RETRY_FIRST = 1.0
RETRY_MAX = 5.0


def stream_url(base: str, q: str | bytes, regex: bool = False, topic: str | None = None,
               window: float = 3.0) -> str:
    """``{base}/store/stream?...`` with every value percent-encoded."""
    return f"{base}/store/stream?{match_params(q, regex, topic)}&window={round(window * 1000)}ms"


class _Refused(Exception):
    """The node answered, and not with a stream: no point retrying (a 400)."""


class _Printer:
    """Record lines → ``out`` (as ``oklog query`` prints them); notices → ``err``."""

    def __init__(self, with_ulid: bool, out: BinaryIO, err: TextIO) -> None:
        self.convert = _strip_topic_lines if with_ulid else _payload_lines
        self.lines = LineSplitter(final_tail="drop")
        self.out = out
        self.err = err

    def feed(self, chunk: bytes) -> None:
        block = self.lines.feed(chunk)
        if not block:
            return
        records, notices = split_notices(block)
        for notice in notices:
            dropped = parse_dropped(notice)
            if dropped:
                print(f"warning: {dropped} matching record(s) dropped: this stream fell behind "
                      f"(the oldest queued records were discarded)", file=self.err, flush=True)
            elif notice.strip(b"# "):
                print(f"notice: {notice[1:].decode('utf-8', 'replace').strip()}", file=self.err, flush=True)
        if records:
            self.out.write(self.convert(records))
            self.out.flush()

    def reset(self) -> None:
        """A new connection: a partial line of the old one is dropped."""
        self.lines = LineSplitter(final_tail="drop")


def run_stream(
    store: str = "localhost:7650",
    *,
    q: str | bytes = "",
    regex: bool = False,
    topic: str | None = None,
    window: str | float = "3s",
    with_ulid: bool = False,
    verbose: bool = False,
    out: BinaryIO | None = None,
    err: TextIO | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    conf: ClientConf | None = None,
) -> int:
    """Stream until interrupted; return the process exit code."""
    out = sys.stdout.buffer if out is None else out
    err = sys.stderr if err is None else err
    try:
        base = api_url(store)
        seconds = window if isinstance(window, (int, float)) else timespec.parse_duration(window)
        if not 0 <= seconds <= MAX_WINDOW:
            raise ValueError(f"{window!r}: must be between 0s and {MAX_WINDOW:g}s")
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return 1
    except ValueError as e:
        print(f"error: -window: {e}", file=err)
        return 1
    url = stream_url(base, q, regex, topic, float(seconds))
    if verbose:
        print(f"GET {url}", file=err)
    printer = _Printer(with_ulid, out, err)
    try:
        trio.run(_run, base, url, printer, verbose, err, transport, conf or ClientConf())
    except BaseException as group:  # maybe inside exception groups
        leaf = _leaf(group)
        if isinstance(leaf, (KeyboardInterrupt, BrokenPipeError)):
            return 0  # Ctrl-C, or `oklog stream | head`: the reader has enough
        if isinstance(leaf, (_Refused, _Retry)):
            print(f"error: {leaf}", file=err)
        elif isinstance(leaf, httpx.ConnectError):
            print(f"error: cannot connect to store at {base}: {_connect_reason(leaf)}", file=err)
        elif isinstance(leaf, httpx.HTTPError):
            print(f"error: stream from {base} failed: {leaf or type(leaf).__name__}", file=err)
        else:
            raise
        return 1
    return 0


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _run(base: str, url: str, printer: _Printer, verbose: bool, err: TextIO,
               transport: httpx.AsyncBaseTransport | None, conf: ClientConf) -> None:
    timeouts = httpx.Timeout(connect=CONNECT_TIMEOUT, read=IDLE_TIMEOUT, write=10.0, pool=CONNECT_TIMEOUT)
    async with conf.async_client(timeout=timeouts, transport=transport) as client:
        await _once(client, url, printer)  # errors at the start are the user's to see
        delay = RETRY_FIRST
        while True:
            print(f"warning: lost the stream from {base}; reconnecting", file=err, flush=True)
            while True:
                await trio.sleep(delay)
                try:
                    await _once(client, url, printer, reconnect=True)
                    delay = RETRY_FIRST
                    break
                except (httpx.HTTPError, _Retry) as exc:
                    delay = min(delay * 2, RETRY_MAX)
                    if verbose:
                        print(f"warning: {base}: {_reason(exc)}; retrying in {delay:g}s",
                              file=err, flush=True)


class _Retry(Exception):
    """The node answered with a status worth trying again (503, 5xx)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, httpx.ConnectError):
        return _connect_reason(exc)
    return str(exc) or type(exc).__name__


async def _once(client: httpx.AsyncClient, url: str, printer: _Printer, reconnect: bool = False) -> None:
    """One connection: print what it brings until it ends (normally or not)."""
    async with client.stream("GET", url) as resp:
        if resp.status_code != 200:
            reason = await _error_reason(resp) or f"HTTP {resp.status_code}"
            if resp.status_code == 400:
                raise _Refused(f"bad query: {reason}")
            if reconnect or resp.status_code == 503:
                raise _Retry(f"HTTP {resp.status_code}: {reason}")
            raise _Refused(f"store answered HTTP {resp.status_code}: {reason}")
        if reconnect:
            print("notice: stream reconnected (records written meanwhile are not replayed: "
                  "use oklog query for those)", file=printer.err, flush=True)
        printer.reset()
        try:
            async for chunk in resp.aiter_bytes():
                printer.feed(chunk)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
            return  # the node went away or fell silent: reconnect
