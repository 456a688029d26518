// run.js — the run page (#/run/NAME?tags=a,b&from=S&to=S: the URL keeps the
// selection and the zoom): synchronized charts of the selected
// tags, the tag filter, the layer heatmap, the σ spectrum and the alerts,
// kept live by the event feed.
//
// NOTES ON THE DESIGN OF THE PAGE
//
// Data held (all bounded):
//   series  tag → columns of the chart metrics, selected tags only: what
//           /api/v1/series returned for the view (max_points ≈ plot width,
//           min/max-preserving), plus live points appended after it
//   heat    tag → the heatmap metric, every tag, same rules
//   ring    tag → the last RING live points: the store flushes about once a
//           second, so a fetch can miss the newest points the feed already
//           delivered; they are merged back after every full-range fetch
//   alerts  id → the run's alerts (fetched, then kept current by the feed)
// A store that live points grow past COMPACT × max_points is refetched
// (downsampled again), so a run that goes on for days stays light.
//
// View: null ("follow": x spans all data, new points extend it) or
// {from, to} after a zoom (x pinned; the server is asked for that range).
//
// Live path: feed event → queue → one requestAnimationFrame flush appends
// everything queued, then redraws charts (at most every few frames when a
// redraw is costly), the heatmap (at most twice a second) and the spectrum.
// `resync` (the daemon dropped events for us, or the feed reconnected)
// refetches everything; so does coming back to a hidden tab, which gets no
// animation frames and so drops points instead of queueing them. Fetches carry a generation number: an answer that
// a newer request overtook is dropped.

import { getJSON, HttpError, LiveFeed, pool, qs, serverNow } from "./api.js";
import { align, CHART_METRICS, ChartGroup } from "./charts.js";
import { Heatmap } from "./heatmap.js";
import { SIGMAS, Spectrum } from "./spectrum.js";
import { TagList } from "./taglist.js";
import { ago, debounce, el, fmt, fmtInt, onThemeChange, runState, tagColor } from "./util.js";

const DEFAULT_TAGS = 5; // `all` plus the first four others
const RING = 2048;
const COMPACT = 4;
const HEAT_POINTS = 1200; // 2 per column of a ≤ 600-column heatmap
const HEAT_MS = 500;
const HEAT_METRICS = { kappa_ema: "κ EMA", kappa_onestep: "κ one-step" };

const collator = new Intl.Collator(undefined, { numeric: true });
const byName = (a, b) => (a === "all" ? -1 : b === "all" ? 1 : collator.compare(a, b));

export class RunView {
  constructor(root, run, query = "") {
    this.run = run;
    // State from the URL (#/run/NAME?tags=a,b&from=S&to=S), written back on
    // every selection or zoom change (history.replaceState: no reload).
    const q = new URLSearchParams(query);
    const from = q.get("from"), to = q.get("to");
    this.urlTags = (q.get("tags") || "").split(",").filter(Boolean);
    this.urlView = /^\d+$/.test(from || "") && /^\d+$/.test(to || "") && +to > +from ? { from: +from, to: +to } : null;
    this.alive = true;
    this.tags = [];
    this.tagIndex = new Map();
    this.streamLast = new Map();
    this.selected = [];
    this.view = null;
    this.series = new Map();
    this.seriesView = undefined; // the view `series` was fetched for
    this.heat = new Map();
    this.heatMetric = "kappa_ema";
    this.ring = new Map();
    this.latest = new Map();
    this.alerts = new Map();
    this.restarts = []; // {step, tag, reason, incarnation}: windows that started afresh
    this.queue = [];
    this.raf = 0;
    this.gen = { series: 0, heat: 0, spectrum: 0 };
    this.lastSeen = null;
    this.lastStep = null;
    this.cursorStep = null;
    this.nextChartAt = 0;
    this.chartTimer = 0;
    this.heatTimer = 0;
    this.lastHeat = 0;
    this.colors = (t) => tagColor(t, this.tagIndex.has(t) ? this.tagIndex.get(t) : 0);
    this.layout(root);

    this.resync = debounce(() => this.reloadAll(), 300);
    this.waitingForRun = false;
    this.initTries = 0;
    this.retryInit = debounce(() => { // the store writes a new run within ~1 s
      this.waitingForRun = false;
      this.init();
    }, 700);
    this.compact = debounce(() => this.loadSeries(), 1000);
    this.compactHeat = debounce(() => this.loadHeat(), 1000);
    this.cursorSpectrum = debounce((s) => this.loadSpectrum(s), 120);
    this.unTheme = onThemeChange(() => this.retheme());
    this.clock = setInterval(() => this.renderBar(), 2000);
    this.missed = false; // points skipped while the tab was hidden
    this.onVisible = () => {
      if (!document.hidden && this.missed) {
        this.missed = false;
        this.queue = [];
        this.resync();
      }
    };
    document.addEventListener("visibilitychange", this.onVisible);
    this.feed = new LiveFeed("/api/v1/events?" + qs({ run }), {
      onEvent: (t, d) => this.onEvent(t, d),
      onState: (s, d) => this.onFeedState(s, d),
    });
    this.init();
  }

