// VS Code for the session's workspace (code-server in its sandbox), opened in a tab of its own
// on the server's IDE origin: the API answers with a link that works once, within a minute.

import { api, sessionPath } from "./api.js";
import { clear, h } from "./ui.js";

/** Fill `panel` with the "Open VS Code" button; hidden on servers without NIGHTSHIFT_IDE. */
export function mountIde(panel, sessionId) {
  panel.hidden = true;
  api("/api/me").then((me) => { panel.hidden = !me.ide; }, () => {});
  const status = h("span", { class: "hint", id: "ide-status", role: "status" }, "");
  const openButton = h("button", { type: "button", id: "ide-open" }, "Open VS Code");
  const hint = h("p", { class: "hint" }, "Edit this session's workspace in your browser while its sandbox is live. ",
    "What you change is credited to you in the next commit.");
  clear(panel, h("h2", {}, "VS Code"), hint, h("div", { class: "row" }, openButton, status));

  openButton.addEventListener("click", async () => {
    openButton.disabled = true;
    status.textContent = "Starting VS Code…";
    // Opened now, while the click still counts, so no popup blocker stops it; the IDE's
    // pages come from the sandbox and must not reach back into this one.
    const tab = window.open("about:blank", "_blank");
    if (tab) tab.opener = null;
    try {
      const ide = await api(`${sessionPath(sessionId)}/ide`, { method: "POST" });
      panel.dataset.state = "open";
      if (tab) {
        tab.location.replace(ide.url);
        status.textContent = `VS Code is open in another tab (ready in ${ide.ready_s.toFixed(1)} s)`;
      } else {
        clear(status, "Ready: ", h("a", { href: ide.url, id: "ide-link", target: "_blank", rel: "noopener noreferrer" }, "open VS Code"),
          " (the link works once, within a minute)");
      }
    } catch (err) {
      tab?.close();
      panel.dataset.state = "refused";
      status.textContent = err.message;
    } finally {
      openButton.disabled = false;
    }
  });
}
