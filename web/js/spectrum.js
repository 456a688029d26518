// spectrum.js — σ₁…σ₈ of one tag's increment window as a bar chart (canvas):
// the latest window, or the window at the step under the charts' cursor.
// A healthy low-rank regime shows a few large bars; a collapse to noise
// flattens them. Bars are labelled with σᵢ and each one's share of the top-8
// energy Σσᵢ² (the daemon reports the top 8 only).

import { cssVar, el, fmt, fmtInt } from "./util.js";

export const SIGMAS = ["sigma_1", "sigma_2", "sigma_3", "sigma_4", "sigma_5", "sigma_6", "sigma_7", "sigma_8"];
const SUB = ["₁", "₂", "₃", "₄", "₅", "₆", "₇", "₈"];

export class Spectrum {
  constructor(root, { onTag }) {
    this.select = el("select", { id: "spectrum-tag", "aria-label": "tag of the spectrum", onchange: () => onTag(this.select.value) });
    this.caption = el("span.muted", { id: "spectrum-step" });
    this.canvas = el("canvas", { id: "spectrum" });
    this.root = el(
      "div.chart.spectrum",
      null,
      el("h3", { title: "top singular values of the increment matrix of the latest window" }, "singular values σ₁…σ₈ ", this.select),
      this.canvas,
      this.caption,
    );
    root.append(this.root);
    this.point = null;
    this.ro = new ResizeObserver(() => this.draw());
    this.ro.observe(this.root);
  }

  setTags(tags, current) {
    this.select.textContent = "";
    for (const t of tags) this.select.append(el("option", { value: t, selected: t === current }, t));
  }

  /** point: {step, sigma_1..8} or null; where: "latest" or "cursor". */
  set(point, where) {
    this.point = point;
    this.where = where;
    this.draw();
  }

  draw() {
    const cv = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(200, this.root.clientWidth - 20);
    const height = 150;
    cv.style.width = width + "px";
    cv.style.height = height + "px";
    cv.width = Math.round(width * dpr);
    cv.height = Math.round(height * dpr);
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    const ink = cssVar("--muted") || "#666";
    const bar = cssVar("--accent") || "#2563eb";
    const p = this.point;
    const vals = p ? SIGMAS.map((k) => p[k]) : [];
    const ok = vals.filter((v) => v !== null && v !== undefined && Number.isFinite(v));
    cv.dataset.bars = String(ok.length);
    if (!ok.length) {
      ctx.fillStyle = ink;
      ctx.fillText("no spectrum yet (the window needs two messages)", 8, 20);
      this.caption.textContent = "";
      return;
    }
    const max = Math.max(...ok) || 1;
    const energy = ok.reduce((a, v) => a + v * v, 0) || 1;
    const top = 16;
    const bottom = 18;
    const slot = width / SIGMAS.length;
    const bw = Math.min(44, slot * 0.62);
    vals.forEach((v, i) => {
      const x = i * slot + (slot - bw) / 2;
      ctx.fillStyle = ink;
      ctx.textBaseline = "alphabetic";
      ctx.textAlign = "center";
      ctx.fillText("σ" + SUB[i], x + bw / 2, height - 4);
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      const h = ((height - top - bottom) * v) / max;
      ctx.fillStyle = bar;
      ctx.globalAlpha = 0.85;
      ctx.fillRect(x, height - bottom - h, bw, h);
      ctx.globalAlpha = 1;
      ctx.fillStyle = ink;
      ctx.fillText(fmt(v, 3), x + bw / 2, height - bottom - h - 14 < 0 ? top : height - bottom - h - 4);
      if (slot > 40 && h > 18) {
        ctx.fillStyle = "#fff";
        ctx.fillText(Math.round((100 * v * v) / energy) + "%", x + bw / 2, height - bottom - 5);
      }
    });
    ctx.textAlign = "start";
    this.caption.textContent =
      (this.where === "cursor" ? "at the cursor, step " : "latest window, step ") + fmtInt(p.step) +
      " · % = share of the top-8 energy Σσᵢ²";
  }

  destroy() {
    this.ro.disconnect();
  }
}
