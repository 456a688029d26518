"""The regime summary end to end: GET /api/v1/runs/{run}/summary and
/api/v1/summary?runs= against an independent computation in NumPy from the
points /api/v1/series returns (numpy.quantile, method "linear", over the
non-null values; "final" = the last non-null value), alerts fired counted
from /api/v1/alerts, GET /api/v1/runs/{run}, the errors, gradwatch.Client's
summary(), and `gradwatch report` in its four formats with the CLI's
environment defaults (GRADWATCH_SERVER/TOKEN/ENDPOINT/RUN, options winning)."""
import csv
import io
import json
import math
import os
import subprocess

import numpy as np
import pytest

import gradwatch
from conftest import Daemon, scaled

QUANT = ["kappa_onestep", "kappa_ema", "kappa_linear"]
FINAL = ["kappa_onestep_cum", "kappa_ema_cum", "kappa_linear_cum", "kappa_best",
         "rank_90_run", "rank_99_run"]
MEDIAN = ["rank_90", "rank_99", "stable_rank"]


@pytest.fixture(scope="module")
def cli():
    b = os.environ.get("GW_CLI")
    if not b or not os.path.exists(b):
        pytest.fail("GW_CLI must name the built gradwatch binary (ctest sets it)")
    return b


def publish(cli, endpoint, run, steps, tags, extra=(), env=None):
    r = subprocess.run([cli, "publish", "--synthetic", "--run", run, "--tags", tags,
                        "--steps", str(steps), "--rate", "0", "--k", "16", "--wait", "30",
                        "--endpoint", endpoint, *extra], capture_output=True, text=True,
                       timeout=scaled(120), env=env)
    assert r.returncode == 0, r.stderr


def wait_points(d, run, tag, n):
    def ok():
        code, body = d.json(f"/api/v1/series?run={run}&tag={tag}&metrics=kappa_ema", d.auth)
        return code == 200 and len(body["step"]) >= n
    d.wait_for(ok, what=f"{n} points of {run}/{tag}")


def reference(d, run, tag):
    """The summary row of (run, tag) computed here from /api/v1/series."""
    names = QUANT + FINAL + MEDIAN
    code, s = d.json(f"/api/v1/series?run={run}&tag={tag}&metrics={','.join(names)}", d.auth)
    assert code == 200
    col = {m: np.array([np.nan if v is None else v for v in s[m]], dtype=float) for m in names}
    row = {"run": run, "tag": tag, "steps": len(s["step"]),
           "first_step": s["step"][0] if s["step"] else 0,
           "last_step": s["step"][-1] if s["step"] else 0}
    for m in QUANT:
        v = col[m][~np.isnan(col[m])]
        for name, p in (("p5", 0.05), ("median", 0.5), ("p95", 0.95)):
            row[f"{m}_{name}"] = float(np.quantile(v, p)) if len(v) else None
    for m in FINAL:
        v = col[m][~np.isnan(col[m])]
        row[m] = float(v[-1]) if len(v) else None
    for m in MEDIAN:
        v = col[m][~np.isnan(col[m])]
        row[f"{m}_median"] = float(np.median(v)) if len(v) else None
    _, alerts = d.json("/api/v1/alerts?state=all", d.auth)
    row["alerts_fired"] = sum(1 for a in alerts["alerts"] if a.get("run") == run
                              and a.get("tag") == tag and a.get("fired_at") is not None)
    return row


def check_row(got, want):
    assert set(got) == set(want), set(got) ^ set(want)
    for k, w in want.items():
        if w is None:
            assert got[k] is None, k
        elif isinstance(w, float):
            assert got[k] == pytest.approx(w, rel=1e-12, abs=1e-300), k
        else:
            assert got[k] == w, k


