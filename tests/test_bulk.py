"""Bulk ingest, in process: the wire protocol, the IO-free upload core, and
the ingester's acknowledgement logic against a real ``IngestLog`` (files in
a temporary directory) driven like a store node would, on trio's MockClock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from oklog import metrics
from oklog.bulkwire import MAX_REPLY, Reply, ReplyReader, err_line, ok_line, parse_reply
from oklog.errors import IllegalTransition, PeerError, UnknownSegment, UploadTooLarge
from oklog.ingest.bulk import BulkIngester, BulkUpload, StampBlock
from oklog.ingest.log import IngestLog
from oklog.ingest.server import LineIngester
from oklog.ingest.segment import IngestBook, State
from oklog.records.format import is_valid_block, stamp
from oklog.ulid import Stamper


def stamp_block_with(stamper: Stamper) -> StampBlock:
    """Static topic mode's rule (what ``LineIngester.stamp_block`` does)."""

    def stamp_block(block: bytes) -> tuple[bytes, int]:
        lines = block.split(b"\n")
        lines.pop()  # after the final LF
        return stamp(lines, stamper), len(lines)

    return stamp_block


# --- the wire protocol ---------------------------------------------------------------------


def test_replies_round_trip() -> None:
    assert ok_line(0) == b"OK 0\n" and parse_reply(b"OK 0\n") == Reply(True, 0)
    assert parse_reply(ok_line(123456789)) == Reply(True, 123456789)
    assert parse_reply(err_line("no store")) == Reply(False, reason="no store")
    assert parse_reply(err_line("too large: more than 5 bytes")).too_large


def test_an_error_reason_stays_on_one_line_and_fits() -> None:
    line = err_line("a\nb\r\x00c" + "é" * 1000)
    assert line.count(b"\n") == 1 and line.endswith(b"\n") and len(line) <= MAX_REPLY
    assert parse_reply(line) is not None and parse_reply(line).reason.startswith("a b c")  # type: ignore[union-attr]
    assert err_line("\n") == b"ERR failed\n"


@pytest.mark.parametrize("line", [b"OK\n", b"OK -1\n", b"OK 01\n", b"OK 1 2\n", b"ok 1\n", b"HTTP/1.1 400\n",
                                  b"OK 1", b"ERR x\ny\n"])
def test_anything_else_is_not_a_reply(line: bytes) -> None:
    assert parse_reply(line) is None


def test_reply_reader_takes_its_line_whole_or_byte_by_byte() -> None:
    for reply in (b"OK 42\n", b"ERR not committed\n"):
        r = ReplyReader("peer")
        got = [r.feed(reply[i:i + 1]) for i in range(len(reply))]
        assert got[:-1] == [None] * (len(reply) - 1) and got[-1] == parse_reply(reply)
        assert ReplyReader("peer").feed(reply) == parse_reply(reply)


def test_reply_reader_refuses_garbage_long_lines_and_early_eof() -> None:
    with pytest.raises(PeerError, match="not a bulk reply"):
        ReplyReader("p").feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(PeerError, match="longer than"):
        ReplyReader("p").feed(b"x" * MAX_REPLY)
    r = ReplyReader("p")
    r.feed(b"OK 1")
    with pytest.raises(PeerError, match="inside the reply"):
        r.eof()
    with pytest.raises(PeerError, match="without a reply"):
        ReplyReader("p").eof()


# --- the upload core -------------------------------------------------------------------------


def _upload(chunks: list[bytes], max_record_size: int = 100, max_size: int = 1 << 20) -> tuple[bytes, BulkUpload]:
    up = BulkUpload(stamp_block_with(Stamper()), max_record_size=max_record_size, max_size=max_size)
    out = b"".join(up.feed(c) for c in chunks) + up.finish()
    return out, up


def payloads(records: bytes) -> list[bytes]:
    return [line.split(b" ", 2)[2] for line in records.split(b"\n")[:-1]]


def test_upload_stamps_every_line_whatever_the_chunks() -> None:
    data = b"".join(b"line %d \x00\xff%%s\r\n" % i for i in range(300)) + b"last without LF"
    want = [b"line %d \x00\xff%%s\r" % i for i in range(300)] + [b"last without LF"]
    rng = random.Random(7)
    for chunks in ([data], [data[i:i + 1] for i in range(len(data))],
                   [data[i:i + n] for i, n in _cuts(len(data), rng)]):
        out, up = _upload(chunks)
        assert is_valid_block(out) and payloads(out) == want and up.records == 301
        ulids = [line[:26] for line in out.split(b"\n")[:-1]]
        assert ulids == sorted(ulids) and len(set(ulids)) == len(ulids)