  // ---- layout ---------------------------------------------------------------

  layout(root) {
    this.stateChip = el("span.state", { id: "run-state" }, "…");
    this.lastEl = el("span", { id: "run-last" });
    this.liveEl = el("span.conn", { id: "live-state", dataset: { state: "connecting" } }, "feed: connecting…");
    this.rangeEl = el("span.muted", { id: "range" }, "all steps, following live");
    this.resetBtn = el("button", { id: "reset-zoom", disabled: true, onclick: () => this.zoom(null) }, "reset zoom");
    this.msg = el("span.bad", { id: "run-msg" });
    this.heatSel = el(
      "select",
      { id: "heat-metric", "aria-label": "heatmap metric", onchange: () => { this.heatMetric = this.heatSel.value; this.loadHeat(); } },
      Object.entries(HEAT_METRICS).map(([k, v]) => el("option", { value: k, selected: k === this.heatMetric }, v)),
    );
    this.orderSel = el(
      "select",
      { id: "heat-order", "aria-label": "heatmap row order", onchange: () => this.heatmap.setOrder(this.orderSel.value) },
      el("option", { value: "name" }, "rows by name"),
      el("option", { value: "onset" }, "rows by onset"),
    );
    this.alertList = el("div.alerts", { id: "alerts" });
    const tagBox = el("section.panel.tags", null, el("h2", null, "Tags"));
    this.metaBody = el("div.meta-body", null, el("span.muted", null, "loading…"));
    const metaBox = el("section.panel.meta", { id: "run-meta" }, el("h2", null, "Run info"), this.metaBody);
    const chartBox = el("div.chartbox");
    const heatBox = el(
      "section.panel.heatbox",
      null,
      el("div.toolbar", null, el("h2", null, "Layer heatmap"), el("span.muted", null, "tags × steps, colour ="), this.heatSel, this.orderSel, el("span.spacer"), el("span.muted", null, "click a row to chart it")),
    );
    this.rootEl = el(
      "section",
      { id: "run-view", dataset: { run: this.run } },
      el("div.runbar", null, this.stateChip, this.lastEl, this.liveEl, el("span.spacer"), this.msg, this.rangeEl, this.resetBtn),
      el(
        "div.run-grid",
        null,
        el("aside.side", null, metaBox, tagBox, el("section.panel", null, el("h2", null, "Alerts"), this.alertList)),
        el("div.mainc", null, chartBox, heatBox),
      ),
    );
    root.append(this.rootEl);
    this.tagList = new TagList(tagBox, { onChange: (sel) => this.selectionChanged(sel) });
    this.charts = new ChartGroup(chartBox, {
      onZoom: (from, to) => this.zoom({ from, to }),
      onReset: () => this.zoom(null),
      onCursor: (step) => this.cursorMoved(step),
    });
    this.spectrum = new Spectrum(chartBox, { onTag: (t) => { this.spectrumTag = t; this.loadSpectrum(this.cursorStep); } });
    this.heatmap = new Heatmap(heatBox, {
      onClickTag: (t) => {
        if (!this.selected.includes(t)) this.tagList.select(t, true);
        this.spectrumTag = t;
        this.spectrum.setTags(this.selected.includes(t) ? this.selected : [...this.selected, t], t);
        this.loadSpectrum(this.cursorStep);
      },
    });
  }

