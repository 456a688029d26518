"""Routed shards and replicas behind `gradwatch proxy --shards N` (docs/SCALE.md).

Four real gradwatchd on loopback: shards 0, 1 and 2 of 3, shard 1 with two
replicas (both `--shard 1/3`), and two routed proxies in front of all four,
each with its own publisher (a publisher points at exactly one proxy). The
owner of a run is computed here from the shard function as docs/SCALE.md
states it (FNV-1a 64 of the run name, mod N), not taken from the C code.

Checked: each daemon receives exactly its shard's messages (its `received`
counter grows by those and nothing else: routed, not filtered in the
daemon); both replicas compute identical points (their /api/v1/series
answers are equal, float for float); a replica stopped in the middle of a
stream loses nothing in the cluster view (the other replica holds every
step); and the command line's errors.
"""
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import Daemon, encode, free_port, scaled, subscribed_pub

N = 3
METRICS = "kappa_onestep,kappa_ema,kappa_linear,rank_90,rank_99,stable_rank,sigma_1,sketch_norm"


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def shard_of(run, n=N):
    return fnv1a64(run.encode()) % n


def runs_for(prefix, per_shard):
    """per_shard run names of each shard, by trying prefix-0, prefix-1, …"""
    out, i = {s: [] for s in range(N)}, 0
    while min(len(v) for v in out.values()) < per_shard:
        r = f"{prefix}-{i}"
        if len(out[shard_of(r)]) < per_shard:
            out[shard_of(r)].append(r)
        i += 1
    return out


@pytest.fixture(scope="module")
def cli():
    b = os.environ.get("GW_CLI")
    if not b or not os.path.exists(b):
        pytest.fail("GW_CLI must name the built gradwatch binary (ctest sets it)")
    return b


@pytest.fixture
def cluster(daemon_bin, cli, tmp_path):
    """{"daemons": [(shard, Daemon)], "proxies": [(Popen, frontend)]}, torn down after."""
    ds, ps = [], []
    c = {"daemons": ds, "proxies": ps}
    try:
        for i, shard in enumerate([0, 1, 1, 2]):
            (tmp_path / f"d{i}").mkdir()
            d = Daemon(daemon_bin, tmp_path / f"d{i}",
                       extra=["--shard", f"{shard}/{N}", "--engine-threads", "1",
                              "--window", "16", "--rank-every", "1"])
            d.start()
            ds.append((shard, d))
        for k in range(2):
            front = f"tcp://127.0.0.1:{free_port()}"
            args = [cli, "proxy", "--shards", str(N), "--frontend", front]
            for shard, d in ds:
                args += ["--backend", f"{shard}={d.endpoint}"]
            err = tmp_path / f"proxy{k}.err"
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
            ps.append((p, front))
            deadline = time.time() + scaled(30)
            while "(4/4)" not in err.read_text():
                assert p.poll() is None and time.time() < deadline, err.read_text()
                time.sleep(0.05)
        yield c
    finally:
        for p, _ in ps:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                assert p.wait(scaled(30)) == 0
        for _, d in ds:
            if d.proc:
                assert d.stop() == 0, d.log.read_text()


def received(d):
    return d.stats()["received"]


def warm_up(c, socks):
    """Send each shard a message through each proxy until every daemon got
    them: the daemons' subscriptions have then reached both proxies (a
    message sent before that is dropped by the XPUB, as for any SUB)."""
    warm = {s: rs[0] for s, rs in runs_for("warm", 1).items()}
    step = 0
    deadline = time.time() + scaled(30)
    while True:
        step += 1
        for sock in socks:
            for s in range(N):
                sock.send_multipart(encode(warm[s], f"p{socks.index(sock)}", step, np.ones(8)))
        time.sleep(0.05)
        got = [d.json("/api/v1/runs")[1]["runs"] for _, d in c["daemons"]]
        if all(len({r["run"] for r in rs}) == 1 and rs[0]["streams"] == len(socks) for rs in got):
            return
        assert time.time() < deadline, got


def series(d, run, tag="all"):
    code, body = d.json(f"/api/v1/series?run={run}&tag={tag}&metrics={METRICS}")
    return body if code == 200 else None


def wait(pred, timeout, what):
    deadline = time.time() + scaled(timeout)
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_each_daemon_receives_its_share_and_replicas_agree(cluster):
    ds, ps = cluster["daemons"], cluster["proxies"]
    socks = [subscribed_pub(front) for _, front in ps]
    try:
        warm_up(cluster, socks)
        base = [received(d) for _, d in ds]
        runs = runs_for("routed", 3)
        steps = 60
        rng = np.random.default_rng(3)
        sent = {s: 0 for s in range(N)}
        # proxy 0's publisher sends the even-numbered runs, proxy 1's the odd.
        all_runs = sorted(r for rs in runs.values() for r in rs)
        for step in range(1, steps + 1):
            for j, run in enumerate(all_runs):
                z = rng.standard_normal(24) + np.sin(step / 7 + j)
                socks[j % 2].send_multipart(encode(run, "all", step, z, grad_norm=1.0 + step))
                sent[shard_of(run)] += 1
            if step % 10 == 0:
                time.sleep(0.02)
        for i, (shard, d) in enumerate(ds):
            wait(lambda: received(d) - base[i] >= sent[shard], 30, f"daemon {i} to receive")
        time.sleep(0.3)  # anything misrouted would have arrived by now
        total = sum(sent.values())
        for i, (shard, d) in enumerate(ds):
            got = received(d) - base[i]
            assert got == sent[shard], (i, shard, got, sent)
            assert got <= total / 3 * 1.5  # its share, never the whole traffic
            assert d.stats()["rejected"] == {} or sum(d.stats()["rejected"].values()) == 0
            names = {r["run"] for r in d.json("/api/v1/runs")[1]["runs"]} - {
                rs[0] for rs in runs_for("warm", 1).values()}
            assert names == set(runs[shard]), (i, names)
        # The two replicas of shard 1 computed the same points.
        a, b = ds[1][1], ds[2][1]
        for run in runs[1]:
            wait(lambda: (series(a, run) or {}).get("step") == list(range(2, steps + 1)) and
                 (series(b, run) or {}).get("step") == list(range(2, steps + 1)), 30,
                 "both replicas to store every point")
            sa, sb = series(a, run), series(b, run)
            assert sa == sb
            assert any(v is not None for v in sa["kappa_ema"])
    finally:
        for s in socks:
            s.close(linger=0)


