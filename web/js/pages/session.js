// `/sessions/{id}`: one session, live. Anyone with the link sees the same stream.

import { ApiError, api, sessionPath } from "../api.js";
import { mountDesktop } from "../desktop.js";
import { renderDiff } from "../diff.js";
import { mountIde } from "../ide.js";
import { EventStream } from "../stream.js";
import { Timeline } from "../timeline.js";
import { announce, badge, clear, debounce, extLink, fmtMs, fmtUsd, h, initFrame, person, refreshTimes, relTime, showError } from "../ui.js";

const ACTIVE = new Set(["queued", "starting", "running", "idle"]);
const sessionId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const $ = (id) => document.getElementById(id);
const errorBar = $("error");
const timelineEl = $("timeline");
const stopButton = $("stop");
const followForm = $("follow");
const followText = $("follow-text");
const followError = $("follow-error");

let me = null;
let session = null;
let lastStatus = null;
let statusEventId = 0; // the id of the newest status event the stream has shown
let diffLoadedFor = null; // the head the Changes tab shows (or is loading)
let replayUntil = 0; // events up to here were stored before the page loaded
const timing = { mode: null, ready: null, model: null };
const timeline = new Timeline(timelineEl);
mountDesktop($("desktop-panel"), sessionId);
mountIde($("ide-panel"), sessionId);

// ---------------------------------------------------------------- header and side panel

function renderSession(s, fromStream = false) {
  // A snapshot over HTTP (say, the answer to Stop) may predate a status the stream has
  // already shown: the newer status wins.
  if (!fromStream && session && s.last_event_id <= statusEventId) s = { ...s, status: session.status };
  session = s;
  document.title = `${s.title || s.id} · Nightshift`;
  $("title").textContent = s.title || s.id;
  clear($("meta"), badge(s.status), h("span", {}, s.repo), h("span", {}, "by ", person(s.author)), relTime(s.created_at),
    h("code", { title: "Branch" }, s.branch));
  clear($("status"), badge(s.status));
  stopButton.hidden = !ACTIVE.has(s.status);
  if (lastStatus !== null && lastStatus !== s.status) announce(`Session is ${s.status}`);
  lastStatus = s.status;

  clear($("facts"),
    h("dt", {}, "Repository"), h("dd", {}, s.repo),
    h("dt", {}, "Model"), h("dd", { id: "model" }, s.model ? h("code", {}, s.model) : h("span", { class: "muted" }, "the server's default")),
    h("dt", {}, "Branch"), h("dd", {}, h("code", {}, s.branch), s.head_sha ? h("span", { class: "muted" }, ` @ ${s.head_sha.slice(0, 10)}`) : h("span", { class: "muted" }, " (not pushed)")),
    h("dt", {}, "Prompts"), h("dd", {}, String(s.prompt_count)),
    h("dt", {}, "Participants"), h("dd", {}, s.participants.map((p) => p.name).join(", ")),
  );
  if (s.pr_url) {
    clear($("pr"), extLink(s.pr_url, `#${s.pr_number}`, { id: "pr-link" }), " ", badge(s.pr_state || "open"));
  } else {
    clear($("pr"), h("span", { class: "muted" }, s.head_sha ? "Branch pushed; no pull request yet" : "None yet"));
  }
  if (timing.ready === null && s.start_ms !== null) Object.assign(timing, { mode: s.start_mode, ready: s.start_ms });
  if (timing.model === null && s.first_model_ms !== null) timing.model = s.first_model_ms;
  renderTiming();
  renderUsage(s.usage);
  renderRelated();
  if (!$("changes").hidden && (s.head_sha ?? null) !== diffLoadedFor) loadDiff();
}

function renderTiming() {
  clear($("timing"),
    h("dt", {}, "Sandbox ready"), h("dd", { id: "t-ready" }, timing.ready === null ? "–" : `${fmtMs(timing.ready)}${timing.mode ? ` · ${timing.mode}` : ""}`),
    h("dt", {}, "First model request"), h("dd", { id: "t-model" }, timing.model === null ? "–" : fmtMs(timing.model)),
  );
}

const count = new Intl.NumberFormat();

/** Tokens and estimated cost over the session's prompts (NIGHTSHIFT_MODEL_PRICES). */
function renderUsage(u) {
  clear($("usage"),
    h("dt", {}, "Input tokens"), h("dd", { id: "u-input" }, count.format(u.input_tokens)),
    h("dt", {}, "Cached"), h("dd", { id: "u-cached" }, count.format(u.cached_tokens)),
    h("dt", {}, "Output tokens"), h("dd", { id: "u-output" }, count.format(u.output_tokens)),
    h("dt", {}, "Estimated cost"), h("dd", { id: "u-cost" }, fmtUsd(u.cost_usd)),
  );
}

