// runs.js — the runs list (#/): every run the daemon knows, refreshed every
// REFRESH_MS.
//
// Columns and where they come from:
//   status      last_seen (daemon clock) vs now: live < 15 s, stalled < 1 h,
//               idle after that (a finished run is not "stalled" forever)
//   last step   /api/v1/runs last_step
//   step rate   from the run's recent points: the wall_time column of
//               /api/v1/series over the last RATE_POINTS steps of its most
//               advanced stream (steps / wall seconds); live runs only
//   alerts      /api/v1/alerts?state=firing, counted per run
//   streams     /api/v1/runs streams
//   tags        /api/v1/runs tags (the run's metadata), as chips by the name
// The filter box takes words: "tag:T" keeps runs tagged T, "K=V" runs whose
// label K is V, any other word runs whose name, a tag or a "K=V" label
// contains it; every word must hold. #/?tag=T (a tag chip's link) fills it.
// A click (or Enter) opens the run page; the tick boxes pick runs for the
// compare page (#/compare?runs=…).

import { getJSON, HttpError, pool, qs, serverNow } from "./api.js";
import { ago, el, fmt, fmtInt, runState } from "./util.js";

const REFRESH_MS = 5000;
const RATE_POINTS = 200;
const RATE_RUNS_MAX = 50; // live runs whose rate is measured per refresh

