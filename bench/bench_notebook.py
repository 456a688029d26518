#!/usr/bin/env python3
"""bench_notebook.py — gradwatch.Client.series: N points of one stream from a
real gradwatchd into a pandas DataFrame, end to end (HTTP, JSON parse,
numpy columns, DataFrame), with the time of each stage.

usage: bench_notebook.py [--points N] [--metrics m1,m2] [--repeat R]
                         [--daemon build/daemon/gradwatchd] [--cli build/client/gradwatch]

It starts its own daemon on free loopback ports and a temporary database,
fills one stream with `gradwatch publish --synthetic` (k=16, as fast as the
daemon takes them), waits until every point is stored, then times R calls
and prints the median and each stage's share. The stages are measured
separately on the same answer: the request (urllib, the JSON text), the
client's parse into numpy arrays, the DataFrame; and, for comparison,
json.loads + np.array of the same text.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
import gradwatch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1000000)
    ap.add_argument("--metrics", default="kappa_ema")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--daemon", default=os.path.join(ROOT, "build", "daemon", "gradwatchd"))
    ap.add_argument("--cli", default=os.path.join(ROOT, "build", "client", "gradwatch"))
    a = ap.parse_args()
    metrics = a.metrics.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        zp, hp = free_port(), free_port()
        url = f"http://127.0.0.1:{hp}"
        log = open(os.path.join(tmp, "daemon.log"), "wb")
        d = subprocess.Popen([a.daemon, "--zmq", f"tcp://127.0.0.1:{zp}", "--http",
                              f"127.0.0.1:{hp}", "--db", os.path.join(tmp, "gw.db"),
                              "--rank-every", "64"], stdout=log, stderr=subprocess.STDOUT)
        try:
            c = gradwatch.Client(url, timeout=120)
            for _ in range(600):
                try:
                    c.runs()
                    break
                except gradwatch.DaemonUnavailable:
                    time.sleep(0.05)
            t0 = time.time()
            subprocess.run([a.cli, "publish", "--synthetic", "--run", "bench", "--tags", "all",
                            "--steps", str(a.points), "--rate", "0", "--k", "16", "--noise",
                            "0.01", "--loss", "--endpoint", f"tcp://127.0.0.1:{zp}", "--wait",
                            "30", "--sndhwm", str(a.points), "--linger", "-1"], check=True,
                           stdout=subprocess.DEVNULL)
            while True:
                s = [x for x in c.streams("bench") if x["tag"] == "all"] if c.runs() else []
                if s and s[0]["points"] >= a.points - 1:
                    break
                time.sleep(0.5)
            print(f"filled {s[0]['points']} points in {time.time() - t0:.1f} s", flush=True)
            times, fetch, parse, build, plain = [], [], [], [], []
            for _ in range(a.repeat):
                t = time.perf_counter()
                df = c.series("bench", "all", metrics)
                times.append(time.perf_counter() - t)
                assert isinstance(df, pd.DataFrame) and len(df) == s[0]["points"]
                # The same call taken apart into its stages.
                t = time.perf_counter()
                with urllib.request.urlopen(f"{url}/api/v1/series?run=bench&tag=all&metrics="
                                            f"{','.join(metrics)}", timeout=120) as r:
                    body = r.read()
                t1 = time.perf_counter()
                cols = gradwatch.client._columns_fast(body)
                t2 = time.perf_counter()
                step = cols.pop("step")
                pd.DataFrame(cols, index=pd.Index(step, name="step"), copy=False)
                t3 = time.perf_counter()
                doc = json.loads(body)
                {m: np.array(doc[m], dtype=np.float64) for m in ["step"] + metrics}
                t4 = time.perf_counter()
                fetch.append(t1 - t)
                parse.append(t2 - t1)
                build.append(t3 - t2)
                plain.append(t4 - t3)
            med = statistics.median
            print(f"Client.series: {len(df)} points x {len(metrics)} metric(s) "
                  f"({len(body) / 1e6:.1f} MB of JSON) into a DataFrame: median {med(times):.3f} s "
                  f"(min {min(times):.3f}, max {max(times):.3f}, {a.repeat} calls); stages: "
                  f"HTTP {med(fetch):.3f} s, parse into numpy {med(parse):.3f} s, "
                  f"DataFrame {med(build):.3f} s (json.loads + np.array instead of the parse: "
                  f"{med(plain):.3f} s); load average {os.getloadavg()[0]:.2f}")
        finally:
            d.terminate()
            d.wait(60)
            log.close()


if __name__ == "__main__":
    main()
