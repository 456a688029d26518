"""Hardening of the daemon's core budgets against the real gradwatchd, at the
scale of the attacks they answer (docs/SECURITY.md, "Budgets of the core"):

- the stream-state memory budget under a flood of k = 65,536 sketches on
  hundreds of new streams (RSS stays within the budget plus a fixed
  overhead; the excess is rejected as memory_budget; retired streams give
  their bytes back);
- ZeroMQ connections that never greet (closed after the handshake
  interval; the descriptor count falls back; /healthz keeps answering);
- retention and last_seen on the daemon's receive time, whatever wall_ns
  the publisher sends (1000, negative, INT64_MIN, year 2116);
- a 100,000-rule file: parsed in linear time, reloaded on SIGHUP off the
  event loop (ingest and /healthz keep going), SIGTERM during a reload
  honoured within a second;
- --max-db-mb: the WAL counted, the oldest points removed first, the
  newest minute of a live stream never, a warning per trim, a cap too
  small for one flush refused at start.
"""
import os
import re
import resource
import selectors
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import Daemon, encode, scaled, subscribed_pub

SANITIZED = bool(os.environ.get("ASAN_OPTIONS") or os.environ.get("TSAN_OPTIONS"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def reasons(d):
    return {k: v for k, v in d.stats()["rejected"].items() if v}


def wait_stats(d, pred, timeout=30, what="stats"):
    return d.wait_for(lambda: (lambda s: s if pred(s) else None)(d.stats()), timeout, what)


def log_text(d):
    return d.log.read_text(errors="replace")


class Peak(threading.Thread):
    """Samples the daemon's RSS every 10 ms until stopped; .peak in KiB."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, AssertionError):
                return
            time.sleep(0.01)


# ------------------------------------------------------------ memory budget

BUDGET_MB = 64
BIG_K = 65536


def test_stream_memory_budget_flood(daemon_bin, tmp_path):
    """The issue's flood (60 messages at k = 65,536, each a new stream) and
    three times more: RSS stays within the 64 MB budget plus a fixed
    overhead (engine scratch, the workers' input rings, ZeroMQ buffers),
    the streams past the budget are rejected as memory_budget and counted
    on /metrics, and once the accepted streams retire their bytes come
    back: new streams are accepted again."""
    d = Daemon(daemon_bin, tmp_path, extra=["--max-stream-memory-mb", str(BUDGET_MB),
                                            "--stream-idle", "2", "--engine-threads", "2"])
    d.start()
    try:
        assert f"stream_memory_budget bytes={BUDGET_MB << 20}" in log_text(d)
        sock = subscribed_pub(d.endpoint)
        base = rss_kib(d.proc.pid)
        peak = Peak(d.proc.pid)
        peak.start()
        z = np.random.default_rng(1).standard_normal(BIG_K).astype(np.float32)
        n = 240
        for i in range(n):
            sock.send_multipart(encode("flood", f"s{i}", 0, z))
        wait_stats(d, lambda s: s["accepted"] + sum(s["rejected"].values()) >= n, 60,
                   "every flood message handled")
        time.sleep(0.2)
        peak.stop.set()
        peak.join()
        st = d.stats()
        rej = reasons(d)
        # each stream's first message holds its block (~1.06 MB at k = 65,536):
        # about 60 fit in 64 MB, the rest are refused
        assert rej.get("memory_budget", 0) > 0, rej
        assert st["accepted"] >= 40, st
        # never more live at once than the budget holds (a slow, sanitized
        # build may see the first streams retire during the flood)
        assert st["streams"] <= 64 and st["accepted"] - st["streams_retired"] <= 64, st
        assert st["accepted"] + rej["memory_budget"] == n, (st, rej)
        code, body, _ = d.get("/metrics")
        assert code == 200
        m = re.search(rb'gradwatch_messages_rejected_total\{reason="memory_budget"\} (\d+)', body)
        assert m and int(m.group(1)) == rej["memory_budget"]
        grown_mb = (peak.peak - base) / 1024
        print(f"flood: base {base / 1024:.0f} MB, peak {peak.peak / 1024:.0f} MB, "
              f"grew {grown_mb:.0f} MB, accepted {st['accepted']}, refused {rej['memory_budget']}")
        if not SANITIZED:  # sanitizer allocators keep freed memory in quarantine
            # fixed overhead: two input rings (8 MB each), FD scratch and
            # payload buffers per worker, ZeroMQ's queue of 256 KB messages
            assert grown_mb <= BUDGET_MB + 64, grown_mb
        # retirement gives the bytes back: 30 new streams fit again
        wait_stats(d, lambda s: s["streams"] == 0, 30, "flood streams retired")
        before = st["accepted"]
        for i in range(30):
            sock.send_multipart(encode("again", f"s{i}", 0, z))
        wait_stats(d, lambda s: s["accepted"] >= before + 30, 30, "new streams accepted")
        assert reasons(d)["memory_budget"] == rej["memory_budget"]
        sock.close(linger=0)
    finally:
        assert d.stop() == 0, log_text(d)


def test_stream_memory_flag_validated(daemon_bin, tmp_path):
    r = subprocess.run([daemon_bin, "--max-stream-memory-mb", "0"], capture_output=True,
                       text=True, timeout=scaled(30))
    assert r.returncode == 2 and "max-stream-memory-mb" in r.stderr


# ----------------------------------------------------- descriptors, handshake

def test_silent_connections_are_closed(daemon_bin, tmp_path):
    """1,000 TCP connections to the ZeroMQ port that never send a byte: the
    daemon keeps answering /healthz, closes every one once the handshake
    interval (3 s here) has passed (each of our sockets sees the close), and
    its descriptor count falls back to where it was."""
    d = Daemon(daemon_bin, tmp_path, extra=["--zmq-handshake-ms", "3000"])
    # started as from a shell with a soft limit of 1024 descriptors
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        d.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    socks = []
    sel = selectors.DefaultSelector()
    try:
        text = log_text(d)
        m = re.search(r"nofile_limit soft=(\d+) was=(\d+) hard=(\d+)", text)
        assert m and m.group(2) == str(min(1024, hard)), text
        assert m.group(1) == m.group(3) == str(hard), text  # soft raised to hard
        pid = d.proc.pid
        base = fd_count(pid)
        n = 1000
        for i in range(n):  # batches of 100: ZeroMQ's listen backlog
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", d.zmq_port))
            socks.append(s)
            sel.register(s, selectors.EVENT_READ)
            if i % 100 == 99:
                time.sleep(0.1)
        peak = d.wait_for(lambda: fd_count(pid) >= base + n * 9 // 10 and fd_count(pid), 20,
                          "silent connections accepted")
        # the daemon answers while they are open
        t0 = time.monotonic()
        assert d.get("/healthz")[0] == 200
        health_s = time.monotonic() - t0
        assert health_s < scaled(2), health_s
        # every one is closed by the daemon: EOF or reset on our side
        closed, deadline = 0, time.monotonic() + scaled(45)
        while closed < n:
            assert time.monotonic() < deadline, f"only {closed} of {n} closed by the daemon"
            for key, _ in sel.select(timeout=0.5):
                try:
                    data = key.fileobj.recv(64)
                except (ConnectionResetError, BrokenPipeError, ConnectionRefusedError):
                    data = b""
                except BlockingIOError:
                    continue
                if data:  # the daemon's half of the greeting; we never answer
                    continue
                sel.unregister(key.fileobj)
                closed += 1
        d.wait_for(lambda: fd_count(pid) <= base + 10, 30, "descriptors released")
        print(f"silent connections: base {base} fds, peak {peak}, after {fd_count(pid)}, "
              f"/healthz {health_s * 1000:.0f} ms while open")
        # a real publisher still gets through
        pub = subscribed_pub(d.endpoint)
        for t in range(3):
            pub.send_multipart(encode("after", "t", t, np.ones(8, np.float32) * t))
        wait_stats(d, lambda s: s["accepted"] >= 3, 30, "publisher after the flood")
        pub.close(linger=0)
    finally:
        sel.close()
        for s in socks:
            s.close()
        assert d.stop() == 0, log_text(d)


# ------------------------------------------------- retention by receive time

WALLS = {"w1000": 1000, "wneg": -5_000_000_000_000_000_000 // 1000,
         "wmin": -(1 << 63), "w2116": 4_607_000_000_000_000_000}


def test_retention_and_last_seen_use_receive_time(daemon_bin, tmp_path):
    """Streams whose wall_ns is 1000, negative, INT64_MIN or in 2116, under
    --retention-days 1: nothing is deleted by the retention pass (which runs
    at start), last_seen is the daemon's clock, wall_ns is kept as sent."""
    d = Daemon(daemon_bin, tmp_path, extra=["--retention-days", "1"])
    d.start()
    steps = 6
    try:
        sock = subscribed_pub(d.endpoint)
        rng = np.random.default_rng(3)
        for tag, wall in WALLS.items():
            for t in range(steps):
                sock.send_multipart(encode("clock", tag, t, rng.standard_normal(8), wall_ns=wall))
        wait_stats(d, lambda s: s["points"] >= len(WALLS) * (steps - 1), 30, "points")
        sock.close(linger=0)
    finally:
        assert d.stop() == 0
    con = sqlite3.connect(d.db)
    stored = con.execute("SELECT (SELECT count(*) FROM points) + (SELECT coalesce(sum(n), 0) FROM chunks)").fetchone()[0]
    con.close()
    assert stored == len(WALLS) * (steps - 1)
    # a restart runs the retention pass at once
    d.start()
    try:
        d.wait_for(lambda: "retention" in log_text(d) or "ready" in log_text(d), 10)
        time.sleep(0.5)
        now = time.time()
        code, body = d.json("/api/v1/runs/clock/streams")
        assert code == 200
        got = {s["tag"]: s for s in body["streams"]}
        assert set(got) == set(WALLS)
        for tag in WALLS:
            assert abs(got[tag]["last_seen"] - now) < 600, got[tag]
            code, ser = d.json(f"/api/v1/series?run=clock&tag={tag}&metrics=kappa_ema")
            assert code == 200 and ser["step"] == list(range(1, steps)), (tag, ser)
        code, runs = d.json("/api/v1/runs")
        run = [r for r in runs["runs"] if r["run"] == "clock"][0]
        assert abs(run["last_seen"] - now) < 600, run
        assert "points_deleted" not in log_text(d)
    finally:
        assert d.stop() == 0
    con = sqlite3.connect(d.db)
    assert con.execute("SELECT (SELECT count(*) FROM points) + (SELECT coalesce(sum(n), 0) FROM chunks)").fetchone()[0] == stored
    con.close()


# --------------------------------------------------------------- alert rules

def write_rules(path, n, prefix="r"):
    """n rules that match no stream (a run glob nothing publishes)."""
    with open(path, "w") as f:
        f.write("[alerts]\ndefaults = false\n")
        for i in range(n):
            f.write(f"[alert {prefix}{i}]\nmetric = loss\nthreshold = {i}\nrun = none-{i}*\n")


def cpu_to_ready(daemon_bin, tmp_path, conf):
    """CPU seconds (user + system) the daemon spent until /readyz: the
    machine may be loaded, CPU time is what the parse costs."""
    d = Daemon(daemon_bin, tmp_path, extra=["--config", str(conf)])
    d.start()
    with open(f"/proc/{d.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    assert d.stop() == 0
    return cpu


def test_rule_parse_is_linear(daemon_bin, tmp_path):
    """Start-up with 20,000 and 100,000 rules: five times the rules cost
    well under ten times the CPU time (the quadratic parse of the past took
    34 times: 3.4 s and 116 s)."""
    small, big, empty = tmp_path / "small.ini", tmp_path / "big.ini", tmp_path / "empty.ini"
    write_rules(small, 20_000)
    write_rules(big, 100_000)
    write_rules(empty, 0)
    c0 = cpu_to_ready(daemon_bin, tmp_path, empty)
    cs = cpu_to_ready(daemon_bin, tmp_path, small)
    cb = cpu_to_ready(daemon_bin, tmp_path, big)
    print(f"start-up CPU: 0 rules {c0:.2f} s, 20k {cs:.2f} s, 100k {cb:.2f} s")
    assert cb - c0 < 10 * max(cs - c0, 0.05), (c0, cs, cb)
    assert cb < scaled(20)


class Steady(threading.Thread):
    """Publishes (run, tag) at ~500 messages/s until stopped."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.d, self.stop = d, threading.Event()

    def run(self):
        sock = subscribed_pub(self.d.endpoint)
        t = 0
        while not self.stop.is_set():
            sock.send_multipart(encode("steady", "t", t, np.sin(0.1 * t + np.arange(8))))
            t += 1
            time.sleep(0.002)
        sock.close()


def test_sighup_reload_off_the_loop(daemon_bin, tmp_path):
    """SIGHUP with a 100,000-rule file: /healthz answers and messages keep
    being accepted while the rules are parsed; the new rules are then in
    force (alerts_reloaded rules=100000)."""
    conf = tmp_path / "gw.ini"
    write_rules(conf, 1)
    d = Daemon(daemon_bin, tmp_path, extra=["--config", str(conf)])
    d.start()
    pub = Steady(d)
    pub.start()
    try:
        wait_stats(d, lambda s: s["accepted"] > 50, 30, "steady ingest")
        write_rules(conf, 100_000)
        mark = len(log_text(d))
        acc0 = d.stats()["accepted"]
        t_hup = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        worst, seen_during = 0.0, False
        deadline = time.monotonic() + scaled(60)
        while "alerts_reloaded" not in log_text(d)[mark:]:
            assert time.monotonic() < deadline, "reload never finished"
            t0 = time.monotonic()
            assert d.get("/healthz")[0] == 200
            worst = max(worst, time.monotonic() - t0)
            if d.stats()["accepted"] > acc0 + 20 and "alerts_reloaded" not in log_text(d)[mark:]:
                seen_during = True
            time.sleep(0.01)
        took = time.monotonic() - t_hup
        assert "rules=100000 " in log_text(d)[mark:]
        print(f"reload of 100k rules: {took:.2f} s; worst /healthz {worst * 1000:.0f} ms; "
              f"ingest during reload: {seen_during}")
        assert worst < scaled(1.0), worst
        # ingest kept flowing through the reload (when it lasted long enough to see)
        assert seen_during or took < 0.3, took
        acc1 = d.stats()["accepted"]
        wait_stats(d, lambda s: s["accepted"] > acc1 + 50, 30, "ingest after reload")
    finally:
        pub.stop.set()
        pub.join()
        assert d.stop() == 0, log_text(d)


def test_sigterm_during_reload(daemon_bin, tmp_path):
    """SIGTERM 50 ms after a SIGHUP that starts parsing 400,000 rules: the
    daemon exits 0 within a second (the parse is abandoned), saving its
    state as usual."""
    conf = tmp_path / "gw.ini"
    write_rules(conf, 1)
    d = Daemon(daemon_bin, tmp_path, extra=["--config", str(conf)])
    d.start()
    sock = subscribed_pub(d.endpoint)
    for t in range(5):
        sock.send_multipart(encode("term", "t", t, np.cos(t + np.arange(8))))
    wait_stats(d, lambda s: s["accepted"] >= 5, 30, "points")
    sock.close(linger=0)
    write_rules(conf, 400_000)
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.05)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(scaled(10))
    took = time.monotonic() - t0
    d.proc = None
    d.logf.close()
    text = log_text(d)
    print(f"SIGTERM during reload: exit after {took * 1000:.0f} ms")
    assert rc == 0, text
    assert took < scaled(1.0), took
    assert "state_saved streams=1" in text
    assert "alerts_reloaded" not in text or "rules=400000" not in text


# ---------------------------------------------------------------- max-db-mb

def test_max_db_mb_too_small_refused(daemon_bin, tmp_path):
    d = Daemon(daemon_bin, tmp_path, extra=["--max-db-mb", "5"])
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert "daemon exited 1" in str(e.value)
    assert re.search(r"max-db-mb 5 is too small: the database needs at least \d+ MB",
                     str(e.value))


def db_bytes(path):
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def test_max_db_mb_trims_oldest_keeps_live(daemon_bin, tmp_path):
    """A 20 MB cap (the smallest allowed) and ~40 MB of points and sketches:
    a stream that has retired (not live) loses its oldest points first; the
    live stream keeps every point of its newest minute; each trim logs a
    warning; the file ends within the cap."""
    cap = 20
    d = Daemon(daemon_bin, tmp_path, extra=["--max-db-mb", str(cap), "--store-sketches",
                                            "--stream-idle", "2"])
    d.start()
    try:
        k = 1024
        rng = np.random.default_rng(5)
        base = rng.standard_normal((2, k)).astype(np.float32)
        sock = subscribed_pub(d.endpoint)
        n_old = 7000  # ~4.3 KB each with its sketch: ~30 MB
        for t in range(n_old):
            sock.send_multipart(encode("old", "t", t, np.sin(0.01 * t) * base[0] + base[1]))
        wait_stats(d, lambda s: s["accepted"] >= n_old, 60, "old stream stored")
        # old retires (stream-idle 2 s): its segment is no longer live
        wait_stats(d, lambda s: s["streams"] == 0, 30, "old retired")
        n_new = 2500
        for t in range(n_new):
            sock.send_multipart(encode("new", "t", t, np.cos(0.01 * t) * base[0] + base[1]))
        wait_stats(d, lambda s: s["accepted"] >= n_old + n_new, 60, "new stream stored")
        d.wait_for(lambda: re.search(r"db_trimmed .*points_deleted=[1-9]", log_text(d)), 60,
                   "a trim")
        sock.close(linger=0)
        d.wait_for(lambda: d.json("/api/v1/series?run=new&tag=t&metrics=kappa_ema")[1]
                   .get("step", [None])[-1:] == [n_new - 1], 30, "new's last point")
        code, new = d.json("/api/v1/series?run=new&tag=t&metrics=kappa_ema")
        assert new["step"] == list(range(1, n_new)), "the live stream lost points"
        code, old = d.json("/api/v1/series?run=old&tag=t&metrics=kappa_ema")
        old_steps = old.get("step", []) if code == 200 else []
        # oldest first: whatever is left of old is its newest steps
        assert len(old_steps) < n_old - 1
        if old_steps:
            assert old_steps == list(range(old_steps[0], n_old)), old_steps[:3]
        warn = [l for l in log_text(d).splitlines() if "db_trimmed" in l]
        assert warn and all("level=warn" in l for l in warn)
        print("trims:", len(warn), "last:", warn[-1])
        m = re.search(r"after_bytes=(\d+)", warn[-1])
        assert int(m.group(1)) <= cap << 20
    finally:
        assert d.stop() == 0, log_text(d)
    assert db_bytes(d.db) <= cap << 20, db_bytes(d.db)
