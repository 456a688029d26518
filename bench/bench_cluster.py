#!/usr/bin/python3
"""bench_cluster.py — routed shards and remote write, measured in one run
(docs/SCALE.md, capacity model; bench/RESULTS.md).

    /usr/bin/python3 bench/bench_cluster.py [--build build] [--streams 600] [--k 256]
                                            [--msgs 200] [--rank-every 8]

Every configuration gets the same publisher load: bench/ingest_pub sending
STREAMS streams (one per run, so runs spread evenly over shards) of MSGS
messages of k floats, as fast as it can, through `gradwatch proxy --shards`.

1. one:    1 daemon behind a routed proxy (--shards 1).
2. three:  3 daemons (--shard i/3) behind one routed proxy (--shards 3).
3. three, two proxies: the same 3 daemons' setup, the streams split over two
   publishers, each through its own proxy.
   For each: messages/s from the first message received to the last point
   committed by every daemon, lossless checked (each daemon received
   exactly its shard's messages and stored every point), and each daemon's
   share of the messages.
4. proxy forwarding alone: ingest_pub → proxy → bench/ingest_sink (which
   only discards), `gradwatch proxy` as it was (zmq_proxy, one sink) and
   routed (--shards 3, three sinks, each expecting its share exactly).
5. remote write: one daemon fed directly, with and without --remote-write to
   Debian's Prometheus (remote-write receiver on), default metric list:
   ingest messages/s and remote-write points/s until every point was
   accepted, lossless (sent = points, none dropped or refused).
Prints a Markdown table for bench/RESULTS.md.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_get(port, path, timeout=10):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


class Daemon:
    def __init__(self, build, tmp, *args):
        self.zport, self.hport = free_port(), free_port()
        self.ep = f"tcp://127.0.0.1:{self.zport}"
        self.db = os.path.join(tmp, f"cluster-{self.zport}.db")
        self.p = subprocess.Popen([os.path.join(build, "daemon/gradwatchd"), "--zmq", self.ep,
                                   "--http", f"127.0.0.1:{self.hport}", "--db", self.db,
                                   "--log-level", "error", "--zmq-rcvhwm", "10000000", *args])
        for _ in range(400):
            try:
                http_get(self.hport, "/readyz")
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("daemon did not start")

    def stats(self):
        return json.loads(http_get(self.hport, "/api/v1/stats"))

    def metric(self, name):
        text = http_get(self.hport, "/metrics").decode()
        m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        self.p.terminate()
        self.p.wait(120)


def start_proxy(build, tmp, daemons, shards):
    front = f"tcp://127.0.0.1:{free_port()}"
    err = os.path.join(tmp, f"proxy-{front.rsplit(':', 1)[1]}.err")
    args = [os.path.join(build, "client/gradwatch"), "proxy", "--frontend", front,
            "--shards", str(shards), "--sndhwm", "10000000", "--rcvhwm", "10000000"]
    for i, d in daemons:
        args += ["--backend", f"{i}={d.ep}"]
    p = subprocess.Popen(args, stderr=open(err, "w"))
    want = f"({len(daemons)}/{len(daemons)})"
    for _ in range(400):
        if want in open(err).read():
            time.sleep(0.3)  # the daemons' subscriptions follow their connections
            return p, front
        time.sleep(0.05)
    raise RuntimeError("proxy did not connect: " + open(err).read())


def publish(build, ep, streams, k, msgs, prefix):
    return subprocess.Popen([os.path.join(build, "bench/ingest_pub"), ep, str(streams), str(k),
                             str(msgs), "0", "pub", prefix, "1"],
                            stdout=subprocess.PIPE, text=True)


def wait_done(daemons, want, n_msgs, pubs, timeout=1200):
    """Poll until every daemon stored its points; (seconds from the first
    message received to the last commit, final stats per daemon, the
    perf_counter time of the first message)."""
    t_first = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        ss = [d.stats() for d in daemons]
        now = time.perf_counter()
        if t_first is None and any(s["received"] > 0 for s in ss):
            t_first = now
        if all(s["points"] >= w and s["db_rows"] >= w and s["queue_depth"] == 0
               for s, w in zip(ss, want)):
            for p in pubs:
                p.wait(600)
            return now - t_first, ss, t_first
        time.sleep(0.02)
    raise RuntimeError(f"not done: {[d.stats() for d in daemons]}")


def run_cluster(build, tmp, n_daemons, n_proxies, streams, k, msgs, rank_every):
    daemons = [Daemon(build, tmp, "--window", "64", "--rank-every", str(rank_every),
                      *(["--shard", f"{i}/{n_daemons}"] if n_daemons > 1 else []))
               for i in range(n_daemons)]
    proxies = [start_proxy(build, tmp, list(enumerate(daemons)), n_daemons)
               for _ in range(n_proxies)]
    per = streams // n_proxies
    prefixes = [f"c{n_daemons}{n_proxies}p{j}" for j in range(n_proxies)]
    owned = [0] * n_daemons
    for j, pre in enumerate(prefixes):
        for s in range(per):
            owned[fnv1a64(f"{pre}-{s}".encode()) % n_daemons] += 1
    want = [o * (msgs - 1) for o in owned]
    pubs = [publish(build, front, per, k, msgs, prefixes[j])
            for j, (_, front) in enumerate(proxies)]
    dt, ss, _ = wait_done(daemons, want, per * n_proxies * msgs, pubs)
    n = per * n_proxies * msgs
    received = [s["received"] for s in ss]
    lossless = (received == [o * msgs for o in owned] and
                all(s["points"] == w and s["db_rows"] >= w for s, w in zip(ss, want)) and
                all(sum(s["rejected"].values()) == 0 for s in ss))
    for p, _ in proxies:
        p.terminate()
        p.wait(60)
    for d in daemons:
        d.stop()
    return {"rate": n / dt, "n": n, "shares": [r / n for r in received], "lossless": lossless}


def run_proxy_only(build, tmp, streams, k, msgs, shards):
    """Forwarding rate: messages / the longest sink's first-to-last time."""
    prefix = f"x{shards}"
    share = [0] * shards
    for s in range(streams):
        share[fnv1a64(f"{prefix}-{s}".encode()) % shards] += msgs
    sinks = []
    for i in range(shards):
        ep = f"tcp://127.0.0.1:{free_port()}"
        p = subprocess.Popen([os.path.join(build, "bench/ingest_sink"), ep, str(share[i])],
                             stdout=subprocess.PIPE, text=True)
        p.stdout.readline()
        sinks.append((p, ep))
    front = f"tcp://127.0.0.1:{free_port()}"
    args = [os.path.join(build, "client/gradwatch"), "proxy", "--frontend", front,
            "--sndhwm", "10000000", "--rcvhwm", "10000000"]
    if shards > 1:
        args += ["--shards", str(shards)] + [f"--backend={i}={ep}" for i, (_, ep) in enumerate(sinks)]
    else:
        args += ["--backend", sinks[0][1]]
    err = os.path.join(tmp, f"proxy-only-{shards}.err")
    proxy = subprocess.Popen(args, stderr=open(err, "w"))
    while f"({shards}/{shards})" not in open(err).read():
        time.sleep(0.05)
    time.sleep(0.3)
    pub = publish(build, front, streams, k, msgs, prefix)
    dts, ok = [], True
    for p, _ in sinks:
        out = p.communicate(timeout=600)[0]
        got = int(out.split()[1])
        ok = ok and got == share[sinks.index((p, _))]
        dts.append(float(out.split(" in ")[1].split()[0]))
    pub.wait(600)
    proxy.terminate()
    proxy.wait(60)
    return {"rate": streams * msgs / max(dts), "lossless": ok}


