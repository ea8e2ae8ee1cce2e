// Small DOM helpers, formatters and the shared page frame (navigation, who is signed in).
// Everything user- or model-written goes into the page as text, never as HTML.

import { me, signInUrl } from "./api.js";

/**
 * Build an element: h("a", {href: "/", class: "x", "aria-label": "y", onclick: fn}, "text", child).
 * `dataset` takes an object; `text` sets textContent; null/false children are skipped.
 */
export function h(tag, props = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in el && !svg && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ---------------------------------------------------------------- formatting

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** An estimated cost in US dollars: cents once it is worth a cent, else four decimals. */
export function fmtUsd(usd) {
  if (usd === null || usd === undefined) return "–";
  return `$${usd >= 0.01 || usd === 0 ? usd.toFixed(2) : usd.toFixed(4)}`;
}

export function timeAgo(ts) {
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtTime(ts) {
  return new Date(ts * 1000).toLocaleString(undefined, {
    dateStyle: "medium",
    timeStyle: "short",
  });
}

/** A `<time>` that keeps its relative text fresh (see `refreshTimes`). */
export function relTime(ts) {
  return h("time", { datetime: new Date(ts * 1000).toISOString(), title: fmtTime(ts), dataset: { ts } }, timeAgo(ts));
}

export function refreshTimes(root = document) {
  for (const el of root.querySelectorAll("time[data-ts]")) el.textContent = timeAgo(Number(el.dataset.ts));
}

/** Only web links and paths on this site: never `javascript:` or other schemes in an href. */
export function safeHref(url) {
  if (typeof url !== "string") return null;
  if (url.startsWith("/") && !url.startsWith("//")) return url;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/** A link that opens elsewhere, or plain text when the address is not a safe one. */
export function extLink(url, label, props = {}) {
  const href = safeHref(url);
  if (!href) return h("span", props, label);
  return h("a", { ...props, href, target: "_blank", rel: "noopener noreferrer" }, label);
}

export function badge(state, label = state) {
  return h("span", { class: `badge s-${state}` }, label);
}

function hue(text) {
  let n = 0;
  for (const c of text) n = (n * 31 + c.charCodeAt(0)) % 360;
  return n;
}

export function initials(name) {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

export function avatar(person) {
  return h(
    "span",
    { class: "avatar", style: `background: hsl(${hue(person.login)} 55% 42%)`, "aria-hidden": "true" },
    initials(person.name || person.login),
  );
}

export function person(p, { you = false } = {}) {
  return h("span", { class: "person" }, avatar(p), " ", h("span", { class: "name" }, p.name), " ",
    h("span", { class: "muted login" }, `@${p.login}`), you ? h("span", { class: "muted" }, " (you)") : null);
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** Polite announcements for screen readers (status changes, not every token). */
export function announce(message) {
  let region = document.getElementById("announcer");
  if (!region) {
    region = h("div", { id: "announcer", class: "sr-only", role: "status", "aria-live": "polite" });
    document.body.append(region);
  }
  region.textContent = message;
}

export function showError(where, err) {
  where.hidden = false;
  where.textContent = err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------- page frame

/**
 * Mark the current page in the navigation and show who is signed in. Pages that need a
 * signed-in person pass `{required: true}` and are sent to the sign-in page otherwise.
 */
export async function initFrame({ required = true } = {}) {
  for (const link of document.querySelectorAll(".top nav a")) {
    const here = link.getAttribute("href") === location.pathname;
    if (here) link.setAttribute("aria-current", "page");
  }
  const who = await me();
  const slot = document.getElementById("me");
  if (who.user) {
    const out = h("button", { type: "button", class: "link", onclick: signOut }, "Sign out");
    if (slot) clear(slot, person(who.user), out);
  } else {
    if (slot) clear(slot, h("a", { href: signInUrl() }, "Sign in"));
    if (required) {
      location.assign(signInUrl());
      return new Promise(() => {}); // the page is going away
    }
  }
  return who;
}

const leaving = [];
let signingOut = false;

function leave() {
  for (const fn of leaving.splice(0)) fn();
}
addEventListener("pagehide", leave);

/**
 * Run `fn` when the page goes away or its person signs out, so live streams close before the
 * browser session ends and none reconnects signed out; at once if signing out has begun.
 */
export function onLeave(fn) {
  if (signingOut) return fn();
  leaving.push(fn);
}

async function signOut() {
  signingOut = true;
  leave();
  // The server ends the browser session and answers with a redirect we do not follow.
  await fetch("/auth/logout", { method: "POST", credentials: "same-origin", redirect: "manual" });
  location.assign("/signin");
}
