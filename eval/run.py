#!/usr/bin/python3
"""gradwatch's failure-zoo evaluation: are the shipped alert rules worth a page?

    nice /usr/bin/python3 eval/run.py [--quick] [--out DIR] [--build DIR] [--jobs 2]

Starts a real gradwatchd (BUILD/daemon/gradwatchd, default build/) with its
shipped alert rules and a webhook pointing at a receiver in this process,
trains every planned run (tasks.py: vision, language, control; healthy runs
and runs with one failure injected at a seeded random step), two at a time,
each streaming its gradients through gradwatch.torch.watch, and records
every alert the daemon fires (the webhook's `step` annotation is the point
that fired it). The baselines are computed from each run's own log of loss
and gradient norm (score.py). Writes to OUT (default eval/out):

  results.json   the plan, every run's firings and delays, the tables, the
                 targets, and the replay check
  results.md     the tables in markdown
  series/*.npz   the daemon's stored points of every run (for tune.py)
  gradwatchd.log the daemon's log

Splits: runs with seeds below 100 are the tuning split, 100 and above the
held-out split. The plan depends only on --quick: same seeds, same
injection steps, every time.
"""
import argparse
import configparser
import json
import math
import multiprocessing
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import score  # noqa: E402

FAILURES = ["lr10", "lr100", "lr1000", "stuck", "labels", "frozen", "blowup", "optreset",
            "slowdiv"]
LR = {"vision": {"sgd": 0.05, "adam": 1e-3}, "language": {"sgd": 0.3, "adam": 3e-3},
      "control": {"sgd": 0.02, "adam": 1e-3}}
BATCHES = {"vision": [32, 64, 128], "language": [16, 32, 64], "control": [32, 64, 256]}
STEPS = 700
INJECT = (200, 400)  # the injection step is drawn uniformly from this range
SERIES_ALL = ["rank_90", "rank_99", "kappa_onestep", "kappa_ema", "kappa_linear", "kappa_best",
              "stable_rank", "tail_energy_1", "tail_kappa_90", "grad_norm", "sketch_norm",
              "loss"]
SERIES_LAYER = ["rank_90", "kappa_onestep", "kappa_ema", "grad_norm"]


def _spec(family, model, opt, batch, seed, failure=None, steps=STEPS, inject=None):
    run = f"{family}-{model or 'x'}-{opt}-b{batch}-s{seed}-{failure or 'healthy'}"
    return {"run": run, "family": family, "model": model, "opt": opt, "lr": LR[family][opt],
            "batch": batch, "seed": seed, "steps": steps, "failure": failure,
            "inject": inject, "split": "tune" if seed < 100 else "heldout"}


def plan(quick):
    """The runs, in a fixed order (seeded, so every invocation is the same)."""
    rng = np.random.default_rng(2026)
    if quick:
        return [_spec("vision", "mlp", "sgd", 64, 1, steps=400),
                _spec("control", None, "adam", 64, 2, steps=400),
                _spec("vision", "mlp", "adam", 64, 3, "lr1000", steps=400, inject=250),
                _spec("control", None, "sgd", 64, 4, "stuck", steps=400, inject=250)]
    specs = []
    for split, base in (("tune", 1), ("heldout", 101)):
        seed = base
        for fam in score_families():
            for oi, opt in enumerate(("sgd", "adam")):
                for bi, batch in enumerate(BATCHES[fam]):
                    model = (("mlp", "cnn")[(bi + oi) % 2]) if fam == "vision" else None
                    specs.append(_spec(fam, model, opt, batch, seed))
                    seed += 1
        for f in FAILURES:
            for fam in score_families():
                for oi, opt in enumerate(("sgd", "adam")):
                    if f == "optreset":
                        opt = "adam"
                    batch = BATCHES[fam][1]
                    model = ("mlp", "cnn")[oi] if fam == "vision" else None
                    inject = int(rng.integers(INJECT[0], INJECT[1] + 1))
                    specs.append(_spec(fam, model, opt, batch, seed, f, inject=inject))
                    seed += 1
    return specs


def score_families():
    return ["vision", "language", "control"]


