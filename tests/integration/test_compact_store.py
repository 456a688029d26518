"""Compact storage end to end, with a real daemon and its real SQLite file.

- kill -9 with every stream part way into a chunk (sealed chunks plus rows of
  the open one): after the restart every committed point is there and the
  series JSON is byte for byte what it was before the kill.
- An old-format database (version 2: one row per point, no chunks table;
  made by the daemon with --chunk-points 0, the pre-chunk layout, then
  stamped version 2) is converted at open: the rows become chunks, and every
  answer built from points (series with from/to/max_points/incarnations=all,
  streams, runs, summary, db_rows) is byte for byte the same JSON as from
  the rows, and again after a restart.
"""
import sqlite3
import struct
import time

import numpy as np
import pytest
import zmq

from conftest import Daemon, encode, scaled


@pytest.fixture
def make(daemon_bin, tmp_path):
    """Daemons on tmp_path's database; any still running at the end (a
    failed assertion) is killed."""
    made = []

    def new(extra=()):
        d = Daemon(daemon_bin, tmp_path, extra=list(extra))
        made.append(d)
        return d
    yield new
    for d in made:
        if d.proc:
            d.proc.kill()
            d.proc.wait(10)
            d.logf.close()


def encode2(run, tag, step, z, incarnation, **kw):
    """A version 2 frame: the v1 header with version 2, then the incarnation."""
    topic, body = encode(run, tag, step, z, **kw)
    hdr = bytearray(body[:64])
    hdr[4] = 2
    return [topic, bytes(hdr) + struct.pack("<Q", incarnation) + body[64:]]


def all_points(db):
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT count(*) FROM points").fetchone()[0]
        chunked = con.execute("SELECT coalesce(sum(n), 0) FROM chunks").fetchone()[0]
        return rows, chunked
    finally:
        con.close()


def publish(d, run, tags, steps, start=0, inc=None):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    sock.connect(d.endpoint)
    time.sleep(scaled(0.5))  # slow joiner
    rng = np.random.default_rng(5)
    z = rng.standard_normal((len(tags), 16)).astype(np.float32)
    for t in range(start, start + steps):
        for i, tag in enumerate(tags):
            zz = z[i] * (1 + 0.01 * t) + rng.standard_normal(16).astype(np.float32) * 0.1
            sock.send_multipart(encode(run, tag, t, zz, loss=1.0 / (t + 1), grad_norm=0.5 * t))
        if t % 100 == 99:
            time.sleep(0.02)
    sock.close(linger=1000)


def answers(d, run, tags):
    """Every JSON answer that is built from stored points, as bytes."""
    out = {}
    paths = [f"/api/v1/runs/{run}/streams", f"/api/v1/runs/{run}/summary"]
    for tag in tags:
        base = f"/api/v1/series?run={run}&tag={tag}"
        for q in ("", "&max_points=64", "&max_points=2", "&from=100&to=300",
                  "&from=257&to=257", "&from=0&to=511&max_points=100", "&incarnations=all",
                  "&metrics=kappa_onestep,kappa_ema,kappa_linear,kappa_best,kappa_onestep_cum,"
                  "kappa_ema_cum,kappa_linear_cum,path_onestep_cum,best_predictor"):
            paths.append(base + q)
    for p in paths:
        code, body, _ = d.get(p)
        assert code == 200, (p, body)
        out[p] = body
    out["db_rows"] = d.stats()["db_rows"]
    return out


def wait_written(d, n):
    d.wait_for(lambda: d.stats()["store"]["written"] >= n, 60, f"{n} points written")


def test_kill9_mid_chunk_loses_nothing(make):
    d = make()
    d.start()
    tags = ["a", "b", "c"]
    publish(d, "k9", tags, 700)  # 699 points a tag: 2 chunks of 256 + 187 rows
    wait_written(d, 3 * 699)
    before = answers(d, "k9", tags)
    d.proc.kill()
    d.proc.wait(10)
    d.proc = None
    d.logf.close()
    rows, chunked = all_points(d.db)
    assert chunked == 3 * 512, (rows, chunked)
    assert rows == 3 * 187, (rows, chunked)
    d.start()
    try:
        for tag in tags:
            code, s = d.json(f"/api/v1/series?run=k9&tag={tag}&metrics=loss")
            assert code == 200
            assert s["step"] == list(range(1, 700)), tag
        after = answers(d, "k9", tags)
        assert after == before
    finally:
        assert d.stop() == 0
    # a clean stop seals the tails too
    rows, chunked = all_points(d.db)
    assert (rows, chunked) == (0, 3 * 699)


