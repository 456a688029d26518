"""gradwatch.Client against the real gradwatchd: every value it returns
equals what /api/v1/series, /runs, /streams and /alerts answer (read here
with plain urllib + json, not through the Client), the DataFrame and the
no-pandas dict forms, range and downsampling parameters, each exception of
the hierarchy from a real failure (daemon down, wrong token, unknown run or
stream, bad metric), and the environment defaults of Client and Publisher
(GRADWATCH_SERVER/TOKEN/ENDPOINT/RUN, explicit arguments winning)."""
import math
import socket

import numpy as np
import pytest

import gradwatch
from conftest import Daemon, free_port, scaled


def publish(endpoint, run, steps, tags=("all",), k=32, seed=3, loss=True):
    """Low-rank sketches with noise, published by the Python Publisher
    once the daemon has subscribed; returns the Publisher's sent count."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((3, k))
    with gradwatch.Publisher(endpoint, run=run, k=k) as pub:
        assert pub.wait_subscribed(scaled(30))
        for t in range(steps):
            z = (np.sin(0.1 * t) * basis[0] + np.cos(0.07 * t) * basis[1] + 0.01 * t * basis[2]
                 + 0.05 * rng.standard_normal(k))
            for tag in tags:
                assert pub.publish_sketch(tag, t, z, loss=(1.0 / (t + 1)) if loss and t % 3 else None)
        return pub.sent


def wait_points(d, run, tag, n):
    def count():
        code, body = d.json(f"/api/v1/series?run={run}&tag={tag}&metrics=kappa_ema", d.auth)
        return code == 200 and len(body["step"]) >= n
    d.wait_for(count, what=f"{n} stored points of {run}/{tag}")


def same(got, want):
    """Float arrays equal element by element, NaN where the JSON has null."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert math.isnan(g)
        else:
            assert g == w


@pytest.fixture
def fed(daemon):
    daemon.extra = ["--window", "8", "--rank-every", "1"]
    daemon.start()
    publish(daemon.endpoint, "nb1", 120, tags=("all", "fc1.weight"))
    wait_points(daemon, "nb1", "all", 119)
    wait_points(daemon, "nb1", "fc1.weight", 119)
    return daemon


def test_series_equals_the_api(fed, monkeypatch):
    monkeypatch.delenv("GRADWATCH_SERVER", raising=False)
    monkeypatch.delenv("GRADWATCH_TOKEN", raising=False)
    c = gradwatch.Client(f"http://127.0.0.1:{fed.http_port}/")
    metrics = ["kappa_ema", "kappa_onestep", "rank_90", "loss", "stable_rank"]
    _, ref = fed.json(f"/api/v1/series?run=nb1&tag=all&metrics={','.join(metrics)}")
    df = c.series("nb1", "all", metrics)
    assert list(df.columns) == metrics and df.index.name == "step"
    assert df.index.dtype == np.int64 and list(df.index) == ref["step"]
    for m in metrics:
        assert df[m].dtype == np.float64
        same(df[m].to_numpy(), ref[m])
    assert df["loss"].isna().sum() == sum(v is None for v in ref["loss"]) > 0

    # The dict form (what a notebook without pandas gets).
    d = c.series("nb1", "all", "kappa_ema,rank_90", frame=False)
    assert set(d) == {"step", "kappa_ema", "rank_90"} and d["step"].dtype == np.int64
    assert list(d["step"]) == ref["step"]
    same(d["kappa_ema"], ref["kappa_ema"])

    # Every metric when none is named; a range; downsampling; a single name.
    _, allm = fed.json("/api/v1/series?run=nb1&tag=fc1.weight")
    full = c.series("nb1", "fc1.weight")
    assert list(full.columns) == [k for k in allm if k not in ("run", "tag", "step")]
    same(full["kappa_best"].to_numpy(), allm["kappa_best"])
    part = c.series("nb1", "all", ["kappa_ema"], from_step=10, to_step=19)
    assert list(part.index) == list(range(10, 20))
    _, ds_ref = fed.json("/api/v1/series?run=nb1&tag=all&metrics=kappa_ema&max_points=10")
    ds = c.series("nb1", "all", "kappa_ema", max_points=10)
    assert list(ds.index) == ds_ref["step"] and len(ds) <= 10
    same(ds["kappa_ema"].to_numpy(), ds_ref["kappa_ema"])
    inc = c.series("nb1", "all", ["kappa_ema"], incarnations=True)
    assert "incarnation" in inc.columns and len(set(inc["incarnation"])) == 1

    # Runs, one run, streams: as the API lists them.
    _, runs = fed.json("/api/v1/runs")
    assert c.runs() == runs["runs"]
    (nb1,) = [r for r in runs["runs"] if r["run"] == "nb1"]
    one = c.run("nb1")
    assert "meta" in one  # the run's metadata (None or the document)
    assert {k: v for k, v in one.items() if k != "meta"} == nb1 and nb1["streams"] == 2
    _, streams = fed.json("/api/v1/runs/nb1/streams")
    assert c.streams("nb1") == streams["streams"]
    assert sorted(s["tag"] for s in c.streams("nb1")) == ["all", "fc1.weight"]
    _, alerts = fed.json("/api/v1/alerts?state=all")
    assert c.alerts() == alerts["alerts"] and c.alerts("firing", run="nope") == []


