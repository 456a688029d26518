"""gradwatchd pushing its alerts to Alertmanager's v2 API, end to end
(docs/DEPLOY.md "Alertmanager"): two real Debian prometheus-alertmanager
processes on loopback (no gossip: each must hear every alert from the daemon
itself), each routing everything to a webhook receiver here; a daemon with a
stalled rule and `[alertmanager] url` naming both of them plus a dead port.
A silent stream fires: both Alertmanagers notify it firing with labels
alertname, run, tag, severity, the runbook annotation and a generatorURL
that opens the dashboard at the run; while it fires the daemon re-sends it
(Alertmanager's endsAt moves forward); a message resolves it and both notify
it resolved. The dead URL is counted as failed on /metrics, the live ones as
sent. The shipped routing examples pass `amtool check-config`.
"""
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import encode, free_port, scaled

SRC = os.environ.get("GW_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
PROMDIR = os.path.join(SRC, "systemd", "prometheus")
AM = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def wait(pred, timeout, what):
    deadline = time.time() + scaled(max(timeout, 20))
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Receiver:
    """Alertmanager's webhook notifications, by path (/a, /b)."""

    def __init__(self):
        self.got = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.got.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path, status):
        """Alerts of notifications to `path` whose alert has `status`."""
        with self.lock:
            got = list(self.got)
        return [a for p, b in got if p == path for a in b["alerts"] if a["status"] == status]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def start_alertmanager(tmp_path, name, hook_url):
    port = free_port()
    cfg = tmp_path / f"am-{name}.yml"
    cfg.write_text(f"""route:
  receiver: hook
  group_by: [alertname, run, tag]
  group_wait: 200ms
  group_interval: 500ms
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook_url}
        send_resolved: true
""")
    log = open(tmp_path / f"am-{name}.log", "wb")
    p = subprocess.Popen([AM, f"--config.file={cfg}", f"--storage.path={tmp_path / ('am-' + name)}",
                          f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                          "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        if p.poll() is not None:
            pytest.fail((tmp_path / f"am-{name}.log").read_text())
        try:
            return urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200
        except OSError:
            return False
    wait(ready, 20, f"alertmanager {name} ready")
    return p, url


def am_alerts(url):
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as r:
        return json.loads(r.read())


def metric(d, name):
    text = d.get("/metrics")[1].decode()
    m = re.search("^" + re.escape(name) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture
def alertmanagers(tmp_path):
    if not AM:
        pytest.skip("Debian's prometheus-alertmanager is not installed")
    recv = Receiver()
    procs = []
    try:
        for name in ("a", "b"):
            procs.append(start_alertmanager(tmp_path, name, f"{recv.base}/{name}"))
        yield recv, [u for _, u in procs]
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(10)
        recv.close()


def test_alerts_pushed_to_alertmanager_cluster(daemon, pub, tmp_path, alertmanagers):
    recv, (url_a, url_b) = alertmanagers
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens: counted as failed
    ext = f"http://127.0.0.1:{daemon.http_port}"
    conf = tmp_path / "gw.ini"
    conf.write_text(f"""[alerts]
defaults = false
external_url = {ext}
[alert quiet]
kind = stalled
seconds = 2
tag = beat
severity = warning
summary = {{run}}/{{tag}} is silent
[alertmanager]
url = {url_a}
url = {url_b}/
url = {dead}
resend = 1
runbook_url = https://runbooks.example/gradwatch/ALERTS.md
""")
    daemon.start("--config", str(conf))
    pub.connect_daemon()
    rng = np.random.default_rng(0)
    step = 0

    def beat(n):
        nonlocal step
        for _ in range(n):
            pub.send_multipart(encode("job-1", "beat", step,
                                      rng.standard_normal(8).astype(np.float32)))
            step += 1

    beat(3)
    # firing: both Alertmanagers notify it, with the daemon's labels
    for path in ("/a", "/b"):
        fired = wait(lambda: recv.alerts(path, "firing"), 30, f"firing notification at {path}")
        a = fired[0]
        assert a["labels"] == {"alertname": "quiet", "run": "job-1", "tag": "beat",
                               "severity": "warning"}, a["labels"]
        assert a["generatorURL"] == f"{ext}/#/run/job-1"
        assert a["annotations"]["summary"] == "job-1/beat is silent"
        assert a["annotations"]["runbook_url"] == \
            "https://runbooks.example/gradwatch/ALERTS.md#runbook-quiet"

    # re-sent while firing: endsAt (now + 4 resend intervals) moves forward
    def ends(url):
        xs = [x for x in am_alerts(url) if x["labels"].get("alertname") == "quiet"]
        return xs[0]["endsAt"] if xs and xs[0]["status"]["state"] == "active" else None
    first = wait(lambda: ends(url_a), 10, "the alert active in alertmanager a")
    wait(lambda: (ends(url_a) or "") > first, 10, "a resend moving endsAt forward")
    assert ends(url_b)

    # a message resolves it; both notify resolved. The stream then keeps
    # beating (every 0.5 s, from here on only this thread publishes) so the
    # alert stays resolved however slow the machine.
    beat(1)
    halt = threading.Event()

    def keep_beating():
        while not halt.wait(0.5):
            beat(1)
    beater = threading.Thread(target=keep_beating, daemon=True)
    beater.start()
    for path in ("/a", "/b"):
        res = wait(lambda: recv.alerts(path, "resolved"), 30, f"resolved notification at {path}")
        assert res[0]["labels"]["alertname"] == "quiet"
        assert res[0]["labels"]["run"] == "job-1"
    wait(lambda: not [x for x in am_alerts(url_a) if x["status"]["state"] == "active"],
         10, "no active alert left in alertmanager a")

    # counted: the live URLs' POSTs sent, the dead one's failed after its retries
    sent = 'gradwatch_alertmanager_posts_total{result="sent"}'
    failed = 'gradwatch_alertmanager_posts_total{result="failed"}'
    assert metric(daemon, sent) >= 4  # fire + resolve, to each of two
    wait(lambda: (metric(daemon, failed) or 0) >= 1, 30, "the dead URL counted as failed")
    # the re-send table holds what fires now (the silent stream may fire again
    # meanwhile: compare within one scrape)
    def same():
        text = daemon.get("/metrics")[1].decode()
        get = lambda n: re.search("^" + n + r" (\S+)$", text, re.M).group(1)
        return get("gradwatch_alertmanager_alerts") == get("gradwatch_alerts_firing")
    wait(same, 10, "the re-send table matching the alerts firing")
    assert metric(daemon, "gradwatch_alertmanager_alerts") == 0
    halt.set()
    beater.join()


def test_bad_alertmanager_url_refused(daemon_bin, tmp_path):
    conf = tmp_path / "bad.ini"
    conf.write_text("[alertmanager]\nurl = ftp://am.example:9093\nresend = 0\nbogus = 1\n")
    r = subprocess.run([daemon_bin, "--check-config", str(conf)], capture_output=True, text=True,
                       timeout=scaled(30))
    assert r.returncode == 1
    assert f"{conf}:2:" in r.stderr and "not an http:// or https:// URL" in r.stderr, r.stderr
    assert f"{conf}:3:" in r.stderr, r.stderr
    assert f"{conf}:4:" in r.stderr and "unknown key 'bogus'" in r.stderr, r.stderr
    r = subprocess.run([daemon_bin, "--db", ":memory:", "--alertmanager-url", "mailto:x@y"],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode != 0 and "alertmanager-url" in r.stderr, r.stderr
    r = subprocess.run([daemon_bin, "--help"], capture_output=True, text=True, timeout=scaled(30))
    assert "--alertmanager-url URL" in r.stdout


def test_amtool_checks_shipped_routing():
    amtool = shutil.which("amtool")
    if not amtool:
        pytest.skip("amtool (prometheus-alertmanager) is not installed")
    for name in ("alertmanager-slack-pagerduty.yml", "alertmanager.yml"):
        r = subprocess.run([amtool, "check-config", os.path.join(PROMDIR, name)],
                           capture_output=True, text=True, timeout=scaled(30))
        assert r.returncode == 0, r.stdout + r.stderr
    # the example routes what the daemon pushes (labels run, severity)
    r = subprocess.run([amtool, "config", "routes", "test",
                        "--config.file=" + os.path.join(PROMDIR, "alertmanager-slack-pagerduty.yml"),
                        "alertname=rank_collapse", "run=r1", "tag=all", "severity=critical"],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["pagerduty-training,slack-training"] or \
        set(r.stdout.replace(",", " ").split()) == {"pagerduty-training", "slack-training"}, r.stdout


def test_every_shipped_alert_links_to_its_runbook_section():
    """Each alert of the shipped Prometheus rules and each shipped daemon rule
    has a runbook_url whose #anchor exists in docs/ALERTS.md."""
    import yaml
    doc = open(os.path.join(SRC, "docs", "ALERTS.md")).read()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', doc))
    names = []
    for f in ("gradwatch-rules.yml", "gradwatch-federation-rules.yml"):
        for g in yaml.safe_load(open(os.path.join(PROMDIR, f)))["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    url = r["annotations"]["runbook_url"]
                    assert url == "file:///usr/share/doc/gradwatch/ALERTS.md#runbook-" + r["alert"]
                    names.append(r["alert"])
    assert len(names) >= 6
    for name in names + ["rank_collapse", "kappa_surge", "stream_stalled"]:
        assert "runbook-" + name in anchors, name
