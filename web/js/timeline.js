// The activity of a session, built from its events in id order.
//
// Each event lands in exactly one element, whose `data-ids` lists the ids it holds: a prompt
// (with its start, sandbox and first-model timing), a model turn (its streamed text, usage
// and tool cards), or a line of its own (status, git, PR, notices, errors).

import { avatar, badge, extLink, fmtMs, h, relTime } from "./ui.js";

const PROMPT_STATES = { queued: "queued", running: "running", done: "done", failed: "failed", stopped: "stopped", limit: "stopped", cancelled: "cancelled" };

export function describeCall(name, args = {}) {
  if (name === "run") return `$ ${args.command ?? ""}`;
  if (["read_file", "write_file", "edit_file", "list_files"].includes(name)) return args.path ?? ".";
  if (name === "search") return JSON.stringify(args.pattern ?? "");
  if (name === "spawn_session") return args.prompt ?? "";
  if (name === "finish") return args.title || args.summary || "";
  const first = Object.values(args).find((v) => typeof v === "string");
  return first ?? "";
}

function own(el, event) {
  el.dataset.ids = el.dataset.ids ? `${el.dataset.ids} ${event.id}` : String(event.id);
  return el;
}

function line(event, cls, ...children) {
  return own(h("div", { class: `item line ${cls}`, dataset: { type: event.type } }, ...children), event);
}

const short = (sha) => (sha || "").slice(0, 10);

export class Timeline {
  /**
   * @param {HTMLElement} root
   * @param {{sessionLink?: (id: string) => string}} options
   */
  constructor(root, { sessionLink = (id) => `/sessions/${id}` } = {}) {
    this.root = root;
    this.sessionLink = sessionLink;
    this.prompts = new Map(); // prompt_id -> {el, state, timing}
    this.turns = new Map(); // "prompt:attempt" -> current turn {el, text, tools}
    this.tools = new Map(); // call_id -> {el, result, body}
    this.running = null; // the prompt that started last
    this.count = 0;
  }

  add(el) {
    this.root.append(el);
    return el;
  }

  apply(event) {
    this.count += 1;
    const handler = this[`on_${event.type}`];
    if (handler) handler.call(this, event);
    else this.add(line(event, "", h("span", { class: "mono" }, event.type), JSON.stringify(event).slice(0, 300)));
  }

  // ------------------------------------------------------------ prompts

  promptEl(event) {
    let p = this.prompts.get(event.prompt_id);
    if (!p) {
      // A prompt whose `prompt_queued` is not stored (older sessions): a bare placeholder.
      p = this.makePrompt(event.prompt_id, event.author ?? { login: "?", name: "someone" }, "", event.ts);
    }
    return p;
  }

  makePrompt(promptId, author, text, ts) {
    const state = h("span", { class: "state" });
    const timing = h("div", { class: "timing" });
    const el = h(
      "article",
      { class: "item prompt", dataset: { type: "prompt", promptId: promptId ?? "" }, "aria-label": `Prompt from ${author.name}` },
      h("div", { class: "who" }, avatar(author), h("strong", { class: "author" }, author.name),
        h("span", { class: "muted" }, `@${author.login}`), relTime(ts), state),
      h("div", { class: "text" }, text),
      timing,
    );
    const p = { el, state, timing };
    this.prompts.set(promptId, p);
    this.add(el);
    return p;
  }

  setPromptState(p, state, extra = "") {
    p.el.dataset.state = state;
    p.state.replaceChildren(badge(PROMPT_STATES[state] ?? state));
    if (extra) p.state.append(h("span", { class: "muted" }, ` ${extra}`));
  }

  chip(p, label, title) {
    p.timing.append(h("span", { class: "chip", title: title ?? null }, label));
  }

  on_prompt_queued(e) {
    const p = this.prompts.get(e.prompt_id) ?? this.makePrompt(e.prompt_id, e.author, e.text, e.ts);
    own(p.el, e);
    this.setPromptState(p, "queued", e.position > 0 ? `#${e.position + 1} in line` : "");
  }

