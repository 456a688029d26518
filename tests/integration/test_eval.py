"""The failure-zoo evaluation (eval/run.py, docs/ALERTS.md) in its quick mode:
four short real training runs streamed through the real daemon with its
shipped alert rules, alerts read back from the daemon's webhook.

Checks the output's structure and facts that hold by construction or were
measured: the healthy runs raise no gradwatch alert and no baseline alarm;
an lr x1000 spike is caught by gradwatch and by the gradient-norm baseline;
the stuck data loader is caught by gradwatch and by neither baseline; the
daemon's firings equal the shipped rules replayed on its stored series; and
the baselines' firings equal an independent brute-force recomputation
(numpy trailing median over the run's logged loss and gradient norm).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import scaled

SRC = os.environ.get("GW_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def brute_relative(v, threshold, resolve, for_steps=4, window=128, min_points=64):
    """Firing steps of 'v / median(last window values absorbed while
    inactive) > threshold for for_steps points', written independently of
    eval/score.py: the baseline is the plain list of absorbed values."""
    absorbed, phase, count, out = [], "inactive", 0, []
    for t, x in enumerate(v):
        if not np.isfinite(x):
            continue
        ratio = None
        base = absorbed[-window:]
        if (phase != "inactive" or len(base) >= min_points) and base:
            med = float(np.median(base))
            if med > 0:
                ratio = x / med
        if ratio is not None:
            if phase == "inactive" and ratio > threshold:
                phase, count = "pending", 1
            elif phase == "pending":
                phase, count = ("pending", count + 1) if ratio > threshold else ("inactive", 0)
            elif phase == "firing" and not ratio > resolve:
                phase = "inactive"
            if phase == "pending" and count >= for_steps:
                phase = "firing"
                out.append(t)
        if phase == "inactive":
            absorbed.append(x)
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    daemon = os.environ.get("GW_DAEMON")
    if not daemon:
        pytest.skip("GW_DAEMON is not set (run through ctest)")
    out = tmp_path_factory.mktemp("eval")
    p = subprocess.run([sys.executable, os.path.join(SRC, "eval", "run.py"), "--quick",
                        "--out", str(out), "--daemon", daemon],
                       capture_output=True, text=True, timeout=scaled(420))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(out / "results.json") as f:
        res = json.load(f)
    res["_out"] = out
    res["_stdout"] = p.stdout
    return res


def by_failure(res, failure):
    return [r for r in res["runs"] if r["spec"]["failure"] == failure][0]


def test_structure(result):
    res = result
    assert res["quick"] is True and res["daemon_exit"] == 0
    assert len(res["runs"]) == 4
    assert {r["spec"]["family"] for r in res["runs"]} == {"vision", "control"}
    assert res["dropped_messages"] == 0
    assert res["daemon_stats"]["accepted"] == sum(r["sent"] for r in res["runs"])
    assert set(res["tables"]) == {"all", "tune", "heldout"}
    tab = res["tables"]["all"]
    assert {(r["failure"], r["family"]) for r in tab["rows"]} == {("lr1000", "vision"),
                                                                  ("stuck", "control")}
    for row in tab["rows"]:
        for det in ("gradwatch", "loss_spike", "loss_nan_stuck", "grad_norm_spike"):
            assert set(row[det]) == {"detected", "within_200", "median_delay"}
            assert 0 <= row[det]["within_200"] <= row[det]["detected"] <= row["runs"] == 1
    # healthy steps: both healthy runs whole, plus the 250 steps before each injection
    assert tab["healthy_steps"] == 400 + 400 + 250 + 250 and tab["healthy_runs"] == 2
    assert set(res["targets"]["all"]) >= {"zero_false_alarms", "never_slower_where_both_catch"}
    md = (result["_out"] / "results.md").read_text()
    assert "| lr1000 | vision |" in md and "per 10,000 steps" in md
    for r in res["runs"]:
        assert (result["_out"] / "series" / (r["spec"]["run"] + ".npz")).exists()


def test_healthy_runs_raise_nothing(result):
    healthy = [r for r in result["runs"] if r["spec"]["failure"] is None]
    assert len(healthy) == 2
    for r in healthy:
        assert r["gradwatch_firings"] == [], r["spec"]["run"]
        assert all(v == [] for v in r["baseline_firings"].values()), r["baseline_firings"]
        assert r["final_loss"] < 0.2  # they did train
    fa = result["tables"]["all"]["false_alarms"]
    assert fa["gradwatch"]["false_alarms"] == 0 and fa["gradwatch"]["per_10k_steps"] == 0


def test_lr_spike_caught(result):
    r = by_failure(result, "lr1000")
    d = r["judged"]["detectors"]
    assert d["gradwatch"]["delay"] is not None and 0 <= d["gradwatch"]["delay"] <= 200
    assert all(step >= r["spec"]["inject"] for _, _, step in r["gradwatch_firings"])
    # the gradient of step S is taken before the first update at the raised
    # lr, so the first huge one is at S + 1 and the gradient-norm baseline
    # fires on its 4th breaching point, S + 4
    assert d["grad_norm_spike"]["delay"] == 4
    assert r["final_loss"] is None or r["final_loss"] > 1.0  # the run is ruined


def test_stuck_loader_caught_only_by_gradwatch(result):
    r = by_failure(result, "stuck")
    d = r["judged"]["detectors"]
    assert d["gradwatch"]["delay"] is not None and d["gradwatch"]["delay"] <= 200
    assert all(d[b]["delay"] is None for b in ("loss_spike", "loss_nan_stuck", "grad_norm_spike"))
    row = [x for x in result["tables"]["all"]["rows"] if x["failure"] == "stuck"][0]
    assert row["gradwatch_only_within_200"] == 1


def test_daemon_matches_replay_and_baselines_match_brute_force(result):
    assert result["replay_mismatches"] == []
    for r in result["runs"]:
        ser = np.load(result["_out"] / "series" / (r["spec"]["run"] + ".npz"))
        loss, gn = ser["log|loss"], ser["log|grad_norm"]
        assert len(loss) == r["spec"]["steps"]
        assert r["baseline_firings"]["loss_spike"] == brute_relative(loss, 3.0, 1.5)
        assert r["baseline_firings"]["grad_norm_spike"] == brute_relative(gn, 10.0, 5.0)
        # the daemon stored one point per step on stream all (the first message
        # of a stream makes none), with the loss the run logged
        steps = ser["all|step"]
        assert len(steps) >= len(loss) - 1 - r["nonfinite_stream_steps"]
        ok = np.isfinite(ser["all|loss"])
        np.testing.assert_allclose(ser["all|loss"][ok], loss[steps[ok]], rtol=1e-6)