def _cuts(size: int, rng: random.Random) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < size:
        n = rng.randint(1, 50)
        out.append((i, n))
        i += n
    return out


def test_an_over_long_line_is_rejected_alone() -> None:
    data = b"a\n" + b"x" * 101 + b"\nb\n" + b"y" * 100 + b"\n" + b"z" * 500
    for chunks in ([data], [data[i:i + 7] for i in range(0, len(data), 7)]):
        out, up = _upload(chunks)
        assert payloads(out) == [b"a", b"b", b"y" * 100]
        assert up.records == 3 and up.take_rejected() == 2 and up.take_rejected() == 0


def test_an_upload_beyond_the_limit_is_refused() -> None:
    up = BulkUpload(stamp_block_with(Stamper()), max_record_size=100, max_size=10)
    assert up.feed(b"12345\n") != b""
    with pytest.raises(UploadTooLarge, match="too large: more than 10 bytes"):
        up.feed(b"67890\n")


def test_an_empty_upload_has_no_records() -> None:
    out, up = _upload([b""])
    assert out == b"" and up.records == 0


# --- the book ----------------------------------------------------------------------------------


def test_only_an_active_segment_can_be_discarded() -> None:
    book = IngestBook(60)
    book.activate("A")
    book.discard("A")
    assert book.state_of("A") is None
    book.activate("B")
    book.flushed("B", 10)
    with pytest.raises(IllegalTransition):
        book.discard("B")
    with pytest.raises(UnknownSegment):
        book.discard("C")
    book._check()


# --- the ingester: acknowledgement only after a commit -------------------------------------


class Upload:
    """One client connection to a ``BulkIngester`` over an in-memory stream."""

    def __init__(self, ingester: BulkIngester, nursery: trio.Nursery) -> None:
        self.client, server = trio.testing.memory_stream_pair()
        self.reply: bytes | None = None
        self.replied = trio.Event()
        nursery.start_soon(ingester.handle, server)

    async def send(self, data: bytes, *, close: bool = True) -> None:
        if data:
            await self.client.send_all(data)
        if close:
            await self.client.send_eof()

    async def read_reply(self) -> bytes:
        out = b""
        while chunk := await self.client.receive_some(4096):
            out += chunk
        self.reply = out
        self.replied.set()
        return out


def run(test, *, autojump: bool = True) -> None:  # type: ignore[no-untyped-def]
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0) if autojump else None)


# Far beyond any test's virtual time: a test that polls while a worker thread
# syncs a file can see the MockClock jump far ahead.
NEVER = 1e9


def make(tmp_path, ack_timeout: float = NEVER, max_size: int = 1 << 20) -> tuple[IngestLog, BulkIngester]:  # type: ignore[no-untyped-def]
    log = IngestLog(tmp_path, flush_age=0.5, pending_timeout=NEVER)
    log.open()
    return log, BulkIngester(log, stamp_block=stamp_block_with(Stamper()), max_record_size=1000, max_size=max_size,
                             ack_timeout=ack_timeout)


async def claim(log: IngestLog) -> str:
    """What a store node does first: take the next flushed segment and read it."""
    while (seg_id := log.next()) is None:
        await trio.sleep(0.1)
    log.mark_read(seg_id)
    return seg_id


def test_ok_comes_only_once_a_store_committed_the_segment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path)
    data = b"".join(b"record %d\n" % i for i in range(1000))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            nursery.start_soon(up.read_reply)
            await up.send(data)
            seg_id = await claim(log)
            # flushed as one segment of its own, exactly the upload
            assert payloads((tmp_path / f"{seg_id}.pending").read_bytes()) == data.splitlines()
            await trio.sleep(30)  # read, being replicated: no answer yet
            assert not up.replied.is_set()
            log.failed(seg_id)  # replication failed: back to flushed, still no answer
            await trio.sleep(5)
            assert not up.replied.is_set()
            seg_id2 = await claim(log)
            assert seg_id2 == seg_id
            log.commit(seg_id)
            await up.replied.wait()
        assert up.reply == b"OK 1000\n"
        assert not list(tmp_path.glob("*.pending")) and not list(tmp_path.glob("*.flushed"))

    run(main)


