"""The web view's page (``GET /``): one HTML document with its CSS and script inline.

Nothing is loaded from elsewhere (no CDN, no build step). The script opens ``/$events``
(:mod:`~hyco_proto.service.webview`) with ``EventSource`` and redraws the tables from each
``snapshot`` event; it never polls. Its two timers fetch nothing: one redraws the age cells
once a second from the snapshot's timestamps, the other re-opens the stream after the browser
gave it up (an HTTP error such as the 503 beyond the watcher cap), 5 s then up to 30 s later.
Every value comes from clients (names, paths, reasons), so it is only ever set as
``textContent``, never parsed as HTML.
"""

from __future__ import annotations

__all__ = ["PAGE"]

_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hyco emulator</title>
<link rel="icon" href="data:,">
<style>
:root { color-scheme: light dark; --line: #8884; --muted: #888; --ok: #1a7f37; --bad: #cf222e; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .4rem 1.2rem;
         padding: .8rem 0; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.25rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
h2 small, .muted { color: var(--muted); font-weight: normal; }
#state { font-weight: 600; padding: .05rem .5rem; border-radius: 1rem; color: #fff; }
#state.connected { background: var(--ok); }
#state.disconnected { background: var(--bad); }
#state.connecting { background: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .2rem .6rem .2rem 0; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
td { overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.mono, #summary { font-family: ui-monospace, monospace; font-size: 13px; }
tr.empty td, tr.more td { color: var(--muted); font-style: italic; }
</style>
</head>
<body>
<header>
  <h1>hyco emulator</h1>
  <span id="namespace" class="muted"></span>
  <span id="version" class="muted"></span>
  <span id="state" class="connecting">connecting…</span>
  <span class="muted">updated <span id="updated">never</span></span>
</header>
<p id="summary"></p>

<h2>Hybrid Connections <small id="hc-count"></small></h2>
<table id="hc"><thead><tr><th>Hybrid connection</th><th>Listeners</th><th>Listener id</th>
<th>Listener address</th><th>Age</th></tr></thead><tbody></tbody></table>

<h2>Relayed pairs <small id="pairs-count"></small></h2>
<table id="pairs"><thead><tr><th>Hybrid connection</th><th>Sender</th><th>Listener</th>
<th>Sender &rarr; listener</th><th>Listener &rarr; sender</th><th>Age</th><th>Id</th></tr>
</thead><tbody></tbody></table>

<h2>HTTP requests in flight <small id="requests-count"></small></h2>
<table id="requests"><thead><tr><th>Hybrid connection</th><th>Method</th><th>Path</th>
<th>Client</th><th>Status</th><th>Request bytes</th><th>Response bytes</th><th>Age</th></tr>
</thead><tbody></tbody></table>

<h2>Web PubSub hubs <small id="hubs-count"></small></h2>
<table id="hubs"><thead><tr><th>Hub</th><th>Connections</th><th>Groups (members)</th></tr>
</thead><tbody></tbody></table>

<h2>Last refusals <small id="refusals-count"></small></h2>
<table id="refusals"><thead><tr><th>Time (UTC)</th><th>Client</th><th>Status</th><th>Path</th>
<th>Reason</th><th>Tracking id</th></tr></thead><tbody></tbody></table>

<script>
"use strict";
// Everything shown comes from clients: set as textContent only, never as HTML.
const byId = (id) => document.getElementById(id);

// The service's clock minus the browser's, seconds (each snapshot carries its time).
let skew = 0;
const serverNow = () => Date.now() / 1000 + skew;

function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    if (cls === "age") {  // a timestamp: its age is drawn by showAges()
      td.className = "num";
      td.dataset.since = String(text);
    } else {
      td.textContent = String(text);
      if (cls) td.className = cls;
    }
    tr.appendChild(td);
  }
  return tr;
}

function showAges() {
  const now = serverNow();
  for (const td of document.querySelectorAll("td[data-since]")) {
    td.textContent = age(Math.max(0, Math.floor(now - Number(td.dataset.since))));
  }
}

function more(count, columns) {  // what a nested list left out
  const cells = Array.from({length: columns}, () => [""]);
  cells[2] = [`… and ${count} more`];
  return row(cells, "more");
}

function fill(table, rows, columns, emptyText) {
  const body = byId(table).tBodies[0];
  if (!rows.length) rows = [row([[emptyText]], "empty")];
  if (rows.length && rows[0].className === "empty") rows[0].cells[0].colSpan = columns;
  body.replaceChildren(...rows);
}

function count(id, shown, total) {
  byId(id).textContent = total > shown ? `(${shown} of ${total})` : `(${total})`;
}

function size(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024, i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
}

