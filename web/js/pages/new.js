// `/new`: pick a repository and write a prompt. The first keystroke (debounced) asks the
// server to warm a sandbox for that repository, so the session starts at once on submit.

import { ApiError, api, repoPath } from "../api.js";
import { clear, debounce, h, initFrame, showError } from "../ui.js";
import { fillRepoForm, initRepoForm } from "./repo_form.js";

const WARM_DEBOUNCE_MS = 300;
const WARM_POLL_MS = 1000;
const WARM_POLL_LIMIT_MS = 5 * 60_000;
const WARM_RENEW_MS = 20_000; // typing on keeps the reservation alive this often
const LAST_REPO = "nightshift.lastRepo";
const LAST_MODEL = "nightshift.lastModel";

const form = document.getElementById("compose");
const repoSelect = document.getElementById("repo");
const modelSelect = document.getElementById("model");
const prompt = document.getElementById("prompt");
const warmEl = document.getElementById("warm");
const submit = document.getElementById("submit");
const errorBar = document.getElementById("error");
const params = new URLSearchParams(location.search);
const parentId = params.get("parent");

/** Warm-up state per repository: {state, expiresAt, polling, since}. */
const warm = new Map();
let warmSupported = true;

function showWarm(state, text) {
  warmEl.dataset.state = state;
  warmEl.textContent = text;
}

function renderWarm() {
  const repo = repoSelect.value;
  const w = warm.get(repo);
  if (!warmSupported) return showWarm("unavailable", "Warm-up is not available on this server; the session starts from the repository's image");
  if (!w) return showWarm("idle", "A sandbox starts warming when you type");
  if (w.state === "warm") return showWarm("warm", `Sandbox warm for ${repo}: your session starts at once`);
  if (w.state === "warming") return showWarm("warming", `Warming a sandbox for ${repo}…`);
  if (w.state === "error" || w.state === "failed") return showWarm("error", `Could not warm a sandbox: ${w.message || "the warm-up failed"}`);
  if (w.state === "cold") return showWarm("idle", "The warm sandbox was released; it warms again as you type");
  return showWarm("idle", "A sandbox starts warming when you type");
}

function expired(w) {
  return w.expiresAt !== null && w.expiresAt !== undefined && w.expiresAt * 1000 <= Date.now();
}

function record(repo, answer) {
  const w = warm.get(repo) ?? {};
  Object.assign(w, { state: answer.state, expiresAt: answer.expires_at, sandboxId: answer.sandbox_id, message: answer.error });
  warm.set(repo, w);
  return w;
}

function unsupported(err) {
  // 404: no such route (or the repository vanished); 405: the route is not there for POST.
  return err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501);
}

async function warmUp(repo) {
  if (!repo || !warmSupported) return;
  const w = warm.get(repo);
  const recent = w && Date.now() - w.askedAt < WARM_RENEW_MS;
  if (w && w.state === "warming") return;
  const settled = w && (w.state === "error" || w.state === "failed" || (w.state === "warm" && !expired(w)));
  if (settled && recent) return;
  // First keystroke, a released sandbox, or typing on (which keeps the reservation alive).
  const next = w && w.state === "warm" && !expired(w) ? w : { state: "warming" };
  next.askedAt = Date.now();
  warm.set(repo, next);
  renderWarm();
  try {
    const answer = await api(`${repoPath(repo)}/warm`, { method: "POST" });
    record(repo, answer);
  } catch (err) {
    if (unsupported(err)) warmSupported = false;
    else warm.set(repo, { state: "error", message: err.message });
    renderWarm();
    return;
  }
  renderWarm();
  pollWarm(repo);
}

async function pollWarm(repo) {
  const w = warm.get(repo);
  if (!w || w.polling || w.state !== "warming") return;
  w.polling = true;
  const started = Date.now();
  try {
    while (w.state === "warming" && Date.now() - started < WARM_POLL_LIMIT_MS) {
      await new Promise((resolve) => setTimeout(resolve, WARM_POLL_MS));
      try {
        record(repo, await api(`${repoPath(repo)}/warm`));
      } catch (err) {
        if (unsupported(err)) warmSupported = false;
        else Object.assign(w, { state: "error", message: err.message });
      }
      if (repo === repoSelect.value) renderWarm();
    }
    if (w.state === "warming") {
      Object.assign(w, { state: "error", message: "it is taking too long" });
      if (repo === repoSelect.value) renderWarm();
    }
  } finally {
    w.polling = false;
  }
}

const warmSoon = debounce(() => warmUp(repoSelect.value), WARM_DEBOUNCE_MS);

