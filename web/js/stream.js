// A session's events, live: WebSocket first, then server-sent events, then polling.
//
// Every event carries a per-session id. The stream remembers the last id it delivered and
// always resumes after it, drops anything it has already delivered and fetches any gap it
// sees, so the page gets each event exactly once and in order, whatever the connection did.

import { ApiError, api, sessionPath, signInUrl } from "./api.js";
import { onLeave } from "./ui.js";

const WS_FAILURES_BEFORE_SSE = 3;
const SSE_FAILURES_BEFORE_POLLING = 3;
const RETRY_WEBSOCKET_AFTER_MS = 30_000;
const POLL_MS = 1500;
const PAGE = 500;
const HISTORY_PAGE = 2000;
const PING_MS = 25_000;
const PRESENCE_BEAT_MS = 15_000;

const backoff = (attempt) => Math.min(5000, 250 * 2 ** attempt) * (0.75 + Math.random() * 0.5);

function clientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class EventStream {
  /**
   * @param {string} sessionId
   * @param {{onEvent: (e: object) => void, onPresence?: (viewers: object[]) => void,
   *          onState?: (state: string, detail?: string) => void, after?: number}} handlers
   */
  constructor(sessionId, { onEvent, onPresence = () => {}, onState = () => {}, after = 0, transport = null }) {
    this.sessionId = sessionId;
    this.onEvent = onEvent;
    this.onPresence = onPresence;
    this.onState = onState;
    this.last = after;
    // `transport` pins one way of connecting (`?transport=sse` on the page, behind a proxy
    // that breaks WebSockets in ways that look like success); otherwise WebSocket first.
    this.pinned = ["websocket", "sse", "polling"].includes(transport) ? transport : null;
    this.mode = this.pinned ?? "websocket";
    this.fallbackUntil = Infinity;
    this.stopped = false;
    this.failures = 0;
    this.chain = Promise.resolve();
    this.timers = new Set();
    this.clientId = clientId();
    this.socket = null;
    this.abort = null;
  }

  start() {
    onLeave(() => this.stop());
    if (this.mode !== "websocket") this.beatPresence();
    this.catchUp().finally(() => this.connect());
    return this;
  }

  /** History in large pages first: far quicker to render than one frame per stored event. */
  async catchUp() {
    try {
      for (;;) {
        const page = await api(`${sessionPath(this.sessionId)}/events?after=${this.last}&limit=${HISTORY_PAGE}`);
        for (const event of page) this.receive(event);
        await this.chain;
        if (page.length < HISTORY_PAGE || this.stopped) return;
      }
    } catch (err) {
      console.warn("loading the history:", err.message); // the stream below resumes from here
    }
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.socket?.close(1000, "page closed");
    this.abort?.abort();
    if (this.mode !== "websocket") this.leavePresence();
  }

  later(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  state(state, detail) {
    this.onState(state, detail);
  }

  connect() {
    if (this.stopped) return;
    if (this.mode === "websocket") this.connectWebSocket();
    else if (this.mode === "sse") this.connectSse();
    else this.poll();
  }

  fallBack(to) {
    this.mode = to;
    this.failures = 0;
    this.beatPresence();
    // The fallback is for proxies that cut WebSockets; look again now and then.
    this.fallbackUntil = Date.now() + RETRY_WEBSOCKET_AFTER_MS;
    this.connect();
  }

  maybeRetryWebSocket() {
    if (this.pinned || this.mode === "websocket" || Date.now() < this.fallbackUntil) return false;
    this.leavePresence();
    this.mode = "websocket";
    this.failures = WS_FAILURES_BEFORE_SSE - 1; // one more failure and we are back on the fallback
    this.connect();
    return true;
  }

  // ------------------------------------------------------------ delivery

  receive(event) {
    this.chain = this.chain.then(() => this.deliver(event)).catch((err) => this.deliveryFailed(err));
  }

  async deliver(event) {
    if (this.stopped || event.id <= this.last) return; // already delivered
    if (event.id > this.last + 1) {
      // A gap (should not happen on one connection, but a reconnect can race a resume).
      const missed = await api(`${sessionPath(this.sessionId)}/events?after=${this.last}&limit=${event.id - this.last - 1}`);
      for (const m of missed) this.emit(m);
    }
    this.emit(event);
  }

  emit(event) {
    if (event.id <= this.last) return;
    this.last = event.id;
    try {
      this.onEvent(event);
    } catch (err) {
      console.warn("rendering event", event.id, event.type, "failed:", err);
    }
  }

  deliveryFailed(err) {
    // Filling a gap failed: reconnect, which resumes after the last event delivered.
    console.warn("could not fetch missed events:", err.message);
    this.socket?.close(4000, "resync");
    this.abort?.abort();
  }

  // ------------------------------------------------------------ WebSocket

  connectWebSocket() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${sessionPath(this.sessionId)}/stream?after=${this.last}&presence=true`;
    this.state(this.failures ? "reconnecting" : "connecting");
    let opened = false;
    let ping = null;
    const ws = new WebSocket(url);
    this.socket = ws;
    ws.onopen = () => {
      opened = true;
      this.failures = 0;
      this.state("live", "WebSocket");
      ping = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('{"type":"ping"}'), PING_MS);
    };
    ws.onmessage = (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      if (data.type === "presence" && data.id === undefined) this.onPresence(data.viewers);
      else if (typeof data.id === "number") this.receive(data);
    };
    ws.onclose = (ev) => {
      clearInterval(ping);
      if (this.socket === ws) this.socket = null;
      if (this.stopped) return;
      if (ev.code === 4401) return location.assign(signInUrl());
      if (ev.code >= 4400 && ev.code < 4500 && ev.code !== 4408) {
        this.stopped = true;
        return this.state("gone", ev.reason || `closed (${ev.code})`);
      }
      if (!opened) this.failures += 1;
      if (!opened && !this.pinned && this.failures >= WS_FAILURES_BEFORE_SSE) return this.fallBack("sse");
      this.state("reconnecting");
      this.later(() => this.connect(), opened ? backoff(0) : backoff(this.failures));
    };
  }

  // ------------------------------------------------------------ server-sent events

  async connectSse() {
    this.state(this.failures ? "reconnecting" : "connecting");
    const abort = new AbortController();
    this.abort = abort;
    let opened = false;
    try {
      const res = await fetch(`${sessionPath(this.sessionId)}/events/stream?after=${this.last}`, {
        signal: abort.signal,
        headers: { accept: "text/event-stream" },
        credentials: "same-origin",
      });
      if (res.status === 401) return location.assign(signInUrl());
      if (!res.ok || !res.body) throw new ApiError(res.status, `event stream answered ${res.status}`);
      opened = true;
      this.failures = 0;
      this.state("live", "server-sent events");
      const retry = this.later(() => this.maybeRetryWebSocket() && abort.abort(), RETRY_WEBSOCKET_AFTER_MS);
      try {
        await this.readSse(res.body);
      } finally {
        clearTimeout(retry);
        this.timers.delete(retry);
      }
    } catch (err) {
      if (err.name !== "AbortError") console.warn("event stream:", err.message);
    } finally {
      if (this.abort === abort) this.abort = null;
    }
    if (this.stopped || this.mode !== "sse") return;
    if (!opened) this.failures += 1;
    if (!opened && !this.pinned && this.failures >= SSE_FAILURES_BEFORE_POLLING) return this.fallBack("polling");
    this.state("reconnecting");
    this.later(() => this.connect(), backoff(this.failures));
  }

  async readSse(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        try {
          this.receive(JSON.parse(data));
        } catch {
          // a malformed block: skip it; the next event's gap check recovers anything lost
        }
      }
    }
  }

  // ------------------------------------------------------------ polling

  async poll() {
    if (this.stopped) return;
    if (this.maybeRetryWebSocket()) return;
    let full = false;
    try {
      const events = await api(`${sessionPath(this.sessionId)}/events?after=${this.last}&limit=${PAGE}`);
      full = events.length === PAGE;
      for (const event of events) this.receive(event);
      await this.chain;
      this.failures = 0;
      this.state("live", "polling");
    } catch (err) {
      this.failures += 1;
      this.state("reconnecting", err.message);
    }
    this.later(() => this.poll(), full ? 0 : this.failures ? backoff(this.failures) : POLL_MS);
  }

  // ------------------------------------------------------------ presence off the WebSocket

  async beatPresence() {
    if (this.stopped || this.mode === "websocket") return;
    try {
      const res = await api(`${sessionPath(this.sessionId)}/presence`, {
        method: "POST",
        body: { client_id: this.clientId },
      });
      this.onPresence(res.viewers);
    } catch (err) {
      console.warn("presence:", err.message);
    }
    if (!this.presenceTimer) {
      this.presenceTimer = setInterval(() => this.beatPresence(), PRESENCE_BEAT_MS);
    }
  }

  leavePresence() {
    clearInterval(this.presenceTimer);
    this.presenceTimer = null;
    fetch(`${sessionPath(this.sessionId)}/presence/${this.clientId}`, {
      method: "DELETE",
      keepalive: true,
      credentials: "same-origin",
    }).catch(() => {});
  }
}
