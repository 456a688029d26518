#!/usr/bin/python3
"""bench_ingest.py — gradwatchd ingest throughput, latency and memory,
side by side with raw ZeroMQ and a plain Python/NumPy subscriber, in one run.

    /usr/bin/python3 bench/bench_ingest.py [--build build] [--streams 100] [--k 256] [--msgs 1000]

1. raw: ingest_pub → ingest_sink (a receiver that only discards): the ceiling.
2. gradwatchd, W=64, every point stored, rank_every=64 and rank_every=8:
   messages/s from the first message seen to the last point committed to
   SQLite, with zero loss checked (received == sent, points stored == points).
3. bench/py_subscriber.py on the same frames (fewer of them: it is slow).
4. publish-to-queryable latency (p50, p99) at half the rank_every=64 rate:
   probe messages timed from send until /api/v1/series returns them.
5. RSS per stream at W=64, k=256.
Prints a Markdown table for bench/RESULTS.md.
"""
import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_json(port, path, timeout=10):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Daemon:
    def __init__(self, build, tmp, *args):
        self.zport, self.hport = free_port(), free_port()
        self.ep = f"tcp://127.0.0.1:{self.zport}"
        self.db = os.path.join(tmp, f"bench-{self.zport}.db")
        self.p = subprocess.Popen([os.path.join(build, "daemon/gradwatchd"), "--zmq", self.ep,
                                   "--http", f"127.0.0.1:{self.hport}", "--db", self.db,
                                   "--log-level", "error", "--zmq-rcvhwm", "10000000", *args])
        for _ in range(200):
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
        self.p.wait(60)


def publish(build, ep, streams, k, msgs, rate=0, prefix="bench"):
    return subprocess.Popen([os.path.join(build, "bench/ingest_pub"), ep, str(streams), str(k),
                             str(msgs), str(rate), "pub", prefix],
                            stdout=subprocess.PIPE, text=True)


def run_raw(build, streams, k, msgs):
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    n = streams * msgs
    sink = subprocess.Popen([os.path.join(build, "bench/ingest_sink"), ep, str(n)],
                            stdout=subprocess.PIPE, text=True)
    sink.stdout.readline()
    pub = publish(build, ep, streams, k, msgs)
    out = sink.communicate(timeout=600)[0]
    pub.wait(600)
    got = int(out.split()[1])
    rate = float(out.split("=")[1].split()[0])
    return rate, got == n


def run_daemon(build, tmp, streams, k, msgs, rank_every):
    d = Daemon(build, tmp, "--window", "64", "--rank-every", str(rank_every))
    n = streams * msgs
    want_points = streams * (msgs - 1)
    pub = publish(build, d.ep, streams, k, msgs)
    t_first = None
    while True:
        s = d.stats()
        now = time.perf_counter()
        if t_first is None and s["received"] > 0:
            t_first = now
        if s["points"] >= want_points and s["db_rows"] >= want_points and s["queue_depth"] == 0:
            break
        if pub.poll() is not None and s["received"] >= n and now - (t_first or now) > 600:
            break
        time.sleep(0.02)
    t_done = time.perf_counter()
    pub.wait(600)
    s = d.stats()
    d.stop()
    lossless = (s["received"] == n and s["points"] == want_points and
                s["dropped"]["store"] == 0 and sum(s["rejected"].values()) == 0)
    return n / (t_done - t_first), lossless, s


def run_python(build, streams, k, msgs, rank_every):
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    n = streams * msgs
    sub = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench/py_subscriber.py"), ep,
                            str(n), "64", str(rank_every)], stdout=subprocess.PIPE, text=True)
    sub.stdout.readline()
    pub = publish(build, ep, streams, k, msgs)
    out = sub.communicate(timeout=900)[0]
    pub.wait(60)
    return float(out.split("=")[1].split()[0]), int(out.split()[1]) == n