  on_prompt_started(e) {
    const p = this.promptEl(e);
    own(p.el, e);
    this.running = e.prompt_id;
    // The prompt moves down to where its work begins, so its output follows it.
    this.root.append(p.el);
    this.setPromptState(p, "running", e.attempt > 1 ? `attempt ${e.attempt}` : "");
    if (e.ms_waiting > 1000) this.chip(p, `waited ${fmtMs(e.ms_waiting)}`, "Time in the queue");
  }

  on_sandbox_ready(e) {
    const p = this.promptEl(e);
    own(p.el, e);
    this.chip(p, `sandbox ready in ${fmtMs(e.ms_since_prompt)} · ${e.mode}`, `Sandbox ${e.sandbox_id} from ${e.image}`);
  }

  on_sync_done(e) {
    const p = this.promptEl(e);
    own(p.el, e);
    this.chip(p, `synced ${short(e.sha)} in ${fmtMs(e.ms)}`, "git fetch of the base branch finished");
  }

  on_prompt_finished(e) {
    // A stop may be reported without its prompt: it ends the one that was running.
    const promptId = e.prompt_id ?? this.running;
    const p = this.prompts.get(promptId);
    if (p) this.setPromptState(p, e.outcome);
    this.closeTurn({ ...e, prompt_id: promptId });
    const labels = { done: "Done", failed: "Failed", stopped: "Stopped", limit: "Stopped at a limit" };
    this.add(own(h("div", { class: `item summary ${e.outcome}`, dataset: { type: e.type } },
      h("strong", {}, labels[e.outcome] ?? e.outcome), e.summary ? h("div", { class: "text" }, e.summary) : null), e));
  }

  // ------------------------------------------------------------ model turns

  turnKey(e) {
    return `${e.prompt_id ?? "-"}:${e.attempt ?? 1}`;
  }

  openTurn(e, label) {
    const text = h("div", { class: "text" });
    const usage = h("span", { class: "usage" });
    const el = h("section", { class: "item turn", dataset: { type: "turn" } }, h("div", { class: "turn-head" }, h("span", {}, label), usage), text);
    const turn = { el, text, usage, streamed: false };
    this.turns.set(this.turnKey(e), turn);
    this.add(el);
    return turn;
  }

  currentTurn(e) {
    return this.turns.get(this.turnKey(e)) ?? this.openTurn(e, "Agent");
  }

  closeTurn(e) {
    const turn = this.turns.get(this.turnKey(e));
    if (turn) {
      turn.text.classList.remove("streaming");
      turn.el.classList.remove("waiting");
    }
  }

  on_model_request(e) {
    this.closeTurn(e);
    const turn = this.openTurn(e, `Agent · step ${e.step} · ${e.model}`);
    turn.el.classList.add("waiting"); // until the model answers
    own(turn.el, e);
    if (e.step === 1) {
      const p = this.prompts.get(e.prompt_id);
      if (p) this.chip(p, `first model request at ${fmtMs(e.ms_since_prompt)}`, "Prompt received to first model request");
    }
  }

  on_text_delta(e) {
    const turn = this.currentTurn(e);
    own(turn.el, e);
    turn.text.append(e.text);
    turn.text.classList.add("streaming");
    turn.el.classList.remove("waiting");
    turn.streamed = true;
  }

  on_message(e) {
    const m = e.message;
    if (m.role === "user") {
      own(this.promptEl(e).el, e);
      return;
    }
    if (m.role === "tool") {
      const tool = this.tools.get(m.tool_call_id);
      if (tool) own(tool.el, e);
      else this.add(line(e, "", "tool output", m.text.slice(0, 200)));
      return;
    }
    const turn = this.currentTurn(e);
    own(turn.el, e);
    // The whole message is authoritative: it replaces what streamed in.
    turn.text.textContent = m.text;
    turn.text.classList.remove("streaming");
    turn.el.classList.remove("waiting");
  }

