// oklog web UI: a query form over /store/query, /store/histogram and
// /store/stream of the node that serves it.  No dependencies, no build step.
//
// - The state lives in the URL (/ui?q=&from=&to=[&regex][&topic=][&live]):
//   opening such a link runs it; running a query pushes a history entry.
// - Results are read as a stream and rendered in batches: one text node per
//   animation frame appended to a <pre>, never one element per line, never
//   innerHTML of data.  Bytes that are not UTF-8 show as U+FFFD.
// - At most MAX_LINES records are rendered; the request is then stopped
//   and a note says so.  Live tail keeps about the newest LIVE_LINES.
"use strict";

(() => {
  const MAX_LINES = window.oklogMaxLines || 100000; // tests lower it
  const LIVE_LINES = 20000;
  const FALSE = ["false", "0", "no", "off"];

  const $ = (id) => document.getElementById(id);
  const form = $("form"), q = $("q"), regex = $("regex"), topic = $("topic");
  const from = $("from"), to = $("to"), live = $("live");
  const stats = $("stats"), errorBox = $("error"), note = $("note"), results = $("results");
  const figure = $("histogram"), svg = $("bars"), caption = $("caption");
  const SVG = "http://www.w3.org/2000/svg";

  // --- the API token (nodes run with -api.token-file) ---------------------------------------
  // Kept in sessionStorage (gone with the tab); asked for once on a 401, then
  // every request sends it. Concurrent requests share one prompt.
  const TOKEN_KEY = "oklog.token";
  let asking = null;

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function askToken() {
    if (!asking) {
      asking = Promise.resolve().then(() => {
        const token = window.prompt("This oklog node needs its API token (-api.token-file):");
        if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
        return Boolean(token);
      }).finally(() => { asking = null; });
    }
    return asking;
  }

  async function api(path, signal) {
    const sent = sessionStorage.getItem(TOKEN_KEY);
    let response = await fetch(path, { signal, headers: authHeaders() });
    if (response.status === 401) {
      const retry = sessionStorage.getItem(TOKEN_KEY) !== sent || (!signal.aborted && await askToken());
      if (retry && !signal.aborted) response = await fetch(path, { signal, headers: authHeaders() });
    }
    return response;
  }

  let controller = null; // aborts the query or the live tail running now
  let histController = null; // aborts the histogram being counted
  let lastHistogram = null;
  let follow = true; // live tail: keep the newest line in view unless the user scrolled up

  // --- state <-> URL <-> form ---------------------------------------------------------

  function readForm() {
    return {
      q: q.value, regex: regex.checked, topic: topic.value.trim(),
      from: from.value.trim() || "1h", to: to.value.trim() || "now", live: live.checked,
    };
  }

  function writeForm(s) {
    q.value = s.q; regex.checked = s.regex; topic.value = s.topic;
    from.value = s.from; to.value = s.to; live.checked = s.live;
  }

  function fromURL() {
    const p = new URLSearchParams(location.search);
    const flag = (name) => p.has(name) && !FALSE.includes((p.get(name) || "").toLowerCase());
    return {
      q: p.get("q") || "", regex: flag("regex"), topic: p.get("topic") || "",
      from: p.get("from") || "1h", to: p.get("to") || "now", live: flag("live"),
      given: ["q", "from", "to", "topic", "live"].some((k) => p.has(k)),
    };
  }

  function uiURL(s) {
    const p = new URLSearchParams();
    p.set("q", s.q); p.set("from", s.from); p.set("to", s.to);
    if (s.regex) p.set("regex", "");
    if (s.topic) p.set("topic", s.topic);
    if (s.live) p.set("live", "");
    return "/ui?" + p.toString();
  }

  function saveURL(s, push) {
    const url = uiURL(s);
    if (url === location.pathname + location.search) return;
    if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
  }

  function apiParams(s, withRange) {
    const p = new URLSearchParams();
    if (withRange) { p.set("from", s.from); p.set("to", s.to); }
    p.set("q", s.q);
    if (s.regex) p.set("regex", "true");
    if (s.topic) p.set("topic", s.topic);
    return p.toString();
  }

  // --- small helpers -------------------------------------------------------------------

  function setState(value) { document.body.dataset.state = value; }

  function show(el, text) { el.textContent = text; el.hidden = !text; }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(ms) {
    const units = [[604800000, "w"], [86400000, "d"], [3600000, "h"], [60000, "m"], [1000, "s"]];
    for (const [size, unit] of units) if (ms >= size && ms % size === 0) return ms / size + unit;
    return ms >= 1000 ? (ms / 1000) + "s" : ms + "ms";
  }

  function iso(ms) { return new Date(ms).toISOString(); }

  function countLines(text) {
    let n = 0, i = -1;
    while ((i = text.indexOf("\n", i + 1)) !== -1) n++;
    return n;
  }

  function stop() {
    if (controller) controller.abort();
    if (histController) histController.abort();
    controller = histController = null;
  }

  function clearResults() {
    results.textContent = "";
    results.dataset.lines = "0";
    show(note, ""); show(errorBox, "");
  }

  // --- incremental rendering -----------------------------------------------------------

  // Decodes a byte stream and appends whole lines to the <pre> once per frame.
  // With onNotice (a live stream), lines starting with "#" are notices, not
  // records (oklog.stream.wire: heartbeats, "#dropped N ..."): they go there.
  class Renderer {
    constructor(cap, keepNewest, onFlush, onNotice) {
      this.cap = cap; this.keepNewest = keepNewest; this.onFlush = onFlush; this.onNotice = onNotice;
      this.decoder = new TextDecoder("utf-8"); // invalid bytes -> U+FFFD
      this.carry = ""; this.pending = []; this.pendingLines = 0;
      this.lines = 0; this.nodes = []; this.frame = 0;
    }

    // Adds a chunk; false once the cap is reached (the caller stops reading).
    push(chunk) {
      let text = this.carry + this.decoder.decode(chunk, { stream: true });
      const cut = text.lastIndexOf("\n");
      if (cut < 0) { this.carry = text; return true; }
      this.carry = text.slice(cut + 1);
      text = text.slice(0, cut + 1);
      if (this.onNotice && (text.startsWith("#") || text.includes("\n#"))) {
        const lines = text.split("\n");
        lines.pop(); // after the final LF
        const records = lines.filter((l) => !l.startsWith("#"));
        lines.filter((l) => l.startsWith("#")).forEach(this.onNotice);
        if (!records.length) return true;
        text = records.join("\n") + "\n";
      }
      let n = countLines(text);
      let more = true;
      if (!this.keepNewest && this.lines + this.pendingLines + n > this.cap) {
        const keep = this.cap - this.lines - this.pendingLines;
        let at = -1;
        for (let k = 0; k < keep; k++) at = text.indexOf("\n", at + 1);
        text = text.slice(0, at + 1);
        n = keep; more = false;
      }
      this.pending.push(text); this.pendingLines += n;
      if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
      return more;
    }

    // A run that was stopped or replaced: nothing more of it reaches the page.
    cancel() {
      if (this.frame) cancelAnimationFrame(this.frame);
      this.frame = 0; this.pending = []; this.pendingLines = 0; this.dead = true;
    }

    flush() {
      if (this.frame) cancelAnimationFrame(this.frame);
      this.frame = 0;
      if (this.dead || !this.pending.length) return;
      const node = document.createTextNode(this.pending.join(""));
      results.appendChild(node);
      this.nodes.push([node, this.pendingLines]);
      this.lines += this.pendingLines;
      this.pending = []; this.pendingLines = 0;
      if (this.keepNewest) {
        while (this.lines > this.cap && this.nodes.length > 1) {
          const [old, n] = this.nodes.shift();
          old.remove(); this.lines -= n;
        }
      }
      results.dataset.lines = String(this.lines);
      this.onFlush(this.lines);
    }

    // The end of the stream: a last line without LF is shown too.
    finish() {
      const tail = this.carry + this.decoder.decode();
      this.carry = "";
      if (tail) { this.pending.push(tail + "\n"); this.pendingLines += 1; }
      this.flush();
    }
  }

  async function pump(response, renderer, signal) {
    const reader = response.body.getReader();
    signal.addEventListener("abort", () => renderer.cancel());
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) { renderer.finish(); return "done"; }
        if (!renderer.push(value)) { renderer.flush(); return "capped"; }
      }
    } catch (e) {
      if (signal.aborted) return "stopped";
      renderer.flush();
      throw e;
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // --- a query -----------------------------------------------------------------------------

  async function runQuery(s, push) {
    stop();
    const ctl = new AbortController();
    controller = ctl;
    saveURL(s, push);
    clearResults();
    setState("running");
    stats.textContent = "running...";
    loadHistogram(s);
    const started = performance.now();
    let response;
    try {
      response = await api("/store/query?" + apiParams(s, true), ctl.signal);
    } catch (e) {
      if (!ctl.signal.aborted) { show(errorBox, "query failed: " + e.message); setState("error"); stats.textContent = ""; }
      return;
    }
    if (response.status !== 200 && response.status !== 206) {
      const reason = (await response.text().catch(() => "")).trim();
      if (controller !== ctl) return; // replaced or stopped meanwhile
      show(errorBox, response.status + " " + response.statusText + ": " + reason);
      stats.textContent = "";
      setState("error");
      return;
    }
    const h = (name) => response.headers.get("X-Oklog-" + name);
    const line = (records, done) => {
      const parts = [
        (h("Nodes-Queried") || "?") + " node(s)",
        (h("Segments-Queried") || "?") + " segment(s)",
        records.toLocaleString("en-US") + (done === "capped" ? "+" : "") + " record(s)",
        bytes(Number(h("Max-Data-Set-Size") || 0)) + " in range",
        "planned in " + (h("Duration") || "?"),
      ];
      if (done) parts.push("total " + ((performance.now() - started) / 1000).toFixed(3) + "s");
      const errs = Number(h("Error-Count") || 0);
      if (errs) parts.push(errs + " store(s) failed: results may be partial");
      stats.textContent = parts.join(" · ");
    };
    line(0, null);
    if (h("Warning")) show(note, "warning: " + h("Warning"));
    const renderer = new Renderer(MAX_LINES, false, (n) => line(n, null));
    let outcome;
    try {
      outcome = await pump(response, renderer, ctl.signal);
    } catch (e) {
      if (controller !== ctl) return;
      show(errorBox, "the answer broke off: " + e.message + " (records shown so far are incomplete)");
      setState("error");
      return;
    }
    if (outcome === "stopped") return; // Esc, or another run: that one owns the page now
    line(renderer.lines, outcome);
    if (outcome === "capped") {
      ctl.abort(); // stop the transfer; the node stops scanning
      show(note, "Showing the first " + MAX_LINES.toLocaleString("en-US") +
        " records. Narrow the time range (click a histogram bar) or the query, or use `oklog query` for everything.");
    }
    if (controller === ctl) controller = null;
    setState(outcome);
  }

  // --- the histogram --------------------------------------------------------------------

  async function loadHistogram(s) {
    const hctl = new AbortController();
    histController = hctl;
    const signal = hctl.signal;
    figure.hidden = false;
    svg.dataset.state = "loading";
    caption.textContent = "counting...";
    const n = Math.max(10, Math.min(240, Math.floor((svg.clientWidth || 600) / 7)));
    let data;
    try {
      const r = await api("/store/histogram?" + apiParams(s, true) + "&buckets=" + n, signal);
      if (r.status !== 200 && r.status !== 206) {
        const reason = (await r.text()).trim();
        if (signal.aborted) return;
        svg.dataset.state = "error";
        caption.textContent = "histogram: " + r.status + " " + reason;
        drawBars(null);
        return;
      }
      data = await r.json();
    } catch (e) {
      if (!signal.aborted) { svg.dataset.state = "error"; caption.textContent = "histogram failed: " + e.message; }
      return;
    }
    if (signal.aborted) return;
    if (histController === hctl) histController = null;
    lastHistogram = data;
    drawBars(data);
    svg.dataset.state = "done";
  }

  function el(name, attrs) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    return e;
  }

  function drawBars(d) {
    svg.replaceChildren();
    if (!d) return;
    const W = svg.clientWidth || 600, H = svg.clientHeight || 110, top = 14, bottom = 16;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const counts = d.buckets.map((b) => b.count);
    const max = counts.reduce((a, b) => Math.max(a, b), 0);
    const bw = W / Math.max(1, counts.length);
    const plot = H - top - bottom;
    d.buckets.forEach((b, i) => {
      if (!b.count) return;
      const h = Math.max(1, Math.round((b.count / max) * plot));
      const lo = Math.max(b.t, d.from_ms), hi = Math.min(b.t + d.bucket_ms - 1, d.to_ms);
      const bar = el("rect", {
        class: "bar", x: (i * bw + (bw > 3 ? 0.5 : 0)).toFixed(1), y: top + plot - h,
        width: Math.max(1, bw - (bw > 3 ? 1 : 0)).toFixed(1), height: h,
        tabindex: 0, role: "button", "data-from": iso(lo), "data-to": iso(hi), "data-count": b.count,
      });
      const title = el("title", {});
      title.textContent = iso(lo) + " - " + iso(hi) + ": " + b.count.toLocaleString("en-US") + " record(s)";
      bar.appendChild(title);
      bar.setAttribute("aria-label", title.textContent);
      svg.appendChild(bar);
    });
    const label = (x, y, anchor, text) => {
      const t = el("text", { x, y, "text-anchor": anchor });
      t.textContent = text;
      svg.appendChild(t);
    };
    label(4, 11, "start", "max " + max.toLocaleString("en-US") + " per " + duration(d.bucket_ms));
    label(4, H - 4, "start", iso(d.from_ms));
    label(W - 4, H - 4, "end", iso(d.to_ms));
    const parts = [d.total.toLocaleString("en-US") + " matching record(s)", "buckets of " + duration(d.bucket_ms)];
    if (d.errors && d.errors.length) parts.push(d.errors.length + " store(s) failed: counts are lower bounds");
    parts.push("click a bar to zoom in");
    caption.textContent = parts.join(" · ");
  }

  function zoom(bar) {
    stopLive();
    from.value = bar.dataset.from;
    to.value = bar.dataset.to;
    runQuery(readForm(), true);
  }

  svg.addEventListener("click", (e) => {
    const bar = e.target.closest("rect.bar");
    if (bar) zoom(bar);
  });
  svg.addEventListener("keydown", (e) => {
    const bar = e.target.closest && e.target.closest("rect.bar");
    if (bar && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); zoom(bar); }
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => lastHistogram && drawBars(lastHistogram), 150);
  });

  // --- live tail ----------------------------------------------------------------------------

  async function startLive(s, push) {
    stop();
    const ctl = new AbortController();
    controller = ctl;
    saveURL(s, push);
    clearResults();
    setState("live");
    const since = new Date().toLocaleTimeString();
    stats.textContent = "live tail: connecting...";
    let response;
    try {
      response = await api("/store/stream?" + apiParams(s, false), ctl.signal);
    } catch (e) {
      if (!ctl.signal.aborted) liveFailed("live tail failed: " + e.message);
      return;
    }
    if (response.status !== 200) {
      const reason = (await response.text().catch(() => "")).trim();
      if (controller !== ctl) return;
      liveFailed(response.status === 404
        ? "live tail is not available on this node (no /store/stream)"
        : "live tail: " + response.status + " " + response.statusText + ": " + reason);
      return;
    }
    let dropped = 0;
    const notice = (line) => {
      const m = /^#dropped (\d+)/.exec(line);
      if (!m) return; // a heartbeat
      dropped += Number(m[1]);
      show(note, dropped.toLocaleString("en-US") + " matching record(s) dropped: this live tail fell behind");
    };
    const renderer = new Renderer(LIVE_LINES, true, (n) => {
      stats.textContent = "live tail since " + since + " · showing the newest " + n.toLocaleString("en-US") + " record(s)";
      if (follow) window.scrollTo(0, document.documentElement.scrollHeight);
    }, notice);
    stats.textContent = "live tail since " + since + " · waiting for records";
    try {
      const outcome = await pump(response, renderer, ctl.signal);
      if (outcome === "done" && controller === ctl) {
        show(note, "the live tail ended (the node closed the stream)");
        live.checked = false;
        saveURL(readForm(), false);
        setState("done");
      }
    } catch (e) {
      if (controller === ctl) liveFailed("live tail broke off: " + e.message);
    }
  }

  function liveFailed(message) {
    show(errorBox, message);
    live.checked = false;
    saveURL(readForm(), false);
    setState("error");
  }

  function stopLive() {
    if (live.checked) {
      live.checked = false;
      stop();
      setState("stopped");
    }
  }

  // --- wiring -----------------------------------------------------------------------------

  function run(push) {
    const s = readForm();
    if (s.live) startLive(s, push); else runQuery(s, push);
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); run(true); });

  document.getElementById("presets").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-range]");
    if (!b) return;
    from.value = b.dataset.range;
    to.value = "now";
    run(true);
  });

  live.addEventListener("change", () => {
    if (live.checked) run(true);
    else { stop(); setState("stopped"); saveURL(readForm(), true); stats.textContent = "live tail stopped"; }
  });

  document.addEventListener("keydown", (e) => {
    const typing = e.target instanceof HTMLInputElement && e.target.type !== "checkbox";
    if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault(); q.focus(); q.select();
    } else if (e.key === "Escape") {
      if (controller) {
        e.preventDefault(); // in the search box Esc would also clear the query
        stop();
        if (live.checked) { live.checked = false; saveURL(readForm(), false); }
        setState("stopped");
        stats.textContent += " · stopped";
      }
    } else if (e.altKey && (e.key === "l" || e.key === "L")) {
      e.preventDefault();
      live.checked = !live.checked;
      live.dispatchEvent(new Event("change"));
    }
  });

  window.addEventListener("popstate", () => start(false));
  window.addEventListener("scroll", () => {
    follow = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 60;
  }, { passive: true });

  function start(first) {
    const s = fromURL();
    writeForm(s);
    if (s.given) run(false);
    else if (first) q.focus();
  }

  start(true);
})();
