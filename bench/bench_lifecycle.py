#!/usr/bin/python3
"""bench_lifecycle.py — what the stream lifecycle costs, in one run.

    /usr/bin/python3 bench/bench_lifecycle.py [--build build] [--streams 10000] [--waves 30]

1. RSS while 30 waves of 1,000 streams (k = 256, W = 64) pass through
   --max-streams 1000 with --stream-idle 1: RSS at the peak of wave 1 (1,000
   live streams) against the peak of the last wave, after 29,000 streams
   have been retired.
2. Saving and restoring 10,000 streams (k = 256, W = 64, windows full):
   shutdown time (SIGTERM → exit) and start-up time (exec → /readyz) of a
   daemon holding them, side by side with the same daemon holding none,
   plus the daemon's own figures from its log (state_saved ms, restored).
Prints a Markdown table for bench/RESULTS.md.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import free_port, http_json, publish, rss_kib  # noqa: E402


class Daemon:
    def __init__(self, build, db, log, *args):
        self.zport, self.hport = free_port(), free_port()
        self.ep = f"tcp://127.0.0.1:{self.zport}"
        self.args = [os.path.join(build, "daemon/gradwatchd"), "--zmq", self.ep,
                     "--http", f"127.0.0.1:{self.hport}", "--db", db, "--log-level", "info",
                     "--zmq-rcvhwm", "10000000", *args]
        self.log = log

    def start(self):
        t0 = time.perf_counter()
        self.p = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        while True:
            try:
                http_json(self.hport, "/readyz")
                return time.perf_counter() - t0
            except Exception:
                if self.p.poll() is not None:
                    raise RuntimeError(open(self.log).read())
                time.sleep(0.01)

    def stats(self):
        return http_json(self.hport, "/api/v1/stats")

    def stop(self):
        t0 = time.perf_counter()
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(600)
        assert rc == 0, open(self.log).read()[-2000:]
        return time.perf_counter() - t0

    def wait(self, pred, what, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.stats()
            if pred(s):
                return s
            time.sleep(0.1)
        raise RuntimeError(f"timed out: {what}: {self.stats()}")


def waves(build, tmp, n_waves, per):
    d = Daemon(build, os.path.join(tmp, "waves.db"), os.path.join(tmp, "waves.log"),
               "--window", "64", "--max-streams", str(per), "--stream-idle", "1",
               "--engine-threads", "2")
    d.start()
    peaks = []
    for w in range(n_waves):
        pub = publish(build, d.ep, per, 256, 2, prefix=f"wave{w}")
        pub.wait(600)
        d.wait(lambda s: s["accepted"] >= 2 * per * (w + 1), f"wave {w}")
        peaks.append(rss_kib(d.p.pid))
        d.wait(lambda s: s["streams"] == 0, f"wave {w} retired")
    s = d.stats()
    d.stop()
    assert s["rejected"]["too_many_streams"] == 0 and s["streams_retired"] == n_waves * per
    return peaks


def save_restore(build, tmp, streams):
    out = {}
    for label, n in (("empty", 0), ("full", streams)):
        db, log = os.path.join(tmp, f"sr-{label}.db"), os.path.join(tmp, f"sr-{label}.log")
        d = Daemon(build, db, log, "--window", "64", "--rank-every", "8",
                   "--max-streams", str(2 * streams), "--store-every", "64")
        d.start()
        if n:
            pub = publish(build, d.ep, n, 256, 66, prefix="sr")
            pub.wait(1200)
            d.wait(lambda s: s["accepted"] >= n * 66, "messages", timeout=1200)
        rss = rss_kib(d.p.pid)
        t_stop = d.stop()
        t_start = d.start()
        s = d.stats()
        d.stop()
        text = open(log).read()
        saved = re.findall(r"event=state_saved streams=(\d+) ms=([\d.]+)", text)
        restored = re.findall(r"event=streams_restored restored=(\d+)", text)
        out[label] = dict(stop=t_stop, start=t_start, rss=rss, live_after=s["streams"],
                          saved=saved[0] if saved else ("0", "0"),
                          restored=int(restored[0]) if restored else 0,
                          db_mb=os.path.getsize(db) / 2**20)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "build"))
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--waves", type=int, default=30)
    ap.add_argument("--per", type=int, default=1000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        peaks = waves(a.build, tmp, a.waves, a.per)
        sr = save_restore(a.build, tmp, a.streams)
    print("| measure | value |\n|---|---|")
    print(f"| RSS at the peak of wave 1 ({a.per} live streams) | {peaks[0] / 1024:.1f} MiB |")
    print(f"| RSS at the peak of wave {a.waves} (after {(a.waves - 1) * a.per:,} retired) | "
          f"{peaks[-1] / 1024:.1f} MiB ({peaks[-1] / peaks[0]:.3f}×) |")
    print(f"| max RSS over all waves | {max(peaks) / 1024:.1f} MiB |")
    e, f = sr["empty"], sr["full"]
    print(f"| shutdown, 0 streams / {a.streams:,} streams | {e['stop']:.2f} s / {f['stop']:.2f} s "
          f"(+{f['stop'] - e['stop']:.2f} s; state_saved {f['saved'][0]} streams in "
          f"{float(f['saved'][1]) / 1000:.2f} s) |")
    print(f"| start-up to /readyz, 0 / {a.streams:,} streams | {e['start']:.2f} s / "
          f"{f['start']:.2f} s (+{f['start'] - e['start']:.2f} s; restored {f['restored']}, "
          f"live after start {f['live_after']}) |")
    print(f"| RSS holding {a.streams:,} streams | {f['rss'] / 1024:.0f} MiB |")
    print(f"| database after the save (state rows cleared at start) | {f['db_mb']:.0f} MiB |")


if __name__ == "__main__":
    main()
