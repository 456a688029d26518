"""Alert rules replayed offline, the baselines, and the scoring.

Rule mirrors the daemon's state machine (daemon/alerts.c step() with the
threshold and relative kinds of daemon/alert_kinds.c): INACTIVE -> PENDING
on a breach, FIRING after for_steps consecutive breaches, resolved when the
value no longer passes `resolve`; a relative rule compares value / median of
the last `window` values absorbed while INACTIVE (frozen while pending or
firing), gives no verdict before min_points values or while the median is
not > 0 and >= min_baseline; a NaN is no data. It is used for the
baselines (on the harness's own per-step loss and gradient norm) and for
tuning candidate rules on the daemon's stored series (tune.py); run.py
checks that replaying the shipped rules on the stored series reproduces the
daemon's own firings.

Baselines (the alerts people set up on loss curves today), with the shipped
rules' for_steps (4), window (128) and min_points (64), resolving at half the
threshold ratio:
  loss_spike       loss > 3x its trailing median
  loss_nan_stuck   loss NaN/Inf, or exactly unchanged from the previous step,
                   for 4 consecutive steps
  grad_norm_spike  gradient norm > 10x its trailing median
"""
import bisect
import math
from collections import deque

FOR_STEPS, WINDOW, MIN_POINTS = 4, 128, 64
DETECTORS = ["gradwatch", "loss_spike", "loss_nan_stuck", "grad_norm_spike"]
BASELINES = DETECTORS[1:]
CATCH_WITHIN = 200


def _holds(op, x, t):
    return {">": x > t, ">=": x >= t, "<": x < t, "<=": x <= t}[op]


class Rule:
    """One (rule, stream) state; observe(step, value) -> True when it fires."""

    def __init__(self, kind="relative", op=">", threshold=1.0, resolve=None,
                 for_steps=1, window=64, min_points=None, min_baseline=0.0, **_):
        self.kind, self.op, self.threshold = kind, op, float(threshold)
        self.resolve = float(threshold if resolve is None else resolve)
        self.for_steps = int(for_steps)
        self.window = int(window)
        self.min_points = int(min_points if min_points is not None else window)
        self.min_baseline = float(min_baseline)
        self.phase, self.breaches = 0, 0  # 0 inactive, 1 pending, 2 firing
        self.ring, self.sorted = deque(), []

    def _absorb(self, v):
        if len(self.ring) == self.window:
            old = self.ring.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self.ring.append(v)
        bisect.insort(self.sorted, v)

    def _median(self):
        s, n = self.sorted, len(self.sorted)
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

    def observe(self, v):
        if v is None or not math.isfinite(v):
            return False
        seen, x = False, None
        if self.kind == "threshold":
            seen, x = True, v
        elif not (self.phase == 0 and len(self.sorted) < self.min_points):
            base = self._median() if self.sorted else float("nan")
            if base > 0 and base >= self.min_baseline:
                seen, x = True, v / base
        fired = False
        if seen:
            breach = _holds(self.op, x, self.threshold)
            if self.phase == 0:
                if breach:
                    self.phase, self.breaches = 1, 1
            elif self.phase == 1:
                if breach:
                    self.breaches += 1
                else:
                    self.phase, self.breaches = 0, 0
            elif not _holds(self.op, x, self.resolve):
                self.phase = 0
            if self.phase == 1 and self.breaches >= self.for_steps:
                self.phase, fired = 2, True
        if self.phase == 0 and self.kind == "relative":
            self._absorb(v)
        return fired


def replay(rule_kw, steps, values):
    """Steps at which a rule fires on one series."""
    r = Rule(**rule_kw)
    return [s for s, v in zip(steps, values) if r.observe(v)]


BASELINE_RULES = {
    "loss_spike": dict(kind="relative", op=">", threshold=3.0, resolve=1.5,
                       for_steps=FOR_STEPS, window=WINDOW, min_points=MIN_POINTS),
    "grad_norm_spike": dict(kind="relative", op=">", threshold=10.0, resolve=5.0,
                            for_steps=FOR_STEPS, window=WINDOW, min_points=MIN_POINTS),
}


def nan_stuck_firings(loss):
    """loss_nan_stuck: FOR_STEPS consecutive steps with a non-finite loss or
    one exactly equal to the previous step's; resolves on a healthy step."""
    out, run, firing, prev = [], 0, False, None
    for step, v in enumerate(loss):
        bad = not math.isfinite(v) or (prev is not None and v == prev)
        prev = v
        if bad:
            run += 1
            if run >= FOR_STEPS and not firing:
                firing = True
                out.append(step)
        else:
            run, firing = 0, False
    return out


def baseline_firings(rec):
    """{baseline: [steps]} from a run's own log (step i is log entry i)."""
    steps = list(range(len(rec["loss"])))
    return {"loss_spike": replay(BASELINE_RULES["loss_spike"], steps, rec["loss"]),
            "grad_norm_spike": replay(BASELINE_RULES["grad_norm_spike"], steps,
                                      rec["grad_norm"]),
            "loss_nan_stuck": nan_stuck_firings(rec["loss"])}


# ---------------------------------------------------------------- scoring


def _median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def judge(rec, firings):
    """Per detector: first firing at or after the injection (delay), and the
    false alarms (firings before it; every firing of a healthy run).
    firings: {detector: [steps]}."""
    S = rec["spec"].get("inject")
    n = len(rec["loss"])
    out = {"healthy_steps": n if S is None else S, "detectors": {}}
    for det in DETECTORS:
        fs = sorted(firings.get(det, []))
        false = [f for f in fs if S is None or f < S]
        after = [f - S for f in fs if S is not None and f >= S]
        out["detectors"][det] = {"false": len(false), "false_steps": false,
                                 "delay": after[0] if after else None}
    return out


