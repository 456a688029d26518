"""Black-box tests of gradwatchd: real ZeroMQ frames in, real HTTP out,
a real SQLite file underneath (docs/CONTRACT.md §5, §6, §9)."""
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time

import numpy as np
import pytest
import zmq

from conftest import Daemon, encode, free_port, scaled, subscribed_pub


def reference(zs, W, beta=0.9):
    """Independent float64 reference of docs/CONTRACT.md §2 for one stream."""
    zs = np.asarray(zs, dtype=np.float64)
    out = []
    e = zs[0].copy()
    r1, re_, nz = [], [], []
    for n in range(1, len(zs)):
        r1.append(np.sum((zs[n] - zs[n - 1]) ** 2))
        re_.append(np.sum((zs[n] - e) ** 2))
        nz.append(np.sum(zs[n] ** 2))
        e = beta * e + (1 - beta) * zs[n]
        lo = max(1, n - W + 1)
        J = slice(lo - 1, n)
        P1, Pe, N = sum(r1[J]), sum(re_[J]), sum(nz[J])
        H = (zs[lo:n + 1] - zs[lo - 1:n]).T
        s2 = np.linalg.svd(H, compute_uv=False) ** 2
        frac = np.cumsum(s2) / s2.sum()
        out.append(dict(step=n, path_onestep=P1, path_ema=Pe, kappa_onestep=P1 / N,
                        kappa_ema=Pe / N, kappa_onestep_cum=sum(r1) / sum(nz),
                        rank_90=int(np.argmax(frac >= 0.9 - 1e-12) + 1),
                        sketch_norm=np.sqrt(nz[-1])))
    return out


def series(d, run, tag, metrics, extra=""):
    code, body = d.json(f"/api/v1/series?run={run}&tag={tag}&metrics={','.join(metrics)}{extra}")
    assert code == 200, body
    return body


def stored_steps(d, run, tag):
    code, body = d.json(f"/api/v1/series?run={run}&tag={tag}&metrics=kappa_ema")
    if code == 404:  # the stream's first point is not committed yet
        return []
    assert code == 200, body
    return body["step"]


def wait_points(d, run, tag, n):
    return d.wait_for(lambda: len(stored_steps(d, run, tag)) >= n, what=f"{n} stored points")


def test_values_match_reference(daemon, pub):
    daemon.extra = ["--window", "8", "--rank-every", "1"]
    daemon.start()
    pub.connect_daemon()
    rng = np.random.default_rng(7)
    basis = rng.standard_normal((3, 32))
    zs = [(np.sin(0.1 * t) * basis[0] + np.cos(0.07 * t) * basis[1] + 0.01 * t * basis[2]
           + 0.05 * rng.standard_normal(32)).astype(np.float32) for t in range(40)]
    for t, z in enumerate(zs):
        pub.send_multipart(encode("r1", "all", t, z, loss=1.0 / (t + 1), lr=0.1, grad_norm=2.5))
    wait_points(daemon, "r1", "all", 39)
    ref = reference(zs, W=8)
    names = ["path_onestep", "path_ema", "kappa_onestep", "kappa_ema", "kappa_onestep_cum",
             "rank_90", "sketch_norm", "loss", "lr", "grad_norm"]
    got = series(daemon, "r1", "all", names)
    assert got["run"] == "r1" and got["tag"] == "all"
    assert got["step"] == list(range(1, 40))
    for i, r in enumerate(ref):
        for m in ["path_onestep", "path_ema", "kappa_onestep", "kappa_ema", "kappa_onestep_cum",
                  "sketch_norm"]:
            assert got[m][i] == pytest.approx(r[m], rel=1e-9), (m, i)
        assert got["rank_90"][i] == r["rank_90"], i
        assert got["loss"][i] == pytest.approx(1.0 / (i + 2))
        assert got["lr"][i] == pytest.approx(0.1) and got["grad_norm"][i] == 2.5
    # range filter and downsampling
    part = series(daemon, "r1", "all", ["kappa_ema"], "&from=10&to=19")
    assert part["step"] == list(range(10, 20))
    ds = series(daemon, "r1", "all", ["kappa_ema"], "&max_points=10")
    assert len(ds["step"]) <= 10
    assert max(ds["kappa_ema"]) == pytest.approx(max(got["kappa_ema"]))
    assert min(ds["kappa_ema"]) == pytest.approx(min(got["kappa_ema"]))

    code, runs = daemon.json("/api/v1/runs")
    assert code == 200
    (r1,) = [r for r in runs["runs"] if r["run"] == "r1"]
    assert r1["streams"] == 1 and r1["last_step"] == 39
    code, streams = daemon.json("/api/v1/runs/r1/streams")
    assert code == 200
    (s,) = streams["streams"]
    assert s["tag"] == "all" and s["k"] == 32 and s["points"] == 39 and s["last_step"] == 39