def test_old_format_database_converts_with_identical_answers(make):
    d = make(["--chunk-points", "0"])
    d.start()
    tags = ["x", "y"]
    publish(d, "old", tags, 600)
    wait_written(d, 2 * 599)
    # a second incarnation of y from step 300 hides the first one's rest
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    sock.connect(d.endpoint)
    time.sleep(scaled(0.5))
    z = np.random.default_rng(9).standard_normal(16).astype(np.float32)
    for t in range(300, 420):
        sock.send_multipart(encode2("old", "y", t, z * (1 + 0.02 * t), 7, loss=0.25))
    sock.close(linger=1000)
    wait_written(d, 2 * 599 + 119)
    time.sleep(scaled(1.0))
    code, ev = d.json("/api/v1/restarts?run=old")
    assert code == 200 and ev, ev
    want = answers(d, "old", tags)
    assert d.stop() == 0
    rows, chunked = all_points(d.db)
    assert chunked == 0 and rows > 2 * 599
    con = sqlite3.connect(d.db)
    con.executescript("DROP TABLE chunks; DROP TABLE run_meta; PRAGMA user_version = 2;")
    con.close()

    d.extra = []  # default: chunks of 256
    d.start()
    try:
        assert "schema migrated" in d.log.read_text()
        got = answers(d, "old", tags)
        assert got == want
    finally:
        assert d.stop() == 0
    con = sqlite3.connect(d.db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 4
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    rows2, chunked2 = all_points(d.db)
    assert (rows2, chunked2) == (0, rows)
    d.start()
    try:
        assert answers(d, "old", tags) == want
    finally:
        assert d.stop() == 0


def test_full_resolution_days_keeps_the_envelope(make):
    """--full-resolution-days 1: chunks whose points were all received more
    than a day ago answer as 2 points each (first step: every metric's
    minimum; last step: the maxima), the newer points stay whole. The
    receive minutes are moved 3 days back in the file while the daemon is
    stopped (the daemon's clock decides what is old)."""
    d = make()
    d.start()
    publish(d, "fr", ["a"], 600)  # 599 points: chunks 1..256, 257..512, rows 513..599
    wait_written(d, 599)
    metrics = "kappa_ema,loss,grad_norm,rank_90"
    code, full = d.json(f"/api/v1/series?run=fr&tag=a&metrics={metrics}")
    assert code == 200 and full["step"] == list(range(1, 600))
    d.proc.kill()  # kill -9: the rows 513.. stay rows
    d.proc.wait(10)
    d.proc = None
    d.logf.close()
    con = sqlite3.connect(d.db)
    con.execute("UPDATE point_minutes SET minute = minute - 3 * 1440")
    con.commit()
    con.close()
    d.start("--full-resolution-days", "1")
    try:
        d.wait_for(lambda: "points_downsampled=" in d.log.read_text(), 30, "the downsampling")
        code, got = d.json(f"/api/v1/series?run=fr&tag=a&metrics={metrics}")
        assert code == 200
        assert got["step"] == [1, 256, 257, 512] + list(range(513, 600))
        for m in metrics.split(","):
            col = full[m]
            for i, (lo, hi) in enumerate(((0, 256), (256, 512))):
                vals = [v for v in col[lo:hi] if v is not None]
                assert got[m][2 * i] == (min(vals) if vals else None), m
                assert got[m][2 * i + 1] == (max(vals) if vals else None), m
            assert got[m][4:] == col[512:], m
        code, ss = d.json("/api/v1/runs/fr/streams")
        assert ss["streams"][0]["points"] == 4 + 87
        assert d.stats()["db_rows"] == 4 + 87
    finally:
        assert d.stop() == 0