async function start(ev) {
  ev?.preventDefault();
  const repo = repoSelect.value;
  const text = prompt.value;
  errorBar.hidden = true;
  if (!repo) return showError(errorBar, "Choose a repository first.");
  if (!text.trim()) {
    prompt.focus();
    return showError(errorBar, "Write what the agent should do.");
  }
  submit.disabled = true;
  submit.textContent = "Starting…";
  try {
    const body = { repo, prompt: text };
    if (parentId) body.parent_id = parentId;
    // Hidden when the server offers one model: the server's default applies.
    if (!document.getElementById("model-field").hidden && modelSelect.value) body.model = modelSelect.value;
    const onBusy = (ms) => (submit.textContent = `Server busy — trying again in ${(ms / 1000).toFixed(1)} s…`);
    const session = await api("/api/sessions", { method: "POST", body, onBusy });
    localStorage.setItem(LAST_REPO, repo);
    if (body.model) localStorage.setItem(LAST_MODEL, body.model);
    location.assign(`/sessions/${session.id}`);
  } catch (err) {
    showError(errorBar, err);
    submit.disabled = false;
    submit.textContent = "Start session";
  }
}

/** The chosen repository's environment and effective spec, each value with its origin. */
async function renderEnvironment() {
  const box = document.getElementById("environment");
  const repo = repoSelect.value;
  if (!repo) return (box.hidden = true);
  try {
    const detail = await api(repoPath(repo));
    if (repo !== repoSelect.value) return;
    document.getElementById("environment-name").textContent =
      detail.environment +
      (detail.environment_digest ? ` (${detail.environment_digest})` : "") +
      (detail.effective_at ? "" : " (not built yet: the stored spec only)");
    clear(
      document.getElementById("effective"),
      detail.effective.map((f) =>
        h("tr", {}, h("td", {}, f.field), h("td", {}, typeof f.value === "string" ? f.value : JSON.stringify(f.value)), h("td", {}, f.origin)),
      ),
    );
    fillRepoForm(detail);
    box.hidden = false;
  } catch {
    box.hidden = true;
  }
}

const repoLabel = (r) => (r.description ? `${r.name} — ${r.description}` : r.name);

async function loadRepos(preferred) {
  const repos = await api("/api/repos");
  clear(repoSelect, repos.map((r) => h("option", { value: r.name }, repoLabel(r))));
  const none = repos.length === 0;
  document.getElementById("no-repos").hidden = !none;
  form.hidden = none;
  const choice = [preferred, params.get("repo"), localStorage.getItem(LAST_REPO)].find((name) => name && repos.some((r) => r.name === name));
  if (choice) repoSelect.value = choice;
  renderWarm();
  renderEnvironment();
}

/** The models the server offers (`GET /api/models`); the picker shows only when there is a choice. */
async function loadModels() {
  let list;
  try {
    list = await api("/api/models");
  } catch {
    return; // an older server: sessions take its one model
  }
  clear(modelSelect, list.models.map((m) => h("option", { value: m.name }, m.default ? `${m.name} (default)` : m.name)));
  const last = localStorage.getItem(LAST_MODEL);
  modelSelect.value = list.models.some((m) => m.name === last) ? last : list.default ?? "";
  document.getElementById("model-field").hidden = list.models.length < 2;
}

async function main() {
  // Listen first: someone quick may type before the repositories have loaded.
  prompt.addEventListener("input", () => {
    if (prompt.value.trim()) warmSoon();
  });
  repoSelect.addEventListener("change", () => {
    renderWarm();
    renderEnvironment();
    if (prompt.value.trim()) warmSoon();
  });
  prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) start(ev);
  });
  form.addEventListener("submit", start);
  initRepoForm(
    async (repo) => {
      const option = [...repoSelect.options].find((o) => o.value === repo.name);
      if (option) option.textContent = repoLabel(repo);
      await renderEnvironment();
    },
    async (repo) => {
      warm.delete(repo.name);
      if (localStorage.getItem(LAST_REPO) === repo.name) localStorage.removeItem(LAST_REPO);
      document.getElementById("notice").textContent =
        `Removed ${repo.name}: its sessions and pull requests stay readable; adding it again brings it back.`;
      await loadRepos();
      // The button is gone with the repo: focus goes where the next step is.
      (form.hidden ? document.getElementById("repo-url") : repoSelect).focus();
    },
  );
  document.getElementById("add-repo").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const addError = document.getElementById("add-error");
    addError.hidden = true;
    try {
      const repo = await api("/api/repos", { method: "POST", body: { url: document.getElementById("repo-url").value.trim() } });
      // What to fix about it, such as a .nightshift.toml its base branch does not have.
      document.getElementById("notice").textContent = (repo.warnings || []).join(" ");
      await loadRepos(repo.name);
      prompt.focus();
    } catch (err) {
      showError(addError, err);
    }
  });
  await initFrame();
  if (parentId) {
    const parent = document.getElementById("parent");
    parent.hidden = false;
    parent.append("This will be a sub-session of ", h("a", { href: `/sessions/${parentId}` }, parentId), ".");
  }
  await Promise.all([loadRepos(), loadModels()]);
  if (prompt.value.trim()) warmSoon();
  if (!form.hidden && document.activeElement === document.body) prompt.focus();
}

main();