def test_no_commit_in_time_is_an_error_and_the_segment_is_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path, ack_timeout=60)
    before = metrics.ingest_bulk_uploads.labels("timeout")._value.get()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            nursery.start_soon(up.read_reply)
            t0 = trio.current_time()
            await up.send(b"a\nb\n")
            await up.replied.wait()
            assert trio.current_time() - t0 == pytest.approx(60, abs=0.5)
        assert up.reply is not None and up.reply.startswith(b"ERR not committed by a store within 60s")
        (seg,) = tmp_path.glob("*.flushed")  # still there, for the store tier
        assert log.book.state_of(seg.stem) is State.FLUSHED
        seg_id = await claim(log)
        log.commit(seg_id)  # a late commit wakes nobody and breaks nothing

    run(main)
    assert metrics.ingest_bulk_uploads.labels("timeout")._value.get() == before + 1


def test_uploads_are_answered_each_for_its_own_segment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ups = [Upload(ingester, nursery) for _ in range(3)]
            for up in ups:
                nursery.start_soon(up.read_reply)
            for i, up in enumerate(ups):
                await up.send(b"x\n" * (i + 1))
            seg_ids = [await claim(log) for _ in ups]
            sizes = {s: len((tmp_path / f"{s}.pending").read_bytes().splitlines()) for s in seg_ids}
            by_lines = {n: s for s, n in sizes.items()}
            log.commit(by_lines[2])
            await ups[1].replied.wait()
            assert not ups[0].replied.is_set() and not ups[2].replied.is_set()
            log.commit(by_lines[3])
            log.commit(by_lines[1])
        assert [up.reply for up in ups] == [b"OK 1\n", b"OK 2\n", b"OK 3\n"]

    run(main)


def test_line_port_writes_do_not_mix_into_a_bulk_segment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run_flusher)
            up = Upload(ingester, nursery)
            nursery.start_soon(up.read_reply)
            await up.send(b"bulk 1\n", close=False)
            await trio.sleep(0.1)
            log.write(b"01M7Z1NWKZ4AAAAAAAAAAAAA00 default fast line\n")  # the line ports' active segment
            await up.send(b"bulk 2\n")
            await trio.sleep(1)  # the active segment flushes by age, on its own
            seen = {}
            for _ in range(2):
                seg_id = await claim(log)
                seen[seg_id] = payloads((tmp_path / f"{seg_id}.pending").read_bytes())
            assert sorted(seen.values()) == [[b"bulk 1", b"bulk 2"], [b"fast line"]]
            for seg_id in seen:
                log.commit(seg_id)
            await up.replied.wait()
            nursery.cancel_scope.cancel()  # the flusher
        assert up.reply == b"OK 2\n"

    run(main)


def test_an_empty_upload_is_ok_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            await up.send(b"")
            assert await up.read_reply() == b"OK 0\n"
        assert list(tmp_path.iterdir()) == [tmp_path / "LOCK"]

    run(main)


def test_only_over_long_lines_is_ok_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            await up.send(b"x" * 5000 + b"\n")
            assert await up.read_reply() == b"OK 0\n"

    run(main)


def test_a_too_large_upload_is_refused_discarded_and_read_to_its_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path, max_size=10_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            nursery.start_soon(up.read_reply)
            for _ in range(30):  # 30 KB: the ingester goes on reading (and dropping) after its ERR
                await up.send(b"y" * 999 + b"\n", close=False)
            await up.send(b"")
            await up.replied.wait()
        assert up.reply is not None and up.reply.startswith(b"ERR too large: more than 10000 bytes")
        assert parse_reply(up.reply).too_large  # type: ignore[union-attr]
        assert list(tmp_path.iterdir()) == [tmp_path / "LOCK"] and log.book.counts()["active"]["segments"] == 0

    run(main)