let children = [];
let childTimer = null;
const CHILD_POLL_MS = 3000;

async function loadChildren() {
  clearTimeout(childTimer);
  if (!session?.children.length) {
    children = [];
    return renderRelated();
  }
  const page = await api(`/api/sessions?parent_id=${encodeURIComponent(sessionId)}&limit=100`);
  children = page.sessions;
  renderRelated();
  // Sub-sessions run on their own; follow their statuses while any is still working.
  if (children.some((c) => ACTIVE.has(c.status))) childTimer = setTimeout(() => loadChildren().catch(() => {}), CHILD_POLL_MS);
}

function renderRelated() {
  if (!session) return;
  const parts = [];
  if (session.parent_id) parts.push(h("p", {}, "Sub-session of ", h("a", { href: `/sessions/${session.parent_id}`, id: "parent-link" }, session.parent_id)));
  const known = new Map(children.map((c) => [c.id, c]));
  const ids = session.children;
  if (ids.length) {
    parts.push(h("ul", { class: "queue", id: "children" }, ids.map((id) => {
      const c = known.get(id);
      return h("li", {}, c ? badge(c.status) : null, h("a", { href: `/sessions/${id}` }, c ? c.title || id : id));
    })));
  }
  parts.push(h("a", { href: `/new?repo=${encodeURIComponent(session.repo)}&parent=${encodeURIComponent(session.id)}` }, "Start a sub-session"));
  clear($("related"), parts);
}

async function refreshSession() {
  try {
    const s = await api(sessionPath(sessionId));
    const childrenChanged = !session || s.children.join() !== session.children.join();
    renderSession(s);
    if (childrenChanged || children.some((c) => ACTIVE.has(c.status))) loadChildren().catch(() => {});
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(errorBar, err);
  }
}

async function refreshPrompts() {
  const prompts = await api(`${sessionPath(sessionId)}/prompts`);
  const queue = $("queue");
  clear(queue, prompts.map((p) => h("li", { dataset: { promptId: p.id, state: p.state } },
    badge(p.state), h("div", {},
      h("div", {}, h("strong", { class: "author" }, p.author.name), " ", h("span", { class: "muted" }, `@${p.author.login}`),
        p.position !== null && p.position !== undefined ? h("span", { class: "muted" }, ` · #${p.position + 1} in line`) : null),
      h("div", { class: "text" }, p.text)))));
}

function renderViewers(viewers) {
  clear($("viewers"), viewers.map((v) => h("li", { dataset: { login: v.login } }, person(v, { you: me?.user?.login === v.login }),
    v.connections > 1 ? h("span", { class: "muted" }, ` ×${v.connections}`) : null)));
}

const refreshSessionSoon = debounce(refreshSession, 150);
const refreshPromptsSoon = debounce(() => refreshPrompts().catch(() => {}), 150);

// ---------------------------------------------------------------- changes tab

async function loadDiff() {
  const meta = $("diff-meta");
  const target = $("diff");
  if (!session) {
    meta.textContent = "Loading…";
    return;
  }
  if (!session.head_sha) {
    meta.textContent = "Nothing pushed yet: the branch appears here once the agent finishes with changes.";
    target.replaceChildren();
    diffLoadedFor = null;
    return;
  }
  if (diffLoadedFor === session.head_sha) return; // shown, or on its way
  diffLoadedFor = session.head_sha;
  meta.textContent = "Loading the diff…";
  try {
    const d = await api(`${sessionPath(sessionId)}/diff`);
    meta.replaceChildren(h("code", {}, d.branch), ` against ${d.base}`, d.head ? ` at ${d.head.slice(0, 10)}` : "");
    clear(target, d.diff ? renderDiff(d.diff) : h("p", { class: "muted" }, "No differences."));
  } catch (err) {
    meta.textContent = `Could not load the diff: ${err.message}`;
    diffLoadedFor = null; // try again when the tab is chosen or the session changes
  }
}

function selectTab(which) {
  for (const name of ["activity", "changes"]) {
    const tab = $(`tab-${name}`);
    const on = name === which;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(name).hidden = !on;
  }
  if (which === "changes") loadDiff();
}

