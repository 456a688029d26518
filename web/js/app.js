// app.js — the dashboard's entry: hash routing between the runs list
// (#/), a run page (#/run/NAME) and the compare page (#/compare?runs=…), the header (theme toggle, token,
// connection light) and the "token needed" banner.
//
// Views are objects with destroy(); exactly one is mounted in <main id=view>
// at a time, and route() replaces it. Everything is served by gradwatchd
// itself (web/ and uPlot embedded at build time): no network is needed.

import { getToken, onAuthRefused, setToken } from "./api.js";
import { applyTheme, el, setThemeChoice, themeChoice } from "./util.js";
import { RunsView } from "./runs.js";
import { RunView } from "./run.js";
import { CompareView } from "./compare.js";

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const banner = document.getElementById("banner");
const themeBtn = document.getElementById("theme-btn");
const tokenBtn = document.getElementById("token-btn");
let current = null;

// ---- theme ----------------------------------------------------------------

const THEME_NEXT = { auto: "light", light: "dark", dark: "auto" };
const THEME_LABEL = { auto: "◐ auto", light: "☀ light", dark: "☾ dark" };

function showTheme() {
  const c = themeChoice();
  themeBtn.textContent = THEME_LABEL[c];
  themeBtn.title = "Theme: " + c + " (click for " + THEME_NEXT[c] + ")";
}
themeBtn.addEventListener("click", () => {
  setThemeChoice(THEME_NEXT[themeChoice()]);
  showTheme();
});
applyTheme();
showTheme();

// ---- token ------------------------------------------------------------------

function showTokenButton() {
  tokenBtn.textContent = getToken() ? "token ✓" : "token";
}

function askToken() {
  const t = window.prompt(
    "Bearer token of this gradwatchd (the content of its --http-token-file).\n" +
      "Kept in this browser's localStorage. Leave empty to forget it.",
    getToken(),
  );
  if (t === null) return;
  setToken(t.trim());
  showTokenButton();
  banner.hidden = true;
  if (current && current.refresh) current.refresh();
}
tokenBtn.addEventListener("click", askToken);
showTokenButton();

onAuthRefused((status, msg) => {
  banner.textContent = "";
  banner.className = "banner bad";
  banner.append(
    el("strong", null, "This daemon wants a bearer token "),
    el("span", null, `(${status}: ${msg}). `),
    el("button", { onclick: askToken }, getToken() ? "Change token" : "Enter token"),
  );
  banner.hidden = false;
});

// ---- routing ------------------------------------------------------------------

function route() {
  const h = window.location.hash || "#/";
  if (current) current.destroy();
  current = null;
  view.textContent = "";
  crumbs.textContent = "";
  const m = /^#\/run\/(.+)$/.exec(h);
  const cmp = /^#\/compare(?:\?(.*))?$/.exec(h);
  if (cmp) {
    crumbs.append(el("a", { href: "#/" }, "runs"), el("span.sep", null, "›"), el("span.cur", null, "compare"));
    current = new CompareView(view, cmp[1] || "");
    document.title = "compare — gradwatch";
  } else if (m) {
    const [name, query] = m[1].split("?");
    const run = decodeURIComponent(name);
    crumbs.append(el("a", { href: "#/" }, "runs"), el("span.sep", null, "›"), el("span.cur", null, run));
    current = new RunView(view, run, query || "");
    document.title = run + " — gradwatch";
  } else {
    crumbs.append(el("span.cur", null, "runs"));
    // #/?tag=T or #/?q=WORDS: the runs list, filtered
    const q = new URLSearchParams((/^#\/\?(.*)$/.exec(h) || [])[1] || "");
    current = new RunsView(view, q.get("tag") ? "tag:" + q.get("tag") : q.get("q") || "");
    document.title = "gradwatch";
  }
}

window.addEventListener("hashchange", route);
route();
