"""Black-box tests of gradwatchd's alerts (docs/CONTRACT.md §7, docs/ALERTS.md): a
collapsing stream raises the shipped rank_collapse alert, visible at
/api/v1/alerts, on /metrics, on SSE and at a webhook receiver (Alertmanager v4
payload), and resolves when the stream recovers; Debian's Prometheus,
scraping the daemon with systemd/prometheus/gradwatch-rules.yml, fires the
shipped rules too. Then stalled streams, SIGHUP reload (a broken file keeps
the old rules) and a restart that restores a firing alert without notifying
it again.

The stream is built here from numpy, independent of the daemon: healthy
phase = i.i.d. N(0, 1) sketches in R^32 (the window's increments spread over
many directions: rank_90 is around 25); collapse = a sketch jumping to norm
1000 along one fixed direction and growing 5% a step there (one increment
holds nearly all of the window's energy: rank_90 = 1).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import Daemon, encode, free_port, scaled

SRC = os.environ.get("GW_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
RULES = os.path.join(SRC, "systemd", "prometheus", "gradwatch-rules.yml")
K = 32


class Receiver:
    """A webhook receiver on loopback: keeps every POSTed JSON body."""

    def __init__(self):
        self.bodies = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                with outer.lock:
                    outer.bodies.append((self.headers.get("Content-Type"), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, status=None, rule=None):
        with self.lock:
            out = [b for _, b in self.bodies]
        return [b for b in out if (status is None or b["status"] == status)
                and (rule is None or b["alerts"][0]["labels"]["alertname"] == rule)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Events:
    """An SSE client of /api/v1/events collecting `event: alert` objects."""

    def __init__(self, d):
        self.alerts = []
        self.resp = urllib.request.urlopen(
            f"http://127.0.0.1:{d.http_port}/api/v1/events", timeout=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        event = None
        try:
            for raw in self.resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "alert":
                    self.alerts.append(json.loads(line[6:]))
        except Exception:
            pass

    def close(self):
        self.resp.close()


def wait(pred, timeout, what):
    """Poll pred() until it is truthy; `timeout` (s, on a quiet machine) is
    stretched by GW_TEST_TIME_SCALE and never below 20 s: a deadline, not a
    measurement, so a loaded machine only makes the test slower."""
    timeout = scaled(max(timeout, 20))
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Stream:
    """One (run, tag) stream: healthy noise, then a one-direction blow-up."""

    def __init__(self, sock, run, tag="all", seed=0):
        self.sock, self.run, self.tag = sock, run, tag
        self.rng = np.random.default_rng(seed)
        self.v = self.rng.standard_normal(K)
        self.v /= np.linalg.norm(self.v)
        self.step = 0
        self.g = 1000.0

    def send(self, z, **kw):
        self.sock.send_multipart(encode(self.run, self.tag, self.step, z.astype(np.float32), **kw))
        self.step += 1

    def healthy(self, n, rate=None, **kw):
        for _ in range(n):
            self.send(self.rng.standard_normal(K), **kw)
            if rate:
                time.sleep(1.0 / rate)

    def collapse(self, n, rate=None):
        for _ in range(n):
            self.g *= 1.05
            self.send(self.g * self.v + 0.01 * self.rng.standard_normal(K))
            if rate:
                time.sleep(1.0 / rate)


def metrics(d):
    code, body, _ = d.get("/metrics")
    assert code == 200
    return body.decode()


def firing(d, rule):
    code, body = d.json("/api/v1/alerts?state=firing")
    assert code == 200
    return [a for a in body["alerts"] if a["rule"] == rule]


def write(path, text):
    path.write_text(text)
    return str(path)


def prometheus_config(tmp_path, d, rules_path):
    """A Prometheus scraping d every 0.5 s, its rules evaluated every 0.5 s.
    The shipped rules' durations are scaled from minutes to seconds (a 30m
    baseline ending 5m ago → 30s ending 4s ago: with 5 s of healthy data
    before a collapse, the median stays healthy for the collapse's first 9 s;
    for 2m → 1s) so a test can watch them fire; the expressions are the
    shipped ones, unchanged."""
    text = open(RULES).read()
    text = text.replace("[30m] offset 5m", "[30s] offset 4s").replace("for: 2m", "for: 1s")
    assert "[30s] offset 4s" in text
    write(tmp_path / "rules.yml", text)
    cfg = f"""global:
  scrape_interval: 500ms
  evaluation_interval: 500ms
