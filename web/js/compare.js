// compare.js — the compare page (#/compare?runs=a,b&tag=all&metrics=…&from=…&to=…):
// several runs overlaid on the same charts, one colour per run, against
// step, for one tag chosen on the page, and their regime summary as a table
// with a CSV download.
//
// State lives in the URL: runs, tag, metrics (the charts shown), the x axis
// (x=wall: seconds since each run's first point, by the publisher's clock,
// so runs started at different times line up; default: step) and zoom
// (from/to: steps, refetched from the server; seconds with x=wall, applied
// to the points in hand). Every change rewrites the hash with history.replaceState (no
// hashchange, so the view is not rebuilt); opening the same URL reproduces
// the view.
//
// Data flow: /api/v1/runs/{run}/streams for each run (the tag choices: the
// union of their tags) → /api/v1/series per run for the tag, CHART_METRICS,
// the zoom range and max_points ≈ the plot width (4 requests at a time) →
// align() on the union of steps (runs play the role the run page gives to
// tags) → ChartGroup (charts.js). /api/v1/summary?runs=… fills the table;
// its rows for the chosen tag come first.

import { getJSON, pool, qs } from "./api.js";
import { align, CHART_METRICS, CHARTS, ChartGroup } from "./charts.js";
import { el, fmt, fmtInt, tagColor } from "./util.js";

export const COMPARE_RUNS_MAX = 12;

// Summary columns shown: [header, field].
const SUMMARY_COLS = [
  ["run", "run"], ["tag", "tag"], ["steps", "steps"],
  ["κ1 p5", "kappa_onestep_p5"], ["κ1 median", "kappa_onestep_median"], ["κ1 p95", "kappa_onestep_p95"],
  ["κEMA p5", "kappa_ema_p5"], ["κEMA median", "kappa_ema_median"], ["κEMA p95", "kappa_ema_p95"],
  ["κ1 cum", "kappa_onestep_cum"], ["κEMA cum", "kappa_ema_cum"],
  ["rank₉₀ median", "rank_90_median"], ["rank₉₉ median", "rank_99_median"],
  ["stable rank median", "stable_rank_median"], ["alerts", "alerts_fired"],
];

/** The page's state from a hash's query ("runs=a,b&tag=…"). */
export function parseCompare(query) {
  const p = new URLSearchParams(query || "");
  const list = (k) => (p.get(k) || "").split(",").filter(Boolean);
  const int = (k) => (/^\d+$/.test(p.get(k) || "") ? Number(p.get(k)) : null);
  const from = int("from");
  const to = int("to");
  const metrics = list("metrics").filter((m) => CHARTS.some((c) => c.metric === m));
  return {
    runs: [...new Set(list("runs"))].slice(0, COMPARE_RUNS_MAX),
    tag: p.get("tag") || null,
    metrics: metrics.length ? metrics : CHARTS.map((c) => c.metric),
    view: from !== null && to !== null && to > from ? { from, to } : null,
    x: p.get("x") === "wall" ? "wall" : "step",
  };
}

/** The hash of a state (inverse of parseCompare). */
export function compareHash(s) {
  const q = { runs: s.runs.join(","), tag: s.tag };
  if (s.metrics.length !== CHARTS.length) q.metrics = s.metrics.join(",");
  if (s.x === "wall") q.x = "wall";
  if (s.view) Object.assign(q, { from: s.view.from, to: s.view.to });
  return "#/compare?" + qs(q).replace(/%2C/g, ",");
}

/** CSV text of summary rows: every field, in the server's order. */
export function summaryCsv(rows) {
  if (!rows.length) return "";
  const keys = Object.keys(rows[0]);
  const cell = (v) => (v === null || v === undefined ? "" : String(v));
  return [keys.join(","), ...rows.map((r) => keys.map((k) => cell(r[k])).join(","))].join("\n") + "\n";
}

function pick(d) {
  const cols = {};
  for (const m of CHART_METRICS) cols[m] = d[m];
  return cols;
}

/** A run's columns keyed by seconds since its first point (publisher clock);
 * points without a wall time, or not after the previous one, are left out
 * (align() needs increasing keys). */
export function byWallTime(d) {
  const w = d.wall_time || [];
  const step = [];
  const cols = {};
  for (const m of CHART_METRICS) cols[m] = [];
  let t0 = null;
  let last = -Infinity;
  for (let i = 0; i < d.step.length; i++) {
    const t = w[i];
    if (t === null || t === undefined) continue;
    if (t0 === null) t0 = t;
    const x = t - t0;
    if (!(x > last)) continue;
    last = x;
    step.push(x);
    for (const m of CHART_METRICS) cols[m].push(d[m] ? d[m][i] : null);
  }
  return { step, cols };
}