def test_stopping_a_replica_loses_nothing(cluster):
    ds, ps = cluster["daemons"], cluster["proxies"]
    socks = [subscribed_pub(front) for _, front in ps]
    try:
        warm_up(cluster, socks)
        runs = runs_for("failover", 2)[1]
        a, b = ds[1][1], ds[2][1]
        steps, stop_at = 120, 40
        for step in range(1, steps + 1):
            for j, run in enumerate(runs):
                socks[j % 2].send_multipart(encode(run, "all", step, np.cos(np.arange(16) * step)))
            if step == stop_at:
                wait(lambda: all((series(b, r) or {}).get("step", [0])[-1:] == [stop_at]
                                 for r in runs), 30, "replica b to reach the stop step")
                assert b.stop() == 0, b.log.read_text()
            time.sleep(0.005)
        for run in runs:
            wait(lambda: (series(a, run) or {}).get("step") == list(range(2, steps + 1)), 30,
                 f"replica a to hold every step of {run}")
        # a, the live replica, has everything.
        for run in runs:
            assert series(a, run)["step"][:stop_at - 1] == list(range(2, stop_at + 1))
        # b comes back on the same ports: both proxies kept its subscription
        # and queued its shard's messages, and deliver them now.
        b.start()
        for run in runs:
            wait(lambda: (series(b, run) or {}).get("step", [0])[-1] == steps, 60,
                 f"replica b to catch up on {run}")
            got = series(b, run)["step"]
            assert got[:stop_at - 1] == list(range(2, stop_at + 1))
            assert set(got) >= set(range(stop_at + 2, steps + 1)), "queued steps missing"
    finally:
        for s in socks:
            s.close(linger=0)


def test_routed_command_line(cli):
    def run(*args):
        return subprocess.run([cli, "proxy", "--frontend", "tcp://127.0.0.1:1", *args],
                              capture_output=True, text=True, timeout=scaled(30))
    ep = "tcp://127.0.0.1:2"
    for args, msg in [
            (["--shards", "3", "--backend", ep, "--backend", ep], "every shard needs one"),
            (["--shards", "2", "--backend", f"0={ep}", "--backend", f"0={ep}"],
             "shard 1 of 2 has no --backend"),
            (["--shards", "2", "--backend", f"2={ep}", "--backend", f"0={ep}"], "is for shard 2"),
            (["--backend", f"0={ep}"], "add --shards N"),
            (["--shards", "0", "--backend", ep], "--shards"),
            (["--shards", "70000", "--backend", ep], "--shards"),
            (["--shards", "1", "--backend", "1=nowhere"], "ZeroMQ endpoint")]:
        p = run(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert msg in p.stderr, (args, p.stderr)


def test_shipped_replica_configs_deduplicate(tmp_path):
    """The Prometheus examples for replicas: valid, and their recording rules
    keep one series per stream that survives a replica going away."""
    import shutil
    import yaml
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed")
    src = os.environ.get("GW_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    promdir = os.path.join(src, "systemd", "prometheus")
    r = subprocess.run([promtool, "check", "config",
                        os.path.join(promdir, "gradwatch-replicas-scrape.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lab = 'job="gradwatch",shard="1/3",run="r",tag="all",predictor="ema"'
    test = tmp_path / "replica_test.yml"
    test.write_text(yaml.safe_dump({
        "rule_files": [os.path.join(promdir, "gradwatch-replica-rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'gradwatch_kappa{{{lab},replica="a",instance="a:8080",'
                           f'dashboard="http://a:8080/"}}', "values": "0.5 0.6 0.7 0.8 0.9 1.0"},
                {"series": f'gradwatch_kappa{{{lab},replica="b",instance="b:8080",'
                           f'dashboard="http://b:8080/"}}', "values": "0.5 0.6 stale"},
                {"series": 'up{job="gradwatch",shard="1/3",replica="a"}', "values": "1 1 1 1 1 1"},
                {"series": 'up{job="gradwatch",shard="1/3",replica="b"}', "values": "1 1 0 0 0 0"}],
            "promql_expr_test": [
                {"expr": "cluster:gradwatch_kappa:dedup", "eval_time": t,
                 "exp_samples": [{"labels": 'cluster:gradwatch_kappa:dedup{job="gradwatch",'
                                            'shard="1/3",run="r",tag="all",predictor="ema"}',
                                  "value": v}]}
                for t, v in [("1m", 0.6), ("4m", 0.9)]] + [
                {"expr": "run:gradwatch_dashboard:live", "eval_time": "4m",
                 "exp_samples": [{"labels": 'run:gradwatch_dashboard:live{run="r",shard="1/3",'
                                            'replica="a",dashboard="http://a:8080/"}',
                                  "value": 1}]},
                {"expr": "shard:gradwatch_replicas_up:count", "eval_time": "4m",
                 "exp_samples": [{"labels": 'shard:gradwatch_replicas_up:count{shard="1/3"}',
                                  "value": 1}]}]}]}))
    r = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
