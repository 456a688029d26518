"""Run metadata end to end (PROTOCOL.md section 11): a Python publisher's
config, tags and labels through the wire, the daemon's SQLite store (kept
across a restart), GET /api/v1/runs (tags, labels, ?tag= and ?label=
filters) and GET /api/v1/runs/{run}, gradwatch_run_info on /metrics with
--metrics-labels (checked by promtool when installed), gradwatch.Client, the
torch watcher's optimizer facts, a daemon started after the publisher, the
CLI's --tag-run/--label/--config-json, and bad metadata rejected with its
reason while good messages after it are still accepted."""
import json
import os
import shutil
import signal
import struct
import subprocess
import time

import numpy as np
import pytest

import gradwatch
from conftest import Daemon, free_port, scaled, subscribed_pub

CONFIG = {"lr": 0.001, "batch": 32, "model": {"layers": 4, "act": "gelu"}, "amp": True}


def publish_until(d, pub, run, pred, tag="all", what="metadata"):
    """Publish a step at a time until pred() holds (the daemon may still be
    subscribing); returns pred's value."""
    deadline = time.time() + scaled(30)
    step = 0
    rng = np.random.default_rng(0)
    while time.time() < deadline:
        pub.publish_sketch(tag, step, rng.standard_normal(pub.k).astype(np.float32))
        step += 1
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; stats={d.stats()}")


def run_meta(d, run):
    code, doc = d.json(f"/api/v1/runs/{run}")
    return doc.get("meta") if code == 200 else None


def metric_lines(d, name):
    code, body, _ = d.get("/metrics")
    assert code == 200
    return [ln for ln in body.decode().splitlines() if ln.startswith(name)]


def rejected(d, reason):
    for ln in metric_lines(d, "gradwatch_messages_rejected_total"):
        if f'reason="{reason}"' in ln:
            return int(float(ln.rsplit(" ", 1)[1]))
    return 0


def names(runs):
    return sorted(r["run"] for r in runs)


