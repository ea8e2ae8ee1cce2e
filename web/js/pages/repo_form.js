// The "Change this repository" form of `/new`: edits a repo's stored spec through
// `PATCH /api/repos/{repo}`, sending only the fields whose values differ from the stored ones,
// and removes the repo (`DELETE /api/repos/{repo}`) once the person confirms.
// Its inputs sit inside the compose form but belong to the empty `<form id="repo-edit">`
// (their `form` attribute): HTML forms cannot nest.

import { api, repoPath } from "../api.js";
import { showError } from "../ui.js";

const lines = (text) => text.split("\n").filter((s) => s.trim()); // a blank line is no command
const hosts = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

/** Each field: its input, how the stored value reads in it, and how its text reads back. */
const FIELDS = {
  base: { id: "edit-base", show: (v) => v, read: (t) => t.trim() },
  setup: { id: "edit-setup", show: (v) => v.join("\n"), read: lines },
  warm: { id: "edit-warm", show: (v) => v.join("\n"), read: lines },
  egress: { id: "edit-egress", show: (v) => v.join(", "), read: hosts },
  image: { id: "edit-image", show: (v) => v ?? "", read: (t) => t.trim() || null },
  description: { id: "edit-description", show: (v) => v, read: (t) => t },
  // Not a whole number: sent as typed, so the server's 422 says what is wrong with it.
  pool_size: { id: "edit-pool-size", show: (v) => String(v), read: (t) => (/^\s*\d+\s*$/.test(t) ? Number(t) : t) },
};

const form = document.getElementById("repo-edit");
const status = document.getElementById("repo-edit-status");
const alertEl = document.getElementById("repo-edit-error");
let stored = null; // the repo as GET /api/repos/{repo} gave it

const input = (name) => document.getElementById(FIELDS[name].id);

/** Prefill from the stored spec; a message about the same repo stays (e.g. "Saved: …"). */
export function fillRepoForm(repo) {
  if (stored?.name !== repo.name) {
    status.textContent = "";
    alertEl.hidden = true;
  }
  stored = repo;
  for (const [name, field] of Object.entries(FIELDS)) input(name).value = field.show(repo[name]);
}

/** The fields whose values differ from the stored ones, as PATCH takes them. */
function changes() {
  const body = {};
  for (const [name, field] of Object.entries(FIELDS)) {
    const value = field.read(input(name).value);
    if (JSON.stringify(value) !== JSON.stringify(stored[name])) body[name] = value;
  }
  return body;
}

/**
 * `onSaved(repo)` runs after a change is stored, to refresh what shows the repo;
 * `onRemoved(repo)` after the repo is removed, to load the list without it.
 */
export function initRepoForm(onSaved, onRemoved) {
  const save = document.getElementById("repo-edit-save");
  const remove = document.getElementById("repo-remove");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!stored) return;
    alertEl.hidden = true;
    const body = changes();
    const named = Object.keys(body);
    if (named.length === 0) return (status.textContent = "Nothing changed.");
    status.textContent = "Saving…";
    save.disabled = true;
    try {
      const repo = await api(repoPath(stored.name), { method: "PATCH", body });
      status.textContent = `Saved: ${named.join(", ")}. The image is being built again.`;
      await onSaved(repo);
    } catch (err) {
      status.textContent = "";
      showError(alertEl, err);
    } finally {
      save.disabled = false;
    }
  });
  remove.addEventListener("click", async () => {
    if (!stored) return;
    const name = stored.name;
    const question =
      `Remove ${name}? New sessions and follow-ups on it are refused and its image is no longer built. ` +
      "Its sessions and pull requests stay readable, and adding it again brings it back.";
    if (!confirm(question)) return;
    alertEl.hidden = true;
    status.textContent = "Removing…";
    remove.disabled = true;
    try {
      const repo = await api(repoPath(name), { method: "DELETE" });
      status.textContent = "";
      await onRemoved(repo);
    } catch (err) {
      status.textContent = "";
      showError(alertEl, err);
    } finally {
      remove.disabled = false;
    }
  });
}
