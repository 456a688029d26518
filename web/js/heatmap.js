// heatmap.js — the layer heatmap: one row per tag, one column per step
// bucket, colour = κ (κ_ema or κ_onestep, chosen on the run page), drawn on
// a canvas so hundreds of layers cost one bitmap, not thousands of nodes.
//
// A cell holds the largest value of its bucket (a collapse is a rise; the
// maximum keeps a short one visible). Colours run along a viridis-like ramp
// between the 2nd and 98th percentiles of all cells, on a log scale when
// those span more than 20×, since κ moves over decades (0.005 healthy and
// noise-free, ~2 for pure noise). Rows can be ordered by name or by onset.
//
// Onset (the answer to "which layer lost predictability first"): a row's
// baseline is the median of its first quarter of cells (at least 4); its
// onset is the first later cell that starts ONSET_RUN cells in a row above
// ONSET_FACTOR × baseline. A heuristic for the eye, stated on the page; the
// alerts (kappa_collapse) are the daemon's authoritative call.

import { cssVar, el, fmt, fmtInt } from "./util.js";

const ONSET_FACTOR = 2;
const ONSET_RUN = 3;
const LABEL_W = 160;
const AXIS_H = 18;
const MAX_H = 420;

// viridis, 9 stops (matplotlib's, sampled)
const RAMP = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