def test_rejections_are_counted_by_reason(daemon, pub):
    daemon.extra = ["--max-k", "64"]
    daemon.start()
    pub.connect_daemon()
    z = np.ones(8, np.float32)
    good = lambda step: encode("good", "all", step, z * (1 + step % 3))
    bad = [
        ([b"gw1/r/t"], None),                               # one frame
        (encode("r", "t", 1, z) + [b"x"], "bad_frames"),    # three frames
        ([b"gw1/no-tag", encode("r", "t", 1, z)[1]], "bad_topic"),
        (encode("bad name", "t", 1, z), "bad_name"),
        (encode("r", "t", 1, z, magic=0x12345678), "bad_magic"),
        (encode("r", "t", 1, z, version=9), "bad_version"),
        (encode("r", "t", 1, np.ones(65, np.float32)), "k_over_limit"),
        ([b"gw1/r/t", encode("r", "t", 1, z)[1][:70]], "truncated"),
        (encode("r", "t", 1, np.array([1, np.nan, 2, 3], np.float32)), "non_finite"),
        (encode("r", "t", 1, np.array([1, np.inf, 2, 3], np.float32)), "non_finite"),
        (encode("r", "t", 1, np.ones(3, np.float32)), "bad_sketch"),  # s=4 > k=3
    ]
    step = 0
    for frames, _ in bad:
        pub.send_multipart(good(step)); step += 1
        pub.send_multipart(frames)
    pub.send_multipart(good(step)); step += 1
    # stream-level: regressions and sketch mismatch
    pub.send_multipart(good(step - 1))                         # out_of_order (equal)
    pub.send_multipart(good(0))                                # out_of_order (smaller)
    pub.send_multipart(encode("good", "all", step + 5, z, seed=99))  # sketch_mismatch
    pub.send_multipart(encode("good", "all", step + 6, np.ones(9, np.float32)))  # mismatch (k)
    pub.send_multipart(good(step)); step += 1
    st = daemon.wait_for(lambda: (lambda s: s if s["points"] >= step - 1 and
                                  s["rejected"]["sketch_mismatch"] >= 2 else None)(daemon.stats()),
                         what="all messages processed")
    rej = st["rejected"]
    expect = {"bad_frames": 2, "bad_topic": 1, "bad_name": 1, "bad_magic": 1, "bad_version": 1,
              "k_over_limit": 1, "truncated": 1, "non_finite": 2, "out_of_order": 2, "bad_sketch": 1,
              "sketch_mismatch": 2}
    for reason, n in expect.items():
        assert rej[reason] == n, (reason, rej)
    # the good stream lost nothing
    assert st["points"] == step - 1
    wait_points(daemon, "good", "all", step - 1)
    log = daemon.log.read_text()
    assert "reason=bad_magic" in log
    # rejections are logged at a rate limit (10/s); the next logged one says
    # how many were held back
    assert log.count("event=reject") <= 10
    time.sleep(1.1)  # not a wait: the rate limit's 1 s window must pass
    pub.send_multipart(good(0))
    daemon.wait_for(lambda: "suppressed=" in daemon.log.read_text().splitlines()[-1]
                    and "reason=out_of_order" in daemon.log.read_text().splitlines()[-1],
                    what="rate-limited log line")
    last = daemon.log.read_text().splitlines()[-1]
    assert int(last.split("suppressed=")[1]) >= 3, last


