// util.js — small shared helpers: DOM building (text only, never HTML from
// data), number and time formatting, tag colours, the theme.

/** el("div.a.b", {attr: v, onclick: f}, child…); strings become text nodes. */
export function el(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const e = document.createElement(tag || "div");
  if (classes.length) e.className = classes.join(" ");
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k in e && typeof v !== "string") e[k] = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
}

/** A number for humans: 4 significant digits, exponent when huge or tiny. */
export function fmt(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (Number.isInteger(v) && a < 1e7) return String(v);
  if (a >= 1e6 || a < 1e-3) return v.toExponential(digits - 2).replace("e+", "e");
  return String(Number(v.toPrecision(digits)));
}

/** An integer with thin-space thousands (1 234 567). */
export function fmtInt(v) {
  if (v === null || v === undefined) return "—";
  return String(v).replace(/\B(?=(\d{3})+(?!\d))/g, "\u2009");
}

/** "3 s ago", "5 min ago", "2 h ago", "4 d ago". */
export function ago(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "never";
  const s = Math.max(0, seconds);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

/** Seconds since last activity → live | stalled | idle (see runs.js). */
export const LIVE_S = 15;
export const IDLE_S = 3600;
export function runState(sinceSeen) {
  if (sinceSeen === null || sinceSeen === undefined) return "idle";
  if (sinceSeen < LIVE_S) return "live";
  if (sinceSeen < IDLE_S) return "stalled";
  return "idle";
}

// ---- theme --------------------------------------------------------------

const THEME_KEY = "gradwatchTheme";
const themeListeners = new Set();

/** "auto" (follow prefers-color-scheme), "light" or "dark". */
export function themeChoice() {
  try {
    const v = window.localStorage.getItem(THEME_KEY);
    return v === "light" || v === "dark" ? v : "auto";
  } catch (e) {
    return "auto";
  }
}

/** The theme in force: "light" or "dark". */
export function theme() {
  const c = document.documentElement.dataset.theme;
  if (c === "light" || c === "dark") return c;
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export function setThemeChoice(choice) {
  try {
    if (choice === "auto") window.localStorage.removeItem(THEME_KEY);
    else window.localStorage.setItem(THEME_KEY, choice);
  } catch (e) { /* not remembered */ }
  applyTheme();
}

export function applyTheme() {
  const c = themeChoice();
  if (c === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = c;
  document.documentElement.dataset.themeActive = theme();
  for (const fn of themeListeners) fn(theme());
}

export function onThemeChange(fn) {
  themeListeners.add(fn);
  return () => themeListeners.delete(fn);
}

// (Guarded so node's test runner can import the pure helpers of these modules.)
if (typeof window !== "undefined" && window.matchMedia) {
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (themeChoice() === "auto") applyTheme();
  });
}

/** A CSS custom property of the page (after the theme is applied). */
export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// ---- tag colours ----------------------------------------------------------

/**
 * A colour per tag, stable for a tag's index in the run's sorted tag list:
 * hues by the golden angle (neighbours differ most), lightness by theme so
 * lines read on both backgrounds. `all` (the whole model) is the ink colour.
 */
export function tagColor(tag, index) {
  if (tag === "all") return cssVar("--ink-strong") || (theme() === "dark" ? "#f2f2f2" : "#111");
  const hue = (index * 137.508 + 210) % 360;
  return theme() === "dark" ? `hsl(${hue.toFixed(1)} 70% 66%)` : `hsl(${hue.toFixed(1)} 72% 40%)`;
}

/** Debounce: fn runs ms after the last call. */
export function debounce(fn, ms) {
  let t = null;
  const d = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
  d.cancel = () => clearTimeout(t);
  return d;
}

/** Lower bound: first index i with a[i] >= x (a sorted ascending). */
export function lowerBound(a, x, lo = 0, hi = a.length) {
  while (lo < hi) {
    const m = (lo + hi) >>> 1;
    if (a[m] < x) lo = m + 1;
    else hi = m;
  }
  return lo;
}