function ramp(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  const a = RAMP[i];
  const b = RAMP[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}

function median(a) {
  const s = a.slice().sort((x, y) => x - y);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

/** Bucket one row: cells[c] = max of values whose step falls in column c. */
export function binRow(series, x0, x1, ncols) {
  const cells = new Float64Array(ncols).fill(NaN);
  if (!series) return cells;
  const span = x1 - x0 + 1;
  const { step, v } = series;
  for (let i = 0; i < step.length; i++) {
    const val = v[i];
    if (val === null || val === undefined || !Number.isFinite(val)) continue;
    if (step[i] < x0 || step[i] > x1) continue;
    // Multiply first: (s − x0)·ncols is an exact integer, so a column per
    // step (ncols = span) maps one to one, with no float-rounded collisions.
    const c = Math.min(ncols - 1, Math.floor(((step[i] - x0) * ncols) / span));
    if (!(cells[c] >= val)) cells[c] = val;
  }
  return cells;
}

/** Onset column of a binned row (see the file comment), or -1. */
export function onsetOf(cells) {
  const idx = [];
  for (let c = 0; c < cells.length; c++) if (!Number.isNaN(cells[c])) idx.push(c);
  const nb = Math.max(4, Math.floor(idx.length / 4));
  if (idx.length < nb + ONSET_RUN) return -1;
  const base = median(idx.slice(0, nb).map((c) => cells[c]));
  if (!(base > 0)) return -1;
  for (let k = nb; k + ONSET_RUN <= idx.length; k++) {
    let ok = true;
    for (let r = 0; r < ONSET_RUN && ok; r++) ok = cells[idx[k + r]] > ONSET_FACTOR * base;
    if (ok) return idx[k];
  }
  return -1;
}

export class Heatmap {
  constructor(root, { onClickTag }) {
    this.onClickTag = onClickTag;
    this.canvas = el("canvas", { id: "heatmap", "aria-label": "layer heatmap" });
    this.scroller = el("div.heat-scroll", null, this.canvas);
    this.tip = el("div.tip", { hidden: true });
    this.bar = el("canvas.colorbar", { width: 160, height: 10 });
    this.lo = el("span.muted");
    this.hi = el("span.muted");
    this.info = el("p.heat-info.muted", { id: "heat-info" });
    this.root = el("div.heat", null, this.scroller, this.tip, el("div.heat-legend", null, this.lo, this.bar, this.hi), this.info);
    root.append(this.root);
    this.tags = [];
    this.rows = [];
    this.order = "name";
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => (this.tip.hidden = true));
    this.canvas.addEventListener("click", (e) => {
      const h = this.hit(e);
      if (h) this.onClickTag(h.tag);
    });
    this.ro = new ResizeObserver(() => this.draw());
    this.ro.observe(this.scroller);
  }

  /**
   * tags: display order by name; series: Map tag → {step, v}; range [x0, x1];
   * label: the metric's name for the tooltip.
   */
  setData(tags, series, range, label) {
    this.tags = tags;
    this.series = series;
    this.range = range;
    this.label = label;
    this.draw();
  }

  setOrder(order) {
    this.order = order;
    this.draw();
  }

  draw() {
    const cv = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(300, this.scroller.clientWidth - 2);
    const n = this.tags.length;
    const rowH = n ? Math.max(3, Math.min(18, Math.floor((MAX_H - AXIS_H) / n))) : 18;
    const height = Math.max(40, n * rowH + AXIS_H);
    cv.style.width = width + "px";
    cv.style.height = height + "px";
    cv.width = Math.round(width * dpr);
    cv.height = Math.round(height * dpr);
    cv.dataset.rows = String(n);
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const ink = cssVar("--muted") || "#666";
    const empty = cssVar("--heat-empty") || "#eee";
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    if (!n || !this.range) {
      ctx.fillStyle = ink;
      ctx.fillText("no data", 8, 16);
      return;
    }
    const [x0, x1] = this.range;
    const plotW = width - LABEL_W;
    // At most 2 px per column, and no more columns than steps (else empty stripes).
    const ncols = Math.max(1, Math.min(600, Math.floor(plotW / 2), x1 - x0 + 1));
    const cellW = plotW / ncols;

    // Bin, scale, order.
    const rows = this.tags.map((tag) => {
      const cells = binRow(this.series.get(tag), x0, x1, ncols);
      return { tag, cells, onset: onsetOf(cells) };
    });
    const vals = [];
    for (const r of rows) for (const v of r.cells) if (Number.isFinite(v)) vals.push(v);
    vals.sort((a, b) => a - b);
    let lo = quantile(vals, 0.02);
    let hi = quantile(vals, 0.98);
    if (!(hi > lo)) hi = lo + (Math.abs(lo) || 1) * 1e-6;
    const log = lo > 0 && hi / lo > 20;
    const t = log ? (v) => Math.log(v / lo) / Math.log(hi / lo) : (v) => (v - lo) / (hi - lo);
    if (this.order === "onset") {
      rows.sort((a, b) => {
        const ao = a.onset < 0 ? Infinity : a.onset;
        const bo = b.onset < 0 ? Infinity : b.onset;
        return ao - bo || (a.tag === "all" ? -1 : b.tag === "all" ? 1 : 0);
      });
    }
    this.rows = rows;
    this.geom = { rowH, plotW, ncols, cellW, x0, x1 };

    // Cells: one pixel each in an offscreen bitmap, scaled up unsmoothed.
    const img = new ImageData(ncols, rows.length);
    const emptyRGB = parseRGB(empty);
    for (let r = 0; r < rows.length; r++) {
      const cells = rows[r].cells;
      for (let c = 0; c < ncols; c++) {
        const v = cells[c];
        const [R, G, B] = Number.isNaN(v) ? emptyRGB : ramp(t(v));
        const o = (r * ncols + c) * 4;
        img.data[o] = R;
        img.data[o + 1] = G;
        img.data[o + 2] = B;
        img.data[o + 3] = 255;
      }
    }
    const off = document.createElement("canvas");
    off.width = ncols;
    off.height = rows.length;
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, LABEL_W, 0, plotW, rows.length * rowH);
    const bg = cssVar("--panel") || "#fff";
    for (let r = 0; r < rows.length; r++) {
      const y = r * rowH;
      if (rowH > 6) { // a hairline between rows
        ctx.fillStyle = bg;
        ctx.fillRect(LABEL_W, y + rowH - 1, plotW, 1);
      }
      if (rowH >= 9) {
        ctx.fillStyle = ink;
        ctx.textBaseline = "middle";
        ctx.fillText(fit(ctx, rows[r].tag, LABEL_W - 10), 4, y + rowH / 2);
      }
      if (rows[r].onset >= 0) { // onset tick: a white bar with dark edges
        const x = LABEL_W + rows[r].onset * cellW;
        ctx.fillStyle = "#000";
        ctx.fillRect(x - 1, y, 3, rowH);
        ctx.fillStyle = "#fff";
        ctx.fillRect(x, y, 1, rowH);
      }
    }
    // Step axis.
    const ay = rows.length * rowH;
    ctx.fillStyle = ink;
    ctx.textBaseline = "top";
    for (let k = 0; k <= 4; k++) {
      const s = x0 + ((x1 - x0) * k) / 4;
      const label = fmtInt(Math.round(s));
      const w = ctx.measureText(label).width;
      const x = LABEL_W + (plotW * k) / 4;
      ctx.fillRect(x, ay, 1, 4);
      ctx.fillText(label, Math.min(width - w - 2, Math.max(LABEL_W, x - w / 2)), ay + 5);
    }
    ctx.fillText("step", 4, ay + 5);

    this.drawLegend(lo, hi, log);
    const first = rows.filter((r) => r.onset >= 0).sort((a, b) => a.onset - b.onset);
    this.info.textContent = "";
    const stepOf = (c) => x0 + Math.ceil((c * (x1 - x0 + 1)) / ncols); // first step of column c
    cv.dataset.firstOnset = first.length ? first[0].tag : "";
    if (first.length) {
      this.info.append(
        "First departure: ",
        el("strong", null, first[0].tag),
        ` near step ${fmtInt(stepOf(first[0].onset))}`,
        first.length > 1 ? `, then ${first.slice(1, 4).map((r) => `${r.tag} (${fmtInt(stepOf(r.onset))})`).join(", ")}` : "",
        ` — ${this.label} above ${ONSET_FACTOR}× its early median for ${ONSET_RUN} buckets (white ticks).`,
      );
    } else {
      this.info.append(`No layer's ${this.label} left ${ONSET_FACTOR}× its early median in this range.`);
    }
  }

  drawLegend(lo, hi, log) {
    const b = this.bar;
    const ctx = b.getContext("2d");
    for (let x = 0; x < b.width; x++) {
      const [R, G, B] = ramp(x / (b.width - 1));
      ctx.fillStyle = `rgb(${R | 0},${G | 0},${B | 0})`;
      ctx.fillRect(x, 0, 1, b.height);
    }
    this.lo.textContent = fmt(lo, 3);
    this.hi.textContent = fmt(hi, 3) + (log ? " (log)" : "");
  }

  hit(e) {
    if (!this.geom || !this.rows.length) return null;
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left;
    const y = e.clientY - r.top;
    const { rowH, ncols, cellW, x0, x1 } = this.geom;
    const row = Math.floor(y / rowH);
    if (row < 0 || row >= this.rows.length) return null;
    const c = Math.floor((x - LABEL_W) / cellW);
    const span = x1 - x0 + 1;
    return {
      tag: this.rows[row].tag,
      col: c,
      value: c >= 0 && c < ncols ? this.rows[row].cells[c] : NaN,
      from: x0 + Math.ceil((c * span) / ncols),
      to: x0 + Math.ceil(((c + 1) * span) / ncols) - 1,
      x,
      y,
    };
  }

  hover(e) {
    const h = this.hit(e);
    if (!h) {
      this.tip.hidden = true;
      return;
    }
    this.tip.textContent =
      h.col < 0
        ? h.tag
        : `${h.tag} · steps ${fmtInt(h.from)}–${fmtInt(h.to)} · ${this.label} ${Number.isNaN(h.value) ? "—" : fmt(h.value)}`;
    this.tip.hidden = false;
    this.tip.style.left = Math.min(h.x + 12, this.scroller.clientWidth - 260) + "px";
    this.tip.style.top = h.y + 12 - this.scroller.scrollTop + "px";
  }

  destroy() {
    this.ro.disconnect();
  }
}

/** [r, g, b] of a CSS colour (#rgb, #rrggbb or rgb()); grey if unknown. */
function parseRGB(c) {
  let m = /^#([0-9a-f]{3})$/i.exec(c);
  if (m) return [...m[1]].map((h) => parseInt(h + h, 16));
  m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(c);
  if (m) return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
  m = /rgba?\((\d+)[ ,]+(\d+)[ ,]+(\d+)/.exec(c);
  if (m) return [Number(m[1]), Number(m[2]), Number(m[3])];
  return [128, 128, 128];
}

/** text cut with an ellipsis to fit w pixels (keeps the end: layer names differ there). */
function fit(ctx, text, w) {
  if (ctx.measureText(text).width <= w) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const m = (lo + hi) >>> 1;
    if (ctx.measureText("…" + text.slice(m)).width <= w) hi = m;
    else lo = m + 1;
  }
  return "…" + text.slice(lo);
}
