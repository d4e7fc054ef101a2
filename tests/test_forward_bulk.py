"""``oklog forward -bulk`` against scripted bulk ingesters on 127.0.0.1:
segments cut by size and age, each sent again until it is acknowledged."""

from __future__ import annotations

import os

import pytest
import trio

import oklog.forward as fwd
from oklog.bulkwire import err_line, ok_line
from oklog.forward import ForwardStats, forward
from tests.test_forward import TRICKY, FirstTarget


class FakeBulkIngester:
    """Reads each upload to its EOF, then answers per ``script`` (one entry
    per connection, the last one repeating):

    ``ok`` OK <lines>; ``ok-1`` OK <lines - 1>; ``err`` ERR; ``close`` no
    answer; ``garbage`` not a reply; ``hang`` never answers; ``limit``
    ERR too large above ``limit`` bytes, else OK.
    """

    def __init__(self, script: list[str], limit: int = 0) -> None:
        self.script = script
        self.limit = limit
        self.uploads: list[list] = []  # [what came, how it was answered]
        self.port = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def acked(self) -> bytes:
        return b"".join(data for data, how in self.uploads if how.startswith("ok"))

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        how = self.script[min(len(self.uploads), len(self.script) - 1)]
        entry: list = [b"", how]
        self.uploads.append(entry)
        data = bytearray()
        async with stream:
            while chunk := await stream.receive_some(65536):
                data += chunk
            entry[0] = bytes(data)
            lines = data.count(b"\n")
            if how == "limit":
                how = "ok" if len(data) <= self.limit else "too-large"
                entry[1] = how
            replies = {"ok": ok_line(lines), "ok-1": ok_line(lines - 1), "err": err_line("no store"),
                       "close": b"", "garbage": b"HTTP/1.1 400 Bad Request\r\n\r\n",
                       "too-large": err_line(f"too large: more than {self.limit} bytes")}
            if how == "hang":
                await trio.sleep_forever()
            await stream.send_all(replies[how])


async def feed(w: int, parts: list[bytes | float]) -> None:
    """Write the byte parts to the pipe, sleeping for the float ones, then close it."""
    async with trio.lowlevel.FdStream(w) as stream:
        for part in parts:
            if isinstance(part, float):
                await trio.sleep(part)
            else:
                await stream.send_all(part)


def run_bulk(scripts: list[list[str]], parts: list[bytes | float], *, limit: int = 0,
             **kw: object) -> tuple[list[FakeBulkIngester], ForwardStats]:
    ings = [FakeBulkIngester(s, limit) for s in scripts]
    stats = ForwardStats()
    kw = {"backoff_initial": 0.01, "backoff_max": 0.05, **kw}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for ing in ings:
                await ing.start(nursery)
            r, w = os.pipe()
            try:
                nursery.start_soon(feed, w, parts)
                with trio.fail_after(60):
                    await forward([i.addr for i in ings], r, bulk=True, stats=stats, **kw)  # type: ignore[arg-type]
            finally:
                os.close(r)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return ings, stats


@pytest.fixture(autouse=True)
def start_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fwd, "_rng", FirstTarget())


DATA = b"".join(b"line %d %s\n" % (i, b"p" * (i % 50)) for i in range(2000))


def test_segments_are_cut_by_size_and_all_acknowledged() -> None:
    (ing,), stats = run_bulk([["ok"]], [DATA], bulk_size=10_000)
    assert ing.acked() == DATA
    assert len(ing.uploads) == stats.segments_acked > 5
    assert all(len(data) < 10_000 + 256 * 1024 for data, _ in ing.uploads)
    assert stats.lines_sent == 2000 and stats.bytes_sent == len(DATA)
    assert stats.resends == 0 and stats.lines_rejected == 0


def test_bytes_arrive_exactly() -> None:
    (ing,), stats = run_bulk([["ok"]], [TRICKY])
    assert ing.acked() == TRICKY + b"\n"  # the last line gets its LF
    assert stats.segments_acked == 1


def test_a_segment_is_cut_by_age() -> None:
    (ing,), stats = run_bulk([["ok"]], [b"first\n", 1.5, b"second\n"], bulk_size=1 << 20, bulk_age=0.2)
    assert [data for data, _ in ing.uploads] == [b"first\n", b"second\n"]


@pytest.mark.parametrize("failure", ["err", "close", "garbage", "hang"])
def test_a_failed_upload_is_sent_again(failure: str) -> None:
    (ing,), stats = run_bulk([[failure, failure, "ok"]], [DATA], bulk_size=1 << 20, bulk_timeout=0.5)
    assert [data for data, _ in ing.uploads] == [DATA] * 3
    assert ing.acked() == DATA and stats.resends == 2 and stats.segments_acked == 1


def test_a_failing_ingester_is_left_for_the_next() -> None:
    (bad, good), stats = run_bulk([["err"], ["ok"]], [DATA], bulk_size=4000)
    assert good.acked() == DATA
    assert bad.acked() == b"" and len(bad.uploads) >= 1 and stats.resends >= 1


def test_too_large_for_the_ingester_is_split() -> None:
    (ing,), stats = run_bulk([["limit"]], [DATA], bulk_size=1 << 20, limit=5000)
    assert ing.acked() == DATA
    assert all(len(d) <= 5000 for d, how in ing.uploads if how == "ok")
    assert stats.lines_sent == 2000 and stats.resends == 0


def test_a_lone_line_too_large_for_the_ingester_is_dropped_and_counted() -> None:
    (ing,), stats = run_bulk([["limit"]], [b"x" * 100 + b"\nok\n"], limit=50)
    assert ing.acked() == b"ok\n" and stats.lines_dropped == 1


def test_records_the_ingester_left_out_are_counted() -> None:
    (ing,), stats = run_bulk([["ok-1"]], [b"a\nb\nc\n"])
    assert stats.lines_sent == 3 and stats.lines_rejected == 1


def test_bulk_uses_port_7653_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    ports: list[int] = []

    async def refuse(host: str, port: int, **kw: object) -> trio.SocketStream:
        ports.append(port)
        raise OSError("refused")

    monkeypatch.setattr(trio, "open_tcp_stream", refuse)

    async def main() -> None:
        r, w = os.pipe()
        os.write(w, b"x\n")
        os.close(w)
        with trio.move_on_after(0.5):
            await forward(["127.0.0.1"], r, bulk=True, backoff_initial=0.01, backoff_max=0.01)
        os.close(r)

    trio.run(main)
    assert ports and set(ports) == {7653}
