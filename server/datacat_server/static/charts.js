// Charts drawn as inline SVG (no chart library, nothing fetched from elsewhere). Labels and
// tooltips are text nodes (<text>, <title>), so names and values can never become markup.
import { svg, fmtNum, fmtTime } from "./common.js";

const W = 360, H = 150, PAD = { l: 48, r: 8, t: 8, b: 22 };

function scale(domain, range) {
  const [d0, d1] = domain[0] === domain[1] ? [domain[0] - 1, domain[1] + 1] : domain;
  return (v) => range[0] + ((v - d0) / (d1 - d0)) * (range[1] - range[0]);
}

function frame(label) {
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label });
}

function yAxis(root, lo, hi, y) {
  for (const v of [lo, (lo + hi) / 2, hi]) {
    root.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), class: "gridline" }));
    root.append(svg("text", { x: PAD.l - 4, y: y(v) + 3, class: "tick", "text-anchor": "end" }, fmtNum(v)));
  }
}

/**
 * A line chart of points [[isoTime, value, link?], ...]; each point has a tooltip, and a point
 * with a link (a session id) becomes a link to that session's page.
 */
export function lineChart(points, label, unit = "") {
  const root = frame(label);
  if (!points.length) return root;
  const xs = points.map((p) => Date.parse(p[0]));
  const ys = points.map((p) => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const x = scale([Math.min(...xs), Math.max(...xs)], [PAD.l, W - PAD.r]);
  const y = scale([lo, hi], [H - PAD.b, PAD.t]);
  yAxis(root, lo, hi, y);
  const d = points.map((p, i) => `${i ? "L" : "M"}${x(xs[i]).toFixed(1)},${y(ys[i]).toFixed(1)}`).join("");
  root.append(svg("path", { d, class: "line" }));
  points.forEach((p, i) => root.append(pointMark(p, x(xs[i]), y(ys[i]), unit)));
  root.append(svg("text", { x: PAD.l, y: H - 6, class: "tick" }, fmtTime(points[0][0])));
  root.append(svg("text", { x: W - PAD.r, y: H - 6, class: "tick", "text-anchor": "end" }, fmtTime(points[points.length - 1][0])));
  return root;
}

function pointMark(point, cx, cy, unit) {
  const title = svg("title", {}, `${fmtTime(point[0])}: ${fmtNum(point[1])}${unit ? " " + unit : ""}`);
  const dot = svg("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: 2.5, class: "dot" }, title);
  if (!point[2]) return dot;
  return svg("a", { href: "/sessions/" + encodeURIComponent(point[2]) }, dot);
}

/** Bars of a histogram: bucket upper bounds and counts (one more: the overflow bucket). */
export function barChart(bounds, counts, label, unit = "") {
  const root = frame(label);
  const hi = Math.max(1, ...counts);
  const y = scale([0, hi], [H - PAD.b, PAD.t]);
  yAxis(root, 0, hi, y);
  const slot = (W - PAD.l - PAD.r) / counts.length;
  counts.forEach((n, i) => {
    const name = i < bounds.length ? `≤ ${fmtNum(bounds[i])}${unit ? " " + unit : ""}` : `> ${fmtNum(bounds[bounds.length - 1])}`;
    const bar = svg("rect", {
      x: (PAD.l + i * slot + 1).toFixed(1), y: y(n).toFixed(1),
      width: Math.max(1, slot - 2).toFixed(1), height: (H - PAD.b - y(n)).toFixed(1), class: "bar",
    }, svg("title", {}, `${name}: ${n}`));
    root.append(bar);
  });
  root.append(svg("text", { x: PAD.l, y: H - 6, class: "tick" }, `≤ ${fmtNum(bounds[0])}`));
  root.append(svg("text", { x: W - PAD.r, y: H - 6, class: "tick", "text-anchor": "end" }, "overflow"));
  return root;
}
