"""Topics: dynamic-mode stamping at ingest, the per-block topic index, its
sidecar form, and queries that skip blocks holding no record of a topic."""

from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from oklog.config import NodeConfig, flags
from oklog.errors import ConfigError
from oklog.query import local
from oklog.query.params import Query
from oklog.records.format import TOPIC_RE, stamp, validate_block
from oklog.records.topics import check_topic, stamp_dynamic
from oklog.segment import index_segment, open_segment, write_segment
from oklog.segment.table import decode, encode, load_sidecar, sidecar_path
from oklog.segment.topics import MAX_TOPICS, TopicIndex, block_topics, build
from oklog.store.log import StoreLog
from oklog.ulid import MAX_ULID, MIN_ULID, Stamper
from tests.recordutil import ulid


def records_of(block: bytes) -> list[tuple[bytes, bytes]]:
    """(topic, payload) of every record of a block."""
    out = []
    for line in block.split(b"\n")[:-1]:
        _, topic, payload = line.split(b" ", 2)
        out.append((topic, payload))
    return out


# --- dynamic stamping ---------------------------------------------------------------


def test_dynamic_lines_become_topic_and_exact_payload() -> None:
    lines = [b"web GET /a", b"db  two spaces", b"a-b_c9 x", b"T ", b"web \xff\x00\r", b"Z9 tail "]
    block, rejected = stamp_dynamic(lines, Stamper())
    validate_block(block)
    assert rejected == 0
    assert records_of(block) == [(b"web", b"GET /a"), (b"db", b" two spaces"), (b"a-b_c9", b"x"),
                                 (b"T", b""), (b"web", b"\xff\x00\r"), (b"Z9", b"tail ")]


@pytest.mark.parametrize("bad", [
    b"", b"no-space-at-all", b" leading space", b"-dash first", b"_under first", b"a/b x",
    b"a.b x", b"tab\there", b"caf\xc3\xa9 x", b"\xff x", b"x\ty z",
])
def test_invalid_topic_lines_are_rejected_and_the_rest_kept(bad: bytes) -> None:
    block, rejected = stamp_dynamic([b"ok one", bad, b"ok two"], Stamper())
    assert rejected == 1
    assert records_of(block) == [(b"ok", b"one"), (b"ok", b"two")]


def test_only_invalid_lines_give_an_empty_block() -> None:
    assert stamp_dynamic([b"", b"nope"], Stamper()) == (b"", 2)
    assert stamp_dynamic([], Stamper()) == (b"", 0)


def test_dynamic_ulids_increase_across_blocks() -> None:
    stamper = Stamper()
    a, _ = stamp_dynamic([b"t x"] * 40_000, stamper)
    b = stamp([b"y"], stamper)
    c, _ = stamp_dynamic([b"u z"] * 3, stamper)
    ulids = [line[:26] for line in (a + b + c).split(b"\n")[:-1]]
    assert ulids == sorted(ulids) and len(set(ulids)) == len(ulids)


@given(st.lists(st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=30))
def test_dynamic_stamping_matches_the_per_line_rule(lines: list[bytes]) -> None:
    block, rejected = stamp_dynamic(lines, Stamper())
    want = []
    for line in lines:
        topic, sp, payload = line.partition(b" ")
        if sp and TOPIC_RE.fullmatch(topic):
            want.append((topic, payload))
    assert rejected == len(lines) - len(want)
    assert (records_of(block) if block else []) == want
    if block:
        validate_block(block)


def test_topic_flags() -> None:
    table = dict(flags("ingest"))
    assert table["ingest_topic_mode"].parse("dynamic") == "dynamic"
    assert NodeConfig().ingest_topic_mode == "static" and NodeConfig().ingest_topic == "default"
    for bad in ("Static", "both", ""):
        with pytest.raises(ConfigError):
            table["ingest_topic_mode"].parse(bad)
    assert table["ingest_topic"].parse("app-1_x") == "app-1_x"
    for bad in ("", "-x", "a b", "a/b", "é"):
        with pytest.raises(ConfigError):
            table["ingest_topic"].parse(bad)
    assert "ingest_topic" not in dict(flags("store"))
    assert check_topic(b"a") and not check_topic(b"a\n")


# --- the topic block index ------------------------------------------------------------


def block(topics: list[bytes], start: int = 0) -> bytes:
    return b"".join(ulid(start + i) + b" " + t + b" payload %d\n" % i for i, t in enumerate(topics))


def test_block_topics() -> None:
    assert block_topics(block([b"default"] * 50)) == {b"default"}
    assert block_topics(block([b"a"])) == {b"a"}
    assert block_topics(block([b"a", b"b", b"a", b"c"])) == {b"a", b"b", b"c"}
    assert block_topics(block([b"ab", b"abc"])) == {b"ab", b"abc"}  # a prefix is another topic
    assert block_topics(block([b"abc", b"ab"])) == {b"ab", b"abc"}
    assert block_topics(b"") == set()
    # a record whose payload holds " other " is still of its own topic
    assert block_topics(ulid(1) + b" t x other y\n" + ulid(2) + b" t other \n") == {b"t"}


@given(st.lists(st.sampled_from([b"a", b"b", b"ab", b"default", b"x-1_Z"]), min_size=1, max_size=40))
def test_block_topics_is_the_set_of_topic_fields(topics: list[bytes]) -> None:
    assert block_topics(block(topics)) == set(topics)