def test_restart_and_sigterm_lose_nothing(daemon, pub):
    daemon.start()
    pub.connect_daemon()
    z0 = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    N = 2000
    for t in range(N):
        pub.send_multipart(encode("dur", "all", t, z0 + 0.01 * t))
    daemon.wait_for(lambda: daemon.stats()["points"] >= N - 1, what="all points")
    # SIGTERM right away: points still queued for the writer must be flushed
    assert daemon.stop() == 0
    con = sqlite3.connect(daemon.db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    daemon.start()
    got = series(daemon, "dur", "all", ["kappa_onestep"])
    assert got["step"] == list(range(1, N))
    # publishing resumes on the same stream after a restart
    pub2 = subscribed_pub(daemon.endpoint)
    for t in range(N, N + 10):
        pub2.send_multipart(encode("dur", "all", t, z0 + 0.01 * t))
    pub2.close()
    daemon.wait_for(lambda: len(stored_steps(daemon, "dur", "all")) >= N - 1 + 9,
                    what="points after restart")


def test_http_errors_are_json(daemon):
    daemon.start()
    cases = [
        ("/api/v1/series?tag=all&metrics=kappa_ema", 400, "run"),
        ("/api/v1/series?run=r&metrics=kappa_ema", 400, "tag"),
        ("/api/v1/series?run=r&tag=t&metrics=kappa_bogus", 400, "kappa_bogus"),
        ("/api/v1/series?run=r&tag=t&metrics=kappa_ema&from=x", 400, "from"),
        ("/api/v1/series?run=r&tag=t&metrics=kappa_ema&from=9&to=3", 400, "from"),
        ("/api/v1/series?run=nope&tag=t&metrics=kappa_ema", 404, ""),
        ("/api/v1/runs/nope/streams", 404, ""),
        ("/api/v1/alerts?state=sideways", 400, "state"),
        ("/api/v1/nothing", 404, ""),
    ]
    for path, code, needle in cases:
        c, body, hdrs = daemon.get(path)
        assert c == code, (path, c, body)
        err = json.loads(body)["error"]
        assert needle in err, (path, err)
        assert hdrs.get("Content-Type", "").startswith("application/json")
    c, body = daemon.json("/api/v1/alerts?state=all")
    assert c == 200 and body["alerts"] == []
    assert daemon.json("/healthz") == (200, {"status": "ok"})


def test_metrics_pass_promtool(daemon, pub):
    daemon.start()
    pub.connect_daemon()
    for t in range(20):
        pub.send_multipart(encode("prom", "layer.0/w", t, np.arange(8, dtype=np.float32) * (t + 1)))
    pub.send_multipart(encode("prom", "x", 1, np.array([np.nan, 0, 0, 0], np.float32)))
    daemon.wait_for(lambda: daemon.stats()["points"] >= 19 and daemon.stats()["received"] >= 21,
                    what="points")
    code, body, hdrs = daemon.get("/metrics")
    assert code == 200 and hdrs["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert 'gradwatch_messages_rejected_total{reason="non_finite"} 1' in text
    assert "gradwatch_messages_received_total 21" in text
    assert 'gradwatch_kappa{run="prom",tag="layer.0/w",predictor="onestep"}' in text
    assert 'gradwatch_rank{run="prom",tag="layer.0/w",energy="90"}' in text
    assert "gradwatch_streams 1" in text and "gradwatch_alerts_firing 0" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_token_and_pull_and_store_every(daemon_bin, tmp_path):
    tok = tmp_path / "token"
    tok.write_text("s3cret-token-0123456789\n")
    d = Daemon(daemon_bin, tmp_path, ["--http-token-file", str(tok), "--store-every", "5"],
               token="s3cret-token-0123456789")
    d.start()
    try:
        assert d.get("/healthz")[0] == 200
        c, body, hdrs = d.get("/api/v1/runs")
        assert c == 401 and "error" in json.loads(body)
        assert d.get("/api/v1/runs", {"Authorization": "Bearer wrong-token-0000000"})[0] == 401
        auth = {"Authorization": "Bearer s3cret-token-0123456789"}
        assert d.get("/api/v1/runs", auth)[0] == 200
        assert d.get("/metrics", auth)[0] == 200 and d.get("/metrics")[0] == 401
        # store_every: every point reaches stats, every 5th is stored
        sock = subscribed_pub(d.endpoint)
        for t in range(31):
            sock.send_multipart(encode("se", "all", t, np.ones(4, np.float32) * t))
        sock.close()
        d.wait_for(lambda: json.loads(d.get("/api/v1/stats", auth)[1])["points"] >= 30, what="points")
        def stored():
            c, b, _ = d.get("/api/v1/series?run=se&tag=all&metrics=kappa_ema", auth)
            return json.loads(b)["step"] if c == 200 else None
        steps = d.wait_for(lambda: (lambda s: s if s and len(s) >= 7 else None)(stored()),
                           what="stored points")
        # the stream's first point, then every 5th (store.h documents the rule)
        assert steps == [1, 5, 10, 15, 20, 25, 30], steps
    finally:
        assert d.stop() == 0


def test_pull_socket(daemon_bin, tmp_path):
    d = Daemon(daemon_bin, tmp_path)
    pull = f"tcp://127.0.0.1:{free_port()}"
    d.start("--zmq-pull", pull)
    try:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(pull)
        for t in range(5):
            push.send_multipart(encode("pull", "all", t, np.ones(4, np.float32) * t))
        push.close(linger=int(scaled(30) * 1000))  # PUSH queues until connected
        d.wait_for(lambda: d.stats()["points"] >= 4, what="points over PULL")
    finally:
        assert d.stop() == 0


def test_sd_notify_ready_watchdog_stopping(daemon_bin, tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(scaled(30))
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    d = Daemon(daemon_bin, tmp_path)
    args = [daemon_bin, "--zmq", d.endpoint, "--http", f"127.0.0.1:{d.http_port}", "--db", d.db]
    p = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
    try:
        msgs = set()
        deadline = time.time() + scaled(30)
        while not {"READY=1", "WATCHDOG=1"} <= msgs and time.time() < deadline:
            msgs |= set(srv.recv(4096).decode().split("\n"))
        assert "READY=1" in msgs and "WATCHDOG=1" in msgs, msgs
        p.send_signal(signal.SIGTERM)
        # WATCHDOG=1 keeps coming until the loop stops, so recv alone never
        # times out: bound the wait, or a lost SIGTERM hangs the suite.
        deadline = time.time() + scaled(30)
        while "STOPPING=1" not in msgs and time.time() < deadline:
            msgs |= set(srv.recv(4096).decode().split("\n"))
        assert "STOPPING=1" in msgs, "SIGTERM was not acted on"
        assert p.wait(scaled(60)) == 0
    finally:
        if p.poll() is None:
            p.kill()
        srv.close()


def test_cli_flags(daemon_bin, tmp_path):
    r = subprocess.run([daemon_bin, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("gradwatchd ")
    r = subprocess.run([daemon_bin, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--zmq-subscribe" in r.stdout
    r = subprocess.run([daemon_bin, "--window", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "window" in r.stderr
    r = subprocess.run([daemon_bin, "--zmq", "bogus://x", "--db", ":memory:", "--http", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 2 and "bogus://x" in r.stderr


def test_engine_threads_keep_streams_apart(daemon, pub):
    """Streams spread over 3 engine workers: each keeps its own order,
    values and stored rows (stream ids must be daemon-wide, not per worker)."""
    daemon.extra = ["--engine-threads", "3", "--window", "8"]
    daemon.start()
    pub.connect_daemon()
    rng = np.random.default_rng(3)
    zs = {f"layer.{i}": [rng.standard_normal(16).astype(np.float32) for _ in range(30)]
          for i in range(6)}
    for t in range(30):
        for tag, seq in zs.items():
            pub.send_multipart(encode("mt", tag, t, seq[t]))
    for tag, seq in zs.items():
        wait_points(daemon, "mt", tag, 29)
        got = series(daemon, "mt", tag, ["kappa_onestep", "path_onestep"])
        assert got["step"] == list(range(1, 30))
        ref = reference(seq, W=8)
        for i, r in enumerate(ref):
            assert got["path_onestep"][i] == pytest.approx(r["path_onestep"], rel=1e-9), (tag, i)
    code, streams = daemon.json("/api/v1/runs/mt/streams")
    assert sorted(s["tag"] for s in streams["streams"]) == sorted(zs)
    assert all(s["points"] == 29 for s in streams["streams"])
    assert daemon.stats()["streams"] == 6


def _sigblk(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)


@pytest.mark.skipif("TSAN_OPTIONS" in os.environ,
                    reason="OpenBLAS's spinning pool, which this test needs, reads as races "
                           "under ThreadSanitizer")
def test_signal_on_a_pool_thread_reaches_the_loop(daemon_bin, tmp_path):
    """SIGHUP and SIGTERM that the kernel hands to a thread a library started
    before main (OpenBLAS's pool, when OPENBLAS_NUM_THREADS does not keep it
    from starting), the one kind of thread that does not block them, are
    forwarded to the loop: the log is reopened, then the daemon shuts down
    cleanly (exit 0, state saved). Every thread the daemon starts blocks
    them (the loop reads them from a signalfd)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    d = Daemon(daemon_bin, tmp_path)
    args = [daemon_bin, "--zmq", d.endpoint, "--http", f"127.0.0.1:{d.http_port}", "--db", d.db,
            "--log-level", "debug"]
    with open(d.log, "wb") as logf:
        p = subprocess.Popen(args, env=env, stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + scaled(30)
        while "event=ready" not in d.log.read_text() and time.time() < deadline:
            assert p.poll() is None, d.log.read_text()
            time.sleep(0.05)
        term = 1 << (signal.SIGTERM - 1)
        tids = [int(t) for t in os.listdir(f"/proc/{p.pid}/task")]
        assert _sigblk(p.pid, p.pid) & term, "the loop's thread must block SIGTERM"
        open_ = [t for t in tids if t != p.pid and not _sigblk(p.pid, t) & term]
        if not open_:
            pytest.skip("no thread was started before main here (OpenBLAS single-threaded)")
        assert len(open_) < len(tids) - 1, "threads the daemon starts must block SIGTERM"
        libc = ctypes.CDLL(None, use_errno=True)
        tgkill = 234  # SYS_tgkill on x86-64: a signal to that one thread
        assert libc.syscall(tgkill, p.pid, open_[0], int(signal.SIGHUP)) == 0
        deadline = time.time() + scaled(30)
        while "event=sighup" not in d.log.read_text() and time.time() < deadline:
            time.sleep(0.05)
        assert "event=sighup" in d.log.read_text()
        assert p.poll() is None
        assert libc.syscall(tgkill, p.pid, open_[0], int(signal.SIGTERM)) == 0
        assert p.wait(scaled(60)) == 0
        log = d.log.read_text()
        assert "signal=SIGTERM" in log and "event=state_saved" in log and "event=stopped" in log
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
