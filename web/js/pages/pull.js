// `/pulls/{id}`: review a local pull request — description, commits, checks, the diff — and
// merge or close it. Every agent-written string (title, body, commit messages, diff lines,
// check output) goes into the page as text through `h`, never as HTML.

import { api } from "../api.js";
import { renderDiff } from "../diff.js";
import { announce, badge, clear, h, initFrame, person, relTime, showError } from "../ui.js";

const $ = (id) => document.getElementById(id);
const prId = location.pathname.split("/").filter(Boolean)[1];
const path = `/api/pulls/${encodeURIComponent(prId)}`;

function render(pr) {
  document.title = `${pr.title} · #${pr.number} · Nightshift`;
  clear($("title"), pr.title, " ", h("span", { class: "muted" }, `#${pr.number}`));
  clear(
    $("meta"),
    h("span", { id: "state" }, badge(pr.state)),
    pr.draft && pr.state === "open" ? h("span", { id: "draft", class: "badge" }, "draft: its verify commands failed") : null,
    person(pr.author),
    h("span", {}, "wants to merge ", h("code", {}, pr.head), " into ", h("code", {}, pr.base)),
    h("span", {}, "in ", pr.repo),
    h("a", { href: `/sessions/${encodeURIComponent(pr.session_id)}` }, "session"),
    relTime(pr.created_at),
  );
  $("body").textContent = pr.body || "(no description)";
  renderShots(pr.body || "");
  clear(
    $("commits"),
    pr.commits.map((c) => {
      const [subject, ...rest] = c.message.split("\n");
      return h("li", { class: "commit" },
        h("code", { class: "sha", title: c.sha }, c.sha.slice(0, 10)), " ",
        h("span", { class: "subject" }, subject), " ",
        h("span", { class: "muted" }, `${c.author_name} <${c.author_email}>`),
        rest.join("\n").trim() ? h("pre", { class: "commit-body" }, rest.join("\n").trim()) : null);
    }),
    pr.commits_error ? h("li", { class: "muted" }, pr.commits_error) : null,
  );
  renderChecks(pr.checks);
  const facts = [["State", badge(pr.state)], ["Head", h("code", {}, pr.head_sha.slice(0, 12))]];
  if (pr.merged_sha) facts.push(["Merged as", h("code", { id: "merged-sha" }, pr.merged_sha.slice(0, 12))]);
  if (pr.closed_by) facts.push([pr.state === "merged" ? "Merged by" : "Closed by", person(pr.closed_by)]);
  if (pr.closed_at) facts.push(["When", relTime(pr.closed_at)]);
  clear($("facts"), facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  $("actions").hidden = !pr.can_merge;
  $("ready").hidden = !pr.draft;
  $("merge").disabled = pr.draft;
  $("merge").title = pr.draft ? "A draft: mark it ready for review first" : "";
  $("who-merges").textContent = pr.state === "open" && !pr.can_merge
    ? "Only the session's author, the pull request's author or an admin may merge or close it."
    : "";
}

// The screenshots the body links (`![name](…/api/sessions/<id>/artifacts/<sha256>)`, or the
// shared link `/shared/artifacts/<id>/<sha256>/<token>`; `![name:before]` and `![name:after]`
// for the repo's pages), shown under it with a page's before and after side by side; only this
// server's own artifact paths become images.
const SHOT = /!\[([\w-]{1,40})(?::(before|after))?\]\((?:https?:\/\/[^)\s]*?)?(\/api\/sessions\/[\w-]+\/artifacts\/[0-9a-f]{64}|\/shared\/artifacts\/[\w-]+\/[0-9a-f]{64}\/[0-9a-f]{32})\)/g;

function shotImage(name, side, src) {
  const label = side ? `${name} (${side})` : name;
  return h("a", { href: src, target: "_blank", rel: "noopener", title: "Open full size" },
    h("img", { src, alt: `Screenshot: ${label}`, loading: "lazy", dataset: { side: side || "" } }));
}

function renderShots(body) {
  const byName = new Map();
  for (const [, name, side, src] of body.matchAll(SHOT)) {
    if (!byName.has(name)) byName.set(name, []);
    byName.get(name).push({ side, src });
  }
  const shots = [...byName].map(([name, images]) =>
    h("figure", { class: images.length > 1 ? "shot pair" : "shot", dataset: { name } },
      h("div", { class: "shot-images" },
        ...images.map(({ side, src }) =>
          h("div", { class: "shot-side" },
            shotImage(name, side, src),
            side ? h("span", { class: "muted" }, side) : null))),
      h("figcaption", {}, name)));
  clear($("shots"), shots);
  $("shots").hidden = shots.length === 0;
}

function renderChecks(checks) {
  if (!checks) {
    clear($("checks"), h("span", { class: "muted" }, "No verify results"));
    return;
  }
  clear(
    $("checks"),
    h("p", {}, badge(checks.passed ? "done" : "failed", checks.passed ? "passed" : "failed"),
      " ", h("span", { class: "muted" }, `round ${checks.round} of ${checks.max_rounds}`)),
    h("ul", { class: "checks" }, checks.checks.map((c) =>
      h("li", {},
        h("details", {},
          h("summary", {}, badge(c.ok ? "done" : "failed", c.ok ? "ok" : `exit ${c.exit_code}`), " ", h("code", {}, c.command)),
          h("pre", { class: "check-output" }, c.output || "(no output)"))))),
  );
}

async function loadDiff() {
  const diff = await api(`${path}/diff`);
  clear($("files"), diff.files.map((f) =>
    h("li", {}, h("code", {}, f.path), " ",
      h("span", { class: "add-count" }, `+${f.added}`), " ",
      h("span", { class: "del-count" }, `−${f.removed}`))));
  clear($("diff"), diff.diff ? renderDiff(diff.diff) : h("p", { class: "muted" }, "No changes"));
  $("diff").setAttribute("aria-busy", "false");
}

async function act(action) {
  const verb = { merge: "Merge", close: "Close", ready: "Marked ready" }[action];
  if (action === "close" && !window.confirm("Close this pull request without merging? Its branch is deleted.")) return;
  for (const b of document.querySelectorAll("#actions button")) b.disabled = true;
  $("error").hidden = true;
  try {
    const pr = await api(`${path}/${action}`, { method: "POST" });
    render(pr);
    announce(action === "ready" ? "Marked ready for review" : `${verb}d: the pull request is ${pr.state}`);
  } catch (err) {
    showError($("error"), err);
  } finally {
    for (const b of document.querySelectorAll("#actions button")) b.disabled = false;
    if (!$("ready").hidden) $("merge").disabled = true;
  }
}

async function main() {
  await initFrame();
  $("merge").addEventListener("click", () => act("merge"));
  $("ready").addEventListener("click", () => act("ready"));
  $("close").addEventListener("click", () => act("close"));
  try {
    render(await api(path));
    await loadDiff();
  } catch (err) {
    showError($("error"), err);
  }
}

main();
