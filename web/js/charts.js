// charts.js — the run page's synchronized uPlot charts, one per metric,
// one line per selected tag, all against step.
//
// Synchronization: one uPlot cursor sync key (shared cursor and focused
// series); zoom is ours, not uPlot's: a drag selects a step range on any
// chart, onZoom(from, to) asks the run page to fetch that range from the
// server (with max_points ≈ the plot width, so even a run of millions of
// points stays a few hundred points per line), and every chart's x scale is
// set to it. A double click (or the page's "reset zoom") calls onReset.
// Alert markers are vertical lines drawn in the draw hook at the step where
// each alert fired (red critical, amber warning; dashed once resolved).
//
// Data in: align() turns per-tag columns into uPlot's aligned table (one
// shared step axis, null where a tag has no point, lines span the gaps).
// A chart with `also` draws a second metric per tag as a dashed line of the
// tag's colour (κ linear beside κ one-step, whole-run rank beside the
// windowed one). κ charts (`bands`) shade the paper's three readings behind
// the lines: κ < 0.5 near-perfect tracking, 0.5–2 correct scale, > 2
// over-extrapolation (docs/MATH.md).

import { cssVar, el, fmt, fmtInt, lowerBound } from "./util.js";

export const CHARTS = [
  { metric: "kappa_onestep", title: "κ one-step (dashed: linear)", hint: "windowed path / energy, one-step predictor; dashed: the linear extrapolation predictor (kappa_linear)", also: "kappa_linear", bands: true },
  { metric: "kappa_ema", title: "κ EMA", hint: "windowed path / energy, EMA predictor", bands: true },
  { metric: "rank_90", title: "predictable rank (90 %, dashed: whole run)", hint: "rank_90: singular values holding 90 % of the window's increment energy; dashed: rank_90_run, the same over the whole run", also: "rank_90_run" },
  { metric: "rank_99", title: "predictable rank (99 %, dashed: whole run)", hint: "rank_99: singular values holding 99 % of the window's increment energy; dashed: rank_99_run, the same over the whole run", also: "rank_99_run" },
  { metric: "stable_rank", title: "stable rank", hint: "Σσ² / σ₁² of the increment window" },
  { metric: "grad_norm", title: "gradient norm", hint: "‖g‖ of the full gradient, as sent by the client" },
  { metric: "loss", title: "loss", hint: "as sent by the client" },
];

/** Every metric the charts draw (main and dashed companions). */
export const CHART_METRICS = CHARTS.flatMap((c) => (c.also ? [c.metric, c.also] : [c.metric]));

// κ readings shaded on κ charts: [from, to, CSS variable, fallback colour,
// name, what it means] (docs/MATH.md, "Reading κ: three bands").
export const KAPPA_BANDS = [
  [0, 0.5, "--band-good", "rgba(22,163,74,.07)", "near-perfect tracking", "κ < 0.5: the predictor removes more than half of the gradient's energy"],
  [0.5, 2, "--band-mid", "rgba(100,116,139,.05)", "correct scale", "0.5 ≤ κ ≤ 2: within a factor 2 of predicting nothing (κ = 1); healthy minibatch runs sit here, near or above 1"],
  [2, Infinity, "--band-high", "rgba(217,119,6,.08)", "over-extrapolation", "κ > 2: worse than the one-step predictor on pure noise (κ = 2): the predictor overshoots"],
];

/** A band's colour, four times as opaque: the shading is faint behind
 * lines, a swatch of it alone would not show. */
function swatch(rgba) {
  return rgba.replace(/([\d.]+)\)\s*$/, (m, a) => `${Math.min(1, 4 * parseFloat(a))})`);
}

/** The bands' key: one swatch per band, its meaning in the tooltip. */
function bandKey() {
  return el(
    "span.kappa-bands",
    { title: "shading: the three readings of κ (docs/MATH.md)" },
    ...KAPPA_BANDS.map(([lo, hi, css, fallback, name, hint]) =>
      el("span.band", { title: hint, dataset: { band: name } },
        el("i", { style: `background:${swatch(cssVar(css) || fallback)}` }),
        hi === Infinity ? `> ${lo} ${name}` : lo === 0 ? `< ${hi} ${name}` : `${lo}–${hi} ${name}`),
    ),
  );
}