  // ---- loading ---------------------------------------------------------------

  async init() {
    try {
      await this.loadStreams();
    } catch (e) {
      this.fail(e);
      return;
    }
    if (!this.alive) return;
    const others = this.tags.filter((t) => t !== "all");
    const fromUrl = this.urlTags.filter((t) => this.tags.includes(t));
    this.selected = fromUrl.length ? fromUrl : this.tags.includes("all")
      ? ["all", ...others.slice(0, DEFAULT_TAGS - 1)]
      : others.slice(0, DEFAULT_TAGS);
    if (this.urlView) this.setViewText(this.urlView);
    this.spectrumTag = this.selected[0];
    this.tagList.setTags(this.tags, this.selected, this.colors);
    this.buildCharts();
    await Promise.all([this.loadSeries(), this.loadHeat(), this.loadAlerts(), this.loadRestarts(), this.loadSpectrum(null), this.loadMeta()]);
    if (this.alive) this.rootEl.dataset.ready = "1";
  }

  fail(e) {
    if (!this.alive) return;
    // An unknown run may be one about to start: its first points (from the
    // feed) start the page over.
    this.waitingForRun = e instanceof HttpError && e.status === 404;
    this.msg.textContent = this.waitingForRun
      ? `no run named “${this.run}” yet: waiting for its first points`
      : "error: " + e.message;
    // Points came but the store had not written the run yet: try again.
    if (this.waitingForRun && this.latest.size && this.initTries++ < 20) this.retryInit();
  }

  async loadStreams() {
    const d = await getJSON(`/api/v1/runs/${encodeURIComponent(this.run)}/streams`);
    if (!this.alive) return;
    for (const s of d.streams) {
      this.streamLast.set(s.tag, s.last_step);
      if (s.last_seen && (!this.lastSeen || s.last_seen > this.lastSeen)) this.lastSeen = s.last_seen;
      if (this.lastStep === null || s.last_step > this.lastStep) this.lastStep = s.last_step;
    }
    this.setTags(d.streams.map((s) => s.tag));
    this.renderBar();
  }

  /** The run's tag list (sorted; colours follow the sorted index). */
  setTags(tags) {
    const all = new Set([...this.tags, ...tags]);
    const sorted = [...all].sort(byName);
    const changed = sorted.length !== this.tags.length;
    this.tags = sorted;
    this.tagIndex = new Map(sorted.map((t, i) => [t, i]));
    return changed;
  }

  maxPoints() {
    return Math.max(64, Math.min(4000, Math.round(this.charts.plotWidth())));
  }

  seriesUrl(tag, metrics, extra) {
    return "/api/v1/series?" + qs({ run: this.run, tag, metrics: metrics.join(","), ...extra });
  }

  /** Chart data of the selected tags (only the missing ones if onlyMissing). */
  async loadSeries(onlyMissing = false) {
    const gen = ++this.gen.series;
    const view = this.view;
    if (this.seriesView !== view) onlyMissing = false; // stores of another range
    const mp = this.maxPoints();
    const tags = this.selected.filter((t) => !onlyMissing || !this.series.has(t));
    const res = await pool(
      tags.map((tag) => () =>
        getJSON(this.seriesUrl(tag, CHART_METRICS, { from: view && view.from, to: view && view.to, max_points: mp })).catch((e) => {
          if (!(e instanceof HttpError && e.status === 404)) this.msg.textContent = "error: " + e.message;
          return null;
        }),
      ),
      6,
    );
    if (!this.alive || gen !== this.gen.series) return;
    const next = new Map();
    if (onlyMissing) for (const t of this.selected) if (this.series.has(t)) next.set(t, this.series.get(t));
    tags.forEach((tag, i) => {
      const d = res[i];
      const s = { step: d ? d.step : [], cols: {} };
      for (const m of CHART_METRICS) s.cols[m] = d ? d[m] : [];
      if (!view) this.mergeRing(tag, s, (p, m) => p[m]);
      next.set(tag, s);
    });
    this.series = next;
    this.seriesView = view;
    this.msg.textContent = "";
    this.redrawCharts(true);
  }