export class RunsView {
  constructor(root, filter = "") {
    this.root = root;
    this.alive = true;
    this.rates = new Map(); // run → {rate, at_step}
    this.tagOf = new Map(); // run → the tag its rate is measured on
    this.filter = "";
    this.runs = [];
    this.firing = new Map();
    this.picked = new Set(); // runs ticked for the compare page
    this.compareBtn = el("button", { id: "compare-btn", type: "button", disabled: true, onclick: () => this.compare() }, "compare");

    this.filterInput = el("input.filter", {
      type: "search",
      placeholder: "filter: name, tag:T, key=value",
      "aria-label": "filter runs",
      oninput: () => {
        this.filter = this.filterInput.value.trim().toLowerCase();
        this.render();
      },
    });
    this.filterInput.value = filter;
    this.filter = filter.trim().toLowerCase();
    this.status = el("span.muted", { id: "runs-status" }, "loading…");
    this.body = el("tbody", { id: "runs-body" });
    this.stats = el("p.muted.stats", { id: "stats" });
    root.append(
      el(
        "section.panel",
        { id: "runs-view" },
        el("div.toolbar", null, el("h2", null, "Runs"), this.filterInput, this.compareBtn, el("span.spacer"), this.status),
        el(
          "table.runs",
          null,
          el(
            "thead",
            null,
            el(
              "tr",
              null,
              el("th", null, "status"),
              el("th", null, "run"),
              el("th.num", null, "last step"),
              el("th.num", { title: "steps per second over the recent points" }, "step rate"),
              el("th.num", null, "firing alerts"),
              el("th.num", null, "streams"),
              el("th", null, "last seen"),
              el("th", { title: "tick runs, then compare" }, "compare"),
            ),
          ),
          this.body,
        ),
      ),
      this.stats,
    );
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  destroy() {
    this.alive = false;
    clearInterval(this.timer);
  }

  async refresh() {
    try {
      const [runs, alerts] = await Promise.all([
        getJSON("/api/v1/runs"),
        getJSON("/api/v1/alerts?state=firing").catch(() => ({ alerts: [] })),
      ]);
      if (!this.alive) return;
      this.runs = runs.runs.slice().sort((a, b) => (b.last_seen || 0) - (a.last_seen || 0));
      this.firing = new Map();
      for (const a of alerts.alerts || []) if (a.run) this.firing.set(a.run, (this.firing.get(a.run) || 0) + 1);
      this.status.className = "muted";
      this.status.textContent = `${this.runs.length} run(s) · updated ${new Date().toLocaleTimeString()}`;
      this.render();
      this.measureRates();
      this.showStats();
    } catch (e) {
      if (!this.alive) return;
      this.status.className = "bad";
      this.status.textContent = "error: " + e.message;
    }
  }

  async showStats() {
    try {
      const s = await getJSON("/api/v1/stats");
      if (!this.alive) return;
      const rejected = Object.values(s.rejected || {}).reduce((a, b) => a + b, 0);
      this.stats.textContent =
        `daemon: ${fmtInt(s.received)} messages received · ${fmtInt(rejected)} rejected · ` +
        `${fmtInt(s.streams)} streams · ${fmtInt(s.db_rows)} stored points · ` +
        `dropped live ${fmtInt(s.dropped && s.dropped.live)}, store ${fmtInt(s.dropped && s.dropped.store)}` +
        (s.store && s.store.last_error ? ` · store error: ${s.store.last_error}` : "");
    } catch (e) {
      /* the runs table already says what is wrong */
    }
  }

  // Rates of live runs, RATE_RUNS_MAX at most, 4 requests in flight.
  async measureRates() {
    const now = serverNow();
    const live = this.runs.filter((r) => (r.state || runState(now - r.last_seen)) === "live").slice(0, RATE_RUNS_MAX);
    await pool(
      live.map((r) => async () => {
        try {
          let tag = this.tagOf.get(r.run);
          if (!tag) {
            const s = await getJSON(`/api/v1/runs/${encodeURIComponent(r.run)}/streams`);
            const best = s.streams.reduce((a, b) => (!a || b.last_step > a.last_step ? b : a), null);
            if (!best) return;
            tag = best.tag;
            this.tagOf.set(r.run, tag);
          }
          const from = Math.max(0, r.last_step - RATE_POINTS);
          const d = await getJSON("/api/v1/series?" + qs({ run: r.run, tag, metrics: "wall_time", from }));
          const n = d.step.length;
          if (n >= 2) {
            const dt = d.wall_time[n - 1] - d.wall_time[0];
            const ds = d.step[n - 1] - d.step[0];
            if (dt > 0) this.rates.set(r.run, { rate: ds / dt });
          }
        } catch (e) {
          if (e instanceof HttpError && e.status === 404) this.tagOf.delete(r.run);
        }
      }),
      4,
    );
    if (this.alive) this.render();
  }

  pick(run, on) {
    if (on) this.picked.add(run);
    else this.picked.delete(run);
    this.compareBtn.disabled = this.picked.size < 1;
    this.compareBtn.textContent = this.picked.size ? `compare ${this.picked.size}` : "compare";
  }

  compare() {
    const runs = this.runs.map((r) => r.run).filter((r) => this.picked.has(r));
    if (runs.length) window.location.hash = "#/compare?runs=" + runs.map(encodeURIComponent).join(",");
  }

  matches(r) {
    const tags = r.tags || [];
    const labels = Object.entries(r.labels || {});
    return this.filter.split(/\s+/).filter(Boolean).every((w) => {
      if (w.startsWith("tag:")) return tags.some((t) => t.toLowerCase() === w.slice(4));
      const eq = w.indexOf("=");
      if (eq > 0) return labels.some(([k, v]) => k.toLowerCase() === w.slice(0, eq) && v.toLowerCase() === w.slice(eq + 1));
      return r.run.toLowerCase().includes(w) || tags.some((t) => t.toLowerCase().includes(w)) ||
        labels.some(([k, v]) => `${k}=${v}`.toLowerCase().includes(w));
    });
  }

  render() {
    const now = serverNow();
    this.body.textContent = "";
    const shown = this.runs.filter((r) => !this.filter || this.matches(r));
    if (this.runs.length === 0) {
      this.body.append(
        el(
          "tr.empty",
          null,
          el(
            "td",
            { colSpan: 8 },
            "No runs yet. Publish one: ",
            el("code", null, "gradwatch publish --synthetic --run demo --tags 8"),
            " or gradwatch.Publisher in Python.",
          ),
        ),
      );
      return;
    }
    for (const r of shown) {
      const since = r.last_seen ? now - r.last_seen : null;
      // the daemon's word (live | stalled | finished) when it gives one
      const state = r.state || runState(since);
      const rate = this.rates.get(r.run);
      const firing = this.firing.get(r.run) || 0;
      const open = () => {
        window.location.hash = "#/run/" + encodeURIComponent(r.run);
      };
      const tr = el(
        "tr.run",
        { tabIndex: 0, dataset: { run: r.run, state }, onclick: open, onkeydown: (e) => e.key === "Enter" && open() },
        el("td", null, el(`span.state.${state}`, null, state)),
        el(
          "td.name",
          null,
          el("a", { href: "#/run/" + encodeURIComponent(r.run) }, r.run),
          (r.tags || []).map((t) => el("span.chip.tag", { title: "tag" }, t)),
          Object.entries(r.labels || {}).slice(0, 4).map(([k, v]) => el("span.chip.label", { title: "label" }, `${k}=${v}`)),
        ),
        el("td.num", null, fmtInt(r.last_step)),
        el("td.num", null, state === "live" && rate ? fmt(rate.rate, 3) + " /s" : "—"),
        el("td.num", null, firing ? el("span.chip.bad", null, String(firing)) : "0"),
        el("td.num", null, fmtInt(r.streams)),
        el("td", { title: r.last_seen ? new Date(r.last_seen * 1000).toLocaleString() : "" }, ago(since)),
        el(
          "td",
          { onclick: (e) => e.stopPropagation() },
          el("input.pick", {
            type: "checkbox",
            "aria-label": "compare " + r.run,
            checked: this.picked.has(r.run),
            onchange: (e) => this.pick(r.run, e.target.checked),
            onkeydown: (e) => e.stopPropagation(),
          }),
        ),
      );
      this.body.append(tr);
    }
  }
}