const SYNC_KEY = "gw-run";
const HEIGHT = 190;

/**
 * Align tags' columns on the union of their steps.
 * stores: Map tag → {step: number[], cols: {metric: number[]}} (steps ascending).
 * Returns {x: number[], cols: {metric: (number|null)[][] per tag}}.
 */
export function align(stores, tags, metrics) {
  const lists = tags.map((t) => (stores.get(t) || { step: [] }).step);
  let x;
  if (lists.length === 1) {
    x = lists[0].slice();
  } else {
    // k-way merge of sorted arrays, duplicates collapsed.
    const all = [];
    for (const l of lists) for (let i = 0; i < l.length; i++) all.push(l[i]);
    all.sort((a, b) => a - b);
    x = [];
    for (let i = 0; i < all.length; i++) if (i === 0 || all[i] !== all[i - 1]) x.push(all[i]);
  }
  const cols = {};
  for (const m of metrics) cols[m] = [];
  tags.forEach((t, ti) => {
    const s = stores.get(t);
    const out = {};
    for (const m of metrics) out[m] = new Array(x.length).fill(null);
    if (s) {
      let j = 0;
      const st = s.step;
      for (let i = 0; i < st.length; i++) {
        while (x[j] < st[i]) j++;
        for (const m of metrics) {
          const v = s.cols[m] ? s.cols[m][i] : null;
          out[m][j] = v === undefined ? null : v;
        }
      }
    }
    for (const m of metrics) cols[m][ti] = out[m];
  });
  return { x, cols };
}

function stepTicks(u, splits) {
  return splits.map((v) => (v === null ? "" : Math.abs(v) >= 1e6 ? (v / 1e6).toPrecision(3) + "M" : Math.abs(v) >= 1e4 ? (v / 1e3).toPrecision(3) + "k" : fmtInt(v)));
}

/** Shade the κ readings behind a κ chart's lines (drawClear hook); the
 * chart's cell says which bands are in view (data-bands-drawn). */
function drawBands(u, cell) {
  const { left, top, width, height } = u.bbox;
  const y = u.scales.y;
  if (y.min === null || y.max === null || y.min === undefined) return;
  const ctx = u.ctx;
  const drawn = [];
  ctx.save();
  for (const [lo, hi, css, fallback, name] of KAPPA_BANDS) {
    const a = Math.max(lo, y.min);
    const b = Math.min(hi, y.max);
    if (!(b > a)) continue;
    const y0 = u.valToPos(b, "y", true);
    const y1 = u.valToPos(a, "y", true);
    ctx.fillStyle = cssVar(css) || fallback;
    ctx.fillRect(left, Math.max(top, y0), width, Math.min(top + height, y1) - Math.max(top, y0));
    drawn.push(name);
  }
  ctx.restore();
  if (cell) cell.dataset.bandsDrawn = drawn.join(",");
}

export class ChartGroup {
  constructor(root, { onZoom, onReset, onCursor }) {
    this.root = el("div.charts", { id: "charts" });
    root.append(this.root);
    this.onZoom = onZoom;
    this.onReset = onReset;
    this.onCursor = onCursor;
    this.plots = [];
    this.cells = [];
    this.tags = [];
    this.alerts = [];
    this.restarts = [];
    this.inSelect = false;
    this.lastCursor = undefined;
    this.ro = new ResizeObserver(() => this.resize());
    this.ro.observe(this.root);
  }

