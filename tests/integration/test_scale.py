"""Beyond one machine, on loopback (docs/CONTRACT.md §8, docs/SCALE.md).

Three real gradwatchd (--shard 0/3, 1/3, 2/3, each its own database and
ports), the CLI's `gradwatch proxy` in front of them, the CLI's synthetic
publisher behind it, and Debian's Prometheus scraping the three with the
scrape job of systemd/prometheus/gradwatch-scrape.yml. The owner of a run is
computed here from the shard function as docs/SCALE.md states it (FNV-1a 64
of the run name's bytes, mod N), itself checked against FNV's published
test vectors, not taken from the C code.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import Daemon, encode, free_port, scaled

SRC = os.environ.get("GW_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PROMDIR = os.path.join(SRC, "systemd", "prometheus")
N = 3
RUNS = [f"scale-{i}" for i in range(30)]


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def shard_of(run, n):
    return fnv1a64(run.encode()) % n


def test_shard_function_reference():
    # FNV-1a 64 test vectors (Fowler/Noll/Vo, fnv_test.c: "", "a", "foobar").
    assert fnv1a64(b"") == 0xcbf29ce484222325
    assert fnv1a64(b"a") == 0xaf63dc4c8601ec8c
    assert fnv1a64(b"foobar") == 0x85944171f73967e8
    # The test's runs fall in all three shards (else a shard would go untested).
    assert {shard_of(r, N) for r in RUNS} == set(range(N))
    # docs/SCALE.md's one-liner computes the same owner.
    doc = open(os.path.join(SRC, "docs", "SCALE.md")).read()
    m = re.search(r"^python3 -c '([^']+)' (\S+) (\d+)$", doc, re.M)
    assert m, "docs/SCALE.md lost its shard one-liner"
    said = re.search(r"^prints `(\d+)`", doc[m.end():], re.M)
    assert said and int(said.group(1)) == shard_of(m.group(2), int(m.group(3)))
    for run in [m.group(2), "scale-0", "scale-1", "a", "x" * 128]:
        for n in [3, 7, 65536]:
            out = subprocess.run([sys.executable, "-c", m.group(1), run, str(n)],
                                 capture_output=True, text=True, check=True).stdout
            assert int(out) == shard_of(run, n), (run, n)


# ---- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    b = os.environ.get("GW_CLI")
    if not b or not os.path.exists(b):
        pytest.fail("GW_CLI must name the built gradwatch binary (ctest sets it)")
    return b


@pytest.fixture
def procs():
    """Popen objects to reap at teardown, whatever happened (SIGTERM, then SIGKILL)."""
    ps = []
    yield ps
    for p in ps:
        if p.poll() is None:
            p.terminate()
    for p in ps:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def daemons(daemon_bin, tmp_path):
    ds = []
    yield ds
    for d in ds:
        if d.proc:
            d.stop()


def wait(pred, timeout, what):
    """Poll pred(); `timeout` is a deadline on a quiet machine, stretched by
    GW_TEST_TIME_SCALE and never below 30 s (a loaded machine is slower)."""
    timeout = scaled(max(timeout, 30))
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def runs_of(d):
    code, body = d.json("/api/v1/runs")
    assert code == 200, body
    return {r["run"]: r for r in body["runs"]}


def start_proxy(cli, procs, tmp_path, front, backends, *more):
    out, err = open(tmp_path / "proxy.out", "w"), open(tmp_path / "proxy.err", "w")
    args = [cli, "proxy", "--frontend", front, "--report", *more]
    for b in backends:
        args += ["--backend", b]
    p = subprocess.Popen(args, stdout=out, stderr=err, text=True)
    procs.append(p)
    want = f"({len(backends)}/{len(backends)})"
    wait(lambda: p.poll() is not None or want in (tmp_path / "proxy.err").read_text(), 15,
         "the proxy to connect every daemon")
    assert p.poll() is None, (tmp_path / "proxy.err").read_text()
    return p


def stop_ok(p, timeout=30):
    p.send_signal(signal.SIGTERM)
    return p.wait(scaled(timeout))


class Prom:
    """Debian's prometheus on a free loopback port, scraping `targets`
    (http port -> labels) with the job of gradwatch-scrape.yml."""

    def __init__(self, tmp_path, procs, targets):
        binary = shutil.which("prometheus")
        if not binary:
            pytest.skip("Debian's prometheus is not installed")
        shipped = yaml.safe_load(open(os.path.join(PROMDIR, "gradwatch-scrape.yml")))
        job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "gradwatch")
        job = dict(job, scrape_interval="1s", scrape_timeout="1s",
                   static_configs=[{"targets": [f"127.0.0.1:{port}"], "labels": labels}
                                   for port, labels in targets.items()])
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
               "scrape_configs": [job]}
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        procs.append(self.proc)

    def wait_ready(self):
        def ready():
            if self.proc.poll() is not None:
                pytest.fail("prometheus exited: " + self.log.read_text())
            try:
                return urllib.request.urlopen(self.url + "/-/ready", timeout=1).status == 200
            except OSError:
                return False
        wait(ready, 20, "prometheus ready")

    def query(self, q):
        u = f"{self.url}/api/v1/query?query={urllib.parse.quote(q)}"
        try:
            with urllib.request.urlopen(u, timeout=5) as r:
                body = json.loads(r.read())
        except OSError:
            return []
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, q):
        res = self.query(q)
        return float(res[0]["value"][1]) if res else None


# ---- the cluster ---------------------------------------------------------------------


def test_three_shards_behind_proxy_with_prometheus(cli, daemon_bin, tmp_path, procs, daemons):
    t0 = time.time()
    ds = []
    for i in range(N):
        (tmp_path / f"d{i}").mkdir()
        d = Daemon(daemon_bin, tmp_path / f"d{i}",
                   extra=["--shard", f"{i}/{N}", "--engine-threads", "1"])
        daemons.append(d)
        ds.append(d)
    # Prometheus first: it is the slowest to come up.
    prom = Prom(tmp_path, procs, {d.http_port: {"shard": f"{i}/{N}"} for i, d in enumerate(ds)})
    for d in ds:
        d.start()
    front = f"tcp://127.0.0.1:{free_port()}"
    proxy = start_proxy(cli, procs, tmp_path, front, [d.endpoint for d in ds])
    pub = subprocess.Popen(
        [cli, "publish", "--synthetic", "--run", "scale", "--runs", str(len(RUNS)),
         "--steps", "0", "--rate", "4", "--k", "64", "--endpoint", front, "--wait", "10",
         "--report"], stdout=open(tmp_path / "publish.out", "w"),
        stderr=open(tmp_path / "publish.err", "w"), text=True)
    procs.append(pub)

    # Every run lands on exactly one daemon: the one the shard function names.
    owner = {r: shard_of(r, N) for r in RUNS}
    wait(lambda: set().union(*(runs_of(d) for d in ds)) >= set(RUNS), 20,
         "all 30 runs on the daemons")
    seen = [set(runs_of(d)) for d in ds]
    assert set().union(*seen) == set(RUNS)
    for i in range(N):
        assert seen[i] == {r for r in RUNS if owner[r] == i}, f"daemon {i}"
        for j in range(i + 1, N):
            assert not seen[i] & seen[j]
    # Other shards' runs are ignored, not rejected: every message was received,
    # none rejected, though each daemon keeps only its third.
    for d in ds:
        st = d.stats()
        assert sum(st["rejected"].values()) == 0, st
        assert st["streams"] == len([r for r in RUNS if owner[r] == ds.index(d)])

    # The global view: Prometheus sees all 30 runs, each on its owner's series.
    prom.wait_ready()
    wait(lambda: prom.scalar("count(count by (run) (gradwatch_kappa))") == len(RUNS), 20,
         "Prometheus to see 30 runs")
    rows = prom.query("group by (run, shard, dashboard) (gradwatch_kappa)")
    assert len(rows) == len(RUNS), rows
    for row in rows:
        lab = row["metric"]
        i = owner[lab["run"]]
        assert lab["shard"] == f"{i}/{N}", lab
        # gradwatch-scrape.yml's relabel rule: the owner's dashboard, for links.
        assert lab["dashboard"] == f"http://127.0.0.1:{ds[i].http_port}/", lab

    # A daemon down loses only its shard: the others keep receiving new steps.
    down = 1
    mine = {r for r in RUNS if owner[r] == down}
    before_stop = runs_of(ds[down])
    assert ds[down].stop() == 0
    others = [i for i in range(N) if i != down]
    snap = {i: {r: v["last_step"] for r, v in runs_of(ds[i]).items()} for i in others}

    def others_advanced():
        for i in others:
            now = runs_of(ds[i])
            if set(now) != set(snap[i]):  # nothing of the stopped shard moves over
                raise AssertionError(f"daemon {i} runs changed: {set(now) ^ set(snap[i])}")
            if any(now[r]["last_step"] <= s for r, s in snap[i].items()):
                return False
        return True
    wait(others_advanced, 15, "the other shards to advance")
    assert pub.poll() is None, "publishing never blocks or fails on a missing daemon"
    # Prometheus: the stopped daemon is `up == 0` (what GradwatchDown alerts
    # on) and only its runs are gone from the global view.
    wait(lambda: prom.scalar(f'up{{job="gradwatch", shard="{down}/{N}"}}') == 0, 15,
         "up == 0 for the stopped daemon")
    wait(lambda: prom.scalar("count(count by (run) (gradwatch_kappa))") == len(RUNS) - len(mine),
         15, "Prometheus to lose exactly the stopped shard")

    # Restarting it (same database, same ports) resumes its shard.
    ds[down].start()
    back = runs_of(ds[down])
    assert set(back) == mine
    for r in mine:  # the database kept what it had
        assert back[r]["last_step"] >= before_stop[r]["last_step"]

    def resumed():
        now = runs_of(ds[down])
        return set(now) == mine and all(now[r]["last_step"] > back[r]["last_step"] for r in mine)
    wait(resumed, 15, "the restarted shard to resume")
    wait(lambda: prom.scalar("count(count by (run) (gradwatch_kappa))") == len(RUNS), 20,
         "Prometheus to see 30 runs again")
    assert "disconnected" in (tmp_path / "proxy.err").read_text()

    # Clean shutdown: publisher, then proxy (all it received forwarded), daemons.
    assert stop_ok(pub) == 0, (tmp_path / "publish.err").read_text()
    time.sleep(0.5)
    assert stop_ok(proxy) == 0, (tmp_path / "proxy.err").read_text()
    sent = re.search(r"total: sent (\d+)", (tmp_path / "publish.out").read_text())
    fwd = re.search(r"total: forwarded (\d+) messages", (tmp_path / "proxy.out").read_text())
    assert sent and fwd, ((tmp_path / "publish.out").read_text(),
                          (tmp_path / "proxy.out").read_text())
    assert int(fwd.group(1)) == int(sent.group(1)) > 0
    for d in ds:
        assert sum(d.stats()["rejected"].values()) == 0, d.stats()
        assert d.stop() == 0, d.log.read_text()
    assert time.time() - t0 < scaled(90)


# ---- the proxy alone ----------------------------------------------------------------


def test_prefix_shards_filter_in_the_proxy(cli, daemon_bin, tmp_path, procs, daemons):
    """With --zmq-subscribe prefixes, each daemon's subscription travels up
    through the proxy: a daemon *receives* only its prefix (stats.received),
    where --shard daemons receive everything and drop the rest."""
    import zmq
    ds = []
    for i, prefix in enumerate(["gw1/team-a-", "gw1/team-b-"]):
        (tmp_path / f"d{i}").mkdir()
        d = Daemon(daemon_bin, tmp_path / f"d{i}",
                   extra=["--zmq-subscribe", prefix, "--engine-threads", "1"])
        daemons.append(d)
        ds.append(d.start())
    port = free_port()
    start_proxy(cli, procs, tmp_path, f"tcp://127.0.0.1:{port}", [d.endpoint for d in ds])
    sock = zmq.Context.instance().socket(zmq.XPUB)  # sees subscriptions, like the client
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    subs = set()
    deadline = time.time() + scaled(30)
    while len(subs) < 2 and time.time() < deadline:
        if sock.poll(200):
            subs.add(sock.recv())
    assert subs == {b"\x01gw1/team-a-", b"\x01gw1/team-b-"}  # the union, forwarded up
    counts = {"team-a-1": 5, "team-b-1": 7, "team-c-1": 3}
    for step in range(8):
        for run, n in counts.items():
            if step < n:
                sock.send_multipart(encode(run, "all", step, [1.0 + step, 2.0, 3.0, 4.0]))
    ds[0].wait_for(lambda: ds[0].stats()["received"] == 5, what="team-a's 5 messages")
    ds[1].wait_for(lambda: ds[1].stats()["received"] == 7, what="team-b's 7 messages")
    time.sleep(0.3)  # nothing more arrives: team-c matched no daemon
    assert ds[0].stats()["received"] == 5 and ds[1].stats()["received"] == 7
    assert set(runs_of(ds[0])) == {"team-a-1"} and set(runs_of(ds[1])) == {"team-b-1"}
    sock.close()


def test_proxy_command_line(cli, tmp_path):
    def run(*args):
        return subprocess.run([cli, "proxy", *args], capture_output=True, text=True, timeout=scaled(60))

    r = run("--help")
    assert r.returncode == 0 and "--frontend" in r.stdout and "--backend" in r.stdout
    r = run()
    assert r.returncode == 2 and "--frontend" in r.stderr and "Try 'gradwatch proxy --help'" in r.stderr
    r = run("--frontend", "tcp://127.0.0.1:1")
    assert r.returncode == 2 and "--backend" in r.stderr
    r = run("--frontend", "localhost:5557", "--backend", "tcp://127.0.0.1:1")
    assert r.returncode == 2 and "ZeroMQ endpoint" in r.stderr
    r = run("--frontend", "tcp://127.0.0.1:9", "--backend", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "both a frontend and a backend" in r.stderr
    r = run("--frontend", "tcp://127.0.0.1:1", "--backend", "tcp://127.0.0.1:2", "--sndhwm", "0")
    assert r.returncode == 2 and "--sndhwm" in r.stderr
    r = run("--frontend", "bogus://x", "--backend", "tcp://127.0.0.1:2")
    assert r.returncode == 2 and "bogus://x" in r.stderr
    # A frontend address already taken is a run-time failure (1), said clearly.
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    busy = s.getsockname()[1]
    r = run("--frontend", f"tcp://127.0.0.1:{busy}", "--backend", "tcp://127.0.0.1:2")
    s.close()
    assert r.returncode == 1 and "cannot bind frontend" in r.stderr and "in use" in r.stderr
    # No daemon there yet: the proxy waits (reconnecting) and SIGTERM ends it with 0.
    p = subprocess.Popen([cli, "proxy", "--frontend", f"tcp://127.0.0.1:{free_port()}",
                          "--backend", f"tcp://127.0.0.1:{free_port()}", "--report"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.3)
    assert p.poll() is None
    t = time.time()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=scaled(30))
    assert p.returncode == 0, err
    assert time.time() - t < scaled(2.5)  # linger applies to queued messages only: none here
    assert "daemons 0/1" in out and "total: forwarded 0 messages" in out


def test_shipped_prometheus_and_alertmanager_configs(tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed")
    for f in ["gradwatch-scrape.yml", "prometheus-federation.yml"]:
        r = subprocess.run([promtool, "check", "config", os.path.join(PROMDIR, f)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    # The global Prometheus alerts when a leaf stops answering federation.
    test = tmp_path / "federation_test.yml"
    test.write_text(yaml.safe_dump({
        "rule_files": [os.path.join(PROMDIR, "gradwatch-federation-rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'up{job="gradwatch-federate", instance="prom-a:9090"}',
                 "values": "1 1 0 0 0 0 0 0 0 0"},
                {"series": 'up{job="gradwatch-federate", instance="prom-b:9090"}',
                 "values": "1 1 1 1 1 1 1 1 1 1"}],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "GradwatchPrometheusDown", "exp_alerts": []},
                {"eval_time": "8m", "alertname": "GradwatchPrometheusDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "job": "gradwatch-federate",
                                   "instance": "prom-a:9090"},
                    "exp_annotations": {
                        "summary": "leaf Prometheus prom-a:9090 is not answering federation",
                        "description": "The gradwatchd daemons it scrapes are not being "
                                       "watched or alerted on.",
                        "runbook_url": "file:///usr/share/doc/gradwatch/ALERTS.md"
                                       "#runbook-GradwatchPrometheusDown"}}]}]}]}))
    r = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    # Alertmanager: every route names a receiver that exists, and the alert
    # names it routes are ones the shipped rule files define.
    am = yaml.safe_load(open(os.path.join(PROMDIR, "alertmanager.yml")))
    receivers = {r["name"] for r in am["receivers"]}
    routes = [am["route"], *am["route"]["routes"]]
    assert all(r["receiver"] in receivers for r in routes)
    names = set()
    for f in ["gradwatch-rules.yml", "gradwatch-federation-rules.yml"]:
        for g in yaml.safe_load(open(os.path.join(PROMDIR, f)))["groups"]:
            names |= {r["alert"] for r in g["rules"] if "alert" in r}
    ops = next(r for r in routes if r["receiver"] == "gradwatch-ops")
    pattern = re.fullmatch(r'alertname=~"(.*)"', ops["matchers"][0]).group(1)
    assert {"GradwatchDown", "GradwatchPrometheusDown"} <= {n for n in names
                                                            if re.fullmatch(pattern, n)}
    amtool = shutil.which("amtool")
    if amtool:
        path = os.path.join(PROMDIR, "alertmanager.yml")
        r = subprocess.run([amtool, "check-config", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        for labels, want in [(["alertname=GradwatchDown", "instance=d0"], "gradwatch-ops"),
                             (["alertname=GradwatchKappaSurge", "severity=critical", "run=r"],
                              "gradwatch-training-page,gradwatch-training"),
                             (["alertname=GradwatchAlert", "severity=warning", "run=r"],
                              "gradwatch-training")]:
            r = subprocess.run([amtool, "config", "routes", "test", f"--config.file={path}",
                                *labels], capture_output=True, text=True)
            assert r.stdout.strip() == want, (labels, r.stdout, r.stderr)
