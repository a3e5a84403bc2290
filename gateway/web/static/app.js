// The live page: history from the JSON API, then live updates over Server-Sent Events.
// Every text from the gateway is untrusted: it is set with textContent, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_ALERTS = 200;
const state = {
  history: 300,           // seconds shown by a sparkline (the server says in its hello)
  devices: new Map(),     // device -> {card, badge, metrics: Map(metric -> view)}
  active: new Map(),      // pipeline|step|device|metric -> raised alert
  seen: new Set(),        // alerts already in the feed (live and loaded may overlap)
  lastTs: new Map(),      // pipeline|step|device|metric -> ts of the newest transition seen
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function fmt(v) {
  if (typeof v !== "number" || !isFinite(v)) return String(v);
  const a = Math.abs(v);
  return a >= 1000 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

function device(name) {
  let d = state.devices.get(name);
  if (d) return d;
  const box = document.getElementById("devices");
  box.querySelector(".empty")?.remove();
  const card = el("article", "card");
  card.dataset.device = name;
  const h = el("h3");
  h.append(el("span", "device-name", name));
  const badge = el("span", "badge", "ok");
  h.append(badge);
  card.append(h);
  d = { card, badge, metrics: new Map() };
  state.devices.set(name, d);
  const sorted = [...state.devices.keys()].sort();
  const next = sorted[sorted.indexOf(name) + 1];
  box.insertBefore(card, next ? state.devices.get(next).card : null);
  return d;
}

function metric(devName, name) {
  const d = device(devName);
  let m = d.metrics.get(name);
  if (m) return m;
  const row = el("div", "metric");
  row.dataset.metric = name;
  const value = el("span", "value", "–");
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(SVG, "polyline");
  svg.append(line);
  const msg = el("span", "msg");
  row.append(el("span", "name", name), value, svg, msg);
  const names = [...d.metrics.keys(), name].sort();
  const next = names[names.indexOf(name) + 1];
  d.card.insertBefore(row, next ? d.metrics.get(next).row : null);
  m = { row, value, line, msg, points: [] };
  d.metrics.set(name, m);
  loadHistory(devName, name, m);
  return m;
}

async function loadHistory(devName, name, m) {
  const q = new URLSearchParams({ device: devName, metric: name, start: `${state.history}s`, points: "60" });
  try {
    const s = await api(`api/series?${q}`);
    const past = s.points.map((p) => [p.t + s.bucket / 2, p.avg]);
    const first = m.points.length ? m.points[0][0] : Infinity;
    m.points = past.filter((p) => p[0] < first).concat(m.points);
    draw(m);
  } catch (e) { console.warn(e); }
}

function draw(m) {
  // x spans the last `history` seconds up to now (or up to the newest point when the device
  // clock lags), at least 10 s, shorter while less data has been seen: no flat empty start.
  const now = Date.now() / 1000;
  const newest = m.points.length ? m.points[m.points.length - 1][0] : now;
  const end = newest > now - state.history ? Math.max(now, newest) : newest;
  while (m.points.length && m.points[0][0] < end - state.history) m.points.shift();
  if (!m.points.length) { m.line.setAttribute("points", ""); return; }
  const start = Math.min(m.points[0][0], end - 10);
  const width = end - start || 1;
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of m.points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi - lo || 1;
  const pts = m.points.map(([t, v]) =>
    `${(((t - start) / width) * 100).toFixed(2)},${(28 - ((v - lo) / span) * 26).toFixed(2)}`);
  m.line.setAttribute("points", pts.join(" "));
}

function onReading(r) {
  const m = metric(r.device, r.metric);
  m.value.textContent = fmt(r.value);
  m.value.title = clock(r.ts);
  const last = m.points[m.points.length - 1];
  if (!last || r.ts >= last[0]) m.points.push([r.ts, r.value]);
  draw(m);
}

function alertKey(a) { return `${a.pipeline}|${a.step}|${a.device}|${a.metric}`; }

function renderAlertState(devName) {
  const d = device(devName);
  const raised = [...state.active.values()].filter((a) => a.device === devName);
  d.card.classList.toggle("alerting", raised.length > 0);
  d.badge.textContent = raised.length ? raised.map((a) => a.severity).join(", ") : "ok";
  for (const [name, m] of d.metrics) {
    const hot = raised.filter((a) => a.metric === name);
    m.row.classList.toggle("hot", hot.length > 0);
    m.msg.textContent = hot.map((a) => a.message).join("; ");
  }
}

// Apply one transition to the alert state unless a newer one for the same alert is known:
// the initial load and the live stream overlap, in either order.
function applyAlert(a) {
  const key = alertKey(a);
  const known = state.lastTs.get(key);
  if (known !== undefined && a.ts < known) return;
  state.lastTs.set(key, a.ts);
  if (a.state === "raised") state.active.set(key, a);
  else state.active.delete(key);
  metric(a.device, a.metric);
  renderAlertState(a.device);
}

function addAlert(a) {
  applyAlert(a);
  const id = `${alertKey(a)}|${a.state}|${a.ts}`;
  if (state.seen.has(id)) return;
  state.seen.add(id);
  const list = document.getElementById("alerts");
  list.querySelector(".empty")?.remove();
  const li = el("li", a.state);
  li.append(el("time", "", clock(a.ts)), el("strong", "", `${a.state} ${a.severity}`), " ",
    el("span", "", a.message || `${a.device} ${a.metric}`));
  const newer = [...list.children].find((x) => Number(x.dataset.ts) < a.ts);
  li.dataset.ts = String(a.ts);
  list.insertBefore(li, newer || null);
  while (list.children.length > MAX_ALERTS) list.lastChild.remove();
}

function cells(tr, values) {
  for (const v of values) {
    const td = el("td");
    if (v instanceof Node) td.append(v); else td.textContent = String(v);
    tr.append(td);
  }
}

function renderHealth(h) {
  document.getElementById("gateway").textContent = h.gateway;
  document.title = `${h.gateway} · edge-gateway`;
  document.getElementById("uptime").textContent = `up ${Math.round(h.uptime)}s`;
  const src = document.querySelector("#sources tbody");
  src.replaceChildren(...h.sources.map((s) => {
    const tr = el("tr");
    const last = s.idle === null ? "never" : `${Math.round(s.idle)}s ago`;
    cells(tr, [s.id, s.readings, s.rate, s.rejected, el("span", s.idle === null || s.idle > 10 ? "stale" : "", last)]);
    return tr;
  }));
  const sinks = document.querySelector("#sinks tbody");
  sinks.replaceChildren(...h.sinks.map((s) => {
    const tr = el("tr");
    cells(tr, [s.id, el("span", `state-${s.breaker}`, s.breaker), s.outbox, s.rate]);
    return tr;
  }));
}

function setLive(on) {
  const c = document.getElementById("conn");
  c.className = `conn ${on ? "on" : "off"}`;
  c.textContent = on ? "live" : "reconnecting…";
}

function connect() {
  const es = new EventSource("api/events");
  es.onopen = () => setLive(true);
  es.onerror = () => setLive(false);
  let hellos = 0;
  es.addEventListener("hello", (e) => {
    state.history = JSON.parse(e.data).history;
    if (hellos++ > 0) loadAlerts().catch((err) => console.warn(err)); // missed while away
  });
  es.addEventListener("readings", (e) => JSON.parse(e.data).forEach(onReading));
  es.addEventListener("alerts", (e) => JSON.parse(e.data).forEach(addAlert));
  es.addEventListener("health", (e) => renderHealth(JSON.parse(e.data)));
}

async function loadAlerts() {
  const [recent, active] = await Promise.all([api("api/alerts?limit=50"), api("api/alerts/active")]);
  recent.reverse().forEach(addAlert);
  active.forEach(applyAlert);
}

async function start() {
  connect();
  const [latest, health] = await Promise.all([api("api/latest"), api("api/health")]);
  renderHealth(health);
  for (const r of latest) { const m = metric(r.device, r.metric); if (!m.points.length) onReading(r); }
  await loadAlerts();
  setInterval(() => { for (const d of state.devices.values()) for (const m of d.metrics.values()) draw(m); }, 5000);
}

start().catch((e) => {
  console.error(e);
  const box = document.getElementById("devices");
  box.replaceChildren(el("p", "empty", `cannot load: ${e.message}`));
});
