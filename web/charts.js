// Inline SVG charts: no library, no network. Each returns an <svg> with a text alternative.
import { s } from "./ui.js";

const PALETTE = ["#2563eb", "#0d9488", "#9333ea", "#ea580c", "#db2777", "#65a30d", "#0891b2", "#ca8a04"];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

/** Horizontal bars: items [{label, value, color?}], values formatted by `format`. */
export function barChart(items, { title, format = (v) => String(v), width = 420 } = {}) {
  const row = 28;
  const labelW = 110;
  const valueW = 70;
  const height = Math.max(row * items.length, row);
  const max = Math.max(...items.map((i) => i.value), 1e-9);
  const barSpace = width - labelW - valueW;
  return s(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": title, class: "chart" },
    s("title", {}, title),
    items.map((item, i) => {
      const y = i * row;
      const w = Math.max(2, (item.value / max) * barSpace);
      return s(
        "g",
        {},
        s("text", { x: 0, y: y + 18, class: "chart-label" }, item.label),
        s("rect", { x: labelW, y: y + 6, width: barSpace, height: 16, rx: 4, class: "chart-track" }),
        s("rect", { x: labelW, y: y + 6, width: w, height: 16, rx: 4, fill: item.color || color(i) }),
        s("text", { x: width - 4, y: y + 18, "text-anchor": "end", class: "chart-value" }, format(item.value)),
      );
    }),
  );
}

/** A line over time: values (numbers), newest last. */
export function sparkline(values, { title, width = 420, height = 80, stroke = "#2563eb" } = {}) {
  const pad = 4;
  const max = Math.max(...values, 1e-9);
  const min = Math.min(...values, 0);
  const span = max - min || 1;
  const step = values.length > 1 ? (width - pad * 2) / (values.length - 1) : 0;
  const points = values.map((v, i) => [pad + i * step, height - pad - ((v - min) / span) * (height - pad * 2)]);
  const line = points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const area = points.length ? `${line} L${points.at(-1)[0].toFixed(1)},${height - pad} L${pad},${height - pad} Z` : "";
  return s(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, width: "100%", height, role: "img", "aria-label": title, class: "chart" },
    s("title", {}, title),
    s("line", { x1: pad, x2: width - pad, y1: height - pad, y2: height - pad, class: "chart-axis" }),
    area ? s("path", { d: area, fill: stroke, opacity: "0.12" }) : null,
    line ? s("path", { d: line, fill: "none", stroke, "stroke-width": 2, "stroke-linejoin": "round" }) : null,
    points.length ? s("circle", { cx: points.at(-1)[0], cy: points.at(-1)[1], r: 3.5, fill: stroke }) : null,
  );
}

/** A ring showing parts of a whole: parts [{label, value, color?}], a big number in the middle. */
export function donut(parts, { title, center = "", size = 132 } = {}) {
  const r = 48;
  const c = 2 * Math.PI * r;
  const total = parts.reduce((sum, p) => sum + p.value, 0) || 1;
  let offset = 0;
  const arcs = parts.map((part, i) => {
    const length = (part.value / total) * c;
    const arc = s("circle", {
      cx: 60,
      cy: 60,
      r,
      fill: "none",
      stroke: part.color || color(i),
      "stroke-width": 14,
      "stroke-dasharray": `${length} ${c - length}`,
      "stroke-dashoffset": -offset,
      transform: "rotate(-90 60 60)",
    });
    offset += length;
    return arc;
  });
  return s(
    "svg",
    { viewBox: "0 0 120 120", width: size, height: size, role: "img", "aria-label": title, class: "chart donut" },
    s("title", {}, title),
    s("circle", { cx: 60, cy: 60, r, fill: "none", class: "chart-track-stroke", "stroke-width": 14 }),
    arcs,
    s("text", { x: 60, y: 66, "text-anchor": "middle", class: "donut-center" }, center),
  );
}
