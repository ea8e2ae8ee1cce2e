// `/stats`: does the platform pay off? Merged PRs first, then use and start-up latency.

import { api } from "../api.js";
import { barChart } from "../chart.js";
import { avatar, clear, debounce, fmtMs, fmtUsd, h, initFrame, onLeave, showError } from "../ui.js";

const REFRESH_MS = 10_000;
const MODES = ["warm", "image", "snapshot", "cold"];
const $ = (id) => document.getElementById(id);
const daysSelect = $("days");

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

/** Every day of the window, oldest first, with zeros where nothing happened. */
export function fillDays(perDay, windowDays, now = new Date()) {
  const byDate = new Map(perDay.map((d) => [d.date, d]));
  const out = [];
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  for (let i = windowDays - 1; i >= 0; i -= 1) {
    const date = isoDay(new Date(today - i * 86_400_000));
    out.push(byDate.get(date) ?? { date, sessions: 0, prompts: 0 });
  }
  return out;
}

const shortDate = (iso) => new Date(`${iso}T00:00:00Z`).toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });

const count = new Intl.NumberFormat();

/** One row per person or repository: prompts, tokens and estimated cost, biggest first. */
function usageTable(groups, what) {
  const num = (cls, text) => h("td", { class: `num ${cls}` }, text);
  return [
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, what), ...["Prompts", "Input tokens", "Cached", "Output tokens", "Est. cost"].map((t) => h("th", { class: "num", scope: "col" }, t)))),
    h("tbody", {}, groups.length
      ? groups.map((g) => h("tr", { dataset: { name: g.name } }, h("th", { scope: "row" }, g.name),
        num("prompts", String(g.prompts)), num("input", count.format(g.input_tokens)), num("cached", count.format(g.cached_tokens)),
        num("output", count.format(g.output_tokens)), num("cost", fmtUsd(g.cost_usd))))
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No prompts in this window"))),
  ];
}

function renderUsage(stats) {
  const u = stats.usage;
  $("spend-total").textContent = fmtUsd(u.cost_usd);
  $("spend-tokens").textContent = `${count.format(u.input_tokens)} input tokens (${count.format(u.cached_tokens)} cached) · ${count.format(u.output_tokens)} output tokens`;
  clear($("spend-people"), usageTable(stats.usage_by_person, "Person"));
  clear($("spend-repos"), usageTable(stats.usage_by_repo, "Repository"));
}

/** Seconds to merge, in the unit that reads best: seconds and minutes, hours, days. */
function fmtWait(s) {
  if (s === null || s === undefined) return "–";
  if (s < 3600) return fmtMs(s * 1000);
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);

/** How the sessions' GitHub PRs fared: one row per measure, "–" where nothing was measured. */
function renderPrs(prs) {
  const p = prs || { prs: 0, reviewed: 0, approval_rate: null, revisions_per_pr: null, follow_ups_per_pr: null, median_open_to_merge_s: null, agent_commit_share: null, agent_line_share: null, agent_lines_added: 0, base_lines_added: 0, unmeasured_commits: 0 };
  const num = (x) => (x === null || x === undefined ? "–" : String(x));
  const unmeasured = p.unmeasured_commits ? `; ${p.unmeasured_commits} commits not measured` : "";
  const row = (key, label, value) => h("tr", { dataset: { key } }, h("th", { scope: "row" }, label), h("td", { class: "num" }, value));
  const wait = fmtWait(p.median_open_to_merge_s);
  clear($("prs"), h("tbody", {},
    row("prs", "PRs opened", String(p.prs)),
    row("reviewed", "PRs reviewed", String(p.reviewed)),
    row("approval_rate", "Approval rate", pct(p.approval_rate)),
    row("revisions_per_pr", "Pushes per PR", num(p.revisions_per_pr)),
    row("follow_ups_per_pr", "Follow-ups per PR (after it opened)", num(p.follow_ups_per_pr)),
    row("median_open_to_merge", "Median time from opened to merged", wait),
    row("agent_commit_share", "Agent's share of merged commits", pct(p.agent_commit_share)),
    row("agent_line_share", "Agent's share of lines added to base branches",
      `${pct(p.agent_line_share)} (${p.agent_lines_added ?? 0} of ${p.base_lines_added ?? 0}${unmeasured})`)));
}