  /** Append the ring's points newer than the store's last step. */
  mergeRing(tag, s, get) {
    const ring = this.ring.get(tag);
    if (!ring) return;
    const last = s.step.length ? s.step[s.step.length - 1] : -1;
    for (const p of ring) {
      if (p.step <= last) continue;
      s.step.push(p.step);
      if (s.cols) for (const m of Object.keys(s.cols)) s.cols[m].push(get(p, m));
      else s.v.push(get(p));
    }
  }

  async loadHeat() {
    const gen = ++this.gen.heat;
    const view = this.view;
    const metric = this.heatMetric;
    const tags = this.tags.slice();
    const res = await pool(
      tags.map((tag) => () =>
        getJSON(this.seriesUrl(tag, [metric], { from: view && view.from, to: view && view.to, max_points: HEAT_POINTS })).catch(() => null),
      ),
      6,
    );
    if (!this.alive || gen !== this.gen.heat) return;
    const next = new Map();
    tags.forEach((tag, i) => {
      const d = res[i];
      const h = { step: d ? d.step : [], v: d ? d[metric] : [] };
      if (!view) this.mergeRing(tag, h, (p) => p[metric]);
      next.set(tag, h);
    });
    this.heat = next;
    this.redrawHeat(true);
  }

  // The run's metadata (GET /api/v1/runs/{run} "meta"): tags, labels, the
  // config flattened to dotted keys, and what the client said about itself.
  async loadMeta() {
    let d;
    try {
      d = await getJSON(`/api/v1/runs/${encodeURIComponent(this.run)}`);
    } catch (e) {
      return;
    }
    if (!this.alive) return;
    const m = d.meta;
    this.metaBody.textContent = "";
    if (!m) {
      this.metaBody.append(el("span.muted", null, "no metadata sent for this run"));
      this.metaBody.dataset.loaded = "1";
      return;
    }
    const flat = (o, pre = "", out = []) => {
      for (const [k, v] of Object.entries(o || {})) {
        if (v && typeof v === "object" && !Array.isArray(v)) flat(v, pre + k + ".", out);
        else out.push([pre + k, Array.isArray(v) ? JSON.stringify(v) : String(v)]);
      }
      return out;
    };
    const table = (id, title, rows) =>
      rows.length
        ? el("div", null, el("h3", null, title), el("table.kv", { id }, el("tbody", null, rows.map(([k, v]) => el("tr", null, el("th", null, k), el("td", null, v))))))
        : null;
    const parts = [
      (m.tags || []).length ? el("div.meta-tags", { id: "meta-tags" }, m.tags.map((t) => el("a.chip.tag", { href: "#/?tag=" + encodeURIComponent(t), title: "runs tagged " + t }, t))) : null,
      table("meta-labels", "Labels", Object.entries(m.labels || {})),
      table("meta-config", "Config", flat(m.config)),
      table("meta-client", "Client", flat(m.client)),
    ].filter(Boolean);
    if (!parts.length) parts.push(el("span.muted", null, "empty metadata"));
    this.metaBody.append(...parts);
    this.metaBody.dataset.loaded = "1";
  }

  async loadAlerts() {
    try {
      const d = await getJSON("/api/v1/alerts?state=all&limit=1000");
      if (!this.alive) return;
      this.alerts = new Map();
      for (const a of d.alerts) if (a.run === this.run) this.alerts.set(a.id, a);
      this.renderAlerts();
    } catch (e) {
      /* the bar shows fetch errors of the charts; alerts are secondary */
    }
  }

  /** Restart events of the run (new incarnations, resumed or restarted streams). */
  async loadRestarts() {
    try {
      const d = await getJSON(`/api/v1/restarts?run=${encodeURIComponent(this.run)}&limit=1000`);
      if (!this.alive) return;
      this.restarts = d.restarts;
      this.charts.setRestarts(this.restartMarkers());
    } catch (e) {
      /* secondary, like the alerts */
    }
  }

