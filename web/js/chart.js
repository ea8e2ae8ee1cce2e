// Grouped bar charts as SVG, drawn here (no charting library).

import { h } from "./ui.js";

function niceMax(value) {
  if (value <= 5) return 5;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

/**
 * @param {{label: string, values: number[]}[]} series  one value per category
 * @param {string[]} categories  x-axis labels (e.g. dates)
 * @param {{title: string, formatCategory?: (c: string) => string}} options
 */
export function barChart(series, categories, { title, formatCategory = (c) => c }) {
  const width = 760;
  const height = 260;
  const m = { top: 12, right: 12, bottom: 34, left: 40 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const max = niceMax(Math.max(1, ...series.flatMap((s) => s.values)));
  const y = (v) => m.top + plotH - (v / max) * plotH;
  const band = plotW / Math.max(1, categories.length);
  const barW = Math.max(1, (band * 0.8) / series.length);

  const svg = h("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, preserveAspectRatio: "xMidYMid meet" });
  svg.append(h("svg:title", {}, title));
  const ticks = 5;
  for (let i = 0; i <= ticks; i += 1) {
    const v = (max / ticks) * i;
    const yy = y(v);
    svg.append(h("svg:line", { class: i === 0 ? "axis" : "grid", x1: m.left, x2: width - m.right, y1: yy, y2: yy }));
    svg.append(h("svg:text", { x: m.left - 6, y: yy + 4, "text-anchor": "end" }, Number.isInteger(v) ? v : v.toFixed(1)));
  }
  const every = Math.max(1, Math.ceil(categories.length / 8));
  categories.forEach((cat, i) => {
    const x0 = m.left + band * i + band * 0.1;
    const group = h("svg:g", { class: "bars", dataset: { category: cat } });
    group.append(h("svg:title", {}, `${formatCategory(cat)}: ${series.map((s) => `${s.values[i]} ${s.label}`).join(", ")}`));
    series.forEach((s, j) => {
      const v = s.values[i];
      group.append(h("svg:rect", { class: `bar-${j + 1}`, x: x0 + j * barW, y: y(v), width: Math.max(1, barW - 1), height: Math.max(0, y(0) - y(v)), rx: 1.5 }));
    });
    svg.append(group);
    if ((categories.length - 1 - i) % every === 0) { // anchored on the newest day
      svg.append(h("svg:text", { x: m.left + band * i + band / 2, y: height - m.bottom + 16, "text-anchor": "middle" }, formatCategory(cat)));
    }
  });
  return svg;
}
