"""Hostile input over HTTP against one real node: garbage replicate bodies
(400, nothing written), arbitrary query strings (never a 500), segment ids
that try to leave the data directory (4xx, a file outside untouched); the
node stays alive and keeps answering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.nodeutil import Node
from tests.test_fuzz import HOSTILE_IDS, record_ish, records

pytestmark = pytest.mark.slow

HTTP_FUZZ = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Target:
    def __init__(self, node: Node, client: httpx.Client) -> None:
        self.node = node
        self.client = client
        self.store = node.data / "store"
        self.outside = node.data / "outside.pending"

    def store_files(self) -> set[str]:
        """Segment files (sidecars come and go with the background indexer)."""
        return {p.name for p in self.store.iterdir() if not p.name.endswith(".idx")}

    def alive(self) -> None:
        assert self.client.get("/healthz").status_code == 200

    def raw(self, method: str, path: str, raw_query: bytes = b"", content: bytes = b"") -> httpx.Response:
        url = httpx.URL(self.node.api).copy_with(raw_path=path.encode() + (b"?" + raw_query if raw_query else b""))
        return self.client.request(method, url, content=content)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data = tmp_path_factory.mktemp("hostile")
    node = Node("ingeststore", data, extra=["-store.segment-replication-factor", "1"]).start()
    (data / "outside.pending").write_bytes(b"outside the data directory\n")
    try:
        with httpx.Client(base_url=node.api, timeout=30) as client:
            yield Target(node, client)
    finally:
        node.kill()


# --- /store/replicate ---------------------------------------------------------------------


@HTTP_FUZZ
@given(body=st.one_of(record_ish, st.binary(max_size=200)))
def test_replicate_any_body_is_200_or_400_and_400_writes_nothing(target: Target, body: bytes) -> None:
    before = target.store_files()
    r = target.client.post("/store/replicate", content=body)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert target.store_files() == before
        assert r.text.count("\n") == 1  # one line, the reason
    target.alive()


@pytest.mark.parametrize("body", [
    records(3) + b"garbage\n",
    records(3)[:-1],  # a torn last record
    b"\x00" * 1000,
    records(2) + b"\n",
    records(1).replace(b" default ", b" -bad-topic "),
    records(1)[:20] + b"\n",
])
def test_replicate_garbage_bodies_are_refused_whole(target: Target, body: bytes) -> None:
    before = target.store_files()
    r = target.client.post("/store/replicate", content=body)
    assert r.status_code == 400, r.text
    assert target.store_files() == before
    target.alive()


# --- query parameters -------------------------------------------------------------------------


_SAFE = "&=%+;/:?@!$'()*,~"


@HTTP_FUZZ
@given(raw=st.one_of(
    st.binary(max_size=120),
    st.lists(st.tuples(st.sampled_from([b"from", b"to", b"q", b"regex", b"topic", b"buckets", b"x"]),
                       st.one_of(st.binary(max_size=30),
                                 st.sampled_from([b"1h", b"now", b"(", b"(a+)+$", b"%FF", b"%00", b"-1",
                                                  b"2026-13-40T25:61:61Z", b"99999999999999999999d",
                                                  b"0000000000000000000000000Z", b"ZZZZZZZZZZZZZZZZZZZZZZZZZZ"]))),
             max_size=6).map(lambda kv: b"&".join(k + b"=" + v for k, v in kv))))
def test_query_strings_never_get_a_500(target: Target, raw: bytes) -> None:
    query = quote_from_bytes(raw, safe=_SAFE).encode()
    for path in ("/store/query", "/store/_query"):
        for method in ("GET", "HEAD"):
            r = target.raw(method, path, query)
            assert r.status_code in (200, 400), (method, path, query, r.status_code, r.text)
            if r.status_code == 400 and method == "GET":
                assert r.text.count("\n") == 1
    target.alive()


# --- segment ids ----------------------------------------------------------------------------------


# (an id of 100,000 characters does not fit in httpx's URL; 6,000 still passes h11's limits)
HTTP_IDS = [i if len(i) < 1000 else i[:6000] for i in HOSTILE_IDS] + ["../outside", "..%2Foutside",
                                                                      "%2e%2e/outside"]


@pytest.mark.parametrize("seg_id", HTTP_IDS, ids=range(len(HTTP_IDS)))
def test_hostile_segment_ids_are_4xx_and_touch_nothing(target: Target, seg_id: str) -> None:
    encoded = quote(seg_id, safe="%/.") if "%2" in seg_id.lower() else quote(seg_id, safe="")
    for method, path in (("GET", "/ingest/read"), ("POST", "/ingest/commit"), ("POST", "/ingest/failed")):
        r = target.raw(method, path, b"id=" + encoded.encode())
        assert 400 <= r.status_code < 500, (method, path, seg_id, r.status_code)
        assert len(r.content) < 300
    assert target.outside.read_bytes() == b"outside the data directory\n"
    target.alive()


def test_missing_and_repeated_ids(target: Target) -> None:
    for method, path in (("GET", "/ingest/read"), ("POST", "/ingest/commit"), ("POST", "/ingest/failed")):
        assert target.raw(method, path).status_code == 404
        assert target.raw(method, path, b"id=../outside&id=01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404
    assert target.outside.exists()
    target.alive()


def test_a_replicate_body_cut_short_writes_nothing(target: Target) -> None:
    """The client promises more than it sends, then goes away."""
    import socket
    import time

    before = target.store_files()
    body = records(5)
    with socket.create_connection(("127.0.0.1", target.node.api_port), timeout=10) as s:
        s.sendall(b"POST /store/replicate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (len(body) * 3)
                  + body)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(n.endswith(".active") for n in target.store_files()):
        time.sleep(0.1)  # the upload's file is removed once the node notices
    assert target.store_files() == before
    target.alive()
