// The session page (/sessions/<id>): header with status, a zoomable timeline of state changes,
// events and exceptions, the current state as a JSON tree, state changes as diffs, per-metric
// summaries and a searchable event list; refreshes itself while the session is still open.
import { el, svg, getJSON, showError, clearError, badge, fmtTime, fmtClock, fmtDuration, fmtNum,
  jsonTree, shortJSON, tagChips } from "./common.js";
import { lineChart, barChart } from "./charts.js";

const sessionId = document.body.dataset.sessionId;
const refreshMs = Number(document.body.dataset.refreshMs) || 5000;
const openState = new Set(["$"]);
const openEvents = new Set();
const rendered = new Map();
let current = null;
let view = null; // the timeline's chosen [start, end] in ms, null = everything
let displayed = [0, 1]; // what the timeline shows right now (an open session's end moves on)

function renderIfChanged(key, data, render) {
  const text = JSON.stringify(data);
  if (rendered.get(key) === text) return;
  rendered.set(key, text);
  render(data);
}

function renderHeader(s) {
  document.getElementById("title").textContent = `${s.product} ${s.version}`;
  document.title = `${s.product} ${s.version} · DataCat`;
  const flags = ["hung", "suspended", "crashed"].filter((f) => s[f] && s.status !== f);
  document.getElementById("badges").replaceChildren(badge(s.status), ...flags.map((f) => [" ", badge(f)]));
  const end = s.ended_at ? Date.parse(s.ended_at) : Date.now();
  const facts = [
    ["Session", s.id], ["Machine", filterLink({ machine_id: s.machine_id }, s.machine_id)],
    ["Host", s.hostname ?? "–"], ["Same version", filterLink({ product: s.product, version: s.version }, "all sessions")],
    ["Started", fmtTime(s.created_at)], ["Last activity", fmtTime(s.updated_at)],
    ["Ended", fmtTime(s.ended_at)], ["Duration", fmtDuration((end - Date.parse(s.created_at)) / 1000)],
    ["Last heartbeat", fmtTime(s.last_heartbeat)],
  ];
  if (s.crash_reason) facts.push(["Crash reason", s.crash_reason]);
  document.getElementById("facts").replaceChildren(...facts.map(([k, v]) =>
    el("div", { "data-fact": k }, el("dt", {}, k), el("dd", {}, v))));
}

/** A link to the sessions list filtered by `query`, or a dash when there is nothing to filter. */
function filterLink(query, label) {
  if (Object.values(query).some((v) => v === null || v === undefined)) return "–";
  return el("a", { href: "/sessions?" + new URLSearchParams(query).toString() }, label);
}

function renderState(state) {
  document.getElementById("state").replaceChildren(jsonTree(state, openState));
}

function diffRow(d) {
  const kind = d.old === null ? "added" : d.new === null ? "removed" : "changed";
  return el("li", { class: "diff " + kind },
    el("code", { class: "path" }, d.path), " ",
    kind === "added" ? null : el("span", { class: "old" }, shortJSON(d.old)),
    kind === "changed" ? " → " : " ",
    kind === "removed" ? el("span", { class: "muted" }, "(removed)") : el("span", { class: "new" }, shortJSON(d.new)));
}

function changeItem(c) {
  const body = c.diff.length ? el("ul", { class: "diffs" }, ...c.diff.map(diffRow))
    : el("p", { class: "muted" }, "no visible change");
  return el("div", {}, el("time", { datetime: c.timestamp }, fmtTime(c.timestamp)), body);
}

const MAX_CHANGES = 500; // listed; the timeline still marks every one

function renderChanges(changes) {
  const listed = changes.slice(-MAX_CHANGES).reverse();
  document.getElementById("changes-count").textContent =
    `(${changes.length}${changes.length > listed.length ? `, newest ${listed.length} listed` : ""})`;
  const items = listed.map((c) => el("li", {}, changeItem(c)));
  document.getElementById("changes").replaceChildren(...items);
}

function renderMetrics(metrics) {
  const cards = metrics.map((m) => el("figure", { class: "metric", "data-metric": m.name },
    el("figcaption", {}, el("strong", {}, m.name), " ", el("span", { class: "tag" }, m.type),
      ...tagChips(m.tags), m.unit ? el("span", { class: "muted" }, " ", m.unit) : null),
    ...metricBody(m)));
  if (!cards.length) cards.push(el("p", { class: "muted" }, "No metrics recorded."));
  document.getElementById("metrics").replaceChildren(...cards);
}

function metricBody(m) {
  const unit = m.unit || "";
  if (m.type === "counter") {
    return [el("p", { class: "big", "data-stat": "total" }, fmtNum(m.total)),
      el("p", { class: "muted" }, `total of ${m.count} increment${m.count === 1 ? "" : "s"}`)];
  }
  if (m.type === "histogram" && m.histogram) {
    const observations = m.histogram.counts.reduce((a, b) => a + b, 0);
    return [barChart(m.histogram.buckets, m.histogram.counts, m.name, unit),
      miniStats([["observations", observations], ["sum", m.total], ["mean", observations ? m.total / observations : null]])];
  }
  return [lineChart(m.series, m.name, unit),
    miniStats([["last", m.last], ["min", m.min], ["avg", m.avg], ["max", m.max], ["count", m.count]])];
}