/** The same measures, one row per repository with a PR in the window. */
function renderPrRepos(repos) {
  const cols = [["PRs", (r) => String(r.prs)], ["Approval", (r) => pct(r.approval_rate)],
    ["Pushes/PR", (r) => (r.revisions_per_pr === null ? "–" : String(r.revisions_per_pr))],
    ["To merge", (r) => fmtWait(r.median_open_to_merge_s)], ["Agent lines", (r) => pct(r.agent_line_share)]];
  clear($("prs-repos"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Repository"), ...cols.map(([t]) => h("th", { class: "num", scope: "col" }, t)))),
    h("tbody", {}, repos.length
      ? repos.map((r) => h("tr", { dataset: { name: r.name } }, h("th", { scope: "row" }, r.name), ...cols.map(([, f]) => h("td", { class: "num" }, f(r)))))
      : h("tr", {}, h("td", { colspan: cols.length + 1, class: "muted" }, "No pull requests in this window"))));
}

function render(stats) {
  $("merged").textContent = String(stats.merged);
  $("merged-share").textContent = `${(stats.merged_share * 100).toFixed(1)}%`;
  $("merged-of").textContent = `of ${stats.sessions} sessions in the last ${stats.window_days} days`;
  $("active").textContent = String(stats.active_humans_5m);
  clear($("active-list"), stats.active_humans.map((login) => h("li", { dataset: { login } }, avatar({ login, name: login }), `@${login}`)));
  $("sessions-total").textContent = String(stats.sessions);
  const prompts = stats.per_day.reduce((n, d) => n + d.prompts, 0);
  $("prompts-total").textContent = `${prompts} prompts`;

  const days = fillDays(stats.per_day, stats.window_days);
  const chart = barChart(
    [
      { label: "sessions", values: days.map((d) => d.sessions) },
      { label: "prompts", values: days.map((d) => d.prompts) },
    ],
    days.map((d) => d.date),
    { title: `Sessions and prompts per day, last ${stats.window_days} days`, formatCategory: shortDate },
  );
  clear($("chart"), chart);
  clear($("per-day"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Day"), h("th", { class: "num", scope: "col" }, "Sessions"), h("th", { class: "num", scope: "col" }, "Prompts"))),
    h("tbody", {}, stats.per_day.map((d) => h("tr", { dataset: { date: d.date } }, h("td", {}, d.date), h("td", { class: "num" }, String(d.sessions)), h("td", { class: "num" }, String(d.prompts))))));

  const modes = [...MODES, ...Object.keys(stats.start_latency).filter((m) => !MODES.includes(m))];
  const latencyRow = (label, l, key) => h("tr", { dataset: { mode: key } }, h("th", { scope: "row" }, label),
    h("td", { class: "num count" }, String(l.count)), h("td", { class: "num p50" }, fmtMs(l.p50_ms)), h("td", { class: "num p95" }, fmtMs(l.p95_ms)));
  clear($("latency"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Started from"), h("th", { class: "num", scope: "col" }, "Prompts"), h("th", { class: "num", scope: "col" }, "p50"), h("th", { class: "num", scope: "col" }, "p95"))),
    h("tbody", {},
      modes.filter((m) => stats.start_latency[m]).map((m) => latencyRow(m, stats.start_latency[m], m)),
      latencyRow("first model request", stats.first_model_request, "first_model")));
  renderUsage(stats);
  renderPrs(stats.pull_requests);
  renderPrRepos(stats.pull_requests_by_repo || []);
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

let inFlight = null;
async function load() {
  const request = (inFlight = api(`/api/stats?days=${daysSelect.value}`));
  try {
    const stats = await request;
    if (request === inFlight) {
      $("error").hidden = true;
      render(stats);
    }
  } catch (err) {
    showError($("error"), err);
  }
}

async function main() {
  await initFrame();
  const params = new URLSearchParams(location.search);
  if (params.get("days") && [...daysSelect.options].some((o) => o.value === params.get("days"))) daysSelect.value = params.get("days");
  daysSelect.addEventListener("change", () => {
    history.replaceState(null, "", `/stats?days=${daysSelect.value}`);
    load();
  });
  await load();
  // Live: a new prompt anywhere refreshes at once; the timer drops people after 5 minutes.
  const soon = debounce(load, 500);
  const source = new EventSource("/api/sessions/changes");
  source.addEventListener("session", soon);
  onLeave(() => source.close());
  setInterval(load, REFRESH_MS);
}

main();
