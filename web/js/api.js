// The Nightshift API over fetch: JSON in and out, errors with the server's message.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** FastAPI answers `{detail: "..."}` or, for invalid bodies, `{detail: [{loc, msg}, ...]}`. */
export function detailText(detail, fallback) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const where = (d.loc || []).filter((p) => p !== "body").join(".");
        return where ? `${where}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  return fallback;
}

export function signInUrl() {
  const next = location.pathname + location.search;
  return `/signin?next=${encodeURIComponent(next)}`;
}

const RETRY_MS_HEADER = "nightshift-retry-after-ms";
const SHED_PATIENCE_MS = 120_000;

/**
 * Milliseconds to wait before sending again a request the server shed while busy taking in
 * other prompts (a 503 with `Nightshift-Retry-After-Ms`: nothing was done), else null.
 */
export function shedRetryMs(res) {
  const header = res.status === 503 ? res.headers.get(RETRY_MS_HEADER) : null;
  const hint = header === null ? NaN : Number(header);
  return Number.isFinite(hint) ? Math.min(Math.max(hint, 50), 5000) : null;
}

function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("aborted", "AbortError"));
    }, { once: true });
  });
}

/**
 * Call the API. A 401 sends the browser to the sign-in page (unless `noRedirect`); any other
 * error status throws an ApiError carrying the server's message. A request the server shed
 * is sent again after the wait it asked for (`onBusy(ms)` is told), for up to two minutes.
 */
export async function api(path, { method = "GET", body, signal, keepalive, noRedirect, onBusy } = {}) {
  const init = { method, signal, keepalive, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const giveUp = Date.now() + SHED_PATIENCE_MS;
  let res;
  for (;;) {
    try {
      res = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "the server cannot be reached");
    }
    const wait = shedRetryMs(res);
    if (wait === null || Date.now() + wait > giveUp) break;
    onBusy?.(wait);
    await pause(wait, signal);
  }
  if (res.status === 401 && !noRedirect) {
    location.assign(signInUrl());
    throw new ApiError(401, "not signed in");
  }
  if (!res.ok) {
    let detail = null;
    try {
      detail = (await res.json()).detail;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(res.status, detailText(detail, `${res.status} ${res.statusText}`));
  }
  if (res.status === 204) return null;
  return res.json();
}

let mePromise = null;

/** Who this browser is signed in as: `{user, auth, github_login}` (user is null if nobody). */
export function me() {
  mePromise ??= api("/api/auth/state");
  return mePromise;
}

export const sessionPath = (id) => `/api/sessions/${encodeURIComponent(id)}`;
export const repoPath = (name) => `/api/repos/${name.split("/").map(encodeURIComponent).join("/")}`;