class BreakingStream(trio.abc.HalfCloseableStream):
    """Delivers ``data``, then the connection breaks (a reset)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.data:
            out, self.data = self.data, b""
            return out
        raise trio.BrokenResourceError("connection reset")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_an_upload_cut_short_is_discarded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path)
    stream = BreakingStream(b"half\nan upl")

    async def main() -> None:
        await ingester.handle(stream)

    run(main)
    assert stream.sent == b""  # no answer: the client saw the connection break
    assert list(tmp_path.iterdir()) == [tmp_path / "LOCK"]
    assert log.book.counts()["active"]["segments"] == 0 and log.book.unconsumed() == 0


def test_shutdown_answers_a_waiting_upload_err(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log, ingester = make(tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            await up.send(b"a\n")
            await trio.sleep(5)
            nursery.cancel_scope.cancel()  # what the node does to its listeners on SIGTERM
        reply = b""
        while chunk := await up.client.receive_some(4096):
            reply += chunk
        assert reply == b"ERR ingester shutting down; send again\n"
        assert len(list(tmp_path.glob("*.flushed"))) == 1  # flushed: drained to the stores as usual

    run(main)


@pytest.mark.parametrize("where", ["open", "write", "finish"])
def test_a_write_error_is_answered_err_and_nothing_is_kept(tmp_path, monkeypatch, where) -> None:  # type: ignore[no-untyped-def]
    import errno

    from oklog.ingest import log as ingest_log

    log, ingester = make(tmp_path)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "open":  # the segment's file cannot even be created
        monkeypatch.setattr(ingest_log.ActiveSegment, "__init__", full)
    elif where == "write":
        monkeypatch.setattr(ingest_log.ActiveSegment, "write", full)
    else:
        monkeypatch.setattr(log, "_finish", full)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            await up.send(b"a\nb\n")
            assert await up.read_reply() == b"ERR ingester cannot write the segment: No space left on device\n"

    run(main)
    assert list(tmp_path.iterdir()) == [tmp_path / "LOCK"]
    assert log.book.counts()["active"]["segments"] == 0 and log.book.unconsumed() == 0


def test_lines_the_stamp_rule_leaves_out_are_not_counted_as_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The line ports' stamping rule decides (e.g. dynamic topics refuse a
    line without a valid topic): OK counts the records it made."""
    plain = stamp_block_with(Stamper())

    def picky(block: bytes) -> tuple[bytes, int]:
        kept = b"".join(line + b"\n" for line in block.split(b"\n")[:-1] if not line.startswith(b"bad"))
        return plain(kept) if kept else (b"", 0)

    log = IngestLog(tmp_path, pending_timeout=NEVER)
    log.open()
    ingester = BulkIngester(log, stamp_block=picky, max_record_size=1000, max_size=1 << 20, ack_timeout=NEVER)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            nursery.start_soon(up.read_reply)
            await up.send(b"good 1\nbad 2\ngood 3\nbad 4\n")
            seg_id = await claim(log)
            assert payloads((tmp_path / f"{seg_id}.pending").read_bytes()) == [b"good 1", b"good 3"]
            log.commit(seg_id)
            await up.replied.wait()
        assert up.reply == b"OK 2\n"

    run(main)


def test_in_dynamic_topic_mode_bulk_takes_the_line_ports_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As the node wires it: ``LineIngester.stamp_block`` in dynamic mode.
    Each line's first field is its topic; a line without a valid one is
    rejected and counted, and OK counts only the records stored."""
    log = IngestLog(tmp_path, pending_timeout=NEVER)
    log.open()
    lines = LineIngester(log, max_record_size=1000, stamper=Stamper(), topic_mode="dynamic")
    ingester = BulkIngester(log, stamp_block=lines.stamp_block, max_record_size=1000, max_size=1 << 20,
                            ack_timeout=NEVER)
    rejected = metrics.ingest_rejected.labels("invalid_topic")
    before = rejected._value.get()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            up = Upload(ingester, nursery)
            nursery.start_soon(up.read_reply)
            await up.send(b"web GET /\nno-space\na.b x\napi  two spaces\n bad\ndb last")
            seg_id = await claim(log)
            stored = (tmp_path / f"{seg_id}.pending").read_bytes()
            assert is_valid_block(stored)
            assert [line[27:] for line in stored.split(b"\n")[:-1]] == [b"web GET /", b"api  two spaces", b"db last"]
            log.commit(seg_id)
            await up.replied.wait()
        assert up.reply == b"OK 3\n"

    run(main)
    assert rejected._value.get() - before == 3


def test_after_a_too_large_err_a_client_that_never_ends_is_cut_off(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oklog.ingest.bulk import DISCARD_TIMEOUT

    log, ingester = make(tmp_path, max_size=10)

    async def main() -> None:
        client, server = trio.testing.memory_stream_pair()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingester.handle, server)
            await client.send_all(b"x" * 100 + b"\n")  # and never half-closes
            reply = b""
            while chunk := await client.receive_some(4096):  # the answer, then the server's EOF
                reply += chunk
            assert reply.startswith(b"ERR too large") and trio.current_time() - t0 < 1
        # the handler went on reading (and dropping) until it gave up
        assert trio.current_time() - t0 == pytest.approx(DISCARD_TIMEOUT, abs=1)

    run(main)
