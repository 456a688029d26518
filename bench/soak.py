#!/usr/bin/python3
"""soak.py — gradwatchd under steady load for minutes: memory, loss, latency.

    /usr/bin/python3 bench/soak.py [--build build] [--minutes 10] [--rate 40000 | --measure-max]
                                   [--streams 100] [--k 256] [--window 64] [--rank-every 8]

A benchmark, not a test (ctest does not run it). It starts gradwatchd on
loopback with a fresh database (every point stored), then:

  load    S streams of k float32 values at a fixed total rate (messages/s),
          paced in 5 ms slices from one PUB socket (XPUB: it waits for the
          daemon's subscription, so nothing is lost to the slow joiner);
  probe   a separate stream, one message every 0.25 s, timed from send until
          /api/v1/series returns its step (publish-to-queryable latency,
          which includes the store's flush interval, 200 ms by default);
  sample  every --sample-s seconds: VmRSS of the daemon, /api/v1/stats.

--measure-max first runs the daemon flat out for 15 s (same streams, the
publisher unpaced) and soaks at half the rate it sustained, the way
the soak target asks; otherwise --rate is used as given.

At the end the load stops, the daemon drains, and the script prints a
Markdown report and checks:
  flat RSS      median of the last third of the samples within 10% of the
                median of the first third (samples of the first 30 s are
                warm-up: windows filling, SQLite's caches, and are left out);
  zero loss     received == sent, points == received - streams (a stream's
                first message makes no point), dropped.store == 0,
                rows in the database == points;
  latency       p50/p99 per minute (printed; stable = the last minute's p99
                within 2x the first full minute's).
Exit status 0 when all checks hold, 1 otherwise.
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error

import numpy as np
import zmq

from bench_ingest import free_port, http_json, rss_kib  # bench/ is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HDR = struct.Struct("<IBBBBIIQqQddd")  # proto/PROTOCOL.md §3, 64 bytes
MAGIC = 0x4B535747


def body(step, z, loss=None):
    flags = 2 if loss is not None else 0
    return HDR.pack(MAGIC, 1, 1, 1, 4, len(z), flags, step, time.time_ns(), 0, 0.0,
                    loss or 0.0, 0.0) + z.tobytes()


def xpub(endpoint):
    s = zmq.Context.instance().socket(zmq.XPUB)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.LINGER, 5000)
    s.connect(endpoint)
    if not s.poll(10000, zmq.POLLIN):
        raise RuntimeError("the daemon never subscribed")
    s.recv()
    return s


class Daemon:
    def __init__(self, binary, tmp, *args):
        self.zport, self.hport = free_port(), free_port()
        self.ep = f"tcp://127.0.0.1:{self.zport}"
        self.db = os.path.join(tmp, f"soak-{self.zport}.db")
        self.log = open(os.path.join(tmp, f"soak-{self.zport}.log"), "wb")
        self.p = subprocess.Popen([binary, "--zmq", self.ep, "--http", f"127.0.0.1:{self.hport}",
                                   "--db", self.db, "--log-level", "warn", *args],
                                  stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(400):
            try:
                http_json(self.hport, "/readyz")
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("daemon did not start")

    def stats(self):
        return http_json(self.hport, "/api/v1/stats")

    def stop(self):
        self.p.terminate()
        rc = self.p.wait(120)
        self.log.close()
        return rc


class Load(threading.Thread):
    """S streams round-robin at `rate` messages/s (0 = as fast as possible)
    for `seconds`. Payloads come from a pool of smooth low-rank vectors plus
    noise, so the engine does its real work."""

    def __init__(self, endpoint, streams, k, rate, seconds, prefix="soak", max_steps=None):
        super().__init__(daemon=True)
        self.sock = xpub(endpoint)
        self.S, self.k, self.rate, self.seconds = streams, k, rate, seconds
        self.max_steps = max_steps
        self.topics = [f"gw1/{prefix}-{s // 10}/layer.{s % 10}".encode() for s in range(streams)]
        rng = np.random.default_rng(1)
        basis = rng.standard_normal((4, k))
        self.pool = [(np.sin(0.05 * t) * basis[0] + np.cos(0.031 * t) * basis[1] +
                      0.2 * np.sin(0.2 * t) * basis[2] + 0.1 * rng.standard_normal(k))
                     .astype("<f4") for t in range(128)]
        self.sent = 0
        self.steps = 0
        self.stop_flag = threading.Event()

    def run(self):
        t0 = time.monotonic()
        step = 0
        while not self.stop_flag.is_set():
            now = time.monotonic()
            if now - t0 >= self.seconds or step == self.max_steps:
                break
            # messages that should be out by now; whole steps at a time
            target = int((now - t0) * self.rate) if self.rate else self.sent + self.S
            while self.sent < target:
                z = self.pool[step % 128]
                b = body(step, z, loss=1.0 / (1 + step))
                for s in range(self.S):
                    self.sock.send_multipart([self.topics[s], b])
                self.sent += self.S
                step += 1
            self.steps = step
            if self.rate:
                time.sleep(0.005)
        self.sock.close()


class Probe(threading.Thread):
    """One message of run soak-probe every `every` seconds, timed until it is
    queryable through /api/v1/series."""

    def __init__(self, d, k, every=0.25):
        super().__init__(daemon=True)
        self.d, self.k, self.every = d, k, every
        self.sock = xpub(d.ep)
        self.samples = []  # (monotonic time, latency s)
        self.sent = 0
        self.stop_flag = threading.Event()

    def run(self):
        z = np.ones(self.k, np.float32)
        step = 0
        while not self.stop_flag.is_set():
            t_send = time.monotonic()
            self.sock.send_multipart([b"gw1/soak-probe/lat", body(step, z * (1 + step % 7))])
            self.sent += 1
            if step > 0:  # step 0 makes no point
                while not self.stop_flag.is_set():
                    try:
                        r = http_json(self.d.hport, "/api/v1/series?run=soak-probe&tag=lat"
                                      f"&metrics=kappa_ema&from={step}&to={step}")
                        if r.get("step"):
                            break
                    except urllib.error.HTTPError:
                        pass
                    time.sleep(0.002)
                self.samples.append((t_send, time.monotonic() - t_send))
            step += 1
            delay = t_send + self.every - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.sock.close()


def wait_drained(d, want_points, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = d.stats()
        if s["points"] >= want_points and s["queue_depth"] == 0 and s["db_rows"] >= want_points:
            return s
        time.sleep(0.2)
    return d.stats()


def measure_max(binary, tmp, a, steps=3000):
    """The daemon's sustained rate: `steps` messages per stream sent as fast
    as the publisher can (libzmq buffers the backlog: --zmq-rcvhwm raised),
    timed from the first message received to the last point committed."""
    d = Daemon(binary, tmp, "--window", str(a.window), "--rank-every", str(a.rank_every),
               "--zmq-rcvhwm", "10000000")
    load = Load(d.ep, a.streams, a.k, 0, 3600.0, max_steps=steps)
    t_pub = time.monotonic()
    load.start()
    t_first = None
    while t_first is None:
        if d.stats()["received"] > 0:
            t_first = time.monotonic()
        time.sleep(0.01)
    load.join()
    offered = load.sent / (time.monotonic() - t_pub)
    s = wait_drained(d, load.sent - a.streams)
    dt = time.monotonic() - t_first
    d.stop()
    return s["received"] / dt, offered


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--daemon", help="gradwatchd binary (default BUILD/daemon/gradwatchd)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=40000.0, help="total messages/s")
    ap.add_argument("--measure-max", action="store_true",
                    help="measure the daemon's maximum first and soak at half of it")
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--rank-every", type=int, default=8)
    ap.add_argument("--sample-s", type=float, default=5.0)
    a = ap.parse_args()
    binary = a.daemon or os.path.join(a.build, "daemon/gradwatchd")
    tmp = tempfile.mkdtemp(prefix="gwsoak-")

    rate = a.rate
    if a.measure_max:
        mx, offered = measure_max(binary, tmp, a)
        rate = mx / 2
        print(f"measured maximum: {mx:,.0f} msgs/s (publisher offered {offered:,.0f}); "
              f"soaking at {rate:,.0f}", flush=True)

    d = Daemon(binary, tmp, "--window", str(a.window), "--rank-every", str(a.rank_every))
    seconds = a.minutes * 60
    load = Load(d.ep, a.streams, a.k, rate, seconds)
    probe = Probe(d, a.k)
    samples = []  # (t, rss KiB, stats)
    t0 = time.monotonic()
    load.start()
    probe.start()
    while load.is_alive():
        time.sleep(a.sample_s)
        samples.append((time.monotonic() - t0, rss_kib(d.p.pid), d.stats()))
        t, rss, s = samples[-1]
        print(f"t={t:6.0f}s rss={rss / 1024:7.1f} MiB received={s['received']:>10,} "
              f"points={s['points']:>10,} written={s['store']['written']:>10,} "
              f"queue={s['queue_depth']:>7,} dropped={s['dropped']['store']} "
              f"rate={s['received'] / max(t, 1e-9):,.0f}/s", flush=True)
    probe.stop_flag.set()
    probe.join(30)
    load.join()
    sent = load.sent + probe.sent
    want_points = sent - a.streams - 1
    final = wait_drained(d, want_points)
    rss_end = rss_kib(d.p.pid)
    rows_api = final["db_rows"]
    rc = d.stop()
    import sqlite3
    con = sqlite3.connect(d.db)
    rows_db = con.execute("SELECT (SELECT count(*) FROM points) + (SELECT coalesce(sum(n), 0) FROM chunks)").fetchone()[0]
    ok_integrity = con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()

    # RSS: first vs last third of the samples after the warm-up
    steady = [(t, r) for t, r, _ in samples if t >= 30]
    third = max(1, len(steady) // 3)
    first = float(np.median([r for _, r in steady[:third]]))
    last = float(np.median([r for _, r in steady[-third:]]))
    rss_ok = abs(last - first) <= 0.10 * first
    # latency per minute
    lat = probe.samples
    minutes = int(np.ceil(seconds / 60))
    per_min = []
    for m in range(minutes):
        w = [l for t, l in lat if m * 60 <= t - t0 < (m + 1) * 60]
        if w:
            per_min.append((m + 1, len(w), np.percentile(w, 50), np.percentile(w, 99), max(w)))
    full = [p for p in per_min if p[1] >= 100]
    lat_ok = len(full) >= 2 and full[-1][3] <= 2 * full[0][3]
    loss_ok = (final["received"] == sent and final["points"] == want_points and
               final["dropped"]["store"] == 0 and rows_db == want_points and
               sum(final["rejected"].values()) == 0)
    rate_got = final["received"] / seconds

    print()
    print(f"{a.minutes:g} min at {rate:,.0f} msgs/s offered ({rate_got:,.0f} received/s), "
          f"{a.streams} streams, k={a.k}, W={a.window}, rank_every={a.rank_every}, every point stored")
    print()
    print("| check | result |\n|---|---|")
    print(f"| messages sent / received | {sent:,} / {final['received']:,} |")
    print(f"| points / rows in SQLite (API, file) | {final['points']:,} / {rows_api:,}, {rows_db:,} |")
    print(f"| dropped (store, live) / rejected | {final['dropped']['store']}, "
          f"{final['dropped']['live']} / {sum(final['rejected'].values())} |")
    print(f"| **zero loss** | **{'yes' if loss_ok else 'NO'}** |")
    print(f"| RSS median, first third → last third (after 30 s) | {first / 1024:.1f} → "
          f"{last / 1024:.1f} MiB ({100 * (last - first) / first:+.1f}%) |")
    print(f"| RSS min / max over the run, at the end | "
          f"{min(r for _, r, _ in samples) / 1024:.1f} / {max(r for _, r, _ in samples) / 1024:.1f}"
          f" / {rss_end / 1024:.1f} MiB |")
    print(f"| **flat RSS (within 10%)** | **{'yes' if rss_ok else 'NO'}** |")
    print(f"| integrity_check after SIGTERM (exit {rc}) | {'ok' if ok_integrity else 'FAILED'} |")
    print()
    print("| minute | probes | p50 ms | p99 ms | max ms |\n|---:|---:|---:|---:|---:|")
    for m, n, p50, p99, mx in per_min:
        print(f"| {m} | {n} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {mx * 1e3:.1f} |")
    all_lat = [l for _, l in lat]
    if all_lat:
        print(f"\nall probes: p50 {np.percentile(all_lat, 50) * 1e3:.1f} ms, "
              f"p99 {np.percentile(all_lat, 99) * 1e3:.1f} ms; "
              f"**stable latency** (last minute's p99 <= 2x the first's): "
              f"**{'yes' if lat_ok else 'NO'}**")
    db_mb = os.path.getsize(d.db) / 2 ** 20
    print(f"database file: {db_mb:,.0f} MiB")
    good = loss_ok and rss_ok and lat_ok and ok_integrity and rc == 0
    if good:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    else:
        print(f"kept {tmp} for inspection")
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