def test_topic_index_build_and_json_round_trip() -> None:
    index = build([{b"a"}, {b"a", b"b"}, set(), {b"b"}])
    assert index is not None and index.blocks == 4
    assert index.blocks_with(b"a") == 0b0011 and index.blocks_with(b"b") == 0b1010
    assert index.blocks_with(b"zzz") == 0
    again = TopicIndex.from_json(json.loads(json.dumps(index.to_json())), 4)
    assert again == index
    with pytest.raises(ValueError):
        TopicIndex.from_json({"a": "10"}, 4)  # block 4 of a 4-block table
    with pytest.raises(TypeError):
        TopicIndex.from_json(["a"], 4)
    assert build([{b"t%d" % i} for i in range(MAX_TOPICS + 1)]) is None
    assert build([]) == TopicIndex({}, 0)


def mixed_segment(path: Path, topics_per_block: list[list[bytes]]) -> bytes:
    """A segment whose every block holds the given topics (4 KiB blocks)."""
    body = []
    n = 0
    for topics in topics_per_block:
        size = 0
        while size < 4096:  # one block's worth
            for t in topics:
                line = ulid(n) + b" " + t + b" " + b"x" * 60 + b" seq=%d\n" % n
                body.append(line)
                size += len(line)
                n += 1
    data = b"".join(body)
    write_segment(path, [data], block_size=4096)
    return data


def test_index_segment_and_sidecar_keep_the_topics(tmp_path: Path) -> None:
    path = tmp_path / "seg.flushed"
    mixed_segment(path, [[b"web"], [b"web", b"db"], [b"db"], [b"web"]])
    with open_segment(path) as reader:
        table = reader.table
    wild, raw, topics = index_segment(path, table)
    assert topics is not None
    web, db = topics.blocks_with(b"web"), topics.blocks_with(b"db")
    assert web and db and not web & ~((1 << len(table)) - 1)
    assert web | db == (1 << len(table)) - 1  # every block holds one of them
    assert db & web  # some block (the second kind) holds both
    table.topics = topics
    st_ = path.stat()
    data = encode(table, st_.st_size, st_.st_mtime_ns)
    assert decode(data, st_.st_size, st_.st_mtime_ns).topics == topics  # type: ignore[union-attr]


def _without_topics_key(data: bytes) -> bytes:
    """The same sidecar as an earlier version wrote it: no "topics" key."""
    version, hlen = struct.unpack_from("<II", data, 8)
    header = json.loads(data[16 : 16 + hlen])
    del header["topics"]
    new = json.dumps(header).encode()
    body = data[:8] + struct.pack("<II", version, len(new)) + new + data[16 + hlen : -4]
    return body + struct.pack("<I", zlib.crc32(body))


def make_store(path: Path) -> StoreLog:
    store = StoreLog(path, block_size=4096)
    store.open()
    return store


async def write_topics(store: StoreLog, rng: random.Random, n: int = 3000) -> bytes:
    """Records whose topics come in runs (as from a few producers)."""
    lines = []
    topic = b"web"
    for i in range(n):
        if rng.random() < 0.01:
            topic = rng.choice([b"web", b"db", b"ab", b"a"])
        lines.append(ulid(10_000 + i) + b" " + topic + b" msg %d %s\n" % (i, rng.choice([b"ok", b"web db"])))
    body = b"".join(lines)

    async def chunks():  # type: ignore[no-untyped-def]
        yield body

    await store.write_segment(chunks())
    return body


async def topic_answers(store: StoreLog, q: bytes = b"") -> dict[bytes, tuple[bytes, int, int]]:
    out = {}
    for topic in (b"web", b"db", b"ab", b"a", b"none"):
        p = await local.prepare(store, Query(MIN_ULID, MAX_ULID, q, topic=topic))
        body = b"".join([b async for b in local.run(p)])
        out[topic] = (body, p.blocks_read, p.blocks_in_range)
    return out


def test_a_topic_query_reads_only_blocks_of_that_topic(tmp_path: Path) -> None:
    async def main() -> None:
        store = make_store(tmp_path / "store")
        body = await write_topics(store, random.Random(3))
        before = await topic_answers(store)
        await store.index_pending()
        after = await topic_answers(store)
        for topic in before:
            want = b"".join(line + b"\n" for line in body.split(b"\n")[:-1]
                            if line.split(b" ")[1] == topic)
            assert before[topic][0] == want == after[topic][0], topic
        for topic in (b"web", b"db", b"ab", b"a"):
            _, read, in_range = after[topic]
            table = next(iter(store._tables.values()))
            assert table.topics is not None
            assert read == bin(table.topics.blocks_with(topic)).count("1") <= in_range
        assert after[b"none"][1] == 0  # no block holds it: nothing read
        assert after[b"a"][1] < after[b"a"][2]  # the index saved reads
        q_after = await topic_answers(store, b"web db")
        assert q_after[b"db"][0] == b"".join(
            line + b"\n" for line in body.split(b"\n")[:-1]
            if line.split(b" ")[1] == b"db" and b"web db" in line.split(b" ", 2)[2])
        store._check()
        store.close()

    trio.run(main)


def test_an_old_sidecar_without_topics_is_used_and_reindexed(tmp_path: Path) -> None:
    async def main() -> None:
        store = make_store(tmp_path / "store")
        await write_topics(store, random.Random(5))
        await store.index_pending()
        want = await topic_answers(store)
        store.close()
        [seg] = [p for p in (tmp_path / "store").iterdir() if p.suffix == ".flushed"]
        side = sidecar_path(seg)
        side.write_bytes(_without_topics_key(side.read_bytes()))
        old = load_sidecar(seg)
        assert old is not None and old.index is None and old.topics is None

        store = make_store(tmp_path / "store")
        assert store.unverified() == 0  # the block table is trusted: no full check
        assert (await topic_answers(store))[b"db"][0] == want[b"db"][0]  # right, reading more
        await store.index_pending()
        assert await topic_answers(store) == want
        new = load_sidecar(seg)
        assert new is not None and new.topics is not None and new.index is not None
        store._check()
        store.close()

    trio.run(main)