rule_files: [{tmp_path / "rules.yml"}]
scrape_configs:
  - job_name: gradwatch
    static_configs:
      - targets: ["127.0.0.1:{d.http_port}"]
"""
    return write(tmp_path / "prometheus.yml", cfg)


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    if not binary:
        pytest.skip("Debian's prometheus is not installed")
    procs = []

    def start(d):
        port = free_port()
        cfg = prometheus_config(tmp_path, d, RULES)
        log = open(tmp_path / "prometheus.log", "wb")
        p = subprocess.Popen([binary, f"--config.file={cfg}",
                              f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                              f"--web.listen-address=127.0.0.1:{port}",
                              "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200
            except OSError:
                return p.poll() is not None and pytest.fail((tmp_path / "prometheus.log").read_text())
        wait(ready, 20, "prometheus ready")

        def scraping():  # discovery hands targets over at most every 5 s
            q = urllib.request.quote('up{job="gradwatch"} == 1')
            with urllib.request.urlopen(f"{url}/api/v1/query?query={q}", timeout=2) as r:
                return json.loads(r.read())["data"]["result"]
        wait(scraping, 20, "prometheus scraping the daemon")
        return url
    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def prom_alerts(url):
    with urllib.request.urlopen(url + "/api/v1/alerts", timeout=5) as r:
        return json.loads(r.read())["data"]["alerts"]


class PromWatch(threading.Thread):
    """Polls Prometheus' /api/v1/alerts until every name in `names` has been
    seen firing for `run` (so the test doesn't race the scaled baseline
    window); result: those alerts, or None after `timeout` s."""

    def __init__(self, url, run, names, timeout=60):
        super().__init__(daemon=True)
        self.url, self.run_name, self.names, self.timeout = url, run, names, timeout
        self.result, self.last = None, None
        self.start()

    def run(self):
        deadline = time.time() + scaled(self.timeout)
        while time.time() < deadline and self.result is None:
            try:
                self.last = prom_alerts(self.url)
            except OSError:
                continue
            got = [x for x in self.last if x["state"] == "firing"
                   and x["labels"].get("run") == self.run_name]
            if self.names <= {x["labels"]["alertname"] for x in got}:
                self.result = got
            time.sleep(0.25)


def test_promtool_checks_shipped_rules(tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed")
    out = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout
    # The shipped rules at their real durations, on synthetic series: rank
    # 8 → 1 and kappa_ema 1.07 → 40 at minute 41 fire by minute 44 (for: 2m);
    # a stream whose median rank is 3 stays silent; nothing fires before.
    test = f"""rule_files: [{RULES}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'gradwatch_rank{{instance="d:1",job="gradwatch",run="r1",tag="all",energy="90"}}'
        values: '8x40 1x15'
      - series: 'gradwatch_rank{{instance="d:1",job="gradwatch",run="r2",tag="fc3.bias",energy="90"}}'
        values: '3x40 0x15'
      - series: 'gradwatch_kappa{{instance="d:1",job="gradwatch",run="r1",tag="all",predictor="ema"}}'
        values: '1.07x40 40x15'
      - series: 'gradwatch_alert{{instance="d:1",job="gradwatch",rule="rank_collapse",run="r1",tag="all",severity="critical"}}'
        values: '_x40 1x15'
    alert_rule_test:
      - eval_time: 42m
        alertname: GradwatchRankCollapse
        exp_alerts: []
      - eval_time: 44m
        alertname: GradwatchRankCollapse
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "d:1", job: gradwatch, run: r1, tag: all, energy: "90"}}
            exp_annotations:
              summary: "predictability collapse on r1/all: rank_90 is 1"
              description: "rank_90 fell below 0.3x its median of the 30 minutes before the last 5."
              runbook_url: "file:///usr/share/doc/gradwatch/ALERTS.md#runbook-GradwatchRankCollapse"
      - eval_time: 44m
        alertname: GradwatchKappaSurge
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "d:1", job: gradwatch, run: r1, tag: all, predictor: ema}}
            exp_annotations:
              summary: "predictability collapse on r1/all: kappa_ema is 40"
              description: "kappa_ema rose above 20x its median of the 30 minutes before the last 5."
              runbook_url: "file:///usr/share/doc/gradwatch/ALERTS.md#runbook-GradwatchKappaSurge"
      - eval_time: 41m
        alertname: GradwatchAlert
        exp_alerts:
          - exp_labels: {{rule: rank_collapse, run: r1, tag: all, severity: critical, source: gradwatchd}}
            exp_annotations:
              summary: "gradwatchd rule rank_collapse is firing for r1/all"
              description: "The daemon's own per-point rule fired; /api/v1/alerts on the daemon has the values."
              runbook_url: "file:///usr/share/doc/gradwatch/ALERTS.md#runbook-GradwatchAlert"
