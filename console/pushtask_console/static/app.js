// The PushTask console page. Plain JavaScript, no build step, nothing loaded from elsewhere.
// Every piece of data reaches the page through textContent or an attribute set by
// createElement/setAttribute, never as HTML: a user id or a template holding <script> is
// shown as the text it is. The Content-Security-Policy forbids inline script and style.
"use strict";

const state = {
  config: { namespaces: [], readsNeedToken: false },
  tasks: new Map(),       // "ns/name" -> summary, from the live stream
  route: { view: "list" },
  history: [],            // the open task's [time, rate, sent] points
  historyKey: "",
  detailTimer: null,
  stream: null,           // AbortController of the live stream
};

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function token() { return $("token").value.trim(); }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: "HTTP " + response.status }; }
  return { ok: response.ok, status: response.status, data };
}

function say(node, text, ok) {
  node.textContent = text;
  node.className = "message " + (ok ? "ok" : "error");
}

function pending(node) {
  node.textContent = "…";
  node.className = "message";
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

// -- live updates: server-sent events read through fetch, so the token can ride in a header --

async function connect() {
  if (state.stream) state.stream.abort();
  const ctl = new AbortController();
  state.stream = ctl;
  try {
    const response = await fetch("/api/stream", { headers: headers(), signal: ctl.signal });
    if (!response.ok) {
      let message = "HTTP " + response.status;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      $("live-state").textContent = "not live: " + message;
      return;
    }
    $("live-state").textContent = "live";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) onTasks(JSON.parse(data));
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (state.stream === ctl) {
    $("live-state").textContent = "reconnecting…";
    setTimeout(() => { if (state.stream === ctl) connect(); }, 2000);
  }
}

function onTasks(payload) {
  notice(payload.error ? "The cluster: " + payload.error : "");
  if (payload.error) return;
  state.tasks = new Map(payload.tasks.map((t) => [t.namespace + "/" + t.name, t]));
  renderList();
  if (state.route.view === "task") {
    const t = state.tasks.get(state.route.key);
    if (t) {
      renderHead(t);
      addPoint(t);
    }
  }
}

// -- the list ---------------------------------------------------------------------------

function bar(t) {
  const p = el("progress", null, { max: t.total || 1, value: t.done });
  p.title = t.percent + "%";
  return p;
}

function renderList() {
  const body = $("tasks").tBodies[0];
  clear(body);
  for (const t of state.tasks.values()) {
    const key = t.namespace + "/" + t.name;
    const row = el("tr", null, { "data-task": key });
    row.appendChild(el("td", t.namespace));
    const name = el("td");
    name.appendChild(el("a", t.name, { href: "#/task/" + encodeURIComponent(t.namespace) + "/" + encodeURIComponent(t.name) }));
    row.appendChild(name);
    const phase = el("td");
    phase.appendChild(el("span", t.phase, { class: "phase phase-" + t.phase }));
    row.appendChild(phase);
    const progress = el("td");
    progress.appendChild(bar(t));
    row.appendChild(progress);
    const done = t.done + " / " + t.total;
    const clicks = t.clicks !== null && t.clicks !== undefined ? ", " + t.clicks + " clicks (" + t.clickThrough + ")" : "";
    row.appendChild(el("td", done + clicks, { class: "done" }));
    row.appendChild(el("td", Math.round(t.rate) + "/s"));
    row.appendChild(el("td", t.workers));
    body.appendChild(row);
  }
  $("no-tasks").hidden = state.tasks.size > 0;
}

// -- the create form ----------------------------------------------------------------------

const EXAMPLE = [
  "apiVersion: pushtask.dev/v1alpha1",
  "kind: PushTask",
  "metadata:",
  "  name: my-campaign",
  "spec:",
  "  workers: 2",
  "  rate: {perSecond: 100}",
  "  audience:",
  "    sources:",
  "      - kind: inline",
  "        users: [u-1, u-2, u-3]",
  "  message:",
  "    channel: webhook",
  "    webhook: {url: \"https://push.example.com/send\"}",
  "    template: {title: Hello, body: \"Hi {{ user }}\"}",
  "",
].join("\n");

function showFormErrors(fields) {
  const list = $("form-errors");
  clear(list);
  for (const f of fields || []) {
    const li = el("li", null, { "data-field": f.field || "" });
    if (f.field) li.appendChild(el("span", f.field, { class: "field" }));
    li.appendChild(document.createTextNode((f.field ? ": " : "") + f.message));
    list.appendChild(li);
  }
  $("manifest").classList.toggle("invalid", (fields || []).length > 0);
}

async function submitManifest(dryRun) {
  showFormErrors([]);
  pending($("create-message"));
  const body = { yaml: $("manifest").value, namespace: $("create-namespace").value, dryRun };
  const { ok, data } = await api("POST", "/api/manifests", body);
  if (ok) {
    showFormErrors([]);
    say($("create-message"), data.message, true);
  } else {
    showFormErrors(data.fields);
    say($("create-message"), data.error, false);
  }
}

// -- a task's page ----------------------------------------------------------------------

function renderHead(t) {
  $("t-name").textContent = t.namespace + "/" + t.name;
  $("t-phase").textContent = t.phase;
  $("t-phase").className = "phase phase-" + t.phase;
  $("t-message").textContent = [t.reason, t.message].filter(Boolean).join(": ") + " (run " + t.run + ", desired " + t.state + ")";
  const p = $("t-progress");
  p.max = t.total || 1;
  p.value = t.done;
  $("t-done").textContent = t.done + " / " + t.total + " (" + t.percent + "%), " + Math.round(t.rate) + "/s, eta " + t.eta + ", workers " + t.workers;
  const counts = $("t-counts").tBodies[0];
  clear(counts);
  // A run that tracks link clicks adds its clicks (unique recipient-link pairs), its
  // clickers (unique recipients) and the click-through (clickers per sent message).
  const tracked = t.clicks !== null && t.clicks !== undefined;
  // Users left out of the audience (audience.exclude, repeated rows), when there are any.
  const leftOut = ["excluded", "duplicates"].filter((k) => t[k]);
  const keys = ["sent", "failed", "skipped", "unknown", "done", "total"].concat(leftOut);
  for (const k of tracked ? keys.concat(["clicks", "clickers", "clickThrough"]) : keys) {
    const row = el("tr");
    row.appendChild(el("th", k === "clickThrough" ? "click-through" : k));
    row.appendChild(el("td", t[k], { "data-count": k }));
    counts.appendChild(row);
  }
  // A run that tracks conversions: one row per event, its count and rate per sent message.
  for (const c of t.conversions || []) {
    const row = el("tr");
    row.appendChild(el("th", "conversion " + c.event));
    row.appendChild(el("td", c.count + " (" + c.rate + ")", { "data-conversion": c.event }));
    counts.appendChild(row);
  }
  if (document.activeElement !== $("scale-workers")) $("scale-workers").value = t.desiredWorkers;
}

function rows(tableId, items, cells) {
  const body = $(tableId).tBodies[0];
  clear(body);
  for (const item of items) {
    const row = el("tr");
    for (const c of cells(item)) row.appendChild(el("td", c));
    body.appendChild(row);
  }
}

function listOf(id, items, empty) {
  const list = $(id);
  clear(list);
  for (const text of items) list.appendChild(el("li", text));
  if (!items.length) list.appendChild(el("li", empty, { class: "muted" }));
}

async function loadDetail() {
  const route = state.route;
  if (route.view !== "task") return;
  const { ok, data } = await api("GET", "/api/tasks/" + encodeURIComponent(route.ns) + "/" + encodeURIComponent(route.name));
  if (state.route !== route) return;
  if (!ok) { notice(data.error); return; }
  renderHead(data.summary);
  const key = data.summary.uid + "/" + data.summary.run;
  if (key !== state.historyKey) {
    state.historyKey = key;
    state.history = data.history;
    drawChart();
  }
  rows("t-workers", data.workers, (w) => [w.id, w.age === null ? "-" : w.age + " s ago", w.lease || "-"]);
  $("store-error").textContent = data.storeError;
  rows("t-conditions", data.conditions, (c) => [c.type, c.status, c.reason, c.message]);
  rows("t-events", data.events, (e) => [e.time, e.type, e.reason, e.message]);
  listOf("t-skips", data.skipSamples, "none");
  listOf("t-failures", data.failures.map((f) => f.user + ": " + f.error), "none");
  // A run that tracks links: each link of its message and how many recipients clicked it.
  $("t-links-section").hidden = !data.links.length;
  rows("t-links", data.links, (l) => ["#" + l.link, l.target, l.clickers]);
  const tpl = $("t-template").tBodies[0];
  clear(tpl);
  for (const [k, v] of [["channel", data.channel], ...Object.entries(data.template)]) {
    const row = el("tr");
    row.appendChild(el("th", k));
    row.appendChild(el("td", v, { "data-template": k }));
    tpl.appendChild(row);
  }
}

function addPoint(t) {
  if (t.uid + "/" + t.run !== state.historyKey) return;
  state.history.push([Date.now() / 1000, t.rate, t.sent]);
  const since = Date.now() / 1000 - 600;
  while (state.history.length && state.history[0][0] < since) state.history.shift();
  drawChart();
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function drawChart() {
  const chart = $("rate-chart");
  clear(chart);
  const W = 400, H = 120, pad = 18;
  chart.appendChild(svg("line", { class: "axis", x1: pad, y1: H - pad, x2: W, y2: H - pad }));
  const points = state.history;
  const top = Math.max(1, ...points.map((p) => p[1]));
  chart.appendChild(svg("text", { x: 2, y: 10 }, Math.round(top) + "/s"));
  chart.appendChild(svg("text", { x: 2, y: H - 4 }, "0"));
  if (points.length > 1) {
    const t0 = points[0][0], span = Math.max(1, points[points.length - 1][0] - t0);
    const xy = points.map((p) => {
      const x = pad + ((p[0] - t0) / span) * (W - pad - 2);
      const y = H - pad - (p[1] / top) * (H - pad - 14);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    chart.appendChild(svg("polyline", { class: "line", points: xy.join(" ") }));
  }
  const last = points[points.length - 1];
  $("rate-now").textContent = last ? "now " + Math.round(last[1]) + "/s, " + last[2] + " sent" : "no samples yet";
}

async function act(action) {
  const route = state.route;
  const body = action === "scale" ? { workers: $("scale-workers").value } : undefined;
  const path = "/api/tasks/" + encodeURIComponent(route.ns) + "/" + encodeURIComponent(route.name) + "/" + action;
  pending($("action-message"));
  const { ok, data } = await api("POST", path, body || {});
  say($("action-message"), ok ? data.message : "Refused: " + data.error, ok);
  if (ok) loadDetail();
}

async function lookup(ev) {
  ev.preventDefault();
  const route = state.route;
  const out = $("lookup-result");
  clear(out);
  const q = new URLSearchParams({ user: $("lookup-user").value });
  if ($("lookup-run").value) q.set("run", $("lookup-run").value);
  const path = "/api/tasks/" + encodeURIComponent(route.ns) + "/" + encodeURIComponent(route.name) + "/recipient?" + q;
  const { ok, data } = await api("GET", path);
  if (!ok) { out.appendChild(el("p", data.error, { class: "message error" })); return; }
  const dl = el("dl", null, { id: "lookup-fields" });
  const items = data.found
    ? [["user", data.user], ["run", data.run], ["status", data.status], ["attempts", data.attempts],
       ["error", data.error || "-"], ["time", data.at || "-"], ["worker", data.worker || "-"]]
    : [["user", data.user], ["run", data.run], ["status", data.note]];
  for (const [k, v] of items) {
    dl.appendChild(el("dt", k));
    dl.appendChild(el("dd", v, { "data-field": k }));
  }
  out.appendChild(dl);
}

async function sendTest(ev) {
  ev.preventDefault();
  const route = state.route;
  const errors = $("test-errors");
  clear(errors);
  $("test-results").hidden = true;
  pending($("test-message"));
  const path = "/api/tasks/" + encodeURIComponent(route.ns) + "/" + encodeURIComponent(route.name) + "/test";
  const { ok, data } = await api("POST", path, { to: $("test-to").value, attrs: $("test-attrs").value });
  if (!ok) {
    say($("test-message"), data.error, false);
    for (const f of data.fields || []) {
      const li = el("li", null, { "data-field": f.field || "" });
      if (f.field) li.appendChild(el("span", f.field, { class: "field" }));
      li.appendChild(document.createTextNode((f.field ? ": " : "") + f.message));
      errors.appendChild(li);
    }
    return;
  }
  say($("test-message"), data.delivered ? "Every test was delivered" : "Not every test was delivered", data.delivered);
  rows("test-results", data.results, (r) => [r.user, r.outcome, r.attempts, r.status === null ? "-" : r.status, r.detail || "-"]);
  $("test-results").hidden = false;
}

// -- routing ------------------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/task\/([^/]+)\/([^/]+)$/);
  clearInterval(state.detailTimer);
  if (m) {
    const ns = decodeURIComponent(m[1]), name = decodeURIComponent(m[2]);
    state.route = { view: "task", ns, name, key: ns + "/" + name };
    state.historyKey = "";
    $("list-view").hidden = true;
    $("task-view").hidden = false;
    clear($("lookup-result"));
    clear($("test-errors"));
    $("test-results").hidden = true;
    $("test-message").textContent = "";
    $("action-message").textContent = "";
    loadDetail();
    state.detailTimer = setInterval(loadDetail, 3000);
  } else {
    state.route = { view: "list" };
    $("task-view").hidden = true;
    $("list-view").hidden = false;
  }
}

async function start() {
  $("token").value = sessionStorage.getItem("pushtask-token") || "";
  $("token-form").addEventListener("submit", (ev) => ev.preventDefault());
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("pushtask-token", token());
    connect();
    if (state.route.view === "task") loadDetail();
  });
  const { data } = await api("GET", "/api/config");
  state.config = data;
  const select = $("create-namespace");
  for (const ns of data.namespaces.length ? data.namespaces : ["default"]) select.appendChild(el("option", ns, { value: ns }));
  $("manifest").value = EXAMPLE;
  $("create-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitManifest(false); });
  $("validate").addEventListener("click", () => submitManifest(true));
  for (const b of document.querySelectorAll("button[data-action]")) {
    b.addEventListener("click", () => act(b.getAttribute("data-action")));
  }
  $("lookup-form").addEventListener("submit", lookup);
  $("test-form").addEventListener("submit", sendTest);
  window.addEventListener("hashchange", route);
  route();
  drawChart();
  connect();
}

document.addEventListener("DOMContentLoaded", start);
