// `/signin`: GitHub when the server has it, or an API token kept in an HTTP-only cookie.

import { api, me } from "../api.js";
import { clear, h, initFrame, person, showError } from "../ui.js";

const $ = (id) => document.getElementById(id);

/** Only same-site paths: never send a person on to another site after signing in. */
function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

async function main() {
  await initFrame({ required: false });
  const who = await me();
  const next = nextPath();
  if (who.github_login) {
    const github = $("github");
    github.href = `${who.github_login}?next=${encodeURIComponent(next)}`;
    github.hidden = false;
    $("or").hidden = false;
  }
  if (who.user) {
    const box = $("signed-in");
    box.hidden = false;
    clear(box, h("p", {}, "Signed in as ", person(who.user), "."), h("p", {}, h("a", { class: "button primary", href: next }, "Continue")),
      who.auth === "local" ? h("p", { class: "hint" }, "This server runs in local mode: everyone is this local user unless they sign in with a token below.") : null);
  }
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const error = $("error");
    error.hidden = true;
    const token = $("token").value.trim();
    if (!token) return showError(error, "Paste an API token.");
    try {
      await api("/api/auth/token", { method: "POST", body: { token }, noRedirect: true });
      location.assign(next);
    } catch (err) {
      showError(error, err.status === 401 ? "That token is not valid (or was revoked)." : err);
    }
  });
  if (!who.user) $("token").focus();
}

main();