  /** One marker per step (a restart usually hits every tag of a run at once). */
  restartMarkers() {
    const seen = new Map();
    for (const r of this.restarts) if (!seen.has(r.step)) seen.set(r.step, { step: r.step, reason: r.reason, tag: r.tag });
    return [...seen.values()];
  }

  /** σ of spectrumTag at step (the last point ≤ step), or the latest when step is null. */
  async loadSpectrum(step) {
    const tag = this.spectrumTag;
    if (!tag) return;
    if (step === null && this.latest.has(tag)) {
      this.spectrum.set(this.latest.get(tag), "latest");
      return;
    }
    const gen = ++this.gen.spectrum;
    const last = this.streamLast.get(tag);
    const extra = step === null ? { from: last !== undefined ? last : 0 } : { from: Math.max(0, step - 256), to: step };
    try {
      const d = await getJSON(this.seriesUrl(tag, SIGMAS, extra));
      if (!this.alive || gen !== this.gen.spectrum) return;
      const n = d.step.length;
      if (!n) return this.spectrum.set(null, "latest");
      const p = { step: d.step[n - 1] };
      for (const k of SIGMAS) p[k] = d[k][n - 1];
      if (step === null && this.latest.has(tag)) return this.spectrum.set(this.latest.get(tag), "latest");
      this.spectrum.set(p, step === null ? "latest" : "cursor");
    } catch (e) {
      if (gen === this.gen.spectrum) this.spectrum.set(null, "latest");
    }
  }

  async reloadAll() {
    if (!this.alive) return;
    try {
      await this.loadStreams();
    } catch (e) {
      this.fail(e);
      return;
    }
    this.tagList.addTags(this.tags);
    await Promise.all([this.loadSeries(), this.loadHeat(), this.loadAlerts(), this.loadRestarts(), this.loadSpectrum(this.cursorStep)]);
  }

  /** The token changed: start over. */
  refresh() {
    this.feed.kick();
    this.reloadAll();
  }

  // ---- user actions ----------------------------------------------------------------

  buildCharts() {
    const data = align(this.series, this.selected, CHART_METRICS);
    this.charts.build(this.selected, this.colors, data, this.view);
    this.charts.root.append(this.spectrum.root);
    this.spectrum.setTags(this.selected.includes(this.spectrumTag) || !this.spectrumTag ? this.selected : [...this.selected, this.spectrumTag], this.spectrumTag);
    this.charts.setAlerts(this.alertMarkers());
    this.rootEl.dataset.series = this.selected.join(",");
  }

  /** The page's state into the URL (tags, zoom), without a reload. */
  writeUrl() {
    const q = new URLSearchParams();
    q.set("tags", this.selected.join(","));
    if (this.view) q.set("from", this.view.from), q.set("to", this.view.to);
    const h = "#/run/" + encodeURIComponent(this.run) + "?" + q.toString().replace(/%2C/g, ",");
    if (this.alive && window.location.hash !== h) history.replaceState(null, "", h);
  }

  setViewText(view) {
    this.view = view;
    this.resetBtn.disabled = !view;
    this.rangeEl.textContent = view ? `steps ${fmtInt(view.from)}–${fmtInt(view.to)}` : "all steps, following live";
    this.rootEl.dataset.view = view ? `${view.from}-${view.to}` : "";
  }

  selectionChanged(sel) {
    this.selected = sel;
    this.writeUrl();
    if (!sel.includes(this.spectrumTag)) this.spectrumTag = sel[0] || this.spectrumTag;
    this.buildCharts();
    this.loadSeries(true);
    this.loadSpectrum(this.cursorStep);
  }

  zoom(view) {
    this.setViewText(view);
    this.writeUrl();
    if (view) this.charts.setData(this.charts.data || align(this.series, this.selected, CHART_METRICS), view);
    this.loadSeries();
    this.loadHeat();
  }

  cursorMoved(step) {
    this.cursorStep = step;
    if (step === null) {
      this.cursorSpectrum.cancel();
      this.loadSpectrum(null);
    } else {
      this.cursorSpectrum(step);
    }
  }