def test_metadata_stored_listed_filtered_exported_and_kept(daemon_bin, tmp_path):
    d = Daemon(daemon_bin, tmp_path, extra=["--metrics-labels", "team,config.lr,config.model,9-x"])
    d.start()
    try:
        p1 = gradwatch.Publisher(d.endpoint, run="r1", k=16, config=CONFIG,
                                 tags=["baseline", "adam"], labels={"team": "vision",
                                                                    "dataset": "cifar10"})
        p2 = gradwatch.Publisher(d.endpoint, run="r2", k=16, tags=["sweep"],
                                 labels={"team": "nlp", "9-x": "w"})
        m1 = publish_until(d, p1, "r1", lambda: run_meta(d, "r1"))
        publish_until(d, p2, "r2", lambda: run_meta(d, "r2"))
        assert m1["config"] == CONFIG
        assert m1["tags"] == ["baseline", "adam"]
        assert m1["labels"] == {"team": "vision", "dataset": "cifar10"}
        c = m1["client"]
        assert c["pid"] == os.getpid() and c["gradwatch"] == gradwatch.__version__
        assert c["host"] and c["python"]
        assert m1["incarnation"] == p1.incarnation
        assert abs(m1["wall_time"] - time.time()) < scaled(60)

        # the run row carries tags and labels too, as /api/v1/runs does
        code, row = d.json("/api/v1/runs/r1")
        assert row["tags"] == ["baseline", "adam"] and row["labels"]["team"] == "vision"
        runs = {r["run"]: r for r in d.json("/api/v1/runs")[1]["runs"]}
        assert runs["r1"]["tags"] == ["baseline", "adam"]
        assert runs["r2"]["labels"] == {"team": "nlp", "9-x": "w"}
        assert "meta" not in runs["r1"]  # the list stays small: no config there

        # filters: every tag= and label= must hold
        q = lambda s: names(d.json("/api/v1/runs" + s)[1]["runs"])  # noqa: E731
        assert q("?tag=baseline") == ["r1"]
        assert q("?tag=sweep") == ["r2"]
        assert q("?tag=baseline&tag=adam") == ["r1"]
        assert q("?tag=baseline&tag=sweep") == []
        assert q("?label=team=nlp") == ["r2"]
        assert q("?label=team") == ["r1", "r2"]
        assert q("?label=dataset=cifar10&tag=adam") == ["r1"]
        assert q("?label=team%3Dvision") == ["r1"]
        assert q("?tag=nope") == []
        assert q("") == ["r1", "r2"]

        # gradwatch.Client
        cl = gradwatch.Client(f"http://127.0.0.1:{d.http_port}")
        assert cl.run("r1")["meta"]["config"] == CONFIG
        assert names(cl.runs(tag="sweep")) == ["r2"]
        assert names(cl.runs(labels={"team": "vision"})) == ["r1"]
        assert names(cl.runs(tag=["baseline", "adam"], labels={"dataset": None})) == ["r1"]

        # unknown run: a JSON 404
        code, err = d.json("/api/v1/runs/nope")
        assert code == 404 and "unknown run" in err["error"]

        # /metrics: only the chosen keys, sanitised names, bounded values
        info = sorted(metric_lines(d, "gradwatch_run_info{"))
        assert info == [
            'gradwatch_run_info{run="r1",team="vision",config_lr="0.001",config_model="",_9_x=""} 1',
            'gradwatch_run_info{run="r2",team="nlp",config_lr="",config_model="",_9_x="w"} 1',
        ]
        promtool = shutil.which("promtool")
        if promtool:
            body = d.get("/metrics")[1]
            r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
            assert r.returncode == 0, r.stdout + r.stderr

        # latest wins
        p1.set_meta(config={"lr": 0.01}, tags=["tuned"], labels={"team": "vision"})
        d.wait_for(lambda: (run_meta(d, "r1") or {}).get("tags") == ["tuned"], what="new metadata")
        m1b = run_meta(d, "r1")
        assert m1b["config"] == {"lr": 0.01} and "dataset" not in m1b["labels"]
        d.wait_for(lambda: any('config_lr="0.01"' in ln
                               for ln in metric_lines(d, "gradwatch_run_info{")),
                   what="run_info updated")
        p1.close()
        p2.close()
    finally:
        assert d.stop() == 0

    # a restart keeps them (SQLite), in the API and on /metrics
    d.start()
    try:
        m = run_meta(d, "r1")
        assert m["config"] == {"lr": 0.01} and m["tags"] == ["tuned"]
        assert run_meta(d, "r2")["labels"] == {"team": "nlp", "9-x": "w"}
        assert 'gradwatch_run_info{run="r1",team="vision",config_lr="0.01",config_model="",_9_x=""} 1' \
            in metric_lines(d, "gradwatch_run_info{")
    finally:
        assert d.stop() == 0


def test_daemon_started_after_publisher_gets_metadata(daemon_bin, tmp_path):
    d = Daemon(daemon_bin, tmp_path)
    # no periodic resend: only the subscription of the new daemon triggers it
    pub = gradwatch.Publisher(d.endpoint, run="late", k=16, config={"seed": 7},
                              tags=["late"], meta_every=None)
    z = np.ones(16, np.float32)
    for step in range(5):  # nobody there: dropped, and the metadata stays due
        pub.publish_sketch("all", step, z)
    assert pub.meta_sent == 0
    d.start()
    try:
        m = publish_until(d, pub, "late", lambda: run_meta(d, "late"))
        assert m["config"] == {"seed": 7} and m["tags"] == ["late"]
        assert pub.meta_sent >= 1
        # and a restarted daemon is told again
        assert d.stop() == 0
        os.remove(d.db)
        d.start()
        m = publish_until(d, pub, "late", lambda: run_meta(d, "late"), what="metadata again")
        assert m["tags"] == ["late"]
    finally:
        pub.close()
        if d.proc:
            assert d.stop() == 0