function setupTabs() {
  const tabs = [$("tab-activity"), $("tab-changes")];
  tabs[0].addEventListener("click", () => selectTab("activity"));
  tabs[1].addEventListener("click", () => selectTab("changes"));
  for (const [i, tab] of tabs.entries()) {
    tab.addEventListener("keydown", (ev) => {
      if (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft") return;
      const next = tabs[(i + 1) % tabs.length];
      next.focus();
      next.click();
    });
  }
}

// ---------------------------------------------------------------- live events

function nearBottom() {
  return innerHeight + scrollY >= document.documentElement.scrollHeight - 160;
}

// Follow new activity while the reader is at the bottom. Measured on scroll, not per event:
// reading the layout after every event would lay the page out thousands of times on a replay.
let stick = true;
addEventListener("scroll", () => { stick = nearBottom(); }, { passive: true });

let scrollQueued = false;
function onEvent(event) {
  timeline.apply(event);
  if (stick && !scrollQueued) {
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      followForm.scrollIntoView({ block: "end" });
    });
  }
  if (event.id <= replayUntil) {
    // Catching up on history: the header was loaded after these; refresh once at the end.
    if (event.id === replayUntil) {
      refreshSessionSoon();
      refreshPromptsSoon();
    }
    if (event.type === "sandbox_ready") Object.assign(timing, { mode: event.mode, ready: event.ms_since_prompt, model: null });
    if (event.type === "model_request" && event.step === 1) timing.model = event.ms_since_prompt;
    return;
  }
  switch (event.type) {
    case "sandbox_ready":
      Object.assign(timing, { mode: event.mode, ready: event.ms_since_prompt });
      timing.model = null; // a new prompt's timing starts
      renderTiming();
      break;
    case "model_request":
      if (event.step === 1) {
        timing.model = event.ms_since_prompt;
        renderTiming();
      }
      break;
    case "status":
      statusEventId = Math.max(statusEventId, event.id);
      if (session) renderSession({ ...session, status: event.status }, true);
      refreshSessionSoon();
      break;
    case "prompt_queued":
    case "prompt_started":
    case "prompt_finished":
      refreshPromptsSoon();
      refreshSessionSoon();
      break;
    case "usage":
    case "branch_pushed":
    case "pr_opened":
    case "pr_state":
    case "child_spawned":
      refreshSessionSoon();
      break;
    default:
  }
}

function onState(state, detail) {
  const live = $("live");
  live.dataset.state = state;
  live.textContent = { live: "● live", connecting: "connecting…", reconnecting: "reconnecting…", gone: "disconnected" }[state] ?? state;
  live.title = detail ?? "";
  if (state === "live") timelineEl.setAttribute("aria-busy", "false");
  if (state === "gone") showError(errorBar, `The live stream ended: ${detail}`);
}

// ---------------------------------------------------------------- actions

async function sendFollowUp(ev) {
  ev?.preventDefault();
  const text = followText.value;
  followError.hidden = true;
  if (!text.trim()) {
    followText.focus();
    return showError(followError, "Write a follow-up first.");
  }
  const button = followForm.querySelector("button[type=submit]");
  const label = button.textContent;
  button.disabled = true;
  const onBusy = (ms) => (button.textContent = `Server busy — trying again in ${(ms / 1000).toFixed(1)} s…`);
  try {
    await api(`${sessionPath(sessionId)}/prompts`, { method: "POST", body: { text }, onBusy });
    followText.value = "";
  } catch (err) {
    showError(followError, err);
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

async function stop() {
  stopButton.disabled = true;
  stopButton.textContent = "Stopping…";
  try {
    renderSession(await api(`${sessionPath(sessionId)}/stop`, { method: "POST" }));
  } catch (err) {
    showError(errorBar, err);
  } finally {
    stopButton.disabled = false;
    stopButton.textContent = "Stop";
  }
}

async function main() {
  // Controls answer at once: a keyboard user may press before the frame's look at /api/me ends.
  setupTabs();
  followForm.addEventListener("submit", sendFollowUp);
  followText.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) sendFollowUp(ev);
  });
  stopButton.addEventListener("click", stop);
  me = await initFrame();
  try {
    renderSession(await api(sessionPath(sessionId)));
    replayUntil = session.last_event_id;
  } catch (err) {
    $("title").textContent = err instanceof ApiError && err.status === 404 ? "No such session" : "Could not load the session";
    showError(errorBar, err);
    followForm.hidden = true;
    return;
  }
  loadChildren().catch(() => {});
  refreshPrompts().catch(() => {});
  const transport = new URLSearchParams(location.search).get("transport");
  new EventStream(sessionId, { onEvent, onPresence: renderViewers, onState, transport }).start();
  setInterval(() => refreshTimes(), 30_000);
}

main();
