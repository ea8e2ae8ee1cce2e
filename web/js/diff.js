// A unified diff as one collapsible block per file, lines coloured by kind.

import { h } from "./ui.js";

const MAX_LINES = 20_000;

export function splitFiles(diff) {
  const files = [];
  let current = null;
  for (const line of diff.split("\n")) {
    if (line.startsWith("diff --git ")) {
      const m = / b\/(.*)$/.exec(line);
      current = { name: m ? m[1] : line.slice(11), lines: [], added: 0, removed: 0 };
      files.push(current);
      continue;
    }
    if (!current) {
      current = { name: "(changes)", lines: [], added: 0, removed: 0 };
      files.push(current);
    }
    if (line.startsWith("+") && !line.startsWith("+++")) current.added += 1;
    else if (line.startsWith("-") && !line.startsWith("---")) current.removed += 1;
    current.lines.push(line);
  }
  return files.filter((f) => f.lines.length || f.name !== "(changes)");
}

function kind(line) {
  if (line.startsWith("@@")) return "hunk";
  if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("index ")) return "meta";
  if (line.startsWith("+")) return "add";
  if (line.startsWith("-")) return "del";
  return "ctx";
}

export function renderDiff(diff) {
  const files = splitFiles(diff);
  let budget = MAX_LINES;
  const out = [];
  for (const file of files) {
    const shown = file.lines.slice(0, Math.max(0, budget));
    budget -= shown.length;
    out.push(
      h("details", { class: "diff-file", open: files.length <= 20 },
        h("summary", {}, file.name, " ", h("span", { class: "muted" }, `+${file.added} −${file.removed}`)),
        h("pre", {}, shown.map((line) => h("span", { class: kind(line) }, line || " "))),
        shown.length < file.lines.length ? h("p", { class: "hint" }, `${file.lines.length - shown.length} more lines not shown`) : null),
    );
  }
  return out;
}
