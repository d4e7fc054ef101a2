"""The web UI at ``/ui`` in a real headless Chromium against a real node.

Debian's ``chromium`` driven by ``playwright`` (PyPI) through
``executable_path``; a browser is never downloaded.  Without either the
tests are skipped, saying why.  ``OKLOG_UI_SCREENSHOT=1`` also saves the
screenshot shown in ``docs/ui.md`` to ``docs/ui.png``.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import time
from datetime import datetime, timezone
from typing import Any, Iterator
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest

from oklog.query.buckets import STEPS
from oklog.ulid import encode_int
from tests.nodeutil import ROOT, Node, forward

pytestmark = pytest.mark.slow

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
N = 30_000
# N records over about an hour, in waves (so the histogram has a shape)
TIMES = list(itertools.accumulate(20 + int(230 * (1 + math.sin(i / 1500)) / 2) for i in range(N)))
WAIT_MS = 90_000  # generous: the box is shared


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(i: int) -> bytes:
    p = b"level=%s method=GET path=/api/v1/items/%d status=%d dur=%dms" % (
        b"error" if i % 10 == 0 else b"info", i % 997, 500 if i % 10 == 0 else 200, (i * 37) % 400)
    if i % 7 == 0:
        p += b" needle"
    if i % 1000 == 3:
        p += b" <b>bold</b> &amp; \xff\xfe not utf8"
    return p


def topic(i: int) -> bytes:
    return b"web" if i % 3 else b"db"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (scripts/setup installs it with the test extras)")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (OKLOG_UI=1 scripts/setup installs it as root)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=LAUNCH_ARGS)
        except Error as exc:
            pytest.skip(f"chromium does not start here: {str(exc).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node("ingeststore", tmp_path_factory.mktemp("ui") / "node", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-ingest.segment-flush-age", "200ms", "-store.segment-target-age", "200ms"])
    n.start()
    base = (int(time.time() * 1000) - 2 * 3600_000) // 60_000 * 60_000
    body = b"".join(encode_int(base + TIMES[i], 10) + encode_int(i, 16) + b" " + topic(i) + b" "
                    + payload(i) + b"\n" for i in range(N))
    r = httpx.post(f"{n.api}/store/replicate", content=body, timeout=60)
    assert r.status_code == 200, r.text
    n.base = base  # type: ignore[attr-defined]
    yield n
    n.kill()


def window(node: Node) -> dict[str, str]:
    base: int = node.base  # type: ignore[attr-defined]
    return {"from": iso(base), "to": iso(base + TIMES[-1])}


def api_query(node: Node, **params: str) -> bytes:
    r = httpx.get(f"{node.api}/store/query", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def open_ui(browser: Any, node: Node, csp: bool = False, **params: str) -> Any:
    """A new page on ``/ui?params``.  The node's Content-Security-Policy
    forbids eval, which playwright's polling needs: bypassed unless ``csp``."""
    page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=not csp)
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{node.api}/ui?{urlencode(params)}")
    return page


def wait_done(page: Any, state: str = "done") -> None:
    page.wait_for_function(f"document.body.dataset.state === {state!r}", timeout=WAIT_MS)


def rendered(page: Any) -> str:
    return page.eval_on_selector("#results", "e => e.textContent")


def url_params(page: Any) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query, keep_blank_values=True)


def test_a_shared_link_renders_every_matching_record(browser: Any, node: Node) -> None:
    params = {"q": "", **window(node)}
    started = time.monotonic()
    page = open_ui(browser, node, csp=True, **params)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.wait_for_selector("body[data-state='done']", timeout=WAIT_MS)
    elapsed = time.monotonic() - started
    text = rendered(page)
    assert text.count("\n") == N
    assert page.get_attribute("#results", "data-lines") == str(N)
    # exactly the records of the API, bytes that are not UTF-8 shown as U+FFFD
    assert text == api_query(node, **params).decode("utf-8", "replace")
    assert "<b>bold</b> &amp; \ufffd\ufffd not utf8" in text
    assert page.locator("#results b").count() == 0  # data is text, never markup
    stats = page.inner_text("#stats")
    assert "1 node(s)" in stats and f"{N:,} record(s)" in stats and "segment(s)" in stats
    assert "planned in" in stats and "total" in stats
    assert elapsed < 60, f"{N} records took {elapsed:.1f}s to render"
    assert not errors  # nothing the page does breaks its own Content-Security-Policy
    page.close()