def test_errors(fed, monkeypatch):
    monkeypatch.delenv("GRADWATCH_TOKEN", raising=False)
    c = gradwatch.Client(f"http://127.0.0.1:{fed.http_port}")
    with pytest.raises(gradwatch.UnknownRun, match="unknown run"):
        c.run("nope")
    with pytest.raises(gradwatch.UnknownRun):
        c.streams("nope")
    with pytest.raises(gradwatch.UnknownStream, match="unknown stream"):
        c.series("nb1", "nope", "kappa_ema")
    with pytest.raises(gradwatch.NotFound):
        c.series("nope", "all")
    with pytest.raises(gradwatch.BadRequest, match="unknown metric: kappa_nope") as e:
        c.series("nb1", "all", ["kappa_ema", "kappa_nope"])
    assert e.value.status == 400 and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="run"):
        c.series("bad name", "all")  # checked before any request
    with pytest.raises(ValueError, match="from_step"):
        c.series("nb1", "all", from_step=-1)
    with pytest.raises(ValueError, match="state"):
        c.alerts("open")

    # Down: nothing listens on this port.
    down = gradwatch.Client(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(gradwatch.DaemonUnavailable, match="no answer") as e:
        down.runs()
    assert e.value.status is None and isinstance(e.value, ConnectionError)
    # A listener that never answers: a timeout is DaemonUnavailable too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        mute = gradwatch.Client(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
        with pytest.raises(gradwatch.DaemonUnavailable):
            mute.runs()
    for bad in ("127.0.0.1:8080", "ftp://x", "http://"):
        with pytest.raises(ValueError, match="url"):
            gradwatch.Client(bad)


def test_token_and_environment(daemon_bin, tmp_path, monkeypatch):
    token = "s3cret-token-0123456789"
    (tmp_path / "tok").write_text(token + "\n")
    d = Daemon(daemon_bin, tmp_path, ["--http-token-file", str(tmp_path / "tok")], token=token)
    d.start()
    try:
        url = f"http://127.0.0.1:{d.http_port}"
        monkeypatch.delenv("GRADWATCH_TOKEN", raising=False)
        monkeypatch.delenv("GRADWATCH_SERVER", raising=False)
        with pytest.raises(gradwatch.Unauthorized, match="GRADWATCH_TOKEN") as e:
            gradwatch.Client(url).runs()
        assert e.value.status == 401
        with pytest.raises(gradwatch.Unauthorized):
            gradwatch.Client(url, token="wrong-token-0000000000").runs()
        assert gradwatch.Client(url, token=token).runs() == []

        # From the environment; an explicit argument wins over it.
        monkeypatch.setenv("GRADWATCH_SERVER", url)
        monkeypatch.setenv("GRADWATCH_TOKEN", token)
        env = gradwatch.Client()
        assert env.url == url and env.runs() == []
        with pytest.raises(gradwatch.Unauthorized):
            gradwatch.Client(token="wrong-token-0000000000").runs()
        with pytest.raises(gradwatch.DaemonUnavailable):
            gradwatch.Client(f"http://127.0.0.1:{free_port()}", timeout=5).runs()
        monkeypatch.setenv("GRADWATCH_SERVER", "not a url")
        with pytest.raises(ValueError, match="GRADWATCH_SERVER"):
            gradwatch.Client()

        # The Publisher: endpoint and run from the environment.
        monkeypatch.setenv("GRADWATCH_ENDPOINT", d.endpoint)
        monkeypatch.setenv("GRADWATCH_RUN", "slurm-4242")
        with gradwatch.Publisher(k=16) as pub:
            assert pub.endpoint == d.endpoint and pub.run == "slurm-4242"
            assert pub.wait_subscribed(scaled(30))
            for t in range(3):
                assert pub.publish_sketch("all", t, np.arange(1.0, 17.0) * (t + 1))
        with gradwatch.Publisher(run="explicit", k=16) as pub:  # explicit run wins
            assert pub.run == "explicit" and pub.endpoint == d.endpoint
        d.wait_for(lambda: [r["run"] for r in env_client(url, token).runs()] == ["slurm-4242"],
                   what="the run named by GRADWATCH_RUN")
    finally:
        rc = d.stop()
    assert rc == 0


def env_client(url, token):
    return gradwatch.Client(url, token=token)