"""
    path = write(tmp_path / "rules_test.yml", test)
    out = subprocess.run([promtool, "test", "rules", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_collapse_alerts_everywhere(daemon, pub, tmp_path, prometheus):
    recv = Receiver()
    conf = write(tmp_path / "gw.ini", f"""[alerts]
webhook = {recv.url}
webhook_backoff_ms = 50
external_url = http://gw.example:8080
""")
    daemon.start("--config", conf)
    prom = prometheus(daemon)
    pub.connect_daemon()
    events = Events(daemon)
    s = Stream(pub, "collapse-run")
    collapsing = None
    try:
        # healthy for ~5 s of wall time (Prometheus' scaled baseline), then a
        # 6 s collapse published from a thread while the checks run
        s.healthy(150, rate=30)
        collapsing = threading.Thread(target=s.collapse, args=(60, 10))
        seen = PromWatch(prom, "collapse-run", {"GradwatchAlert", "GradwatchRankCollapse"})
        collapsing.start()
        fired = wait(lambda: firing(daemon, "rank_collapse"), 10, "rank_collapse firing")
        a = fired[0]
        assert (a["run"], a["tag"], a["severity"], a["state"]) == (
            "collapse-run", "all", "critical", "firing")
        assert 150 <= a["started_step"] <= 150 + 8 + 4, a  # rank_every 8, for_steps 4
        assert a["value"] < 0.3 and a["threshold"] == 0.3
        assert a["labels"]["alertname"] == "rank_collapse"
        assert "rank_90" in a["annotations"]["summary"]
        m = metrics(daemon)
        assert re.search(r"^gradwatch_alerts_firing [1-9]", m, re.M), m
        assert ('gradwatch_alert{rule="rank_collapse",run="collapse-run",tag="all",'
                'severity="critical"} 1') in m
        hook = wait(lambda: recv.alerts("firing", "rank_collapse"), 10, "webhook firing")[0]
        assert hook["version"] == "4" and hook["receiver"] == "gradwatch"
        assert hook["externalURL"] == "http://gw.example:8080"
        assert hook["groupLabels"]["run"] == "collapse-run"
        al = hook["alerts"][0]
        assert al["labels"] == {"alertname": "rank_collapse", "run": "collapse-run",
                                "tag": "all", "severity": "critical"}
        assert al["endsAt"] == "0001-01-01T00:00:00Z" and re.match(r"\d{4}-\d\d-\d\dT", al["startsAt"])
        assert al["generatorURL"].startswith("http://gw.example:8080/api/v1/series?run=collapse-run")
        assert re.fullmatch(r"[0-9a-f]{16}", al["fingerprint"])
        assert recv.bodies[0][0] == "application/json"
        sse = wait(lambda: [e for e in events.alerts if e["rule"] == "rank_collapse"], 5, "SSE alert")
        assert sse[0]["state"] == "firing" and sse[0]["id"] == a["id"]
        assert sse[0]["step"] >= sse[0]["started_step"]
        # Prometheus: the daemon's alert forwarded, and the PromQL rank rule
        seen.join()
        assert seen.result, f"Prometheus never fired both rules; last answer: {seen.last}"
        pa = seen.result
        fwd = [x for x in pa if x["labels"]["alertname"] == "GradwatchAlert"
               and x["labels"]["rule"] == "rank_collapse"]
        assert fwd and fwd[0]["labels"]["severity"] == "critical", pa
        rc = [x for x in pa if x["labels"]["alertname"] == "GradwatchRankCollapse"][0]
        assert rc["labels"]["tag"] == "all" and float(rc["value"]) == 1.0, rc
        collapsing.join()
        # recovery: once the blow-up has left the 64-point window the rank is
        # back (>= 0.5x the frozen healthy median) and the alert resolves
        s.healthy(120)
        res = wait(lambda: recv.alerts("resolved", "rank_collapse"), 15, "webhook resolved")[0]
        assert res["alerts"][0]["fingerprint"] == al["fingerprint"]
        assert res["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
        # the store commits within its flush interval (200 ms)
        wait(lambda: not firing(daemon, "rank_collapse"), 5, "API resolved")
        code, body = daemon.json("/api/v1/alerts?state=resolved")
        r = [x for x in body["alerts"] if x["id"] == a["id"]]
        assert r and r[0]["resolved_at"] >= r[0]["fired_at"]
        wait(lambda: [e for e in events.alerts if e["rule"] == "rank_collapse"
                      and e["state"] == "resolved"], 5, "SSE resolved")
        assert len(recv.alerts("firing", "rank_collapse")) == 1  # no flapping
    finally:
        if collapsing:
            collapsing.join()
        events.close()
        recv.close()


def test_stalled_reload_and_restart(daemon, pub, tmp_path):
    recv = Receiver()
    base = f"""[alerts]