@pytest.fixture
def fed(daemon, cli, tmp_path):
    # A rule that fires on the calm run's synthetic loss (~2.3), never on
    # the noisy run (no loss sent): alerts_fired is counted per (run, tag).
    conf = tmp_path / "gw.ini"
    conf.write_text("[alert lossy]\nmetric = loss\nthreshold = 0.5\nfor_steps = 2\n")
    daemon.extra = ["--window", "8", "--rank-every", "1", "--config", str(conf)]
    daemon.start()
    publish(cli, daemon.endpoint, "calm", 200, "all,fc1.weight", ["--rank", "3", "--noise", "0.01",
                                                                   "--loss"])
    publish(cli, daemon.endpoint, "noisy", 150, "all", ["--rank", "6", "--noise", "0.5"])
    for run, tag, n in (("calm", "all", 199), ("calm", "fc1.weight", 199), ("noisy", "all", 149)):
        wait_points(daemon, run, tag, n)

    def fired():
        _, a = daemon.json("/api/v1/alerts?state=all")
        return {(x["run"], x["tag"]) for x in a["alerts"] if x["fired_at"] is not None}
    daemon.wait_for(lambda: fired() == {("calm", "all"), ("calm", "fc1.weight")},
                    what="the lossy alert on both calm streams")
    return daemon


def test_summary_matches_series(fed):
    code, one = fed.json("/api/v1/runs/calm/summary")
    assert code == 200 and one["run"] == "calm"
    assert sorted(r["tag"] for r in one["rows"]) == ["all", "fc1.weight"]
    for row in one["rows"]:
        check_row(row, reference(fed, "calm", row["tag"]))
        assert row["steps"] == 199 and row["first_step"] == 1 and row["last_step"] == 199
        assert row["kappa_onestep_p5"] <= row["kappa_onestep_median"] <= row["kappa_onestep_p95"]

    code, many = fed.json("/api/v1/summary?runs=noisy,calm")
    assert code == 200 and many["runs"] == ["noisy", "calm"]
    assert [(r["run"], r["tag"]) for r in many["rows"]][0] == ("noisy", "all")
    assert len(many["rows"]) == 3
    for row in many["rows"]:
        check_row(row, reference(fed, row["run"], row["tag"]))
    (calm,) = [r for r in many["rows"] if r["run"] == "calm" and r["tag"] == "all"]
    (noisy,) = [r for r in many["rows"] if r["run"] == "noisy"]
    assert calm["alerts_fired"] == 1 and noisy["alerts_fired"] == 0
    # The noisier, higher-rank run is the less predictable one.
    assert noisy["kappa_ema_median"] > calm["kappa_ema_median"]

    # One run's entry.
    code, run = fed.json("/api/v1/runs/calm")
    _, runs = fed.json("/api/v1/runs")
    assert code == 200 and "meta" in run  # plus the run's metadata
    assert {k: v for k, v in run.items() if k != "meta"} == [r for r in runs["runs"] if r["run"] == "calm"][0]

    # The Client's form of the same rows.
    c = gradwatch.Client(f"http://127.0.0.1:{fed.http_port}", token="")
    df = c.summary(["noisy", "calm"])
    assert list(df.index) == [(r["run"], r["tag"]) for r in many["rows"]]
    assert df.loc[("calm", "all"), "kappa_ema_p95"] == calm["kappa_ema_p95"]
    assert c.summary("calm", frame=False) == [r for r in many["rows"] if r["run"] == "calm"]
    with pytest.raises(gradwatch.UnknownRun, match="unknown run: ghost"):
        c.summary(["calm", "ghost"])


def test_summary_errors(fed):
    cases = [("/api/v1/runs/ghost/summary", 404, "unknown run: ghost"),
             ("/api/v1/runs/ghost", 404, "unknown run: ghost"),
             ("/api/v1/runs/bad%20name/summary", 400, "bad run name"),
             ("/api/v1/summary", 400, "missing parameter: runs"),
             ("/api/v1/summary?runs=", 400, "missing parameter: runs"),
             ("/api/v1/summary?runs=calm,,noisy", 400, "bad run name"),
             ("/api/v1/summary?runs=calm,calm", 400, "duplicate run: calm"),
             ("/api/v1/summary?runs=calm,ghost", 404, "unknown run: ghost"),
             ("/api/v1/summary?runs=" + ",".join(f"r{i}" for i in range(65)), 400, "at most 64"),
             ("/api/v1/runs/calm/summary/x", 404, "not found")]
    for path, status, text in cases:
        code, body = fed.json(path)
        assert code == status and text in body["error"], (path, code, body)
    assert fed.get("/api/v1/runs/calm/summary", {})[0] == 200  # HEAD-less GET again: still fine