export class CompareView {
  constructor(root, query) {
    this.alive = true;
    this.state = parseCompare(query);
    this.stores = new Map(); // run → {step, cols}
    this.tags = [];
    this.gen = 0; // a newer load makes older answers moot

    this.tagSel = el("select", { id: "compare-tag", "aria-label": "tag", onchange: () => this.setTag(this.tagSel.value) });
    this.xSel = el(
      "select",
      { id: "compare-x", "aria-label": "x axis", onchange: () => this.setX(this.xSel.value) },
      el("option", { value: "step", selected: this.state.x === "step" }, "step"),
      el("option", { value: "wall", selected: this.state.x === "wall" }, "wall time (s since the run's first point)"),
    );
    this.metricBox = el("span.metrics");
    for (const c of CHARTS) {
      const box = el("input", {
        type: "checkbox",
        checked: this.state.metrics.includes(c.metric),
        dataset: { metric: c.metric },
        onchange: () => this.setMetrics(),
      });
      this.metricBox.append(el("label.small", { title: c.hint }, box, " " + c.metric));
    }
    this.rangeEl = el("span.muted", { id: "compare-range" });
    this.resetBtn = el("button", { type: "button", onclick: () => this.zoom(null) }, "reset zoom");
    this.msg = el("span.muted", { id: "compare-msg" });
    this.legend = el("div.legend", { id: "compare-legend" });
    const chartBox = el("section.panel");
    this.sumBody = el("tbody", { id: "summary-body" });
    this.csvLink = el("a", { id: "summary-csv", download: "gradwatch-summary.csv", href: "#" }, "download CSV");
    this.rootEl = el(
      "section",
      { id: "compare-view", dataset: { runs: this.state.runs.join(",") } },
      el("div.toolbar", null, el("h2", null, "Compare"), el("span.muted", null, "tag"), this.tagSel, el("span.muted", null, "x"), this.xSel, this.metricBox, el("span.spacer"), this.msg, this.rangeEl, this.resetBtn),
      this.legend,
      chartBox,
      el(
        "section.panel",
        { id: "summary" },
        el("div.toolbar", null, el("h2", null, "Regime summary"), el("span.spacer"), this.csvLink),
        el("table.runs", null, el("thead", null, el("tr", null, ...SUMMARY_COLS.map(([h]) => el("th", null, h)))), this.sumBody),
      ),
    );
    root.append(this.rootEl);
    this.charts = new ChartGroup(chartBox, {
      onZoom: (from, to) => this.zoom({ from, to }),
      onReset: () => this.zoom(null),
      onCursor: () => {},
    });
    this.init();
  }

  destroy() {
    this.alive = false;
    this.charts.destroy();
    if (this.csvUrl) URL.revokeObjectURL(this.csvUrl);
  }

  colors() {
    const idx = new Map(this.state.runs.map((r, i) => [r, i]));
    return (run) => tagColor("run:" + run, idx.get(run) || 0);
  }

  async init() {
    const runs = this.state.runs;
    if (!runs.length) {
      this.msg.textContent = "no runs named: pick some in the runs list";
      return;
    }
    try {
      const lists = await pool(runs.map((r) => () => getJSON(`/api/v1/runs/${encodeURIComponent(r)}/streams`)), 4);
      if (!this.alive) return;
      const seen = new Set();
      for (const l of lists) for (const s of l.streams) seen.add(s.tag);
      this.tags = [...seen].sort((a, b) => (a === "all" ? -1 : b === "all" ? 1 : a < b ? -1 : a > b ? 1 : 0));
    } catch (e) {
      this.msg.textContent = "error: " + e.message;
      return;
    }
    if (!this.state.tag || !this.tags.includes(this.state.tag)) this.state.tag = this.tags[0] || "all";
    this.tagSel.textContent = "";
    for (const t of this.tags) this.tagSel.append(el("option", { value: t, selected: t === this.state.tag }, t));
    const colors = this.colors();
    this.legend.textContent = "";
    for (const r of runs)
      this.legend.append(el("span.chip", { dataset: { run: r }, style: `color:${colors(r)}` }, "━ ", el("a", { href: "#/run/" + encodeURIComponent(r) }, r)));
    this.charts.build(runs, colors, null, null);
    this.showMetrics();
    this.writeUrl();
    // Ready once the charts are drawn; then the summary (a pass over every
    // point of every run), so it does not compete with the charts' requests.
    await this.load();
    if (!this.alive) return;
    this.rootEl.dataset.ready = "1";
    await this.loadSummary();
  }