def test_a_histogram_bar_zooms_into_its_range(browser: Any, node: Node) -> None:
    page = open_ui(browser, node, q="needle", **window(node))
    wait_done(page)
    page.wait_for_function("document.getElementById('bars').dataset.state === 'done'")
    bars = page.locator("#bars rect.bar")
    assert bars.count() > 5
    total = sum(int(bars.nth(i).get_attribute("data-count")) for i in range(bars.count()))
    assert total == N // 7 + 1 == rendered(page).count("\n")
    bar = bars.nth(bars.count() // 2)
    lo, hi, count = bar.get_attribute("data-from"), bar.get_attribute("data-to"), int(bar.get_attribute("data-count"))
    bar.click()
    page.wait_for_function(f"new URLSearchParams(location.search).get('from') === {lo!r}")
    wait_done(page)
    assert url_params(page)["to"] == [hi] and url_params(page)["q"] == ["needle"]
    assert page.input_value("#from") == lo
    text = rendered(page)
    assert text.count("\n") == count == api_query(node, q="needle", **{"from": lo, "to": hi}).count(b"\n")
    assert 0 < count < N // 7
    # Back zooms out again (the zoom pushed a history entry)
    page.go_back()
    page.wait_for_function(f"new URLSearchParams(location.search).get('from') !== {lo!r}")
    wait_done(page)
    assert rendered(page).count("\n") == N // 7 + 1
    page.close()


def test_a_result_beyond_the_cap_stops_with_a_note(browser: Any, node: Node) -> None:
    page = browser.new_page(bypass_csp=True)
    page.add_init_script("window.oklogMaxLines = 1000")
    page.goto(f"{node.api}/ui?{urlencode(window(node))}")
    wait_done(page, "capped")
    assert rendered(page).count("\n") == 1000
    assert "Showing the first 1,000 records" in page.inner_text("#note")
    assert "1,000+ record(s)" in page.inner_text("#stats")
    page.close()


def test_enter_in_the_query_box_runs_the_query(browser: Any, node: Node) -> None:
    page = open_ui(browser, node, **window(node))
    wait_done(page)
    page.keyboard.press("Tab")  # away from the query box, then "/" brings it back
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("status=500")
    page.keyboard.press("Enter")
    page.wait_for_function("new URLSearchParams(location.search).get('q') === 'status=500'")
    wait_done(page)
    assert rendered(page).count("\n") == N // 10
    page.close()


def test_a_new_query_replaces_a_running_one(browser: Any, node: Node) -> None:
    page = browser.new_page(bypass_csp=True)
    page.set_default_timeout(WAIT_MS)
    cdp = page.context.new_cdp_session(page)  # a slow network: the first answer takes ~10 s
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": 300_000, "uploadThroughput": 300_000})
    page.goto(f"{node.api}/ui?{urlencode(window(node))}")  # 30,000 records on their way
    page.wait_for_function("Number(document.getElementById('results').dataset.lines) > 0")
    assert page.evaluate("document.body.dataset.state") == "running"
    page.fill("#q", "needle")
    page.press("#q", "Enter")
    page.wait_for_function("new URLSearchParams(location.search).get('q') === 'needle'")
    wait_done(page)
    page.wait_for_timeout(300)  # a late frame of the first query would land now
    text = rendered(page)
    assert text.count("\n") == N // 7 + 1 and text.count("needle") == N // 7 + 1
    assert f"{N // 7 + 1:,} record(s)" in page.inner_text("#stats")
    page.close()


def test_a_bad_regex_shows_the_reason(browser: Any, node: Node) -> None:
    params = {"q": "a(b", "regex": "true", **window(node)}
    reason = httpx.get(f"{node.api}/store/query", params=params).text.strip()
    assert reason
    page = open_ui(browser, node, **window(node))
    wait_done(page)
    page.check("#regex")
    page.fill("#q", "a(b")
    page.press("#q", "Enter")
    wait_done(page, "error")
    error = page.inner_text("#error")
    assert error.startswith("400") and reason in error
    assert "regex" in url_params(page)
    page.close()


def test_the_topic_filter(browser: Any, node: Node) -> None:
    page = open_ui(browser, node, **window(node))
    wait_done(page)
    page.fill("#topic", "db")
    page.press("#topic", "Enter")
    page.wait_for_function("new URLSearchParams(location.search).get('topic') === 'db'")
    wait_done(page)
    text = rendered(page)
    assert text.count("\n") == len(range(0, N, 3))
    assert all(line.split(" ")[1] == "db" for line in text.splitlines())
    page.close()


def test_live_tail_toggle(browser: Any, node: Node) -> None:
    """Live tail follows /store/stream; a node without it says so."""
    page = open_ui(browser, node, **window(node))
    wait_done(page)
    page.fill("#q", "live-marker")
    page.click("#live")  # not check(): a node without a stream unticks it at once
    if not _has_stream(node):
        wait_done(page, "error")
        assert "not available" in page.inner_text("#error")
        assert page.is_checked("#live") is False and "live" not in url_params(page)
        page.close()
        return
    page.wait_for_function("document.body.dataset.state === 'live'")
    assert "live" in url_params(page)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "live-marker 2" not in rendered(page):
        forward(b"other line\nlive-marker 1\nlive-marker 2\n", f"127.0.0.1:{node.fast_port}")
        time.sleep(1)
    text = rendered(page)
    assert "live-marker 2" in text and "other line" not in text
    # the stream's notice lines (the heartbeat sent as it opens, at least) are not records
    assert not [line for line in text.splitlines() if line.startswith("#")]
    page.keyboard.press("Escape")
    wait_done(page, "stopped")
    page.close()


def _has_stream(node: Node) -> bool:
    try:
        with httpx.stream("GET", f"{node.api}/store/stream", params={"q": "x"}, timeout=5) as r:
            return r.status_code != 404
    except httpx.HTTPError:
        return False


def test_histogram_endpoint(node: Node) -> None:
    """``/store/histogram`` as a script uses it (no browser needed)."""
    w = window(node)
    for path in ("/store/histogram", "/store/_histogram"):
        r = httpx.get(f"{node.api}{path}", params={**w, "buckets": "30"}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        h = r.json()
        assert h["total"] == N == sum(b["count"] for b in h["buckets"])
        assert 15 < len(h["buckets"]) * 2 <= 60 and h["bucket_ms"] in STEPS
        assert all(b["t"] % h["bucket_ms"] == 0 for b in h["buckets"])
        assert h["errors"] == []
        # 1 MiB blocks of this data span ~20 minutes: inside one bucket only when buckets are wide
        one = httpx.get(f"{node.api}{path}", params={**w, "buckets": "1"}, timeout=60).json()
        assert one["buckets"][0]["count"] == N and one["blocks_from_metadata"] > 0 == one["blocks_scanned"]
    h = httpx.get(f"{node.api}/store/histogram", params={**w, "buckets": "30"}).json()
    assert h["exact"] is True and h["nodes_queried"] == 1 and h["buckets_deduplicated"] == 0
    for params in ({"q": "needle"}, {"topic": "db"}, {"q": "status=5.0", "regex": ""}):
        h = httpx.get(f"{node.api}/store/histogram", params={**w, **params}, timeout=60).json()
        assert h["total"] == api_query(node, **w, **params).count(b"\n") > 0
        assert h["blocks_from_metadata"] == 0
    bad = [({"buckets": "0"}, 'invalid "buckets"'), ({"buckets": "x"}, 'invalid "buckets"'),
           ({"q": "a(b", "regex": ""}, "regex"), ({"from": "yesterday"}, 'invalid "from"'),
           ({"from": w["to"], "to": w["from"]}, "after"), ({"topic": "no/slash"}, 'invalid "topic"')]
    for params, reason in bad:
        r = httpx.get(f"{node.api}/store/histogram", params={**w, **params})
        assert r.status_code == 400 and reason in r.text and r.text.count("\n") == 1, (params, r.text)
    r = httpx.get(f"{node.api}/store/histogram", params={"to": "now"})
    assert r.status_code == 400 and 'missing "from"' in r.text


def test_ui_files(node: Node) -> None:
    for path, kind in (("/ui", "text/html"), ("/ui/", "text/html"), ("/ui/ui.js", "text/javascript"),
                       ("/ui/ui.css", "text/css")):
        r = httpx.get(node.api + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "default-src 'self'" in r.headers["content-security-policy"]
    html = httpx.get(node.api + "/ui").text
    assert "http://" not in html and "https://" not in html  # nothing loaded from elsewhere
    assert httpx.get(node.api + "/ui/nope.js").status_code == 404


@pytest.mark.skipif(os.environ.get("OKLOG_UI_SCREENSHOT") != "1",
                    reason="set OKLOG_UI_SCREENSHOT=1 to save docs/ui.png")
def test_screenshot_for_the_docs(browser: Any, node: Node) -> None:
    page = open_ui(browser, node, q="status=500", **window(node))
    wait_done(page)
    page.wait_for_function("document.getElementById('bars').dataset.state === 'done'")
    page.screenshot(path=str(ROOT / "docs" / "ui.png"))
    page.close()


def test_a_node_with_a_token_asks_for_it_once_and_then_answers(browser: Any, tmp_path: Any) -> None:
    """With -api.token-file the page loads, the first API call's 401 asks
    for the token, and every later request of the tab sends it."""
    token = "s3cret-token-for-the-ui"
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    n = Node("ingeststore", tmp_path / "node", extra=[
        "-store.segment-replication-factor", "1", "-cluster.serf", "off",
        "-api.token-file", str(tmp_path / "token")])
    n.start()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        body = b"".join(b"%s default tokened line %d\n" % (encode_int(int(time.time() * 1000) - 60_000 + i, 10)
                                                          + encode_int(i, 16), i) for i in range(50))
        assert httpx.post(f"{n.api}/store/replicate", content=body, headers=headers, timeout=30).status_code == 200
        page = browser.new_page(bypass_csp=True)
        page.set_default_timeout(WAIT_MS)
        asked: list[str] = []

        def answer(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept(token)

        page.on("dialog", answer)
        page.goto(f"{n.api}/ui?" + urlencode({"q": "tokened", "from": "1h", "to": "now"}))
        wait_done(page)
        assert rendered(page).count("tokened line") == 50
        assert len(asked) == 1 and "token" in asked[0]
        page.fill("#q", "line 7")
        page.press("#q", "Enter")
        wait_done(page)
        assert "tokened line 7" in rendered(page) and len(asked) == 1  # no second prompt
        page.close()
    finally:
        n.kill()