def test_torch_watch_fills_optimizer_facts(daemon):
    torch = pytest.importorskip("torch")
    daemon.start()
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pub = gradwatch.Publisher(daemon.endpoint, run="torchrun", k=16, tags=["torch"])
    w = gradwatch.torch.watch(model, pub, per_layer=False, optimizer=opt)
    x = torch.randn(16, 8)
    step = 0

    def pred():
        nonlocal step
        opt.zero_grad()
        model(x).square().mean().backward()
        w.log(step)
        w.flush()
        opt.step()
        step += 1
        return run_meta(daemon, "torchrun")

    deadline = time.time() + scaled(30)
    m = None
    while time.time() < deadline and not m:
        m = pred()
        time.sleep(0.05)
    assert m, "no metadata from the torch watcher"
    c = m["client"]
    assert c["torch"] == torch.__version__
    assert c["parameters"] == sum(p.numel() for p in model.parameters()) == 8 * 4 + 4 + 4 * 2 + 2
    assert c["model"] == "Sequential"
    o = c["optimizer"]
    assert o["class"] == "SGD" and o["lr"] == 0.05 and o["momentum"] == 0.9
    assert o["weight_decay"] == 1e-4
    assert m["tags"] == ["torch"]
    # Adam's betas arrive as a list
    opt2 = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    pub2 = gradwatch.Publisher(daemon.endpoint, run="adamrun", k=16)
    gradwatch.torch.watch(model, pub2, per_layer=False, optimizer=opt2)
    m2 = publish_until(daemon, pub2, "adamrun", lambda: run_meta(daemon, "adamrun"))
    assert m2["client"]["optimizer"]["betas"] == [0.9, 0.95]
    assert m2["client"]["optimizer"]["class"] == "AdamW"
    w.close() if hasattr(w, "close") else None
    pub.close()
    pub2.close()


def raw_meta(run, doc, incarnation=5):
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return [f"gw1/{run}/@meta".encode(), struct.pack("<IB3xQq", 0x444D5747, 1, incarnation, 0) + data]


def test_bad_metadata_rejected_with_reason(daemon):
    daemon.start()
    s = subscribed_pub(daemon.endpoint)
    try:
        bad = [
            (raw_meta("b", {"config": {"x": "y" * 70000}}), "meta_too_large"),
            (raw_meta("b", {"tags": ["t%d" % i for i in range(65)]}), "meta_too_large"),
            (raw_meta("b", {"labels": {"k%d" % i: "v" for i in range(65)}}), "meta_too_large"),
            (raw_meta("b", b"{not json"), "bad_meta"),
            (raw_meta("b", {"tags": ["a b"]}), "bad_meta"),
            (raw_meta("b", {"labels": {"k": "v" * 257}}), "bad_meta"),
            (raw_meta("b", {"whatever": 1}), "bad_meta"),
            (raw_meta("b", {"tags": ["x"]}, incarnation=0), "bad_incarnation"),
            ([b"gw1/b/@meta", b"GWM"], "truncated"),
        ]
        before = {r: rejected(daemon, r) for _, r in bad}
        for frames, _ in bad:
            s.send_multipart(frames)
        s.send_multipart(raw_meta("b", {"tags": ["good"], "labels": {"k": "v"}}))
        daemon.wait_for(lambda: run_meta(daemon, "b"), what="the good metadata after the bad")
        m = run_meta(daemon, "b")
        st = daemon.stats()
        assert st["meta_accepted"] == 1 and st["accepted"] == 0  # metadata has its own count
        assert st["rejected"]["meta_too_large"] == 3 and st["rejected"]["bad_meta"] == 4
        assert m["tags"] == ["good"] and m["labels"] == {"k": "v"} and m["config"] == {}
        want = {}
        for _, r in bad:
            want[r] = want.get(r, 0) + 1
        for r, n in want.items():
            assert rejected(daemon, r) - before[r] == n, r
        # the Python client refuses the same things before sending
        with pytest.raises(ValueError):
            gradwatch.Publisher(daemon.endpoint, run="c", tags=["a b"])
        with pytest.raises(ValueError):
            gradwatch.Publisher(daemon.endpoint, run="c", labels={"k": "v" * 257})
        with pytest.raises(TypeError):
            gradwatch.Publisher(daemon.endpoint, run="c", config=[1])
        # points after it are still accepted
        pub = gradwatch.Publisher(daemon.endpoint, run="b", k=16)
        publish_until(daemon, pub, "b",
                      lambda: daemon.json("/api/v1/runs/b")[1]["streams"] >= 1, what="points")
        pub.close()
    finally:
        s.close(linger=0)