  on_usage(e) {
    const turn = this.currentTurn(e);
    own(turn.el, e);
    const cached = e.cached_tokens ? ` (${e.cached_tokens.toLocaleString()} cached)` : "";
    const cost = e.cost_usd != null ? ` · ~$${e.cost_usd.toFixed(4)}` : "";
    turn.usage.textContent = `${e.input_tokens.toLocaleString()} in${cached} · ${e.output_tokens.toLocaleString()} out tokens${cost}`;
  }

  on_verify(e) {
    const head = `Verify ${e.passed ? "passed" : "failed"} (attempt ${e.round} of ${e.max_rounds})`;
    const item = h("div", { class: `item ${e.passed ? "notice" : "error"}`, dataset: { type: e.type } }, h("strong", {}, head));
    for (const c of e.checks) {
      const row = h("details", {}, h("summary", {}, `${c.ok ? "✓" : "✗"} ${c.command}${c.ok ? "" : ` (exit ${c.exit_code})`}`));
      if (c.output) row.append(h("pre", {}, c.output));
      item.append(row);
    }
    this.add(own(item, e));
  }

  on_instructions_loaded(e) {
    const parts = [];
    if (e.agents_md.length) parts.push(`instructions ${e.agents_md.join(", ")}`);
    if (e.skills.length) parts.push(`skills offered: ${e.skills.join(", ")}`);
    this.add(own(h("div", { class: "item notice", dataset: { type: e.type } }, h("span", {}, `Loaded ${parts.join("; ")}`)), e));
  }

  on_context_compacted(e) {
    const why = e.reason === "refused" ? "the model refused its length" : "the window was filling up";
    const head = `Context compacted (${why}): ${e.tokens_before.toLocaleString()} → ${e.tokens_after.toLocaleString()} of ${e.window.toLocaleString()} tokens, ${e.outputs_elided} old outputs elided`;
    const item = h("div", { class: "item notice", dataset: { type: e.type } }, h("span", {}, head));
    if (e.summary) {
      item.append(h("details", {}, h("summary", {}, "summary kept"), h("pre", {}, e.summary)));
    }
    this.add(own(item, e));
  }

  on_model_retry(e) {
    this.add(line(e, "warn", `Model busy, retry ${e.retry} in ${e.wait_s.toFixed(1)} s:`, e.reason));
  }

  // ------------------------------------------------------------ tools

  on_tool_call(e) {
    const turn = this.currentTurn(e);
    turn.text.classList.remove("streaming");
    const result = h("span", { class: "result pending" }, "running…");
    const body = h("div", { class: "body" });
    const args = { ...e.arguments };
    if (e.name === "run" && typeof args.command === "string") {
      body.append(h("div", { class: "label" }, "command"), h("pre", {}, args.command));
      delete args.command;
    }
    for (const key of ["content", "old_text", "new_text", "prompt", "summary"]) {
      if (typeof args[key] === "string" && (args[key].includes("\n") || args[key].length > 80)) {
        body.append(h("div", { class: "label" }, key), h("pre", {}, args[key]));
        delete args[key];
      }
    }
    if (Object.keys(args).length) body.append(h("div", { class: "label" }, "arguments"), h("pre", {}, JSON.stringify(args, null, 2)));
    const el = own(h("details", { class: "tool", dataset: { type: "tool", call: e.call_id, tool: e.name } },
      h("summary", {}, h("span", { class: "name" }, e.name), h("span", { class: "what" }, describeCall(e.name, e.arguments)), result),
      body), e);
    this.tools.set(e.call_id, { el, result, body });
    turn.el.append(el);
  }

  on_tool_result(e) {
    let tool = this.tools.get(e.call_id);
    if (!tool) {
      this.on_tool_call({ ...e, id: e.id, arguments: {} });
      tool = this.tools.get(e.call_id);
      tool.el.dataset.ids = String(e.id);
    } else {
      own(tool.el, e);
    }
    const failed = e.is_error || (e.exit_code !== null && e.exit_code !== undefined && e.exit_code !== 0);
    tool.result.className = `result ${failed ? "bad" : "ok"}`;
    const code = e.exit_code !== null && e.exit_code !== undefined ? `exit ${e.exit_code} · ` : e.is_error ? "error · " : "";
    tool.result.textContent = `${code}${fmtMs(e.ms)}`;
    tool.el.dataset.state = failed ? "failed" : "ok";
    tool.body.append(h("div", { class: "label" }, e.is_error ? "error" : "output"), h("pre", { class: "output" }, e.output || "(no output)"));
  }

