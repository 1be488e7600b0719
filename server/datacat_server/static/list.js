// The overview (/) and sessions (/sessions) pages: filters kept in the page's URL, the filtered
// and sorted sessions list with paging, metric statistics across the filtered sessions, and on
// the overview the totals and the product → version grid.
import { el, getJSON, showError, clearError, badge, sessionLink, fmtTime, fmtNum, STATUSES, tagChips } from "./common.js";
import { lineChart } from "./charts.js";

const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
const PASSED = ["machine_id", "product", "version", "status", "state_key", "state_value", "state_mode", "event", "hang", "sort", "order", "page", "per_page"];
const params = new URLSearchParams(location.search);
const form = document.getElementById("filters");

function fillForm() {
  for (const [name, value] of params) {
    if (form.elements[name]) form.elements[name].value = value;
  }
  toggleCustom();
  form.elements.range.addEventListener("change", toggleCustom);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) next.set(name, value);
    if (next.get("range") !== "custom") { next.delete("from"); next.delete("to"); }
    if (!next.get("state_key")) { next.delete("state_value"); next.delete("state_mode"); }
    location.search = next.toString();
  });
}

function toggleCustom() {
  const custom = form.elements.range.value === "custom";
  for (const label of form.querySelectorAll(".custom-range")) label.hidden = !custom;
}

/** The page's filters as the /dashboard/api query string (time range turned into UTC times). */
function apiQuery() {
  const query = new URLSearchParams();
  for (const name of PASSED) if (params.get(name)) query.set(name, params.get(name));
  const range = params.get("range");
  if (RANGES[range]) query.set("created_after", new Date(Date.now() - RANGES[range] * 1000).toISOString());
  if (range === "custom") {
    for (const [field, name] of [["from", "created_after"], ["to", "created_before"]]) {
      const local = params.get(field);
      if (local && !isNaN(Date.parse(local))) query.set(name, new Date(local).toISOString());
    }
  }
  return query.toString();
}

function linkWith(changes) {
  const next = new URLSearchParams(params);
  for (const [name, value] of Object.entries(changes)) {
    if (value === null) next.delete(name); else next.set(name, value);
  }
  return "?" + next.toString();
}