  /** (Re)create the charts for these tags (colors: tag → CSS colour). */
  build(tags, colors, data, view) {
    for (const p of this.plots) p.destroy();
    this.plots = [];
    this.root.textContent = "";
    this.cells = [];
    this.tags = tags.slice();
    const ink = cssVar("--muted") || "#666";
    const grid = cssVar("--grid") || "rgba(0,0,0,.08)";
    const font = "11px system-ui, sans-serif";
    // Past a dozen lines the legend, the cursor's dots and the focus search
    // cost more than they tell (each is per series, per chart, per mouse move).
    const few = tags.length <= 12;
    for (const c of CHARTS) {
      const holder = el("div.plot");
      const cell = el(
        "div.chart",
        { dataset: { metric: c.metric } },
        el("h3", { title: c.hint }, c.title, c.bands ? bandKey() : null),
        holder,
        el("div.nodata", null, `no ${c.title} in this range`),
      );
      this.root.append(cell);
      this.cells.push(cell);
      const opts = {
        width: Math.max(200, cell.clientWidth - 2),
        height: HEIGHT,
        pxAlign: 0,
        cursor: {
          y: false, // a horizontal line means nothing on the other, synced charts
          sync: { key: SYNC_KEY, setSeries: few },
          drag: { x: true, y: false, setScale: false },
          focus: { prox: few ? 12 : -1 },
          points: { show: few },
          bind: {
            dblclick: () => (e) => {
              if (e.button === 0) this.onReset();
              return null;
            },
          },
        },
        focus: { alpha: 0.3 },
        legend: { show: few, live: few },
        scales: { x: { time: false } },
        series: [
          { label: "step", value: (u, v) => (v === null || v === undefined ? "—" : fmtInt(v)) },
          ...tags.map((t) => ({
            label: t,
            stroke: colors(t),
            width: t === "all" ? 2 : 1.25,
            spanGaps: true,
            points: { show: false },
            value: (u, v) => fmt(v),
          })),
          ...(c.also ? tags.map((t) => ({
            label: `${t} · ${c.also}`,
            stroke: colors(t),
            width: 1,
            dash: [5, 3],
            spanGaps: true,
            points: { show: false },
            value: (u, v) => fmt(v),
          })) : []),
        ],
        axes: [
          { stroke: ink, font, size: 30, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 }, values: stepTicks, space: 60 },
          {
            stroke: ink,
            font,
            size: 52,
            grid: { stroke: grid, width: 1 },
            ticks: { stroke: grid, width: 1, size: 4 },
            values: (u, splits) => splits.map((v) => fmt(v, 3)),
          },
        ],
        hooks: {
          drawClear: c.bands ? [(u) => drawBands(u, cell)] : [],
          setSelect: [(u) => this.selected(u)],
          draw: [(u) => this.drawMarkers(u)],
          setCursor: [(u) => this.cursorMoved(u)],
        },
      };
      const u = new window.uPlot(opts, opts.series.map(() => []), holder);
      this.plots.push(u);
    }
    if (data) this.setData(data, view);
  }

  /** New aligned data (from align()); view {from, to} pins the x range. */
  setData(data, view) {
    this.data = data;
    this.view = view;
    this.plots.forEach((u, i) => {
      const c = CHARTS[i];
      const main = data.cols[c.metric] || [];
      const cols = c.also ? main.concat(data.cols[c.also] || main.map((col) => col.map(() => null))) : main;
      const any = cols.some((col) => col.some((v) => v !== null));
      this.cells[i].classList.toggle("empty", !any);
      // points of the dashed companion (whole-run rank, κ linear) in view
      if (c.also) this.cells[i].dataset.alsoPoints = String((data.cols[c.also] || []).reduce((n, col) => n + col.filter((v) => v !== null).length, 0));
      u.batch(() => {
        u.setData([data.x, ...cols], !view);
        if (view) u.setScale("x", { min: view.from, max: view.to });
      });
    });
    this.root.dataset.points = String(data.x.length);
    this.root.dataset.lastStep = data.x.length ? String(data.x[data.x.length - 1]) : "";
  }

  /** Alerts as [{step, severity, state}] (markers redrawn at once). */
  setAlerts(alerts) {
    this.alerts = alerts;
    this.root.dataset.alertMarkers = String(alerts.length);
    for (const u of this.plots) u.redraw(false, false);
  }

  /** Restart markers: [{step, reason, tag}] — a stream's window started afresh there. */
  setRestarts(restarts) {
    this.restarts = restarts;
    this.root.dataset.restartMarkers = String(restarts.length);
    for (const u of this.plots) u.redraw(false, false);
  }

  drawRestarts(u) {
    if (!this.restarts.length) return;
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    const min = u.scales.x.min;
    const max = u.scales.x.max;
    const dpr = window.devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.lineWidth = 1 * dpr;
    ctx.strokeStyle = cssVar("--accent") || "#2563eb";
    ctx.fillStyle = ctx.strokeStyle;
    ctx.setLineDash([2 * dpr, 3 * dpr]);
    for (const r of this.restarts) {
      if (r.step < min || r.step > max) continue;
      const x = Math.round(u.valToPos(r.step, "x", true)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.beginPath(); // a small square at the bottom: "the window restarted here"
      ctx.rect(x - 3 * dpr, top + height - 6 * dpr, 6 * dpr, 6 * dpr);
      ctx.fill();
    }
    ctx.restore();
  }

  drawMarkers(u) {
    this.drawRestarts(u);
    if (!this.alerts.length) return;
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    const min = u.scales.x.min;
    const max = u.scales.x.max;
    const dpr = window.devicePixelRatio || 1;
    const bad = cssVar("--bad") || "#c62828";
    const warn = cssVar("--warn") || "#b45309";
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.lineWidth = 1.5 * dpr;
    for (const a of this.alerts) {
      if (a.step < min || a.step > max) continue;
      const x = Math.round(u.valToPos(a.step, "x", true)) + 0.5;
      ctx.strokeStyle = a.severity === "critical" ? bad : warn;
      ctx.fillStyle = ctx.strokeStyle;
      ctx.setLineDash(a.state === "resolved" ? [4 * dpr, 3 * dpr] : []);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath(); // a small flag on top
      ctx.moveTo(x - 4 * dpr, top);
      ctx.lineTo(x + 4 * dpr, top);
      ctx.lineTo(x, top + 6 * dpr);
      ctx.fill();
    }
    ctx.restore();
  }

  selected(u) {
    const s = u.select;
    if (!s || s.width < 4) return;
    // Synced charts echo the selection after this one: clear theirs too.
    const clear = () => u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (this.inSelect) return void queueMicrotask(clear);
    this.inSelect = true;
    queueMicrotask(() => (this.inSelect = false));
    const a = u.posToVal(s.left, "x");
    const b = u.posToVal(s.left + s.width, "x");
    queueMicrotask(clear);
    const from = Math.max(0, Math.floor(Math.min(a, b)));
    const to = Math.ceil(Math.max(a, b));
    if (to > from) this.onZoom(from, to);
  }

  cursorMoved(u) {
    const i = u.cursor.idx;
    const step = i === null || i === undefined || u.cursor.left < 0 ? null : u.data[0][i];
    if (step === this.lastCursor) return;
    this.lastCursor = step;
    this.onCursor(step === undefined ? null : step);
  }

  /** Plot width in CSS pixels (for max_points). */
  plotWidth() {
    const u = this.plots[0];
    if (u && u.bbox.width) return Math.round(u.bbox.width / (window.devicePixelRatio || 1));
    return Math.max(200, (this.root.clientWidth || 800) / 2 - 60);
  }

  resize() {
    this.plots.forEach((u, i) => {
      const w = Math.max(200, this.cells[i].clientWidth - 2);
      if (Math.abs(w - u.width) > 1) u.setSize({ width: w, height: HEIGHT });
    });
  }

  /** Index into data.x of the last step ≤ step, or -1. */
  indexAt(step) {
    if (!this.data) return -1;
    return lowerBound(this.data.x, step + 1) - 1;
  }

  destroy() {
    this.ro.disconnect();
    for (const p of this.plots) p.destroy();
    this.plots = [];
  }
}