function age(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor(s / 60) % 60} min`;
}

function render(snap) {
  byId("namespace").textContent = snap.namespace;
  byId("version").textContent = `hyco_proto ${snap.version}`;
  skew = snap.time - Date.now() / 1000;
  byId("updated").textContent =
    new Date(snap.time * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  const c = snap.counters;
  const conns = Object.entries(snap.connections).map(([k, v]) => `${k} ${v}`).join(", ");
  byId("summary").textContent =
    `connections: ${conns || "none"} | listeners ${c.listeners} | pairs joined ` +
    `${c.relayed_pairs} | bytes relayed ${size(c.bytes_relayed)} | HTTP requests ` +
    `${c.http_requests} | auth failures ${c.auth_failures}`;

  const hcRows = [];
  for (const hc of snap.hybrid_connections) {
    if (!hc.listener_count) {
      hcRows.push(row([[hc.name], [0, "num"], ["-"], ["-"], ["-"]]));
      continue;
    }
    if (!hc.listeners.length) {  // the section's rows ran out
      hcRows.push(row([[hc.name], [hc.listener_count, "num"], ["…"], ["…"], ["-"]]));
      continue;
    }
    hc.listeners.forEach((l, i) => hcRows.push(row([
      [i ? "" : hc.name], [i ? "" : hc.listener_count, "num"], [l.id, "mono"],
      [l.address, "mono"], [l.opened, "age"]])));
    if (hc.listener_count > hc.listeners.length) {
      hcRows.push(more(hc.listener_count - hc.listeners.length, 5));
    }
  }
  fill("hc", hcRows, 5, "no hybrid connections yet");
  count("hc-count", snap.hybrid_connections.length, snap.hybrid_connection_count);

  fill("pairs", snap.pairs.map((p) => row([
    [p.hc], [p.sender, "mono"], [p.listener, "mono"], [size(p.bytes_up), "num"],
    [size(p.bytes_down), "num"], [p.joined, "age"], [p.id, "mono"]])), 7,
    "no relayed pairs");
  count("pairs-count", snap.pairs.length, snap.pair_count);

  fill("requests", snap.requests.map((r) => row([
    [r.hc], [r.method], [r.path, "mono"], [r.client, "mono"],
    [r.status === null ? "waiting" : r.status, "num"], [size(r.bytes_in), "num"],
    [size(r.bytes_out), "num"], [r.started, "age"]])), 8, "no HTTP requests in flight");
  count("requests-count", snap.requests.length, snap.request_count);

  fill("hubs", snap.hubs.map((h) => row([
    [h.name], [h.connections, "num"],
    [h.groups.map((g) => `${g.name} (${g.members})`).join(", ") +
     (h.group_count > h.groups.length ?
       `${h.groups.length ? ", " : ""}… and ${h.group_count - h.groups.length} more` : "")
    ]])), 3,
    snap.webpubsub ? "no hubs yet" : "Web PubSub is off");
  count("hubs-count", snap.hubs.length, snap.hub_count);

  fill("refusals", snap.refusals.map((r) => row([
    [r.time.replace("T", " ").replace("Z", ""), "mono"], [r.client, "mono"],
    [r.status || "TLS", "num"], [r.what, "mono"], [r.reason], [r.tracking, "mono"]])), 6,
    "no refusals");
  count("refusals-count", snap.refusals.length, snap.refusals.length);
  showAges();
}

function state(connected, text) {
  const badge = byId("state");
  badge.textContent = text || (connected ? "connected" : "disconnected");
  badge.className = connected ? "connected" : "disconnected";
}

// The service pushes a snapshot when the stream opens and whenever the state changes;
// EventSource reconnects by itself (after the stream's `retry` delay) when a stream breaks.
// After an HTTP error (503: too many watchers) it gives up (readyState CLOSED, whatever
// Retry-After says): the stream is opened again 5 s later, then 10, 20, at most 30 s.
let retryDelay = 5;

function connect() {
  const source = new EventSource("$events");
  source.addEventListener("open", () => { retryDelay = 5; state(true); });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) retryLater(source); else state(false);
  });
  source.addEventListener("snapshot", (event) => {
    state(true);
    render(JSON.parse(event.data));
  });
}

function retryLater(source) {
  source.close();
  let left = retryDelay;
  retryDelay = Math.min(retryDelay * 2, 30);
  const countDown = () => {
    if (left <= 0) { connect(); return; }
    state(false, `disconnected — retrying in ${left} s`);
    left -= 1;
    setTimeout(countDown, 1000);
  };
  countDown();
}

connect();
setInterval(showAges, 1000);  // ages only: nothing is fetched
</script>
</body>
</html>
"""

#: The page's bytes (UTF-8).
PAGE = _HTML.encode("utf-8")