def run_latency(build, tmp, streams, k, rate, probes=200):
    d = Daemon(build, tmp, "--window", "64", "--rank-every", "64")
    load = publish(build, d.ep, streams, k, 10 ** 7, rate=rate, prefix="load")
    ctx = zmq.Context.instance()
    p = ctx.socket(zmq.PUB)
    p.connect(d.ep)
    time.sleep(0.5)
    hdr = struct.Struct("<IBBBBIIQqQddd")
    lat = []
    z = np.ones(k, np.float32)
    for step in range(probes + 1):
        body = hdr.pack(0x4B535747, 1, 1, 1, 4, k, 0, step, time.time_ns(), 0, 0, 0, 0) + \
            (z * (1 + step % 7)).tobytes()
        t0 = time.perf_counter()
        p.send_multipart([b"gw1/probe/p", body])
        if step == 0:
            continue
        while True:
            try:
                r = http_json(d.hport, f"/api/v1/series?run=probe&tag=p&metrics=kappa_ema"
                                       f"&from={step}&to={step}")
                if r.get("step"):
                    break
            except urllib.error.HTTPError:  # 404 until the stream's first point lands
                pass
            time.sleep(0.002)
        lat.append(time.perf_counter() - t0)
        time.sleep(0.01)
    load.kill()
    load.wait()
    p.close()
    s = d.stats()
    d.stop()
    return np.percentile(lat, 50), np.percentile(lat, 99), s


def run_rss(build, tmp, k, W=64, streams=2000):
    d = Daemon(build, tmp, "--window", str(W), "--rank-every", "64", "--store-every", "1000000")
    # warm up: one stream, so the allocator and SQLite caches are in place
    # Paced below the daemon's rate: a backlog would sit in libzmq's buffers
    # and count as RSS that has nothing to do with the streams.
    pub = publish(build, d.ep, 1, k, W + 2, rate=5000, prefix="warm")
    pub.wait(120)
    time.sleep(1.0)
    base = rss_kib(d.p.pid)
    pub = publish(build, d.ep, streams, k, W + 2, rate=10000, prefix="rss")
    pub.wait(600)
    want = streams * (W + 1) + (W + 1)
    while d.stats()["points"] < want:
        time.sleep(0.1)
    time.sleep(1.0)
    after = rss_kib(d.p.pid)
    d.stop()
    return (after - base) * 1024 / streams


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--msgs", type=int, default=1000, help="messages per stream")
    ap.add_argument("--py-msgs", type=int, default=100)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gwbench-")
    rows = []
    raw, ok = run_raw(a.build, a.streams, a.k, a.msgs)
    rows.append(("raw ZeroMQ PUB→SUB, discard", raw, ok, 1.0))
    d64, ok64, _ = run_daemon(a.build, tmp, a.streams, a.k, a.msgs, 64)
    rows.append(("gradwatchd rank_every=64, all stored", d64, ok64, d64 / raw))
    d8, ok8, _ = run_daemon(a.build, tmp, a.streams, a.k, a.msgs, 8)
    rows.append(("gradwatchd rank_every=8, all stored", d8, ok8, d8 / raw))
    py, okp = run_python(a.build, a.streams, a.k, a.py_msgs, 8)
    rows.append(("Python/NumPy subscriber, rank_every=8", py, okp, py / raw))
    print(f"\n{a.streams} streams, k={a.k}, W=64, {a.streams * a.msgs} messages "
          f"({a.streams * a.py_msgs} for Python)\n")
    print("| receiver | msgs/s | lossless | ratio to raw |\n|---|---:|---|---:|")
    for name, rate, ok, ratio in rows:
        print(f"| {name} | {rate:,.0f} | {'yes' if ok else 'NO'} | {ratio:.3f} |")
    print(f"\ngradwatchd (rank_every=8) / Python subscriber: {d8 / py:.1f}x")
    p50, p99, _ = run_latency(a.build, tmp, a.streams, a.k, d64 / 2)
    print(f"publish-to-queryable latency at {d64 / 2:,.0f} msgs/s: p50 {p50 * 1e3:.1f} ms, "
          f"p99 {p99 * 1e3:.1f} ms")
    per = run_rss(a.build, tmp, a.k)
    window = 64 * a.k * 8
    print(f"RSS per stream (W=64, k={a.k}): {per / 1024:.1f} KiB; window bytes {window / 1024:.0f} KiB; "
          f"goal <= {(1.5 * window + 16384) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