class Prom:
    def __init__(self, tmp):
        binary = shutil.which("prometheus")
        if not binary:
            raise RuntimeError("Debian's prometheus is not installed")
        cfg = os.path.join(tmp, "prometheus.yml")
        open(cfg, "w").write("global:\n  scrape_interval: 1m\n")
        self.port = free_port()
        self.p = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/tsdb",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-remote-write-receiver",
             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                http_get(self.port, "/-/ready")
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("prometheus did not start")

    def stop(self):
        self.p.terminate()
        self.p.wait(60)


def run_remote_write(build, tmp, streams, k, msgs, rank_every, prom):
    args = ["--window", "64", "--rank-every", str(rank_every)]
    if prom:
        args += ["--remote-write", f"http://127.0.0.1:{prom.port}/api/v1/write"]
    d = Daemon(build, tmp, *args)
    want = streams * (msgs - 1)
    pub = publish(build, d.ep, streams, k, msgs, "rw")
    dt, (s,), t0 = wait_done([d], [want], streams * msgs, [pub])
    out = {"rate": streams * msgs / dt, "lossless": s["received"] == streams * msgs and
           s["points"] == want}
    if prom:
        while True:  # until every point was accepted (or given up)
            sent = d.metric("gradwatch_remote_write_sent_points_total") or 0
            gone = ((d.metric("gradwatch_remote_write_dropped_points_total") or 0) +
                    (d.metric("gradwatch_remote_write_failed_points_total") or 0))
            if sent + gone >= want:
                break
            time.sleep(0.02)
        t_rw = time.perf_counter() - t0
        out.update(rw_sent=sent, rw_lost=gone, rw_rate=sent / t_rw,
                   rw_requests=d.metric("gradwatch_remote_write_requests_total"),
                   rw_retries=d.metric("gradwatch_remote_write_retries_total"))
        out["lossless"] = out["lossless"] and sent == want and gone == 0
    d.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--streams", type=int, default=600)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--msgs", type=int, default=200, help="messages per stream")
    ap.add_argument("--rank-every", type=int, default=8)
    ap.add_argument("--rw-streams", type=int, default=100)
    ap.add_argument("--rw-msgs", type=int, default=1000)
    a = ap.parse_args()
    print(f"# {os.cpu_count()} CPUs, {a.streams} streams x {a.msgs} messages, k={a.k}, "
          f"W=64, rank_every={a.rank_every}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for name, nd, np_ in [("one", 1, 1), ("three", 3, 1), ("three_two_proxies", 3, 2)]:
            res[name] = run_cluster(a.build, tmp, nd, np_, a.streams, a.k, a.msgs, a.rank_every)
            print(name, res[name], flush=True)
        for shards in (1, 3):
            res[f"proxy{shards}"] = run_proxy_only(a.build, tmp, a.streams, a.k, a.msgs * 2,
                                                   shards)
            print(f"proxy{shards}", res[f"proxy{shards}"], flush=True)
        prom = Prom(tmp)
        try:
            rw_off = run_remote_write(a.build, tmp, a.rw_streams, a.k, a.rw_msgs, a.rank_every,
                                      None)
            print("no remote write", rw_off, flush=True)
            rw_on = run_remote_write(a.build, tmp, a.rw_streams, a.k, a.rw_msgs, a.rank_every,
                                     prom)
            print("remote write", rw_on, flush=True)
        finally:
            prom.stop()
    one = res["one"]["rate"]
    print("\n| configuration | msg/s | vs one daemon | largest share | lossless |")
    print("|---|---:|---:|---:|---|")
    for name, label in [("one", "1 daemon, 1 routed proxy"),
                        ("three", "3 daemons, 1 routed proxy"),
                        ("three_two_proxies", "3 daemons, 2 routed proxies")]:
        r = res[name]
        print(f"| {label} | {r['rate']:,.0f} | {r['rate'] / one:.2f}x | "
              f"{max(r['shares']):.3f} | {'yes' if r['lossless'] else 'NO'} |")
    print("\n| proxy alone (discarding sinks) | msg/s | lossless |\n|---|---:|---|")
    for name, label in [("proxy1", "zmq_proxy, 1 sink"), ("proxy3", "routed, --shards 3, 3 sinks")]:
        r = res[name]
        print(f"| {label} | {r['rate']:,.0f} | {'yes' if r['lossless'] else 'NO'} |")
    print(f"\n| remote write ({a.rw_streams} streams x {a.rw_msgs}, rank_every {a.rank_every}) "
          "| ingest msg/s | remote-write points/s | samples/s (6 a point) | lossless |")
    print("|---|---:|---:|---:|---|")
    print(f"| off | {rw_off['rate']:,.0f} | - | - | {'yes' if rw_off['lossless'] else 'NO'} |")
    print(f"| on (default list; grad_norm not sent) | {rw_on['rate']:,.0f} | "
          f"{rw_on['rw_rate']:,.0f} | {rw_on['rw_rate'] * 6:,.0f} | "
          f"{'yes' if rw_on['lossless'] else 'NO'} |")
    return 0 if all(r["lossless"] for r in res.values()) and rw_on["lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())
