"""The shipped Grafana dashboard (systemd/grafana/gradwatch.json) against a
real Prometheus scraping a real daemon (docs/DEPLOY.md "Grafana").

Grafana itself is not in Debian, so what Grafana would do with the
dashboard is done here: every PromQL expression of every panel, and the
selector inside every label_values() variable, has its template variables
replaced by concrete values and is evaluated by Debian's prometheus
(/api/v1/query), which scrapes gradwatchd with the shipped scrape job
(systemd/prometheus/gradwatch-scrape.yml, 0.5 s interval). Each must return
at least one series. The daemon holds two runs of noise, a second tag, and
one stalled stream whose alert fires, so every panel has something to show.
The runs table's data link, built from the series' labels as Grafana builds
it, must open the owning daemon's page. The provisioning files must say
what Grafana reads.
"""
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml

from conftest import encode, free_port, scaled

SRC = os.environ.get("GW_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
GRAFANA = os.path.join(SRC, "systemd", "grafana")
PROMDIR = os.path.join(SRC, "systemd", "prometheus")
K = 16


def wait(pred, timeout, what):
    deadline = time.time() + scaled(max(timeout, 20))
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def dashboard():
    with open(os.path.join(GRAFANA, "gradwatch.json")) as f:
        return json.load(f)


def all_panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def substitute(expr, values):
    """Grafana's interpolation of $var, ${var}, ${var:fmt} and [[var]]."""
    def one(m):
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in values, f"unknown variable {name} in {expr}"
        return values[name]
    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", one, expr)
    assert "$" not in out, out
    return out


class Prom:
    def __init__(self, tmp_path, http_port):
        binary = shutil.which("prometheus")
        if not binary:
            pytest.skip("Debian's prometheus is not installed")
        shipped = yaml.safe_load(open(os.path.join(PROMDIR, "gradwatch-scrape.yml")))
        job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "gradwatch")
        job = dict(job, scrape_interval="500ms", scrape_timeout="500ms",
                   static_configs=[{"targets": [f"127.0.0.1:{http_port}"], "labels": {"shard": "0/1"}}])
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump({"global": {"scrape_interval": "500ms"},
                                        "scrape_configs": [job]}))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp_path / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={self.url[7:]}", "--log.level=warn"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)

    def query(self, q):
        u = f"{self.url}/api/v1/query?query={urllib.parse.quote(q)}"
        try:
            with urllib.request.urlopen(u, timeout=scaled(10)) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400: the expression does not parse
            pytest.fail(f"prometheus refused {q}: {e.read().decode()}")
        assert body["status"] == "success", (q, body)
        return body["data"]["result"]

    def ready(self):
        if self.proc.poll() is not None:
            pytest.fail("prometheus exited: " + self.log.read_text())
        try:
            return urllib.request.urlopen(self.url + "/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


class Feeder(threading.Thread):
    """Noise on r1/all, r1/layer1.weight and r2/all at ~40 messages/s each
    (rate() sees counters move), until stopped."""

    def __init__(self, pub):
        super().__init__(daemon=True)
        self.pub, self.halt = pub, threading.Event()
        self.rng = np.random.default_rng(1)
        self.start()

    def run(self):
        step = 0
        while not self.halt.is_set():
            for run, tag in (("r1", "all"), ("r1", "layer1.weight"), ("r2", "all")):
                z = self.rng.standard_normal(K).astype(np.float32)
                self.pub.send_multipart(encode(run, tag, step, z, loss=1.0 / (step + 1)))
            step += 1
            time.sleep(0.025)


def test_dashboard_structure():
    d = dashboard()
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance", "run", "tag"} <= names
    for p in all_panels(d):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    # what the issue asks the dashboard to show
    exprs = " ".join(t["expr"] for p in all_panels(d) for t in p.get("targets", []))
    for needed in ("gradwatch_kappa{", "gradwatch_rank{", "gradwatch_messages_received_total",
                   "gradwatch_messages_rejected_total", "gradwatch_alert{",
                   "gradwatch_last_step"):
        assert needed in exprs, needed
    # the provisioning files
    ds = yaml.safe_load(open(os.path.join(GRAFANA, "provisioning", "datasources", "gradwatch.yml")))
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    dp = yaml.safe_load(open(os.path.join(GRAFANA, "provisioning", "dashboards", "gradwatch.yml")))
    assert dp["apiVersion"] == 1
    prov = dp["providers"][0]
    assert prov["type"] == "file" and prov["options"]["path"].startswith("/")


def test_every_expression_returns_series(daemon, pub, tmp_path):
    conf = tmp_path / "gw.ini"
    conf.write_text("[alert quiet]\nkind = stalled\nseconds = 1\ntag = beat\nseverity = warning\n")
    daemon.start("--config", str(conf))
    pub.connect_daemon()
    for step in range(3):  # a stream that goes silent: its stalled alert fires
        pub.send_multipart(encode("r2", "beat", step, np.ones(K, np.float32) * (step + 1)))
    feeder = Feeder(pub)
    prom = Prom(tmp_path, daemon.http_port)
    try:
        wait(prom.ready, 20, "prometheus ready")
        wait(lambda: prom.query('count_over_time(up{job="gradwatch"}[1m]) >= 4'), 30,
             "four scrapes of the daemon")
        wait(lambda: prom.query("gradwatch_alert == 1"), 20, "the stalled alert scraped")
        wait(lambda: prom.query('gradwatch_rank_run{run="r1"} > 0'), 20, "whole-run rank scraped")
        instance = f"127.0.0.1:{daemon.http_port}"
        values = {"datasource": "prometheus", "instance": instance, "run": "r1|r2",
                  "tag": ".*", "predictor": "ema|onestep|linear", "energy": "90",
                  "__rate_interval": "5s", "__interval": "1s", "__range": "1m"}
        d = dashboard()
        checked = 0
        for p in all_panels(d):
            for t in p.get("targets", []):
                q = substitute(t["expr"], values)
                res = prom.query(q)
                assert res, f"panel {p['title']!r}: no series for {q}"
                checked += 1
        assert checked >= 15
        # template variables: label_values(selector, label) gives values
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["definition"])
            assert m, v["definition"]
            res = prom.query(substitute(m.group(1), values))
            got = {s["metric"].get(m.group(2)) for s in res} - {None}
            assert got, f"variable {v['name']}: no values"
            if v["name"] == "run":
                assert got == {"r1", "r2"}
            if v["name"] == "instance":
                assert got == {instance}
        # the runs table's link: <dashboard>#/run/<run>, the owning daemon's page
        runs = next(p for p in all_panels(d) if p["title"] == "Runs" and p["type"] == "table")
        link = runs["fieldConfig"]["overrides"][0]["properties"][0]["value"][0]["url"]
        for s in prom.query(substitute(runs["targets"][0]["expr"], values)):
            m = s["metric"]
            url = link.replace("${__data.fields.dashboard}", m["dashboard"]) \
                      .replace("${__data.fields.run}", m["run"])
            assert url == f"http://{instance}/#/run/{m['run']}"
            with urllib.request.urlopen(url, timeout=scaled(10)) as r:
                assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        feeder.halt.set()
        feeder.join()
        prom.close()