def table(judged, split=None):
    """Rows per (failure, family) and the false-alarm rates; judged is a list
    of (rec, judge(...)) pairs. split: 'tune', 'heldout' or None (both)."""
    sel = [(r, j) for r, j in judged if split is None or r["spec"]["split"] == split]
    rows = {}
    for r, j in sel:
        f = r["spec"].get("failure")
        if f is None:
            continue
        rows.setdefault((f, r["spec"]["family"]), []).append(j)
    out = []
    for (f, fam), js in sorted(rows.items()):
        row = {"failure": f, "family": fam, "runs": len(js)}
        for det in DETECTORS:
            d = [x["detectors"][det]["delay"] for x in js]
            hit = [x for x in d if x is not None]
            within = [x for x in hit if x <= CATCH_WITHIN]
            row[det] = {"detected": len(hit), "within_200": len(within),
                        "median_delay": _median(hit)}
        rel = []
        only = 0
        for x in js:
            g = x["detectors"]["gradwatch"]["delay"]
            bs = [x["detectors"][b]["delay"] for b in BASELINES]
            bs = [b for b in bs if b is not None]
            if g is not None and bs:
                rel.append(g - min(bs))
            bw = [b for b in bs if b <= CATCH_WITHIN]
            if g is not None and g <= CATCH_WITHIN and not bw:
                only += 1
        row["gradwatch_minus_first_baseline"] = _median(rel)
        row["gradwatch_only_within_200"] = only
        out.append(row)
    healthy = sum(j["healthy_steps"] for _, j in sel)
    fa = {}
    for det in DETECTORS:
        n = sum(j["detectors"][det]["false"] for _, j in sel)
        fa[det] = {"false_alarms": n, "per_10k_steps": 1e4 * n / healthy if healthy else None}
    n_healthy_runs = sum(1 for r, _ in sel if r["spec"].get("failure") is None)
    return {"rows": out, "false_alarms": fa, "healthy_steps": healthy,
            "healthy_runs": n_healthy_runs}


def targets(tab):
    """The issue's four targets, checked on a table (usually both splits)."""
    fails = sorted({r["failure"] for r in tab["rows"]})
    per_fail = {}
    for f in fails:
        fams = [r for r in tab["rows"] if r["failure"] == f]
        per_fail[f] = sum(1 for r in fams if r["gradwatch"]["detected"]
                          and r["gradwatch"]["detected"] * 2 >= r["runs"])
    only = {}
    for r in tab["rows"]:
        only[r["failure"]] = only.get(r["failure"], 0) + r["gradwatch_only_within_200"]
    not_slower = []
    for r in tab["rows"]:
        g = r["gradwatch"]["median_delay"]
        for b in BASELINES:
            bd = r[b]["median_delay"]
            if g is not None and bd is not None and g > bd:
                not_slower.append(f"{r['failure']}/{r['family']}: gradwatch {g} > {b} {bd}")
    caught_only = [f for f, n in only.items() if n > 0]
    return {
        "zero_false_alarms": tab["false_alarms"]["gradwatch"]["false_alarms"] == 0,
        "families_detected_per_failure": per_fail,
        "every_failure_in_2_of_3_families": all(v >= 2 for v in per_fail.values()),
        "failures_only_gradwatch_catches_within_200": caught_only,
        "at_least_2_failures_only_gradwatch": len(caught_only) >= 2,
        "slower_than_a_baseline": not_slower,
        "never_slower_where_both_catch": not not_slower,
    }


def markdown(tab, title):
    """The table as markdown: detected/runs (median delay) per detector."""
    def cell(c, runs):
        if not c["detected"]:
            return f"0/{runs}"
        return f"{c['detected']}/{runs} ({c['median_delay']:g})"
    lines = [f"**{title}** — detected/runs (median delay in steps after the injection); "
             f"Δ = gradwatch's delay minus the first baseline's, median over runs both "
             f"caught; only = runs gradwatch caught within {CATCH_WITHIN} steps and no "
             f"baseline did", "",
             "| failure | family | gradwatch | loss spike | loss NaN/stuck | grad-norm spike "
             "| Δ | only |", "|---|---|---|---|---|---|---|---|"]
    for r in tab["rows"]:
        rel = r["gradwatch_minus_first_baseline"]
        lines.append(f"| {r['failure']} | {r['family']} | "
                     + " | ".join(cell(r[d], r["runs"]) for d in DETECTORS)
                     + f" | {'—' if rel is None else f'{rel:+g}'} | "
                       f"{r['gradwatch_only_within_200']} |")
    fa = tab["false_alarms"]
    lines += ["", f"False alarms over {tab['healthy_steps']} healthy steps "
                  f"({tab['healthy_runs']} healthy runs plus the steps before each injection):",
              "", "| | " + " | ".join(DETECTORS) + " |", "|---" * (len(DETECTORS) + 1) + "|",
              "| alarms | " + " | ".join(str(fa[d]["false_alarms"]) for d in DETECTORS) + " |",
              "| per 10,000 steps | " + " | ".join(
                  "—" if fa[d]["per_10k_steps"] is None else f"{fa[d]['per_10k_steps']:.2f}"
                  for d in DETECTORS) + " |"]
    return "\n".join(lines)
