"""Remote write into a real Prometheus (docs/SCALE.md, docs/CONTRACT.md §5).

Debian's prometheus runs on loopback with its remote-write receiver enabled
and nothing to scrape, so every sample it holds came from gradwatchd's
--remote-write sink. The test publishes a known number of messages, waits
for the daemon's counters to say every point was sent, then reads every raw
sample back from Prometheus (a range selector returns them unaggregated)
and compares them, step by step, with what the daemon itself answers on
/api/v1/series: same steps, same values (float64, exact), nulls absent,
timestamps strictly increasing and within the run's receive times. A second
receiver that is down meanwhile is retried (5xx/transport) without holding
up the first; a receiver that answers 404 is not retried (4xx);
--remote-write-label adds its label to every series.
"""
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import Daemon, encode, free_port, scaled, subscribed_pub

METRICS = ["kappa_onestep", "kappa_ema", "rank_90", "rank_99", "grad_norm", "loss"]
STREAMS = [("rw-a", "all"), ("rw-a", "layer.0"), ("rw-b", "all")]
STEPS = 120


class Prom:
    """Debian's prometheus with --web.enable-remote-write-receiver."""

    def __init__(self, tmp_path, procs):
        binary = shutil.which("prometheus")
        if not binary:
            pytest.skip("Debian's prometheus is not installed")
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1m\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-remote-write-receiver",
             "--log.level=warn"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        procs.append(self.proc)
        deadline = time.time() + scaled(60)
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if urllib.request.urlopen(self.url + "/-/ready", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail("prometheus not ready: " + self.log.read_text())

    def api(self, path, **params):
        u = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(u, timeout=scaled(10)) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def raw(self, selector):
        """Every sample of the series `selector` picks: {labels: [(ts_ms, value)]}."""
        res = self.api("/api/v1/query", query=f"{selector}[1h]", time=f"{time.time() + 1:.3f}")
        return {tuple(sorted(s["metric"].items())):
                [(round(float(t) * 1000), float(v)) for t, v in s["values"]] for s in res["result"]}


@pytest.fixture
def procs():
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


def metric_values(d, name):
    """{labels-text: value} of one family on the daemon's /metrics."""
    code, body, _ = d.get("/metrics")
    assert code == 200
    out = {}
    for line in body.decode().splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def wait(pred, timeout, what):
    deadline = time.time() + scaled(timeout)
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def publish(d, t_before):
    sock = subscribed_pub(d.endpoint)
    rng = np.random.default_rng(7)
    for step in range(1, STEPS + 1):
        for i, (run, tag) in enumerate(STREAMS):
            z = rng.standard_normal(32) * (1 + 0.01 * step)
            # rw-b never sends a loss: its gradwatch_point_loss must not exist.
            loss = None if run == "rw-b" else 2.0 / step + i
            sock.send_multipart(encode(run, tag, step, z, grad_norm=float(np.linalg.norm(z)),
                                       loss=loss))
        if step % 20 == 0:
            time.sleep(0.02)  # let ingest keep up without a deep receive queue
    sock.close()
    return t_before


def test_every_point_reaches_prometheus_with_the_daemons_values(daemon_bin, tmp_path, procs):
    prom = Prom(tmp_path, procs)
    dead = f"http://127.0.0.1:{free_port()}/api/v1/write"  # nobody listens: retried
    d = Daemon(daemon_bin, tmp_path, extra=[
        "--remote-write", f"{prom.url}/api/v1/write", "--remote-write", dead,
        "--remote-write-label", "replica=a", "--window", "8", "--rank-every", "1", "--engine-threads", "1"])
    d.start()
    try:
        t0 = time.time()
        publish(d, t0)
        points = len(STREAMS) * (STEPS - 1)  # message n >= 1 of each stream is a point
        live = f'{{url="{prom.url}/api/v1/write"}}'
        wait(lambda: metric_values(d, "gradwatch_remote_write_sent_points_total").get(live)
             == points, 60, "every point sent to prometheus")
        t1 = time.time()
        # The dead receiver was retried and still holds its points; nothing lost
        # or refused anywhere.
        down = f'{{url="{dead}"}}'
        # The first retry comes one backoff (100 ms) after the first refused POST,
        # which on a loaded machine can be after the live receiver has everything.
        wait(lambda: metric_values(d, "gradwatch_remote_write_retries_total").get(down, 0) >= 1,
             30, "the dead receiver to be retried")
        assert metric_values(d, "gradwatch_remote_write_queued_points")[down] > 0
        assert metric_values(d, "gradwatch_remote_write_dropped_points_total") == {live: 0, down: 0}
        assert metric_values(d, "gradwatch_remote_write_failed_points_total") == {live: 0, down: 0}
        assert metric_values(d, "gradwatch_remote_write_retries_total")[live] == 0

        for run, tag in STREAMS:
            q = f"/api/v1/series?run={run}&tag={tag}&metrics={','.join(METRICS)}"
            wait(lambda: d.json(q)[0] == 200 and len(d.json(q)[1]["step"]) == STEPS - 1, 30,
                 "the store to commit every point")
            ref = d.json(q)[1]
            assert ref["step"] == list(range(2, STEPS + 1))
            sel = f'{{run="{run}",tag="{tag}"}}'
            steps = prom.raw("gradwatch_point_step" + sel)
            assert len(steps) == 1, steps  # one series: run, tag and the configured label
            (labels, samples), = steps.items()
            assert labels == (("__name__", "gradwatch_point_step"), ("replica", "a"),
                              ("run", run), ("tag", tag))
            ts = [t for t, _ in samples]
            assert [int(v) for _, v in samples] == ref["step"]
            assert all(b > a for a, b in zip(ts, ts[1:])), "timestamps must increase"
            assert t0 * 1000 - 1000 <= ts[0] and ts[-1] <= t1 * 1000 + 1000
            step_at = {t: int(v) for t, v in samples}
            for m in METRICS:
                got = prom.raw(f"gradwatch_point_{m}" + sel)
                want = {s: v for s, v in zip(ref["step"], ref[m]) if v is not None}
                if not want:
                    assert got == {}, (m, run, tag)
                    continue
                (_, ms), = got.items()
                assert {step_at[t]: v for t, v in ms} == want, (m, run, tag)
                assert len(ms) == len(want)
        # Loss: present for rw-a, absent (never a NaN sample) for rw-b.
        assert prom.raw('gradwatch_point_loss{run="rw-b"}') == {}
        assert len(prom.raw('gradwatch_point_loss{run="rw-a"}')) == 2
        # Nothing else was written: 7 names x 3 streams, less rw-b's loss.
        names = prom.api("/api/v1/label/__name__/values")
        assert sorted(names) == sorted(["gradwatch_point_" + m for m in METRICS + ["step"]])
        series = prom.api("/api/v1/series", **{"match[]": '{__name__=~"gradwatch_point_.*"}'})
        assert len(series) == 7 * len(STREAMS) - 1
    finally:
        rc = d.stop()
    assert rc == 0, d.log.read_text()
    # The dead receiver's points were dropped (and said so) at shutdown.
    assert re.search(r"event=remote_write .*result=dropped", d.log.read_text())


def test_refusal_is_not_retried_and_bad_flags_are_refused(daemon_bin, tmp_path, procs):
    prom = Prom(tmp_path, procs)
    d = Daemon(daemon_bin, tmp_path, extra=[
        "--remote-write", f"{prom.url}/api/v1/nowhere", "--remote-write-metrics", "kappa_ema",
        "--window", "4", "--engine-threads", "1"])
    d.start()
    try:
        sock = subscribed_pub(d.endpoint)
        for step in range(1, 11):
            sock.send_multipart(encode("rw-c", "all", step, np.arange(8.0) + step))
        sock.close()
        url = f'{{url="{prom.url}/api/v1/nowhere"}}'
        wait(lambda: metric_values(d, "gradwatch_remote_write_failed_points_total").get(url) == 9,
             30, "9 points refused")
        reqs = metric_values(d, "gradwatch_remote_write_requests_total")[url]
        assert metric_values(d, "gradwatch_remote_write_retries_total")[url] == 0
        assert 1 <= reqs <= 9
        assert metric_values(d, "gradwatch_remote_write_sent_points_total")[url] == 0
        assert re.search(r"event=remote_write .*result=refused .*http=404", d.log.read_text())
    finally:
        assert d.stop() == 0
    # Bad flags stop the daemon at start-up with exit status 2 and a message.
    for args, msg in [(["--remote-write", "ftp://x/"], "not an http"),
                      (["--remote-write", prom.url, "--remote-write-metrics", "kappa,rank_90"],
                       "unknown metric 'kappa'"),
                      (["--remote-write", prom.url, "--remote-write-metrics", "loss,loss"],
                       "listed twice"),
                      (["--remote-write", prom.url, "--remote-write-metrics", "loss,"],
                       "empty name"),
                      (["--remote-write", prom.url, "--remote-write-label", "run=x"], "reserved"),
                      (["--remote-write", prom.url, "--remote-write-label", "a-b=c"],
                       "not NAME=VALUE")]:
        p = subprocess.run([daemon_bin, "--db", ":memory:", "--http", f"127.0.0.1:{free_port()}",
                            "--zmq", f"tcp://127.0.0.1:{free_port()}", *args],
                           capture_output=True, text=True, timeout=scaled(30))
        assert p.returncode == 2, (args, p.stderr)
        assert msg in p.stderr, (args, p.stderr)