# ------------------------------------------------------------ the daemon


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Receiver:
    """Webhook receiver: every firing notification as (rule, run, tag, step)."""

    def __init__(self):
        self.firings, self.count = [], 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer.lock:
                    outer.count += 1
                    for al in body.get("alerts", []):
                        if al.get("status") != "firing":
                            continue
                        lab, ann = al["labels"], al["annotations"]
                        outer.firings.append({"rule": lab["alertname"], "run": lab["run"],
                                              "tag": lab["tag"], "step": int(ann["step"]),
                                              "value": ann.get("value")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Daemon:
    def __init__(self, binary, out, hook, rules_file=None):
        self.zmq, self.http = free_port(), free_port()
        conf = os.path.join(out, "gradwatchd.ini")
        text = f"[alerts]\nwebhook = {hook}\nwebhook_queue = 65536\n"
        if rules_file:
            with open(rules_file) as f:
                text += f.read()
        with open(conf, "w") as f:
            f.write(text)
        db = os.path.join(out, "gw.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        self.log = open(os.path.join(out, "gradwatchd.log"), "wb")
        self.proc = subprocess.Popen(
            [binary, "--zmq", self.endpoint, "--http", f"127.0.0.1:{self.http}", "--db", db,
             "--config", conf, "--log-level", "warn"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gradwatchd exited {self.proc.returncode}; see {out}/gradwatchd.log")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gradwatchd not ready after 60 s")

    @property
    def endpoint(self):
        return f"tcp://127.0.0.1:{self.zmq}"

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=60) as r:
            return r.status, r.read()

    def json(self, path):
        return json.loads(self.get(path)[1])

    def drain(self, sent, timeout=300):
        """Wait until the daemon has taken every message sent and computed
        its points (a stream's first message makes no point)."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            st = self.json("/api/v1/stats")
            state = (st["received"], st["points"], st["queue_depth"])
            # run-metadata messages are received too, but are not sketches
            taken = st["received"] - st.get("meta_accepted", 0)
            if taken >= sent and st["queue_depth"] == 0 and state == last:
                return st
            last = state
            time.sleep(0.5)
        return st

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self.log.close()
        return rc


# ------------------------------------------------------------- the runs


def _work(args):
    spec, endpoint = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import tasks
    return tasks.run_one(spec, endpoint)


def fetch_series(d, rec, path):
    """The daemon's stored points of a run: stream all with SERIES_ALL, the
    per-layer streams with SERIES_LAYER, as one npz."""
    arrays = {}
    run = rec["spec"]["run"]
    for tag in rec["tags"]:
        ms = SERIES_ALL if tag == "all" else SERIES_LAYER
        q = urllib.parse.urlencode({"run": run, "tag": tag, "metrics": ",".join(ms)})
        js = d.json(f"/api/v1/series?{q}")
        arrays[f"{tag}|step"] = np.array(js["step"], dtype=np.int64)
        for m in ms:
            arrays[f"{tag}|{m}"] = np.array([np.nan if v is None else v for v in js[m]],
                                            dtype=np.float64)
    arrays["log|loss"] = np.array(rec["loss"], dtype=np.float64)
    arrays["log|grad_norm"] = np.array(rec["grad_norm"], dtype=np.float64)
    np.savez_compressed(path, **arrays)


def default_rules(path=os.path.join(ROOT, "daemon", "alert_rules.c")):
    """The shipped rules, from the C string literal GW_ALERTS_DEFAULT_RULES."""
    src = open(path).read()
    body = src.split("GW_ALERTS_DEFAULT_RULES[] =", 1)[1].split(";\n", 1)[0]
    text = "".join(bytes(s, "ascii").decode("unicode_escape")
                   for s in re.findall(r'"((?:[^"\\]|\\.)*)"', body))
    return parse_rules(text)


def parse_rules(text):
    """[alert NAME] sections -> {name: {key: value}} (the replayable keys)."""
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    cp.read_string(text)
    rules = {}
    for sec in cp.sections():
        if not sec.startswith("alert "):
            continue
        kv = dict(cp[sec])
        r = {"kind": kv.get("kind", "threshold"), "tag": kv.get("tag", "*")}
        for k in ("metric", "op"):
            if k in kv:
                r[k] = kv[k]
        for k in ("threshold", "resolve", "min_baseline", "seconds"):
            if k in kv:
                r[k] = float(kv[k])
        for k in ("for_steps", "window", "min_points"):
            if k in kv:
                r[k] = int(kv[k])
        r.setdefault("op", ">")
        rules[sec[6:]] = r
    return rules


def replay_rules(rules, series):
    """Firings [(rule, tag, step)] of the replayable rules on a run's stored series."""
    import fnmatch
    tags = sorted({k.split("|")[0] for k in series if not k.startswith("log|")})
    out = []
    for name, r in rules.items():
        if r["kind"] not in ("threshold", "relative"):
            continue
        for tag in tags:
            if not fnmatch.fnmatchcase(tag, r["tag"]) or f"{tag}|{r['metric']}" not in series:
                continue
            kw = {k: v for k, v in r.items() if k not in ("tag", "metric")}
            for s in score.replay(kw, series[f"{tag}|step"].tolist(),
                                  series[f"{tag}|{r['metric']}"].tolist()):
                out.append((name, tag, int(s)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 short runs (about a minute)")
    p.add_argument("--out", default=os.path.join(HERE, "out"))
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--daemon", default=None, help="the gradwatchd binary (default "
                   "BUILD/daemon/gradwatchd)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (2)")
    p.add_argument("--rules", default=None,
                   help="an INI file of [alert NAME] sections added to the daemon's config "
                        "(a rule of a shipped name replaces it); for trying candidates live")
    p.add_argument("--only", default=None, help="regex: run only the planned runs it matches")
    a = p.parse_args(argv)
    binary = a.daemon or os.path.join(a.build, "daemon", "gradwatchd")
    if not os.access(binary, os.X_OK):
        p.error(f"{binary} not found: build it (cmake --build build --target gradwatchd) "
                f"or pass --build")
    os.makedirs(os.path.join(a.out, "series"), exist_ok=True)
    specs = plan(a.quick)
    if a.only:
        specs = [s for s in specs if re.search(a.only, s["run"])]
    t0 = time.monotonic()
    recv = Receiver()
    d = Daemon(binary, a.out, recv.url, a.rules)
    records = []
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(a.jobs) as pool:
            for i, rec in enumerate(pool.imap_unordered(_work, [(s, d.endpoint) for s in specs])):
                records.append(rec)
                sp = rec["spec"]
                print(f"[{i + 1}/{len(specs)}] {sp['run']} inject={sp['inject']} "
                      f"loss {rec['loss'][0]:.3g}->{rec['loss'][-1]:.3g} "
                      f"sent={rec['sent']} dropped={rec['dropped']} {rec['seconds']:.1f}s",
                      flush=True)
        st = d.drain(sum(r["sent"] for r in records))
        # notifications are queued behind the points: wait until none arrive for 2 s
        last, quiet = -1, time.time()
        while time.time() - quiet < 2.0:
            if recv.count != last:
                last, quiet = recv.count, time.time()
            time.sleep(0.2)
        for rec in records:
            fetch_series(d, rec, os.path.join(a.out, "series", rec["spec"]["run"] + ".npz"))
    finally:
        rc = d.stop()
        recv.close()
    records.sort(key=lambda r: specs.index(r["spec"]))
    shipped = default_rules()
    if a.rules:
        shipped.update(parse_rules(open(a.rules).read()))
    judged, mismatches, per_run = [], [], []
    for rec in records:
        run = rec["spec"]["run"]
        gw = [f for f in recv.firings if f["run"] == run and f["rule"] != "stream_stalled"]
        fir = score.baseline_firings(rec)
        fir["gradwatch"] = [f["step"] for f in gw]
        j = score.judge(rec, fir)
        judged.append((rec, j))
        ser = dict(np.load(os.path.join(a.out, "series", run + ".npz")))
        replayed = sorted(replay_rules(shipped, ser))
        live = sorted((f["rule"], f["tag"], f["step"]) for f in gw)
        if replayed != live:
            mismatches.append({"run": run, "daemon": live, "replay": replayed})
        per_run.append({"spec": rec["spec"], "frozen_layer": rec["frozen_layer"],
                        "sent": rec["sent"], "dropped": rec["dropped"],
                        "nonfinite_stream_steps": rec["nonfinite"],
                        "final_loss": rec["loss"][-1] if math.isfinite(rec["loss"][-1]) else None, "seconds": round(rec["seconds"], 2),
                        "gradwatch_firings": [[f["rule"], f["tag"], f["step"]] for f in gw],
                        "baseline_firings": {b: fir[b] for b in score.BASELINES},
                        "judged": j})
    tabs = {sp: score.table(judged, None if sp == "all" else sp)
            for sp in ("all", "tune", "heldout")}
    result = {
        "command": "nice /usr/bin/python3 eval/run.py" + (" --quick" if a.quick else ""),
        "quick": a.quick, "rules": shipped, "seconds": round(time.monotonic() - t0, 1),
        "cpu_seconds": round(sum(getattr(resource.getrusage(w), f) for w in
                                 (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                                 for f in ("ru_utime", "ru_stime")), 1),
        "daemon_exit": rc, "daemon_stats": {k: st[k] for k in ("received", "accepted", "points")},
        "dropped_messages": sum(r["dropped"] for r in records),
        "replay_mismatches": mismatches, "runs": per_run, "tables": tabs,
        "targets": {sp: score.targets(t) for sp, t in tabs.items()},
        "splits": {"tune": "seeds 1-99", "heldout": "seeds 101-199"},
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=lambda x: None if isinstance(x, float)
                  and not math.isfinite(x) else x)
    md = [score.markdown(tabs[sp], title) for sp, title in
          (("heldout", "Held-out split"), ("tune", "Tuning split"), ("all", "Both splits"))
          if tabs[sp]["healthy_steps"]]
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write("\n\n".join(md) + "\n")
    print("\n\n".join(md))
    print(f"\ntargets (both splits): {json.dumps(result['targets']['all'], indent=1)}")
    print(f"{len(records)} runs in {result['seconds']} s ({result['cpu_seconds']} CPU s); "
          f"dropped messages "
          f"{result['dropped_messages']}; replay mismatches {len(mismatches)}; out: {a.out}")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
