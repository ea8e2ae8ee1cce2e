// `/`: every session, filtered by repository, status and author; statuses change live.

import { api } from "../api.js";
import { badge, clear, extLink, h, initFrame, onLeave, person, refreshTimes, relTime, showError } from "../ui.js";

const PAGE = 50;
const form = document.getElementById("filters");
const rows = document.getElementById("rows");
const table = document.getElementById("sessions");
const empty = document.getElementById("empty");
const count = document.getElementById("count");
const more = document.getElementById("more");
const errorBar = document.getElementById("error");
const live = document.getElementById("live");
const authors = document.getElementById("authors");

let total = 0;
let loaded = 0;
let loading = null;
const seenAuthors = new Set();

function filters() {
  const data = new FormData(form);
  const out = {};
  for (const key of ["repo", "status", "author"]) {
    const value = String(data.get(key) || "").trim();
    if (value) out[key] = value;
  }
  return out;
}

function matches(session, f) {
  return (!f.repo || session.repo === f.repo) && (!f.status || session.status === f.status) && (!f.author || session.author.login === f.author);
}

function row(s) {
  const pr = s.pr_url
    ? h("span", {}, extLink(s.pr_url, `#${s.pr_number}`), " ", badge(s.pr_state || "open"))
    : h("span", { class: "muted" }, "–");
  const tr = h("tr", { dataset: { id: s.id, status: s.status, created: s.created_at } },
    h("td", { "data-label": "Status", class: "status" }, badge(s.status)),
    h("td", { class: "title" }, h("a", { href: `/sessions/${s.id}` }, s.title || s.id),
      s.parent_id ? h("div", { class: "hint" }, "sub-session of ", h("a", { href: `/sessions/${s.parent_id}` }, s.parent_id)) : null),
    h("td", { "data-label": "Repository" }, s.repo),
    h("td", { "data-label": "Author" }, person(s.author)),
    h("td", { "data-label": "PR" }, pr),
    h("td", { "data-label": "Updated" }, relTime(s.updated_at)),
  );
  if (!seenAuthors.has(s.author.login)) {
    seenAuthors.add(s.author.login);
    authors.append(h("option", { value: s.author.login }, s.author.name));
  }
  return tr;
}

function showCount() {
  const shown = rows.children.length;
  table.hidden = shown === 0;
  empty.hidden = shown !== 0;
  if (!shown) {
    const f = filters();
    clear(empty, Object.keys(f).length ? "No sessions match these filters." : ["No sessions yet. ", h("a", { href: "/new" }, "Start one"), "."]);
  }
  count.textContent = total ? `${shown} of ${total} sessions` : "";
  more.hidden = loaded >= total;
}

async function load({ append = false } = {}) {
  const f = filters();
  const params = new URLSearchParams({ ...f, limit: String(PAGE), offset: String(append ? loaded : 0) });
  const request = (loading = api(`/api/sessions?${params}`));
  try {
    const page = await request;
    if (request !== loading) return; // a newer filter won
    errorBar.hidden = true;
    if (!append) {
      rows.replaceChildren();
      loaded = 0;
    }
    for (const s of page.sessions) rows.append(row(s));
    loaded += page.sessions.length;
    total = page.total;
    showCount();
  } catch (err) {
    showError(errorBar, err);
  } finally {
    rows.closest("table").setAttribute("aria-busy", "false");
  }
}

function syncUrl() {
  const params = new URLSearchParams(filters());
  const query = params.toString();
  history.replaceState(null, "", query ? `/?${query}` : "/");
}

function onChange(session) {
  const existing = rows.querySelector(`tr[data-id="${CSS.escape(session.id)}"]`);
  const f = filters();
  if (!matches(session, f)) {
    if (existing) {
      existing.remove();
      total -= 1;
      loaded -= 1;
      showCount();
    }
    return;
  }
  const fresh = row(session);
  fresh.classList.add("flash");
  if (existing) {
    existing.replaceWith(fresh);
    return;
  }
  // Keep newest first; a session older than every loaded row belongs to a later page.
  const after = [...rows.children].find((tr) => Number(tr.dataset.created) < session.created_at);
  if (after) rows.insertBefore(fresh, after);
  else if (loaded >= total) rows.append(fresh);
  else return;
  total += 1;
  loaded += 1;
  showCount();
}

function watch() {
  const source = new EventSource("/api/sessions/changes");
  let opened = false;
  source.addEventListener("open", () => {
    live.dataset.state = "live";
    live.textContent = "● live";
    if (opened) load(); // reconnected: catch up on what changed meanwhile
    opened = true;
  });
  source.addEventListener("session", (message) => onChange(JSON.parse(message.data)));
  source.addEventListener("error", () => {
    live.dataset.state = "reconnecting";
    live.textContent = "reconnecting…";
  });
  onLeave(() => source.close());
}

async function main() {
  await initFrame();
  const params = new URLSearchParams(location.search);
  const repos = await api("/api/repos").catch(() => []);
  const repoSelect = document.getElementById("f-repo");
  for (const r of repos) repoSelect.append(h("option", { value: r.name }, r.name));
  for (const key of ["repo", "status", "author"]) {
    const value = params.get(key);
    if (value && form.elements[key]) {
      if (key === "repo" && ![...repoSelect.options].some((o) => o.value === value)) repoSelect.append(h("option", { value }, value));
      form.elements[key].value = value;
    }
  }
  form.addEventListener("change", () => {
    syncUrl();
    load();
  });
  let typing = null;
  form.elements.author.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      syncUrl();
      load();
    }, 300);
  });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  document.getElementById("f-clear").addEventListener("click", () => {
    form.reset();
    syncUrl();
    load();
  });
  more.addEventListener("click", () => load({ append: true }));
  await load();
  watch();
  setInterval(() => refreshTimes(rows), 30_000);
}

main();
