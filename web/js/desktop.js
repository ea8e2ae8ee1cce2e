// The session's desktop: a live view of its sandbox's screen (noVNC over the API's WebSocket),
// view-only until a participant takes control.

import { api, sessionPath } from "./api.js";
import { announce, clear, h } from "./ui.js";

const NOVNC = "/novnc/core/rfb.js"; // Debian's novnc package, served by the API

function socketUrl(sessionId, control) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${sessionPath(sessionId)}/desktop${control ? "?control=true" : ""}`;
}

/** Fill `panel` with the desktop's controls; nothing connects until the person asks. The
 * panel stays hidden on servers that do not show desktops (NIGHTSHIFT_DESKTOP). */
export function mountDesktop(panel, sessionId) {
  panel.hidden = true;
  api("/api/me").then((me) => { panel.hidden = !me.desktop; }, () => {});
  const status = h("span", { class: "hint", id: "desktop-status", role: "status" }, "Not open");
  const openButton = h("button", { type: "button", id: "desktop-open" }, "Open desktop");
  const controlButton = h("button", { type: "button", id: "desktop-control", hidden: true }, "Take control");
  const closeButton = h("button", { type: "button", id: "desktop-close", hidden: true }, "Close");
  const screen = h("div", { class: "desktop-screen", id: "desktop-screen", hidden: true,
    style: "width:100%;aspect-ratio:1280/800;background:#000;margin-top:.5rem;overflow:hidden" });
  const hint = h("p", { class: "hint" }, "The screen of this session's sandbox while it is live; programs the agent runs with ",
    h("code", {}, "DISPLAY=:99"), " show here. You watch; the session's participants may take control.");
  clear(panel, h("h2", {}, "Desktop"), hint, h("div", { class: "row" }, openButton, controlButton, closeButton, status), screen);

  let rfb = null;
  let info = null;
  let control = false;

  function say(text) {
    status.textContent = text;
    panel.dataset.state = text.split(" ")[0].toLowerCase();
  }

  function disconnect() {
    if (rfb) {
      const old = rfb;
      rfb = null;
      old.disconnect();
    }
  }

  async function connect(takeControl) {
    let RFB;
    try {
      ({ default: RFB } = await import(NOVNC));
    } catch {
      say("The server has no noVNC (apt-get install novnc)");
      return;
    }
    disconnect();
    control = takeControl;
    clear(screen);
    screen.hidden = false;
    say("Connecting…");
    const client = new RFB(screen, socketUrl(sessionId, control), { wsProtocols: ["binary"], shared: true });
    client.viewOnly = !control;
    client.scaleViewport = true;
    client.focusOnClick = control;
    client.addEventListener("connect", () => {
      if (rfb !== client) return;
      panel.dataset.connected = "true";
      say(control ? "Connected · you have control" : "Connected · view only");
      controlButton.hidden = control || !info?.can_control;
      closeButton.hidden = false;
      if (control) announce("You have control of the desktop");
    });
    client.addEventListener("disconnect", (e) => {
      if (rfb !== client) return;
      rfb = null;
      panel.dataset.connected = "false";
      controlButton.hidden = true;
      openButton.hidden = false;
      say(e.detail.clean ? "Closed" : "Disconnected: the sandbox's desktop is gone or refused this viewer");
    });
    client.addEventListener("credentialsrequired", () => {
      // Only the sandbox's own server could ask; there are no credentials to give it.
      disconnect();
      say("Refused: the desktop asked for a password");
    });
    rfb = client;
  }

  openButton.addEventListener("click", async () => {
    openButton.disabled = true;
    say("Starting the desktop…");
    try {
      info = await api(`${sessionPath(sessionId)}/desktop`, { method: "POST" });
      openButton.hidden = true;
      await connect(false);
    } catch (err) {
      say(err.message);
    } finally {
      openButton.disabled = false;
    }
  });
  controlButton.addEventListener("click", () => connect(true));
  closeButton.addEventListener("click", () => {
    disconnect();
    screen.hidden = true;
    closeButton.hidden = true;
    controlButton.hidden = true;
    openButton.hidden = false;
    panel.dataset.connected = "false";
    say("Closed");
  });
}