  /** Fetch every run's series for the tag and the zoom range, then draw. */
  async load() {
    const gen = ++this.gen;
    const { runs, tag } = this.state;
    const view = this.state.x === "step" ? this.state.view : null; // wall-time zoom: client side
    const mp = Math.max(100, Math.min(4000, Math.round(this.charts.plotWidth())));
    const t0 = performance.now();
    this.msg.textContent = "loading…";
    const got = await pool(
      runs.map((run) => () =>
        getJSON("/api/v1/series?" + qs({ run, tag, metrics: [...CHART_METRICS, "wall_time"].join(","), from: view && view.from, to: view && view.to, max_points: mp })).catch(() => null),
      ),
      4,
    );
    if (!this.alive || gen !== this.gen) return;
    this.stores = new Map();
    got.forEach((d, i) => {
      if (!d) return;
      this.stores.set(runs[i], this.state.x === "wall" ? byWallTime(d) : { step: d.step, cols: pick(d) });
    });
    this.charts.setData(align(this.stores, runs, CHART_METRICS), this.state.view);
    const missing = runs.filter((r) => !this.stores.has(r));
    this.msg.textContent = missing.length ? `no “${tag}” in ${missing.join(", ")}` : "";
    this.rootEl.dataset.loadMs = String(Math.round(performance.now() - t0));
    this.showRange();
  }

  async loadSummary() {
    const t0 = performance.now();
    let rows = [];
    try {
      rows = (await getJSON("/api/v1/summary?" + qs({ runs: this.state.runs.join(",") }).replace(/%2C/g, ","))).rows;
    } catch (e) {
      if (this.alive) this.sumBody.append(el("tr.empty", null, el("td", { colSpan: SUMMARY_COLS.length }, "error: " + e.message)));
      return;
    }
    if (!this.alive) return;
    this.rows = rows;
    this.renderSummary();
    if (this.csvUrl) URL.revokeObjectURL(this.csvUrl);
    this.csvUrl = URL.createObjectURL(new Blob([summaryCsv(rows)], { type: "text/csv" }));
    this.csvLink.href = this.csvUrl;
    this.rootEl.dataset.summaryMs = String(Math.round(performance.now() - t0));
  }

  renderSummary() {
    const tag = this.state.tag;
    const rows = this.rows.filter((r) => r.tag === tag).concat(this.rows.filter((r) => r.tag !== tag));
    const colors = this.colors();
    this.sumBody.textContent = "";
    for (const r of rows) {
      const tr = el("tr", { dataset: { run: r.run, tag: r.tag }, class: r.tag === tag ? null : "muted" });
      for (const [, k] of SUMMARY_COLS) {
        const v = r[k];
        const text = k === "run" || k === "tag" ? v : k === "steps" || k === "alerts_fired" ? fmtInt(v) : v === null ? "—" : fmt(v, 4);
        tr.append(el(typeof v === "number" ? "td.num" : "td", k === "run" ? { style: `color:${colors(v)}` } : null, text));
      }
      this.sumBody.append(tr);
    }
  }

  // ---- state changes ------------------------------------------------------------

  writeUrl() {
    const h = compareHash(this.state);
    if (window.location.hash !== h) history.replaceState(null, "", h);
  }

  setTag(tag) {
    this.state.tag = tag;
    this.writeUrl();
    if (this.rows) this.renderSummary();
    this.load();
  }

  setMetrics() {
    const on = [...this.metricBox.querySelectorAll("input")].filter((b) => b.checked).map((b) => b.dataset.metric);
    this.state.metrics = on.length ? on : CHARTS.map((c) => c.metric);
    this.showMetrics();
    this.writeUrl();
  }

  showMetrics() {
    for (const cell of this.charts.cells) cell.hidden = !this.state.metrics.includes(cell.dataset.metric);
    this.charts.resize();
  }

  setX(x) {
    this.state.x = x;
    this.state.view = null; // a range of steps is not one of seconds
    this.writeUrl();
    this.showRange();
    this.load();
  }

  zoom(view) {
    this.state.view = view;
    this.writeUrl();
    this.showRange();
    // Redraw the range at once from what is loaded, then refine from the
    // server (steps only: a wall-time range is applied to the points in hand).
    if (this.charts.data) this.charts.setData(this.charts.data, view);
    if (this.state.x === "step") this.load();
  }

  showRange() {
    const v = this.state.view;
    this.resetBtn.disabled = !v;
    const unit = this.state.x === "wall" ? "s" : "steps";
    this.rangeEl.textContent = v ? `${unit} ${fmtInt(v.from)}–${fmtInt(v.to)}` : "all " + unit;
    this.rootEl.dataset.view = v ? `${v.from}-${v.to}` : "";
  }
}
