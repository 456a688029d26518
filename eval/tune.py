#!/usr/bin/python3
"""Tune alert rules on the stored series of an evaluation (run.py's OUT).

    /usr/bin/python3 eval/tune.py OUT margins [--split tune]
    /usr/bin/python3 eval/tune.py OUT replay RULES.ini [--split tune] [--exact]
    /usr/bin/python3 eval/tune.py OUT first

margins: for every metric of stream `all` (and grad_norm / kappa_onestep of
the per-layer streams), the most extreme ratio to the trailing 128-point
median held for 4 consecutive points: over the healthy runs (after the first
64 points) and within 200 steps of each injection, per failure. A rule
`relative, threshold T, for_steps 4` separates them where the healthy
extreme is on the safe side of T and the failure's is past it.

replay: the rules of RULES.ini (with the shipped ones it does not replace)
replayed exactly (score.Rule, the daemon's state machine) over the stored
series, scored like run.py does: detections, delays and false alarms per
failure × family — the numbers with which candidates were compared. Only the
split given is read (default: the tuning split), so the held-out runs stay
out of the choice; --exact replays only RULES.ini (eval/previous_defaults.ini
is the rule set shipped before this evaluation).

first: which of the daemon's rules fired first in each failure run.
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as runmod  # noqa: E402
import score  # noqa: E402

W, FOR, MINP = 128, 4, 64


def sustained_ratio(v, up):
    """r_t = v_t / median(v_{t-W..t-1}) (no verdict before MINP values), then
    the FOR-point running min (up) or max (down): a rule with threshold T
    fires at the first t where that passes T (the baseline absorbs freely
    until then, as in the daemon before the first breach)."""
    n = len(v)
    r = np.full(n, np.nan)
    for t in range(MINP, n):
        w = v[max(0, t - W):t]
        w = w[np.isfinite(w)]
        if len(w) >= MINP:
            m = np.median(w)
            if m > 0:
                r[t] = v[t] / m
    out = np.full(n, np.nan)
    for t in range(n - FOR + 1):
        seg = r[t:t + FOR]
        if np.all(np.isfinite(seg)):
            out[t + FOR - 1] = seg.min() if up else seg.max()
    return out


def load(out, split):
    res = json.load(open(os.path.join(out, "results.json")))
    runs = [r for r in res["runs"] if split == "all" or r["spec"]["split"] == split]
    for r in runs:
        r["series"] = dict(np.load(os.path.join(out, "series", r["spec"]["run"] + ".npz")))
    return runs


def margins(runs):
    metrics = [("all", m) for m in runmod.SERIES_ALL] + [("*", m) for m in runmod.SERIES_LAYER]
    for tag, m in metrics:
        for up in (True, False):
            healthy, fail = [], {}
            for r in runs:
                ser, sp = r["series"], r["spec"]
                tags = ["all"] if tag == "all" else [k.split("|")[0] for k in ser
                                                     if k.endswith("|step") and
                                                     not k.startswith("all|")]
                S = sp["inject"]
                ext_h, ext_f = [], []
                for tg in tags:
                    if f"{tg}|{m}" not in ser:
                        continue
                    steps, v = ser[f"{tg}|step"], ser[f"{tg}|{m}"]
                    sr = sustained_ratio(v, up)
                    pre = sr[steps < S] if S is not None else sr
                    post = sr[(steps >= S) & (steps <= S + 200)] if S is not None else []
                    if np.isfinite(pre).any():
                        ext_h.append(np.nanmax(pre) if up else np.nanmin(pre))
                    if len(post) and np.isfinite(post).any():
                        ext_f.append(np.nanmax(post) if up else np.nanmin(post))
                if ext_h:
                    healthy.append(max(ext_h) if up else min(ext_h))
                if S is not None and ext_f:
                    fail.setdefault(sp["failure"], []).append(
                        (sp["family"][0], max(ext_f) if up else min(ext_f)))
            if not healthy:
                continue
            h = max(healthy) if up else min(healthy)
            print(f"{tag}/{m} {'up' if up else 'down'}: healthy extreme {h:.3g}")
            for f, xs in sorted(fail.items()):
                past = sum(1 for _, x in xs if (x > h if up else x < h))
                print(f"    {f:9s} past it {past}/{len(xs)}: "
                      + " ".join(f"{fam}{x:.2g}" for fam, x in xs))


def replay(runs, rules):
    judged = []
    for r in runs:
        fires = runmod.replay_rules(rules, r["series"])
        rec = {"spec": r["spec"], "loss": [0.0] * r["spec"]["steps"]}
        if "baseline_firings" in r:
            fir = {b: r["baseline_firings"][b] for b in score.BASELINES}
        else:  # a preliminary run without the harness's logs: the daemon's stored
            # loss and gradient norm of stream all (steps with a NaN gradient are missing)
            ser = r["series"]
            log = {"loss": [np.nan] * r["spec"]["steps"], "grad_norm": [np.nan] * r["spec"]["steps"]}
            for m in ("loss", "grad_norm"):
                for st, v in zip(ser["all|step"], ser[f"all|{m}"]):
                    log[m][int(st)] = v
            log["loss"] = [v for v in log["loss"]]
            fir = score.baseline_firings(log)
        fir["gradwatch"] = [s for _, _, s in fires]
        j = score.judge(rec, fir)
        judged.append((rec, j))
        if fires and (r["spec"]["inject"] is None or min(s for *_, s in fires) < r["spec"]["inject"]):
            print("false alarm:", r["spec"]["run"], sorted(fires)[:6])
    tab = score.table(judged)
    print(score.markdown(tab, "replay"))
    print(json.dumps(score.targets(tab), indent=1))


def first_rules(out):
    """Which rule fired first (from the daemon's own firings) per failure × family."""
    res = json.load(open(os.path.join(out, "results.json")))
    tally = {}
    for r in res["runs"]:
        sp = r["spec"]
        if sp["failure"] is None:
            continue
        fs = sorted((s, rule) for rule, _, s in r["gradwatch_firings"] if s >= sp["inject"])
        key = (sp["failure"], sp["family"])
        first = fs[0][1] if fs else "-"
        tally.setdefault(key, {}).setdefault(first, 0)
        tally[key][first] += 1
    for (f, fam), t in sorted(tally.items()):
        print(f"{f:9s} {fam:9s} " + ", ".join(f"{k} {v}" for k, v in sorted(t.items())))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("what", choices=["margins", "replay", "first"])
    p.add_argument("rules", nargs="?")
    p.add_argument("--split", default="tune", choices=["tune", "heldout", "all"])
    p.add_argument("--exact", action="store_true",
                   help="replay only the rules of RULES.ini, not the shipped ones beside them")
    a = p.parse_args()
    if a.what == "first":
        return first_rules(a.out)
    runs = load(a.out, a.split)
    if a.what == "margins":
        margins(runs)
    else:
        rules = {} if a.exact else runmod.default_rules()
        if a.rules:
            rules.update(runmod.parse_rules(open(a.rules).read()))
        replay(runs, rules)


if __name__ == "__main__":
    main()
