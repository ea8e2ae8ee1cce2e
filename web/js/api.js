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

/**
 * Call the API. A 401 sends the browser to the sign-in page (unless `noRedirect`); any other
 * error status throws an ApiError carrying the server's message.
 */
export async function api(path, { method = "GET", body, signal, keepalive, noRedirect } = {}) {
  const init = { method, signal, keepalive, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the server cannot be reached");
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