  retheme() {
    this.buildCharts();
    this.tagList.recolor(this.colors);
    this.heatmap.draw();
    this.spectrum.draw();
  }

  // ---- live --------------------------------------------------------------------

  onFeedState(state, detail) {
    const text = {
      connecting: "feed: connecting…",
      open: "feed: streaming",
      waiting: "feed: reconnecting…",
      refused: "feed refused: set the token",
      closed: "feed: closed",
    }[state];
    this.liveEl.textContent = text || state;
    this.liveEl.dataset.state = state;
    this.liveEl.title = detail || "";
  }

  onEvent(type, d) {
    if (!this.alive) return;
    if (type === "point") {
      if (d.run !== this.run) return;
      if (document.hidden) { // no frames come: don't pile up, refetch on return
        this.missed = true;
        return;
      }
      this.queue.push(d);
      if (!this.raf) this.raf = requestAnimationFrame(() => this.flush());
    } else if (type === "alert") {
      if (d.run && d.run !== this.run) return;
      this.alerts.set(d.id, d);
      this.renderAlerts();
    } else if (type === "restart") {
      if (d.run !== this.run) return;
      this.restarts.push(d);
      this.charts.setRestarts(this.restartMarkers());
      // points of the old incarnation past this step are superseded: refetch
      if (!this.restartTimer) this.restartTimer = setTimeout(() => { this.restartTimer = 0; this.resync(); }, 500);
    } else if (type === "resync") {
      this.resync();
    }
  }

  flush() {
    this.raf = 0;
    if (!this.alive) return;
    const q = this.queue;
    this.queue = [];
    let charts = false;
    let heat = false;
    let spectrum = false;
    const fresh = [];
    const mp = this.maxPoints();
    for (const p of q) {
      let ring = this.ring.get(p.tag);
      if (!ring) this.ring.set(p.tag, (ring = []));
      ring.push(p);
      if (ring.length > 2 * RING) ring.splice(0, ring.length - RING);
      if (!this.tagIndex.has(p.tag)) fresh.push(p.tag);
      if (this.lastStep === null || p.step > this.lastStep) this.lastStep = p.step;
      this.streamLast.set(p.tag, Math.max(p.step, this.streamLast.get(p.tag) || 0));
      this.latest.set(p.tag, p);
      const s = this.series.get(p.tag);
      if (s && (!s.step.length || p.step > s.step[s.step.length - 1])) {
        s.step.push(p.step);
        for (const m of CHART_METRICS) s.cols[m].push(p[m] === undefined ? null : p[m]);
        charts = true;
        if (!this.view && s.step.length > COMPACT * mp) this.compact();
      }
      let h = this.heat.get(p.tag);
      if (!h && fresh.includes(p.tag)) this.heat.set(p.tag, (h = { step: [], v: [] }));
      if (h && (!h.step.length || p.step > h.step[h.step.length - 1])) {
        h.step.push(p.step);
        h.v.push(p[this.heatMetric] === undefined ? null : p[this.heatMetric]);
        heat = true;
        if (!this.view && h.step.length > COMPACT * HEAT_POINTS) this.compactHeat();
      }
      if (p.tag === this.spectrumTag) spectrum = true;
    }
    if (q.length) this.lastSeen = serverNow();
    if (q.length && this.waitingForRun) this.retryInit();
    if (fresh.length && this.setTags(fresh)) this.tagList.addTags(this.tags);
    if (charts) this.redrawCharts(false);
    if (heat || fresh.length) this.redrawHeat(false);
    if (spectrum && this.cursorStep === null) this.spectrum.set(this.latest.get(this.spectrumTag), "latest");
    this.renderBar();
  }

  /** Charts from the stores; throttled to ~10 × its own cost unless forced. */
  redrawCharts(force) {
    const now = performance.now();
    if (!force && now < this.nextChartAt) {
      if (!this.chartTimer) this.chartTimer = setTimeout(() => { this.chartTimer = 0; this.redrawCharts(true); }, this.nextChartAt - now);
      return;
    }
    const t0 = performance.now();
    this.charts.setData(align(this.series, this.selected, CHART_METRICS), this.view);
    const cost = performance.now() - t0;
    this.nextChartAt = performance.now() + (cost > 4 ? 10 * cost : 0);
    this.rootEl.dataset.lastStep = this.charts.root.dataset.lastStep;
  }

