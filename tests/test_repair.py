"""Read repair and the repair walker against in-memory stores (tests/fakes.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import trio

from oklog.query import gather
from oklog.query.params import Query
from oklog.query.repair import Repairer
from oklog.ulid import MAX_ULID, MIN_ULID
from tests.fakes import FakeStores
from tests.recordutil import rec, ulid

A, B, C, D = "http://a", "http://b", "http://c", "http://d"
ALL = Query(MIN_ULID, MAX_ULID)


def spread(n: int, stores: list[str], rf: int, rng: random.Random) -> dict[str, list[bytes]]:
    held: dict[str, list[bytes]] = {s: [] for s in stores}
    for r in range(n):
        for s in rng.sample(stores, rf):
            held[s].append(rec(r, b"payload %d" % r))
    return held


def repairer(stores: FakeStores, tmp_path: Path, rf: int = 2, **kw: object) -> Repairer:
    return Repairer(stores, stores, rf=rf, grace=0.0, rng=random.Random(7), tmp=tmp_path, **kw)  # type: ignore[arg-type]


def lose(stores: FakeStores, store: str) -> set[bytes]:
    """A store dies: its records are gone, and it cannot be reached."""
    keys = set(stores.held[store])
    stores.held[store] = {}
    stores.down.add(store)
    return keys


def test_walk_repairs_a_lost_stores_records_to_stores_that_lack_them(tmp_path: Path) -> None:
    stores = FakeStores(spread(2000, [A, B, C, D], 2, random.Random(1)), chunk=777)
    lost = lose(stores, D)
    before = {s: set(h) for s, h in stores.held.items()}
    stats = trio.run(lambda: repairer(stores, tmp_path).walk(MIN_ULID, MAX_ULID))
    assert stats.checked == 2000 and stats.under_replicated == len(lost) > 0
    assert stats.repaired == len(lost) and stats.errors == 0 and stats.stores == 3
    assert stats.unreachable and D in stats.unreachable[0]
    live = {k: n for k, n in stores.copies().items()}
    assert len(live) == 2000 and min(live.values()) >= 2
    for s in (A, B, C):  # copies went only where they were missing
        for body in stores.uploads[s]:
            for line in body.splitlines():
                assert line[:26] not in before[s]
    assert list(tmp_path.iterdir()) == []  # upload bodies removed


def test_a_second_walk_and_a_dry_run_change_nothing(tmp_path: Path) -> None:
    stores = FakeStores(spread(500, [A, B, C], 2, random.Random(2)))
    lost = lose(stores, C)
    r = repairer(stores, tmp_path)
    dry = trio.run(lambda: r.walk(MIN_ULID, MAX_ULID, dry_run=True))
    assert dry.dry_run and dry.under_replicated == len(lost) and dry.repaired == 0
    assert not any(stores.uploads.values())
    assert trio.run(lambda: r.walk(MIN_ULID, MAX_ULID)).repaired == len(lost)
    again = trio.run(lambda: r.walk(MIN_ULID, MAX_ULID))
    assert again.checked == 500 and again.under_replicated == 0 and again.repaired == 0


def test_a_healthy_walk_moves_ulids_only(tmp_path: Path) -> None:
    stores = FakeStores(spread(300, [A, B, C], 2, random.Random(3)))
    stats = trio.run(lambda: repairer(stores, tmp_path).walk(MIN_ULID, MAX_ULID))
    assert stats.checked == 300 and stats.under_replicated == 0
    assert stores.queries and all(b"ids=true" in raw for _, raw in stores.queries)


def test_too_few_stores_answering_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    stores = FakeStores(spread(100, [A, B, C], 2, random.Random(4)))
    stores.down |= {B, C}
    stats = trio.run(lambda: repairer(stores, tmp_path).walk(MIN_ULID, MAX_ULID))
    assert stats.errors == 1 and "fewer than the replication factor" in stats.problems[0]
    assert stats.checked == 0 and not any(stores.uploads.values())
    one = FakeStores({A: [rec(1)]})
    stats = trio.run(lambda: repairer(one, tmp_path).walk(MIN_ULID, MAX_ULID))
    assert stats.errors == 1 and "1 live store(s)" in stats.problems[0]


def test_a_failed_upload_is_an_error_and_not_counted_as_repaired(tmp_path: Path) -> None:
    stores = FakeStores({A: [rec(r) for r in range(10)], B: [rec(r) for r in range(5)], C: []})
    stores.rejecting |= {B, C}
    stats = trio.run(lambda: repairer(stores, tmp_path).walk(MIN_ULID, MAX_ULID))
    # records 5..9 are only on A; B or C must take them; both refuse
    assert stats.under_replicated == 5 and stats.repaired == 0
    assert stats.errors == 1 and "replicating to http://" in stats.problems[0]


def test_a_store_breaking_off_its_id_answer_fails_the_check(tmp_path: Path) -> None:
    stores = FakeStores(spread(2000, [A, B, C], 2, random.Random(5)), chunk=500)
    stores.broken.add(B)
    stats = trio.run(lambda: repairer(stores, tmp_path).walk(MIN_ULID, MAX_ULID))
    assert stats.errors == 1 and "counting copies failed" in stats.problems[0]
    assert not any(stores.uploads.values())


def test_walk_leaves_records_younger_than_grace_alone(tmp_path: Path) -> None:
    from oklog.ulid import ulid_for_ms

    now = 1_800_000_000.0
    old, young = ulid_for_ms(int((now - 60) * 1000)), ulid_for_ms(int((now - 2) * 1000))
    line_old, line_young = old + b" default a\n", young + b" default b\n"
    stores = FakeStores({A: [line_old, line_young], B: [], C: []})
    r = Repairer(stores, stores, rf=2, grace=10.0, rng=random.Random(1), clock=lambda: now, tmp=tmp_path)
    stats = trio.run(lambda: r.walk(MIN_ULID, MAX_ULID))
    assert stats.checked == 1 and stats.repaired == 1
    assert all(young not in h for h in (stores.held[B], stores.held[C]))


def healed(stores: FakeStores) -> bool:
    return min(stores.copies().values(), default=2) >= 2


def run_query(stores: FakeStores, r: Repairer, query: Query,
              until: Callable[[FakeStores], bool] = healed, limit: float = 10.0) -> bytes:
    """A user query the way /store/query runs it, then the background task."""
    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            await nursery.start(r.run)
            gathered = await gather.scatter(stores, stores.stores(), query.encode().encode(), "GET")
            short = r.counting(gathered)
            assert short is not None

            def done(complete: bool) -> None:
                assert short is not None
                r.submit(query, short, complete=complete)

            body = b"".join([b async for b in gather.merged_body(gathered, copies=r.rf, short=short,
                                                                    done=done)])
            with trio.move_on_after(limit):  # the check runs in the background
                while not until(stores):
                    await trio.sleep(0.01)
            await trio.sleep(0.1)  # nothing more is written
            nursery.cancel_scope.cancel()
        return body

    return trio.run(main)


def test_a_query_repairs_what_it_saw_on_too_few_stores(tmp_path: Path) -> None:
    stores = FakeStores(spread(1500, [A, B, C, D], 2, random.Random(6)), chunk=4096)
    lost = lose(stores, B)
    stores.down.discard(B)
    stores.held.pop(B)  # B left the membership too
    stores.uploads.pop(B)
    r = repairer(stores, tmp_path)
    body = run_query(stores, r, ALL)
    assert body == b"".join(rec(n, b"payload %d" % n) for n in range(1500))
    copies = stores.copies()
    assert min(copies.values()) >= 2 and len(copies) == 1500
    # the records came from the query's own merge: no payload was fetched again
    assert all(b"ids=true" in raw for _, raw in stores.queries[3:])
    assert sum(len(b.splitlines()) for u in stores.uploads.values() for b in u) == len(lost)


def test_a_filtered_query_repairs_only_its_matches(tmp_path: Path) -> None:
    held = {A: [rec(r, b"x%d" % (r % 2)) for r in range(100)], C: [], D: []}
    stores = FakeStores(held)
    odd = {ulid(r) for r in range(1, 100, 2)}
    body = run_query(stores, repairer(stores, tmp_path), Query(MIN_ULID, MAX_ULID, q=b"x1"),
                     until=lambda s: all(s.copies()[k] >= 2 for k in odd))
    assert body.count(b"\n") == 50
    copies = stores.copies()
    assert {k for k, n in copies.items() if n >= 2} == {ulid(r) for r in range(1, 100, 2)}


def test_a_broken_answer_repairs_nothing(tmp_path: Path) -> None:
    stores = FakeStores(spread(1000, [A, B, C], 2, random.Random(8)), chunk=500)
    stores.broken.add(C)
    run_query(stores, repairer(stores, tmp_path), ALL, until=lambda s: False, limit=0.5)
    assert not any(stores.uploads.values())
    assert not any(b"ids=true" in raw for _, raw in stores.queries)  # not even checked


def test_counting_is_off_for_rf_1_few_stores_or_a_zero_buffer(tmp_path: Path) -> None:
    stores = FakeStores({A: [rec(1)], B: [rec(1)]})

    async def gathered() -> gather.Gathered:
        return await gather.scatter(stores, stores.stores(), ALL.encode().encode(), "GET")

    g = trio.run(gathered)
    assert repairer(stores, tmp_path, rf=1).counting(g) is None
    assert repairer(stores, tmp_path, rf=3).counting(g) is None  # 2 answered: cannot judge 3
    assert repairer(stores, tmp_path, buffer=0).counting(g) is None
    assert repairer(stores, tmp_path).counting(g) is not None


def test_the_queue_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    from oklog import metrics
    from oklog.query.copies import ShortRecords

    stores = FakeStores({A: [rec(1)], B: []})
    r = repairer(stores, tmp_path)
    before = metrics.repair_dropped.labels("query", "queue")._value.get()

    async def main() -> None:
        for i in range(5):
            short = ShortRecords(1 << 20)
            short.add(rec(i))
            r.submit(ALL, short, complete=True)

    trio.run(main)
    assert metrics.repair_dropped.labels("query", "queue")._value.get() - before == 3


def test_answers_are_trusted_unique_only_from_our_stores_and_merged_once_per_node() -> None:
    from tests.fakes import FakeAnswer
    from oklog.query.copies import ShortRecords

    dup = [rec(1) + rec(1) + rec(2), rec(3)]
    ours = {"X-Oklog-Node": "http://n1"}

    async def merged(answers: list[FakeAnswer], short: ShortRecords | None = None) -> bytes:
        g = gather.Gathered(responses=list(answers))
        return b"".join([b async for b in gather.merged_body(g, copies=2, short=short)])

    # a peer that does not say it is one of ours is checked for repeats
    got = trio.run(merged, [FakeAnswer("http://x", {}, dup), FakeAnswer("http://y", {}, [rec(2)])])
    assert got == rec(1) + rec(2) + rec(3)
    # one node reached under two addresses: merged once, and its records count once
    short = ShortRecords(1 << 20)
    got = trio.run(merged, [FakeAnswer("http://a", ours, [rec(1) + rec(2)]),
                            FakeAnswer("http://b", ours, [rec(1) + rec(2)])], short)
    assert got == rec(1) + rec(2) and short.take() == rec(1) + rec(2)
    # and the statistics count that node's answer once too
    stats = {**ours, "X-Oklog-Segments-Queried": "3", "X-Oklog-Blocks-Queried": "5"}
    g = gather.Gathered(responses=[FakeAnswer("http://a", stats, []), FakeAnswer("http://b", stats, []),
                                   FakeAnswer("http://c", {**stats, "X-Oklog-Node": "http://n2"}, [])])
    headers = gather.stats_headers(g, 0.0)
    assert headers["X-Oklog-Segments-Queried"] == "6" and headers["X-Oklog-Blocks-Queried"] == "10"


def test_a_holder_that_cannot_send_the_records_is_an_error(tmp_path: Path) -> None:
    stores = FakeStores({A: [rec(r) for r in range(20)], B: [rec(r) for r in range(10)], C: []})
    stores.no_records.add(A)
    stats = trio.run(lambda: repairer(stores, tmp_path).walk(MIN_ULID, MAX_ULID))
    assert stats.under_replicated == 10 and stats.repaired == 0
    assert stats.errors == 1 and "fetching records from http://a failed" in stats.problems[0]
    assert not any(stores.uploads.values()) and list(tmp_path.iterdir()) == []


def test_a_query_past_its_buffer_still_repairs_everything_it_covered(tmp_path: Path) -> None:
    stores = FakeStores(spread(1200, [A, B, C, D], 2, random.Random(9)), chunk=2048)
    lost = lose(stores, B)
    stores.down.discard(B)
    stores.held.pop(B)
    stores.uploads.pop(B)
    r = repairer(stores, tmp_path, buffer=len(rec(1, b"payload 1000")) * 20)
    run_query(stores, r, ALL)
    copies = stores.copies()
    assert len(copies) == 1200 and min(copies.values()) >= 2 and lost
    # the records past the buffer were fetched from their holders
    assert any(b"ids=true" not in raw for _, raw in stores.queries[3:])


def test_a_capped_finding_reaches_no_further_than_the_query_time(tmp_path: Path) -> None:
    """A query open to the future (``to`` past now) whose buffer filled up:
    the check stops at the time of the query, so records that arrive
    meanwhile are not judged before their grace."""
    from oklog.query.params import split_params
    from oklog.ulid import ulid_for_ms

    stores = FakeStores(spread(600, [A, B, C, D], 2, random.Random(9)), chunk=2048)
    lose(stores, B)
    stores.down.discard(B)
    stores.held.pop(B)
    stores.uploads.pop(B)
    now = 1_000.0
    r = repairer(stores, tmp_path, buffer=len(rec(1, b"payload 100")) * 20, clock=lambda: now)
    run_query(stores, r, ALL)
    assert healed(stores)
    checks = [split_params(raw) for _, raw in stores.queries[3:]]
    assert checks and all(p[b"to"] <= ulid_for_ms(int(now * 1000), upper=True) for p in checks)
