// Shared helpers of the dashboard pages. Data from the server is only ever written as text
// (text nodes, textContent, attribute values set one by one): never as HTML.

export const SVG_NS = "http://www.w3.org/2000/svg";
export const STATUSES = ["active", "ended", "suspended", "crashed", "hung"];

/** An element with properties/attributes and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same rules as el(). */
export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** GET JSON from this server; a 401 sends the browser to the login form. */
export async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    location.assign("/dashboard/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error("login required");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${body.error || response.statusText}: ${body.details || ""}`);
  return body;
}

export function showError(error) {
  const box = document.getElementById("error");
  box.textContent = "Could not load data: " + (error && error.message ? error.message : error);
  box.hidden = false;
}

export function clearError() {
  document.getElementById("error").hidden = true;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function fmtClock(iso) {
  return iso ? new Date(iso).toLocaleTimeString(undefined, { hour12: false }) : "–";
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(seconds < 1 ? 3 : 1)}s`;
  const s = Math.max(0, Math.round(seconds));
  const parts = [[Math.floor(s / 86400), "d"], [Math.floor((s % 86400) / 3600), "h"],
    [Math.floor((s % 3600) / 60), "m"], [s % 60, "s"]];
  const first = parts.findIndex(([v]) => v > 0);
  if (first < 0) return "0s";
  return parts.slice(first, first + 2).filter(([v]) => v).map(([v, u]) => v + u).join(" ");
}

export function fmtNum(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 0.001 || abs >= 1e9)) return value.toExponential(3);
  return value.toLocaleString(undefined, { maximumFractionDigits: abs < 1 ? 4 : 2 });
}

export function badge(status) {
  return el("span", { class: "badge s-" + (STATUSES.includes(status) ? status : "other"), text: status });
}

/** A metric's tags as chips (`outcome=passed`). */
export function tagChips(tags) {
  return Object.entries(tags || {}).map(([k, v]) => el("span", { class: "tag label" }, `${k}=${v}`));
}

export function sessionLink(id, label) {
  return el("a", { href: "/sessions/" + encodeURIComponent(id) }, label ?? id);
}

/** Collapsible JSON tree of <details>; `open` is a Set of the paths the user has opened. */
export function jsonTree(value, open, path = "$", label = null) {
  if (value === null || typeof value !== "object") {
    return el("div", { class: "leaf" }, label !== null ? el("span", { class: "key" }, label, ": ") : null, scalar(value));
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
  const summary = el("summary", {},
    label !== null ? el("span", { class: "key" }, label, ": ") : null,
    el("span", { class: "muted" }, Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`));
  const details = el("details", { "data-path": path }, summary,
    ...entries.map(([k, v]) => jsonTree(v, open, path + "." + k, k)));
  details.open = open.has(path) || path === "$";
  details.addEventListener("toggle", () => (details.open ? open.add(path) : open.delete(path)));
  return details;
}

export function scalar(value) {
  const kind = value === null ? "null" : typeof value;
  return el("span", { class: "v-" + kind }, kind === "string" ? JSON.stringify(value) : String(value));
}

/** A short one-line rendering of any JSON value. */
export function shortJSON(value, max = 80) {
  const text = value === undefined ? "(absent)" : JSON.stringify(value);
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}