  on_artifact_created(e) {
    // Only a link to one of this API's own artifacts becomes an image.
    const ok = /^\/api\/sessions\/[\w-]+\/artifacts\/[0-9a-f]{64}$/.test(e.url ?? "");
    if (!ok) {
      this.add(line(e, "warn", "Artifact with an unexpected link was not shown"));
      return;
    }
    const caption = `Screenshot of ${e.title || "a page"} · ${e.width}×${e.height}`;
    const figure = own(h("figure", { class: "shot", dataset: { type: e.type, artifact: e.artifact_id } },
      h("a", { href: e.url, target: "_blank", rel: "noopener", title: "Open full size" },
        h("img", { src: e.url, alt: caption, loading: "lazy", width: e.width, height: e.height })),
      h("figcaption", {}, caption)), e);
    const turn = this.turns.get(this.turnKey(e));
    if (turn) turn.el.append(figure);
    else this.add(figure);
  }

  // ------------------------------------------------------------ session-level lines

  on_status(e) {
    this.add(line(e, e.status === "failed" ? "warn" : "", "Status", badge(e.status), e.reason ? h("span", {}, e.reason) : null));
  }

  on_commit_created(e) {
    const first = e.message.split("\n")[0];
    this.add(line(e, "ok", "Committed", h("code", {}, short(e.sha)), `as ${e.author}:`, h("span", {}, first),
      e.co_authors.length ? h("span", { class: "muted" }, `(with ${e.co_authors.join(", ")})`) : null));
  }

  on_branch_pushed(e) {
    this.add(line(e, "ok", "Pushed", h("code", {}, e.branch), `at ${short(e.sha)} onto ${e.base}`));
  }

  on_snapshot(e) {
    this.add(line(e, "", "Saved the sandbox so a follow-up starts from here"));
  }

  on_pr_opened(e) {
    this.add(line(e, "ok", "Opened", extLink(e.url, `pull request #${e.number}`), badge(e.state)));
  }

  on_pr_state(e) {
    this.add(line(e, e.state === "merged" ? "ok" : "", "Pull request is now", badge(e.state)));
  }

  on_child_spawned(e) {
    this.add(line(e, "", "Started a sub-session", h("a", { href: this.sessionLink(e.child_id) }, e.child_id), e.repo ? `on ${e.repo}:` : ":",
      h("span", {}, e.prompt.split("\n")[0].slice(0, 160))));
  }

  on_desktop_control_taken(e) {
    this.add(line(e, "", `${e.name || e.login} took control of the desktop`));
  }

  on_ide_files_edited(e) {
    const shown = e.files.slice(0, 5);
    const rest = e.files.length - shown.length + (e.more || 0);
    this.add(line(e, "", `${e.author.name || e.author.login} edited in VS Code:`,
      h("code", {}, shown.join(", ") + (rest > 0 ? ` and ${rest} more` : "")),
      h("span", { class: "muted" }, " · co-authors the next commit")));
  }

  on_notice(e) {
    if (e.follow_up && e.prompt_id != null) {
      // Where a follow-up came from (a GitHub comment, review or failing check): on its prompt.
      const p = this.promptEl(e);
      own(p.el, e);
      p.el.querySelector(".origin")?.remove();
      p.el.querySelector(".who").after(h("div", { class: "origin muted", dataset: { type: e.type } },
        "↪ ", h("span", {}, e.message), e.link ? [" · ", extLink(e.link, "open on GitHub")] : null));
      return;
    }
    this.add(own(h("div", { class: "item notice", dataset: { type: e.type } }, h("span", {}, e.message),
      e.link ? [" ", extLink(e.link, e.link)] : null), e));
  }

  on_error(e) {
    this.add(own(h("div", { class: "item error", dataset: { type: e.type } }, h("strong", {}, e.code), ": ", e.message), e));
  }
}