def test_report_cli_and_environment(daemon_bin, tmp_path, cli):
    token = "s3cret-token-0123456789"
    (tmp_path / "tok").write_text(token + "\n")
    d = Daemon(daemon_bin, tmp_path, ["--http-token-file", str(tmp_path / "tok"), "--window", "8"],
               token=token)
    d.start()
    try:
        env = dict(os.environ, GRADWATCH_ENDPOINT=d.endpoint, GRADWATCH_RUN="job-4242",
                   GRADWATCH_SERVER=f"http://127.0.0.1:{d.http_port}", GRADWATCH_TOKEN=token)
        # publish: endpoint and run from the environment ("job-4242").
        r = subprocess.run([cli, "publish", "--synthetic", "--steps", "60", "--rate", "0", "--k",
                            "16", "--wait", "30"], capture_output=True, text=True, env=env,
                           timeout=scaled(120))
        assert r.returncode == 0, r.stderr
        wait_points(d, "job-4242", "all", 59)
        want = reference(d, "job-4242", "all")

        def report(*args, e=env):
            return subprocess.run([cli, "report", *args], capture_output=True, text=True, env=e,
                                  timeout=scaled(60))

        r = report("job-4242", "--format", "json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        (row,) = doc["rows"]
        check_row(row, want)
        r = report("job-4242", "--format", "csv")
        assert r.returncode == 0, r.stderr
        (crow,) = list(csv.DictReader(io.StringIO(r.stdout)))
        assert list(crow) == list(row)  # every field, the server's order
        for k, v in row.items():
            if v is None:
                assert crow[k] == ""
            elif isinstance(v, str):
                assert crow[k] == v
            else:
                assert float(crow[k]) == v, k  # exact: reads back bit for bit
        r = report("job-4242")
        lines = r.stdout.splitlines()
        assert r.returncode == 0 and lines[0].split()[:3] == ["run", "tag", "steps"]
        cells = lines[1].split()
        assert cells[:3] == ["job-4242", "all", "59"]
        assert float(cells[4]) == pytest.approx(row["kappa_onestep_median"], rel=1e-5)
        r = report("job-4242", "--format", "md")
        md = r.stdout.splitlines()
        assert md[0].startswith("| run") and md[1].startswith("|:-") and len(md) == 3
        assert [c.strip() for c in md[2].strip("|").split("|")][:3] == ["job-4242", "all", "59"]

        # Options win over the environment; errors say what is wrong.
        r = report("job-4242", "--token", "wrong-token-00000000")
        assert r.returncode == 1 and "401" in r.stderr
        noenv = {k: v for k, v in env.items() if k != "GRADWATCH_TOKEN"}
        r = report("job-4242", e=noenv)
        assert r.returncode == 1 and "401" in r.stderr
        r = report("job-4242", "--server", "http://127.0.0.1:9", "--timeout", "5")
        assert r.returncode == 1 and "127.0.0.1:9" in r.stderr
        r = report("job-4242", e=dict(env, GRADWATCH_SERVER="localhost:8080"))
        assert r.returncode == 2 and "GRADWATCH_SERVER" in r.stderr
        r = report("ghost")
        assert r.returncode == 1 and "unknown run: ghost" in r.stderr
        r = report("bad name")
        assert r.returncode == 2 and "bad run name" in r.stderr
        r = report()
        assert r.returncode == 2 and "at least one RUN" in r.stderr
        r = report("x", "--format", "xml")
        assert r.returncode == 2 and "--format" in r.stderr
        r = subprocess.run([cli, "publish", "--synthetic", "--steps", "1"], capture_output=True,
                           text=True, env=dict(env, GRADWATCH_ENDPOINT="127.0.0.1:5557"),
                           timeout=scaled(60))
        assert r.returncode == 2 and "GRADWATCH_ENDPOINT" in r.stderr
    finally:
        rc = d.stop()
    assert rc == 0