  redrawHeat(force) {
    const now = performance.now();
    if (!force && now - this.lastHeat < HEAT_MS) {
      if (!this.heatTimer) this.heatTimer = setTimeout(() => { this.heatTimer = 0; this.redrawHeat(true); }, HEAT_MS);
      return;
    }
    this.lastHeat = now;
    let range = null;
    if (this.view) {
      range = [this.view.from, this.view.to];
    } else {
      let lo = Infinity;
      let hi = -Infinity;
      for (const h of this.heat.values()) {
        if (!h.step.length) continue;
        lo = Math.min(lo, h.step[0]);
        hi = Math.max(hi, h.step[h.step.length - 1]);
      }
      if (lo <= hi) range = [lo, hi];
    }
    this.heatmap.setData(this.tags, this.heat, range, HEAT_METRICS[this.heatMetric]);
  }

  // ---- bar and alerts --------------------------------------------------------------

  renderBar() {
    if (!this.alive) return;
    const since = this.lastSeen ? serverNow() - this.lastSeen : null;
    const state = runState(since);
    this.stateChip.className = "state " + state;
    this.stateChip.textContent = state;
    this.lastEl.textContent = `last step ${fmtInt(this.lastStep)} · seen ${ago(since)} · ${this.tags.length} tag(s)`;
  }

  alertMarkers() {
    const out = [];
    for (const a of this.alerts.values()) {
      const fired = a.annotations && Number(a.annotations.step);
      out.push({ step: Number.isFinite(fired) && fired > 0 ? fired : a.started_step, severity: a.severity, state: a.state });
    }
    return out;
  }

  renderAlerts() {
    const list = [...this.alerts.values()].sort(
      (a, b) => (a.state === "firing" ? 0 : 1) - (b.state === "firing" ? 0 : 1) || (b.fired_at || 0) - (a.fired_at || 0),
    );
    this.alertList.textContent = "";
    this.alertList.dataset.count = String(list.length);
    if (!list.length) this.alertList.append(el("p.muted", null, "No alerts for this run."));
    for (const a of list.slice(0, 200)) {
      const fired = a.annotations && Number(a.annotations.step);
      const step = Number.isFinite(fired) && fired > 0 ? fired : a.started_step;
      const summary = a.annotations && a.annotations.summary;
      this.alertList.append(
        el(
          `div.alert.${a.state}`,
          {
            dataset: { id: String(a.id), state: a.state },
            title: "click to zoom the charts around this alert",
            onclick: () => this.zoom({ from: Math.max(0, a.started_step - 200), to: step + 200 }),
          },
          el("div", null, el(`span.chip.${a.severity === "critical" ? "bad" : "warn"}`, null, a.severity || "alert"), " ", el("strong", null, a.rule || "?"), " ", el("span.muted", null, a.tag || "")),
          el("div.muted", null, `${a.state} · step ${fmtInt(a.started_step)}${step !== a.started_step ? " → " + fmtInt(step) : ""} · value ${fmt(a.value)} (threshold ${fmt(a.threshold)})`),
          summary ? el("div.summary", null, summary) : null,
        ),
      );
    }
    this.charts.setAlerts(this.alertMarkers());
  }

  destroy() {
    this.alive = false;
    clearTimeout(this.restartTimer);
    this.feed.close();
    clearInterval(this.clock);
    clearTimeout(this.chartTimer);
    clearTimeout(this.heatTimer);
    if (this.raf) cancelAnimationFrame(this.raf);
    this.resync.cancel();
    this.retryInit.cancel();
    this.compact.cancel();
    this.compactHeat.cancel();
    this.cursorSpectrum.cancel();
    this.unTheme();
    document.removeEventListener("visibilitychange", this.onVisible);
    this.charts.destroy();
    this.heatmap.destroy();
    this.spectrum.destroy();
  }
}