def test_cli_publish_sends_metadata(daemon):
    cli = os.environ.get("GW_CLI")
    if not cli or not os.path.exists(cli):
        pytest.fail("GW_CLI must name the built gradwatch binary (ctest sets it)")
    daemon.start()
    r = subprocess.run([cli, "publish", "--synthetic", "--run", "clirun", "--steps", "20",
                        "--rate", "0", "--k", "16", "--wait", "30", "--endpoint", daemon.endpoint,
                        "--tag-run", "cli", "--tag-run", "synthetic", "--label", "team=ops",
                        "--label", "owner=Zoë", "--config-json", '{"lr": 0.5, "note": "x"}'],
                       capture_output=True, text=True, timeout=scaled(120))
    assert r.returncode == 0, r.stderr
    m = daemon.wait_for(lambda: run_meta(daemon, "clirun"), what="CLI metadata")
    assert m["tags"] == ["cli", "synthetic"]
    assert m["labels"] == {"team": "ops", "owner": "Zoë"}
    assert m["config"] == {"lr": 0.5, "note": "x"}
    assert m["client"]["program"] == "gradwatch publish"
    r = subprocess.run([cli, "publish", "--synthetic", "--run", "x", "--steps", "1",
                        "--endpoint", daemon.endpoint, "--config-json", "[1]"],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode != 0 and "config-json" in r.stderr


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def test_routed_proxy_and_subscription_prefix_carry_metadata(daemon_bin, tmp_path):
    """`gradwatch proxy --shards 2` routes a run's metadata to the run's owner
    only (shard = FNV-1a 64 of the run mod 2, as docs/SCALE.md says), and a
    daemon subscribed to gw1/<run>/ gets that run's metadata and no other's."""
    cli = os.environ.get("GW_CLI")
    if not cli or not os.path.exists(cli):
        pytest.fail("GW_CLI must name the built gradwatch binary (ctest sets it)")
    runs, i = {}, 0
    while len(runs) < 2:
        r = f"m-{i}"
        runs.setdefault(fnv1a64(r.encode()) % 2, r)
        i += 1
    ds = []
    only = proxy = None
    pubs = []
    try:
        for shard in (0, 1):
            (tmp_path / f"d{shard}").mkdir()
            ds.append(Daemon(daemon_bin, tmp_path / f"d{shard}",
                             extra=["--shard", f"{shard}/2"]).start())
        (tmp_path / "dsub").mkdir()
        only = Daemon(daemon_bin, tmp_path / "dsub",
                      extra=["--zmq-subscribe", f"gw1/{runs[1]}/"]).start()
        front = f"tcp://127.0.0.1:{free_port()}"
        proxy = subprocess.Popen([cli, "proxy", "--shards", "2", "--frontend", front,
                                  "--backend", f"0={ds[0].endpoint}",
                                  "--backend", f"1={ds[1].endpoint}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for shard, run in runs.items():
            p = gradwatch.Publisher(front, run=run, k=16, tags=[f"shard{shard}"])
            q = gradwatch.Publisher(only.endpoint, run=run, k=16, tags=[f"direct{shard}"])
            pubs += [p, q]
            publish_until(ds[shard], p, run, lambda: run_meta(ds[shard], run))
            assert run_meta(ds[shard], run)["tags"] == [f"shard{shard}"]
            # the prefix daemon: only runs[1] is subscribed
            if shard == 1:
                m = publish_until(only, q, run, lambda: run_meta(only, run))
                assert m["tags"] == ["direct1"]
            else:
                for step in range(20):
                    q.publish_sketch("all", step, np.ones(16, np.float32))
        for shard, run in runs.items():
            other = ds[1 - shard]
            assert other.json(f"/api/v1/runs/{run}")[0] == 404  # routed, not broadcast
        time.sleep(scaled(0.5))
        assert only.json(f"/api/v1/runs/{runs[0]}")[0] == 404
        assert only.stats()["meta_accepted"] >= 1
    finally:
        for p in pubs:
            p.close()
        if proxy:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(scaled(30))
        for d in ds + ([only] if only else []):
            if d.proc:
                assert d.stop() == 0