function miniStats(pairs) {
  return el("table", { class: "stats" },
    el("tr", {}, ...pairs.map(([k]) => el("th", {}, k))),
    el("tr", {}, ...pairs.map(([k, v]) => el("td", { "data-stat": k }, fmtNum(v)))));
}

// ---- events -------------------------------------------------------------------------------

const search = document.getElementById("event-search");
const levelSelect = document.getElementById("event-level");
const nameSelect = document.getElementById("event-name");
const MAX_LISTED = 500;

function isProblem(e) {
  return Boolean(e.exception_type) || e.level === "error" || e.level === "critical";
}

function eventKey(e) {
  return e.timestamp + "|" + e.name;
}

function eventItem(e) {
  const key = eventKey(e);
  const stack = Array.isArray(e.stacktrace) ? e.stacktrace.join("\n") : e.stacktrace;
  const item = el("li", { class: "event lvl-" + e.level, "data-event": e.name },
    el("div", { class: "event-head" },
      el("time", { datetime: e.timestamp, title: fmtTime(e.timestamp) }, fmtClock(e.timestamp)), " ",
      el("span", { class: "level" }, e.level), " ",
      el("strong", { class: "event-name" }, e.name),
      e.category ? el("span", { class: "tag" }, e.category) : null,
      ...(e.labels || []).map((l) => el("span", { class: "tag label" }, l)),
      e.message ? el("span", { class: "message" }, " ", e.message) : null));
  if (e.exception_type || e.exception_msg) {
    item.append(el("div", { class: "exception" },
      el("strong", {}, e.exception_type || "Exception"), ": ", e.exception_msg || "",
      e.source_file ? el("span", { class: "muted" }, ` — ${e.source_file}:${e.source_line ?? "?"} in ${e.source_function ?? "?"}`) : null));
  }
  const extra = [];
  if (stack) extra.push(el("pre", { class: "stack" }, stack));
  if (e.data && Object.keys(e.data).length) extra.push(jsonTree(e.data, new Set(["$"])));
  if (extra.length) {
    const details = el("details", {}, el("summary", {}, stack ? "stack trace and data" : "data"), ...extra);
    details.open = openEvents.has(key);
    details.addEventListener("toggle", () => (details.open ? openEvents.add(key) : openEvents.delete(key)));
    item.append(details);
  }
  return item;
}

function renderEventNames(events) {
  const names = [...new Set(events.map((e) => e.name))].sort();
  const chosen = nameSelect.value;
  nameSelect.replaceChildren(el("option", { value: "" }, "any"), ...names.map((n) => el("option", { value: n }, n)));
  nameSelect.value = names.includes(chosen) ? chosen : "";
}

function renderEvents() {
  if (!current) return;
  const needle = search.value.trim().toLowerCase();
  const matching = current.events.filter((e) =>
    (!levelSelect.value || e.level === levelSelect.value) &&
    (!nameSelect.value || e.name === nameSelect.value) &&
    (!needle || JSON.stringify(e).toLowerCase().includes(needle)));
  const shown = matching.slice(-MAX_LISTED).reverse();
  const loaded = current.events.length, total = current.event_total;
  let count = `(${matching.length} of ${loaded}` + (total > loaded ? `; the newest ${loaded} of ${total} are loaded` : "") + ")";
  if (matching.length > shown.length) count += `, newest ${shown.length} listed`;
  document.getElementById("events-count").textContent = count;
  const items = shown.map(eventItem);
  if (!items.length) items.push(el("li", { class: "muted" }, "No event matches."));
  document.getElementById("events").replaceChildren(...items);
}

for (const input of [search, levelSelect, nameSelect]) input.addEventListener("input", renderEvents);

// ---- timeline -----------------------------------------------------------------------------

const TH = 110, LANES = { state: 18, event: 44, exception: 70 };

function timelineItems(s) {
  const items = s.changes.map((c) => ({ t: Date.parse(c.timestamp), kind: "state",
    label: `state: ${c.diff.map((d) => d.path).join(", ") || "no change"}`, detail: () => changeItem(c) }));
  for (const e of s.events) {
    items.push({ t: Date.parse(e.timestamp), kind: isProblem(e) ? "exception" : "event",
      label: `${e.level} ${e.name}${e.exception_type ? ` (${e.exception_type})` : ""}`, detail: () => eventItem(e) });
  }
  return items;
}

function fullRange(s, items) {
  const start = Date.parse(s.created_at);
  const end = Math.max(s.ended_at ? Date.parse(s.ended_at) : Date.now(), ...items.map((i) => i.t), start + 1000);
  return [start, end];
}