function renderSessions(data) {
  document.getElementById("list-total").textContent = `(${data.total.toLocaleString()} matching)`;
  const rows = data.sessions.map((s) => el("tr", { "data-session-id": s.id },
    el("td", {}, badge(s.status)),
    el("td", {}, sessionLink(s.id, s.product)),
    el("td", {}, s.version),
    el("td", {}, s.hostname ?? "–"),
    el("td", { title: s.created_at }, fmtTime(s.created_at)),
    el("td", { title: s.ended_at ?? "" }, fmtTime(s.ended_at)),
    el("td", { title: s.updated_at }, fmtTime(s.updated_at)),
    el("td", { class: "num" }, fmtNum(s.event_count)),
    el("td", { class: "num" }, fmtNum(s.metric_count))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No session matches these filters.")));
  document.querySelector("#session-table tbody").replaceChildren(...rows);
  renderSortHeaders();
  renderPager(data.page, data.pages);
}

function renderSortHeaders() {
  const sort = params.get("sort") || "created";
  const order = params.get("order") || "desc";
  for (const th of document.querySelectorAll("#session-table th[data-sort]")) {
    const key = th.dataset.sort;
    const current = key === sort;
    const nextOrder = current && order === "desc" ? "asc" : "desc";
    const arrow = current ? (order === "desc" ? " ▼" : " ▲") : "";
    th.setAttribute("aria-sort", current ? (order === "desc" ? "descending" : "ascending") : "none");
    th.replaceChildren(el("a", { href: linkWith({ sort: key, order: nextOrder, page: null }) }, th.dataset.label ||= th.textContent, arrow));
  }
}

function renderPager(page, pages) {
  const parts = [];
  parts.push(page > 1 ? el("a", { href: linkWith({ page: page - 1 }), rel: "prev" }, "« Previous") : el("span", { class: "muted" }, "« Previous"));
  parts.push(el("span", { class: "page-of" }, `Page ${page} of ${pages}`));
  parts.push(page < pages ? el("a", { href: linkWith({ page: page + 1 }), rel: "next" }, "Next »") : el("span", { class: "muted" }, "Next »"));
  document.getElementById("pager").replaceChildren(...parts);
}

function renderMetricStats(data) {
  const cards = data.metrics.map((m) => el("figure", { class: "metric", "data-metric": m.name },
    el("figcaption", {}, el("strong", {}, m.name), " ", el("span", { class: "tag" }, m.type),
      ...tagChips(m.tags), " ",
      el("span", { class: "muted" }, `${m.sessions} session${m.sessions === 1 ? "" : "s"}`)),
    lineChart(m.points, `${m.name} per session`),
    statsTable(m)));
  if (!cards.length) cards.push(el("p", { class: "muted" }, "These sessions recorded no metrics."));
  document.getElementById("metric-stats").replaceChildren(...cards);
}

function statsTable(m) {
  const names = ["avg", "min", "max", "median", "stddev"];
  return el("table", { class: "stats" },
    el("tr", {}, ...names.map((n) => el("th", {}, n === "stddev" ? "std-dev" : n))),
    el("tr", {}, ...names.map((n) => el("td", { "data-stat": n }, fmtNum(m[n])))));
}

function renderTotals(totals) {
  const filtered = PASSED.some((n) => params.get(n) && !["sort", "order", "page", "per_page"].includes(n)) || params.get("range");
  const cards = [["sessions", "Sessions"], ["active", "Active"], ["events", "Events"], ["metrics", "Metrics"]]
    .map(([key, label]) => el("div", { class: "total", "data-total": key },
      el("span", { class: "figure" }, fmtNum(totals[key])), el("span", { class: "label" }, label)));
  if (filtered) cards.push(el("p", { class: "muted" }, "Totals of the sessions matching the filters below."));
  document.getElementById("totals").replaceChildren(...cards);
}

function renderGrid(grid) {
  const table = document.getElementById("grid");
  table.tHead.replaceChildren(el("tr", {}, el("th", {}, "Product"), el("th", {}, "Version"),
    ...STATUSES.map((s) => el("th", { class: "num" }, badge(s))), el("th", { class: "num" }, "Total")));
  const rows = grid.map((g, i) => el("tr", { "data-product": g.product, "data-version": g.version },
    el("th", { scope: "row" }, i && grid[i - 1].product === g.product ? "" : g.product),
    el("td", {}, g.version),
    ...STATUSES.map((s) => el("td", { class: "num", "data-status": s }, countLink(g, s))),
    el("td", { class: "num" }, countLink(g, null))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No sessions yet.")));
  table.tBodies[0].replaceChildren(...rows);
  fillDatalists(grid);
}

function countLink(g, status) {
  const n = status ? g.counts[status] : g.total;
  if (!n) return el("span", { class: "muted" }, "0");
  const query = new URLSearchParams({ product: g.product, version: g.version });
  if (status) query.set("status", status);
  return el("a", { href: "/sessions?" + query.toString() }, fmtNum(n));
}

function fillDatalists(grid) {
  const options = (values) => [...new Set(values)].map((v) => el("option", { value: v }));
  document.getElementById("products").replaceChildren(...options(grid.map((g) => g.product)));
  document.getElementById("versions").replaceChildren(...options(grid.map((g) => g.version)));
}

async function load() {
  const query = apiQuery();
  const overview = document.body.dataset.page === "overview";
  const [sessions, metrics, summary] = await Promise.all([
    getJSON("/dashboard/api/sessions?" + query),
    getJSON("/dashboard/api/metrics?" + query),
    overview ? getJSON("/dashboard/api/overview?" + query) : null,
  ]);
  clearError();
  renderSessions(sessions);
  renderMetricStats(metrics);
  if (summary) { renderTotals(summary.totals); renderGrid(summary.grid); }
  document.body.dataset.loaded = "true";
}

fillForm();
load().catch(showError);
// new sessions keep arriving: reload the figures now and then while the tab is in view
const every = (Number(document.body.dataset.refreshMs) || 5000) * 6;
setInterval(() => { if (!document.hidden) load().catch(showError); }, every);