webhook = {recv.url}
webhook_backoff_ms = 50
[alert quiet]
kind = stalled
seconds = 2
tag = beat
severity = info
"""
    conf = tmp_path / "gw.ini"
    write(conf, base)
    daemon.start("--config", str(conf))
    pub.connect_daemon()
    beat = Stream(pub, "job1", "beat", seed=1)
    try:
        # stalled: fires after 2 s of silence (1 s timer), resolves on the next message
        beat.healthy(3)
        t0 = time.time()
        wait(lambda: firing(daemon, "quiet"), 6, "stalled firing")
        assert time.time() - t0 >= 1.5
        beat.healthy(1)
        wait(lambda: recv.alerts("resolved", "quiet"), 5, "stalled resolved")
        assert len(recv.alerts("firing", "quiet")) == 1

        # SIGHUP with a broken file: logged, the old rules stay
        write(conf, base + "[alert loud]\nmetric = loss\nthreshold = lots\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait(lambda: "alerts_reload" in daemon.log.read_text(), 5, "reload error logged")
        assert "[alert loud] threshold" in daemon.log.read_text()
        assert daemon.proc.poll() is None
        # a good file: the new rule evaluates
        write(conf, base + "[alert loud]\nmetric = loss\nthreshold = 100\nfor_steps = 2\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait(lambda: "alerts_reloaded" in daemon.log.read_text(), 5, "reload logged")
        beat.healthy(3, loss=1000.0)
        a = wait(lambda: firing(daemon, "loud"), 5, "loud firing")[0]
        assert a["value"] == 1000.0 and a["threshold"] == 100.0
        wait(lambda: recv.alerts("firing", "loud"), 5, "loud webhook")

        # restart: the firing alert comes back from the store, not re-notified
        assert daemon.stop() == 0
        daemon.start("--config", str(conf))
        pub.connect_daemon()
        again = firing(daemon, "loud")
        assert [x["id"] for x in again] == [a["id"]]
        assert re.search(r"^gradwatch_alerts_firing 1$", metrics(daemon), re.M)
        beat.healthy(3, loss=1000.0)
        last = beat.step - 1
        wait(lambda: any(x["tag"] == "beat" and x["last_step"] == last
                         for x in daemon.json("/api/v1/runs/job1/streams")[1]["streams"]),
             5, "the loud steps evaluated")
        time.sleep(0.5)  # absence of a re-notification: a grace period, not a wait
        assert len(recv.alerts("firing", "loud")) == 1
        beat.healthy(1, loss=1.0)
        wait(lambda: recv.alerts("resolved", "loud"), 5, "loud resolved")
        assert len(recv.alerts("firing", "loud")) == 1

        def states():
            code, body = daemon.json("/api/v1/alerts?state=all")
            return [x["state"] for x in body["alerts"] if x["rule"] == "loud"]
        wait(lambda: states() == ["resolved"], 5, "one 'loud' alert, resolved, in the store")
    finally:
        recv.close()