function renderTimeline() {
  if (!current) return;
  const items = timelineItems(current);
  const [start, end] = (displayed = view || fullRange(current, items));
  // one SVG unit per CSS pixel, so marks stay round at any width
  const TW = Math.max(300, document.getElementById("timeline").clientWidth || 1000);
  const x = (t) => ((t - start) / (end - start)) * TW;
  const root = svg("svg", { viewBox: `0 0 ${TW} ${TH}`, class: "timeline-svg" });
  for (const [kind, y] of Object.entries(LANES)) {
    root.append(svg("line", { x1: 0, x2: TW, y1: y, y2: y, class: "lane" }));
    root.append(svg("text", { x: 4, y: y - 6, class: "tick" }, kind === "exception" ? "exceptions / errors" : kind === "state" ? "state" : "events"));
  }
  for (const item of items.filter((i) => i.t >= start && i.t <= end)) {
    const mark = svg("circle", { cx: x(item.t).toFixed(1), cy: LANES[item.kind], r: 5, class: "mark k-" + item.kind, tabindex: 0 },
      svg("title", {}, `${fmtTime(new Date(item.t).toISOString())} — ${item.label}`));
    mark.addEventListener("click", () => showDetail(item));
    mark.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") showDetail(item); });
    root.append(mark);
  }
  root.append(svg("line", { x1: 0, x2: TW, y1: TH - 22, y2: TH - 22, class: "axis" }));
  for (let i = 0; i <= 4; i++) {
    const t = start + ((end - start) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    root.append(svg("text", { x: x(t), y: TH - 8, class: "tick", "text-anchor": anchor }, fmtClock(new Date(t).toISOString())));
  }
  bindZoom(root, start, end);
  const box = document.getElementById("timeline");
  box.dataset.start = start;
  box.dataset.end = end;
  box.replaceChildren(root);
  document.getElementById("timeline-range").textContent =
    `${fmtTime(new Date(start).toISOString())} — ${fmtTime(new Date(end).toISOString())} (${fmtDuration((end - start) / 1000)})`;
}

function showDetail(item) {
  document.getElementById("timeline-detail").replaceChildren(item.detail());
}

function zoom(factor, at = 0.5) {
  const [start, end] = displayed;
  const width = Math.max(10, (end - start) * factor);
  const pivot = start + (end - start) * at;
  view = [pivot - width * at, pivot - width * at + width];
  renderTimeline();
}

function bindZoom(root, start, end) {
  root.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = root.getBoundingClientRect();
    zoom(event.deltaY < 0 ? 0.8 : 1.25, (event.clientX - box.left) / box.width);
  }, { passive: false });
  root.addEventListener("pointerdown", (down) => {
    const box = root.getBoundingClientRect();
    const move = (event) => {
      const shift = ((event.clientX - down.clientX) / box.width) * (end - start);
      if (Math.abs(event.clientX - down.clientX) < 3) return;
      view = [start - shift, end - shift];
      renderTimeline();
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", () => window.removeEventListener("pointermove", move), { once: true });
  });
}

document.getElementById("zoom-in").addEventListener("click", () => zoom(0.5));
document.getElementById("zoom-out").addEventListener("click", () => zoom(2));
document.getElementById("zoom-reset").addEventListener("click", () => { view = null; renderTimeline(); });

// ---- loading and live refresh -------------------------------------------------------------

function renderLive(s) {
  const live = document.getElementById("live");
  live.hidden = false;
  live.classList.toggle("on", s.active);
  live.textContent = s.active
    ? `● Live: refreshes every ${fmtNum(refreshMs / 1000)} s (updated ${fmtClock(new Date().toISOString())})`
    : "Session is over: not refreshing.";
}

function render(s) {
  current = s;
  renderIfChanged("header", [s.status, s.updated_at, s.ended_at, s.last_heartbeat, s.crash_reason, s.ended_at ? 0 : Math.floor(Date.now() / 1000)], () => renderHeader(s));
  renderIfChanged("state", s.state, renderState);
  renderIfChanged("changes", s.changes, renderChanges);
  renderIfChanged("metrics", s.metrics, renderMetrics);
  renderIfChanged("events", [s.events.length, s.event_total, s.events.at(-1)], () => { renderEventNames(s.events); renderEvents(); });
  renderIfChanged("timeline", [s.changes.length, s.events.length, s.event_total, s.ended_at], renderTimeline);
  renderLive(s);
  document.body.dataset.loaded = "true";
}

const MAX_EVENTS = 5000; // as many as the server sends at once

async function refresh() {
  try {
    const after = current ? current.last_event_id : 0;
    const s = await getJSON(`/dashboard/api/sessions/${encodeURIComponent(sessionId)}?events_after=${after}`);
    if (current) s.events = current.events.concat(s.events).slice(-MAX_EVENTS); // only new ones came
    clearError();
    render(s);
    if (s.active) setTimeout(refresh, refreshMs);
  } catch (error) {
    showError(error);
    setTimeout(refresh, Math.max(refreshMs, 5000));
  }
}

refresh();
