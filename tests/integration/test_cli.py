"""Black-box tests of the `gradwatch` command-line client ($GW_CLI).

References are independent of the C code: frames are decoded here with
`struct` straight from the layout in proto/gw_proto.h / PROTOCOL.md; f16 and
bf16 payloads are checked against NumPy's float16 rounding and the bf16
formula of PROTOCOL.md §4; the generator's structure against docs/cli.md
(NumPy SVD of the received sketches); query/tail/export against a real HTTP
server started here (http.server) that serves canned JSON and Server-Sent
Events and records what it was asked.
"""
import io
import json
import math
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import zmq

from conftest import scaled

MAGIC = 0x4B535747
HEADER = struct.Struct("<IBBBBIIQqQddd")  # gw_proto.h: 64 bytes, little-endian
DTYPE_NAMES = {1: "f32", 2: "f16", 3: "bf16"}


# ---- helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    b = os.environ.get("GW_CLI")
    if not b or not os.path.exists(b):
        pytest.fail("GW_CLI must name the built gradwatch binary (ctest sets it)")
    return b


def popen(cli, *args, **kw):
    return subprocess.Popen([cli, *map(str, args)], text=True, **kw)


def run(cli, *args, timeout=60, **kw):
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True,
                          timeout=scaled(timeout), **kw)


def decode(topic, body):
    """One message per gw_proto.h, as a dict; payload as float64 numpy."""
    assert topic.startswith(b"gw1/")
    run, _, tag = topic[4:].decode().partition("/")
    (magic, version, dtype, kind, s, k, flags, step, wall_ns, seed, grad_norm, loss,
     lr) = HEADER.unpack_from(body)
    assert magic == MAGIC and version in (1, 2)
    w = 4 if dtype == 1 else 2
    hl = 64 if version == 1 else 72  # version 2: the u64 incarnation at offset 64
    assert len(body) == hl + k * w
    incarnation = struct.unpack_from("<Q", body, 64)[0] if version == 2 else 0
    assert version == 1 or incarnation != 0
    raw = body[hl:]
    if dtype == 1:
        z = np.frombuffer(raw, "<f4").astype(np.float64)
    elif dtype == 2:
        z = np.frombuffer(raw, "<f2").astype(np.float64)
    else:
        z = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
    return dict(run=run, tag=tag, dtype=DTYPE_NAMES[dtype], kind=kind, s=s, k=k, flags=flags,
                step=step, wall_ns=wall_ns, seed=seed, grad_norm=grad_norm, loss=loss, lr=lr,
                z=z, raw=raw, version=version, incarnation=incarnation)


class Sub:
    """A SUB socket bound to an ephemeral loopback port."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"gw1/")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"

    def poll(self, ms):
        return self.sock.poll(ms)

    def recv_multipart(self):
        return self.sock.recv_multipart()

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def sub():
    s = Sub()
    yield s
    s.close()


def collect(sub, proc, timeout=60):
    """Receive while proc runs (this also lets the bound SUB attach the
    connection and send its subscription), then drain. Returns (msgs, rc)."""
    msgs = []
    deadline = time.time() + scaled(timeout)
    while time.time() < deadline:
        if sub.poll(50):
            msgs.append(decode(*sub.recv_multipart()))
            continue
        if proc.poll() is not None:
            while sub.poll(int(scaled(1000))):  # what is still in flight after it exited
                msgs.append(decode(*sub.recv_multipart()))
            break
    else:
        proc.kill()
        raise AssertionError("CLI did not finish")
    return msgs, proc.wait()


def publish(cli, sub, *args, timeout=60):
    proc = popen(cli, *args, "--endpoint", sub.endpoint, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    msgs, rc = collect(sub, proc, timeout)
    out, err = proc.communicate()
    assert rc == 0, err
    return msgs, out, err


def by_stream(msgs):
    d = {}
    for m in msgs:
        d.setdefault((m["run"], m["tag"]), []).append(m)
    return d


def rank90(zs):
    H = np.diff(np.asarray(zs), axis=0).T
    s2 = np.linalg.svd(H, compute_uv=False) ** 2
    return int(np.argmax(np.cumsum(s2) / s2.sum() >= 0.9 - 1e-12) + 1)


def kappa1(zs):
    zs = np.asarray(zs)
    return float(np.sum(np.diff(zs, axis=0) ** 2) / np.sum(zs[1:] ** 2))


def bf16_round(x32):
    """PROTOCOL.md §4: (u + 0x7FFF + ((u >> 16) & 1)) >> 16, back to float."""
    u = np.asarray(x32, "<f4").view("<u4").astype(np.uint64)
    h = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    return (h << 16).view("<f4").astype(np.float64)


# ---- usage and help -----------------------------------------------------------------------


@pytest.mark.parametrize("args,msg", [
    ([], "Usage: gradwatch"),
    (["frob"], "unknown command 'frob'"),
    (["--frob"], "unknown option '--frob'"),
    (["publish"], "--synthetic"),
    (["publish", "--synthetic", "--bogus"], "unknown option '--bogus'"),
    (["publish", "--synthetic", "--k"], "option '--k' needs a value"),
    (["publish", "--synthetic", "--k", "0"], "--k wants an integer from 1 to 65536"),
    (["publish", "--synthetic", "--report=yes"], "option '--report' takes no value"),
    (["publish", "--synthetic", "--k", "12x"], "not '12x'"),
    (["publish", "--synthetic", "--kind", "dense"], "--kind is sjlt or gaussian"),
    (["publish", "--synthetic", "--kind", "gaussian", "--s", "2"], "--kind gaussian needs --s 0"),
    (["publish", "--synthetic", "--rank", "300"], "--rank 300 is larger than --k 256"),
    (["publish", "--synthetic", "--tags", "a,,b"], "bad tag ''"),
    (["publish", "--synthetic", "--tags", "a,b,a"], "tag 'a' appears twice"),
    (["publish", "--synthetic", "--run", "a/b"], "bad run name 'a/b'"),
    (["publish", "--synthetic", "--dtype", "f64"], "--dtype is f32, f16 or bf16"),
    (["publish", "--synthetic", "--rate", "-1"], "--rate wants a number"),
    (["publish", "--synthetic", "--noise", "nan"], "--noise wants a number"),
    (["publish", "--synthetic", "--runs", "0"], "--runs wants an integer from 1"),
    (["publish", "--synthetic", "--endpoint", "localhost"], "--endpoint wants a ZeroMQ endpoint"),
    (["publish", "--synthetic", "--curve-server-key", "~" * 40], "neither a 40-character Z85 key"),
    (["publish", "--synthetic", "stray"], "unexpected argument 'stray'"),
    (["replay"], "which FILE?"),
    (["replay", "a.npy", "b.npy"], "one FILE only"),
    (["replay", "a.npy", "--tag", "a b"], "bad tag 'a b'"),
    (["query", "r1", "all"], "need RUN TAG and at least one METRIC"),
    (["query", "bad/run", "t", "kappa_ema"], "bad run name 'bad/run'"),
    (["query", "r", "t", "a,b"], "give metrics as separate arguments"),
    (["query", "r", "t", "m", "--max-points", "1"], "--max-points wants an integer from 2"),
    (["query", "r", "t", "m", "--server", "ftp://x"], "--server wants a URL"),
    (["tail", "--count", "0"], "--count wants an integer from 1"),
    (["tail", "extra"], "unexpected argument 'extra'"),
    (["tail", "--tag", "bad tag"], "bad tag 'bad tag'"),
    (["export"], "which RUN?"),
    (["export", "r1", "r2"], "one RUN only"),
    (["export", "r1", "--format", "xml"], "--format is csv or jsonl"),
    (["export", "r1", "--metrics", "a,,b"], "empty name in --metrics"),
])
def test_usage_errors_exit_2(cli, args, msg):
    p = run(cli, *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert msg in p.stderr
    assert p.stdout == ""


@pytest.mark.parametrize("cmd,flags", [
    ("publish", ["--synthetic", "--runs", "--tags", "--tag-prefix", "--steps", "--rate",
                 "--total-rate", "--rank", "--noise", "--collapse-at", "--loss", "--report",
                 "--endpoint", "--socket", "--dtype", "--curve-server-key"]),
    ("replay", ["--run", "--tag", "--start", "--rate", "--k", "--retry-ms"]),
    ("query", ["--csv", "--json", "--from", "--to", "--max-points", "--server", "--token-file"]),
    ("tail", ["--run", "--tag", "--count", "--json", "--token"]),
    ("export", ["--format", "--tag", "--metrics", "--server"]),
])
def test_help(cli, cmd, flags):
    for how in ([cmd, "--help"], ["help", cmd]):
        p = run(cli, *how)
        assert p.returncode == 0 and p.stderr == ""
        assert p.stdout.startswith(f"Usage: gradwatch {cmd}")
        for f in flags:
            assert f in p.stdout, f
    p = run(cli, "--help")
    assert p.returncode == 0 and "Exit status" in p.stdout
    assert run(cli, "--version").stdout.startswith("gradwatch ")


# ---- publish --synthetic --------------------------------------------------------------------


def test_synthetic_frames_decode(cli, sub):
    msgs, out, err = publish(cli, sub, "publish", "--synthetic", "--run", "syn", "--runs", 2,
                             "--tags", 3, "--tag-prefix", "blk.", "--steps", 20, "--start", 7,
                             "--k", 64, "--seed", 5, "--rate", 0, "--loss", "--lr", 0.01)
    streams = by_stream(msgs)
    assert set(streams) == {(f"syn-{a}", f"blk.{b}") for a in range(2) for b in range(3)}
    t0 = time.time_ns()
    for (run_, tag), ms in streams.items():
        assert [m["step"] for m in ms] == list(range(7, 27))  # all of them, in order
        for m in ms:
            assert (m["dtype"], m["kind"], m["s"], m["k"], m["seed"]) == ("f32", 1, 4, 64, 5)
            assert m["flags"] == 0b110 and m["grad_norm"] == 0.0  # loss and lr only
            assert m["loss"] == pytest.approx(0.1 + 2.2 * math.exp(-m["step"] / 1000), rel=1e-12)
            assert m["lr"] == 0.01
            assert abs(m["wall_ns"] - t0) < 120e9
            assert 0.7 < np.linalg.norm(m["z"]) < 1.3  # docs/cli.md: ~1 without noise
    # different streams differ
    assert not np.allclose(streams[("syn-0", "blk.0")][0]["z"], streams[("syn-1", "blk.0")][0]["z"])


def test_synthetic_is_deterministic_and_f16_bf16_round_f32(cli, sub):
    args = ["publish", "--synthetic", "--steps", 10, "--k", 48, "--seed", 11, "--rank", 3,
            "--noise", 0.02, "--rate", 0]
    ref = [m["z"] for m in publish(cli, sub, *args)[0]]
    again = [m["z"] for m in publish(cli, sub, *args)[0]]
    assert len(ref) == 10 and all(np.array_equal(a, b) for a, b in zip(ref, again))
    f16 = publish(cli, sub, *args, "--dtype", "f16")[0]
    bf16 = publish(cli, sub, *args, "--dtype", "bf16")[0]
    for r, h, b in zip(ref, f16, bf16):
        assert h["dtype"] == "f16" and b["dtype"] == "bf16"
        assert np.array_equal(h["z"], r.astype(np.float32).astype(np.float16).astype(np.float64))
        assert np.array_equal(b["z"], bf16_round(r.astype(np.float32)))


def test_synthetic_rank_and_collapse(cli, sub):
    R, C, W, k = 3, 120, 64, 128
    msgs, _, _ = publish(cli, sub, "publish", "--synthetic", "--steps", 200, "--k", k,
                         "--rank", R, "--collapse-at", C, "--rate", 0, "--seed", 3)
    zs = np.array([m["z"] for m in msgs])
    assert [m["step"] for m in msgs] == list(range(200))
    before, after = zs[C - W - 1:C], zs[200 - W - 1:]
    # every increment before the collapse lies in an R-dim subspace
    s = np.linalg.svd(np.diff(zs[:C], axis=0), compute_uv=False)
    assert s[R] < 1e-3 * s[0] and s[R - 1] > 0.05 * s[0]
    assert rank90(before) == R  # docs/cli.md: = R for R <= 7 at W = 64
    assert kappa1(before) == pytest.approx(0.005, rel=0.2)
    # after: pure noise of the same norm
    assert rank90(after) > 30
    assert 1.6 < kappa1(after) < 2.4
    # the collapse keeps the norm the formula would have had
    ref, _ = synth_reference(3, k, R, 200, collapse=None)
    assert np.allclose(np.linalg.norm(zs, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-5)


def test_synthetic_noise_matches_documented_kappa(cli, sub):
    k, sigma = 128, 0.01
    msgs, _, _ = publish(cli, sub, "publish", "--synthetic", "--steps", 400, "--k", k,
                         "--rank", 4, "--noise", sigma, "--rate", 0)
    zs = np.array([m["z"] for m in msgs])
    want = (1 / 200 + 2 * sigma ** 2 * k) / (1 + sigma ** 2 * k)  # docs/cli.md
    assert kappa1(zs) == pytest.approx(want, rel=0.15)
    assert rank90(zs[-65:]) > 4  # noise raises the rank above R


def test_synthetic_rate_and_report(cli, sub):
    proc = popen(cli, "publish", "--synthetic", "--steps", 30, "--rate", 20, "--k", 8, "--report",
                 "--endpoint", sub.endpoint, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    msgs = []
    deadline = time.time() + scaled(60)
    while proc.poll() is None or sub.poll(int(scaled(1000))):
        assert time.time() < deadline
        if sub.poll(20):
            msgs.append(decode(*sub.recv_multipart()))
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert len(msgs) == 30
    # the publisher's own send stamps, not when this (maybe descheduled)
    # process happened to receive them
    span = (msgs[-1]["wall_ns"] - msgs[0]["wall_ns"]) / 1e9
    assert 29 / 20 * 0.8 < span < 29 / 20 * 1.5, span  # token bucket at 20 msg/s
    lines = out.strip().splitlines()
    assert any("sent" in l and "rate" in l for l in lines[:-1])
    assert lines[-1].startswith("total: sent 30  dropped 0")


def test_synthetic_without_subscriber_drops_and_counts(cli):
    p = run(cli, "publish", "--synthetic", "--steps", 500, "--rate", 0, "--wait", 0.2,
            "--endpoint", "tcp://127.0.0.1:9", "--report", timeout=30)
    assert p.returncode == 0
    assert "no subscriber at tcp://127.0.0.1:9" in p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("total: sent 0  dropped 500")


def test_synthetic_push(cli):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        proc = popen(cli, "publish", "--synthetic", "--steps", 5, "--k", 16, "--rate", 0,
                     "--socket", "push", "--endpoint", f"tcp://127.0.0.1:{port}",
                     stderr=subprocess.PIPE)
        msgs, rc = collect(pull, proc)
        assert rc == 0, proc.stderr.read()
        assert [m["step"] for m in msgs] == list(range(5))
    finally:
        pull.close(linger=0)
        ctx.term()


def test_synthetic_curve(cli, tmp_path):
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    spub, ssec = zmq.curve_keypair()
    cpub, csec = zmq.curve_keypair()
    cert = tmp_path / "client.key_secret"  # zcert format, as zmq.auth writes it
    cert.write_text(f'curve\n    public-key = "{cpub.decode()}"\n'
                    f'    secret-key = "{csec.decode()}"\n')
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.curve_server = True
    s.curve_secretkey = ssec
    s.setsockopt(zmq.SUBSCRIBE, b"")
    port = s.bind_to_random_port("tcp://127.0.0.1")
    try:
        proc = popen(cli, "publish", "--synthetic", "--steps", 3, "--k", 8, "--rate", 0,
                     "--endpoint", f"tcp://127.0.0.1:{port}", "--curve-server-key",
                     spub.decode(), "--curve-secret-key", cert, stderr=subprocess.PIPE)
        msgs, rc = collect(s, proc)
        assert rc == 0, proc.stderr.read()
        assert [m["step"] for m in msgs] == [0, 1, 2]
    finally:
        s.close(linger=0)
        ctx.term()


# ---- docs/cli.md's generator, written again from the document --------------------------

M64 = (1 << 64) - 1


def fmix64(x):
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    return x ^ (x >> 33)


def sketch_hash(seed, i, j):
    return fmix64(((seed * 0x9E3779B97F4A7C15) & M64) ^ ((i * 8 + j) & M64))


class SplitMix:
    def __init__(self, seed):
        self.s = seed
        self.spare = None

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) * 2.0 ** -53

    def normal(self):
        if self.spare is not None:
            v, self.spare = self.spare, None
            return v
        u1 = 1.0 - self.uniform()
        u2 = self.uniform()
        rad = math.sqrt(-2.0 * math.log(u1))
        self.spare = rad * math.sin(2 * math.pi * u2)
        return rad * math.cos(2 * math.pi * u2)


def synth_reference(seed, k, R, steps, sigma=0.0, collapse=None, start=0, a=0, b=0):
    """z_t of stream (run a, tag b) exactly as docs/cli.md states it."""
    A = 10.0
    g = 1 / (A * math.sqrt(R)) if R else 0.0
    omega = [(math.pi / 2) * (i + 1) / (R + 1) for i in range(R)]
    amp = [1 / (2 * math.sin(w / 2)) for w in omega]
    r = SplitMix(sketch_hash(seed, 0, b))
    U = np.array([[r.normal() for _ in range(k)] for _ in range(R)]).T  # columns
    for _ in range(2):  # modified Gram-Schmidt, twice
        for i in range(R):
            for j in range(i):
                U[:, i] -= (U[:, i] @ U[:, j]) * U[:, j]
            U[:, i] /= np.linalg.norm(U[:, i])
    rs = SplitMix(sketch_hash(seed, a + 1, b))
    phi = [2 * math.pi * rs.uniform() for _ in range(R)]
    out = []
    for t in range(start, start + steps):
        c = np.array([g * (A + amp[i] * math.sin(omega[i] * t + phi[i])) for i in range(R)])
        x = U @ c if R else np.zeros(k)
        if sigma > 0:
            x = x + sigma * np.array([rs.normal() for _ in range(k)])
        if collapse is not None and t >= collapse:
            eta = np.array([rs.normal() for _ in range(k)])
            x = np.linalg.norm(x) * eta / np.linalg.norm(eta)
        out.append(x.astype(np.float32).astype(np.float64))
    return np.array(out), amp


@pytest.mark.parametrize("R,sigma,collapse", [(4, 0.0, None), (2, 0.05, 6), (1, 0.0, 0)])
def test_synthetic_matches_documented_formula(cli, sub, R, sigma, collapse):
    k, seed = 24, 2 ** 64 - 3
    args = ["publish", "--synthetic", "--steps", 12, "--start", 3, "--k", k, "--seed", seed,
            "--rank", R, "--noise", sigma, "--rate", 0, "--runs", 2, "--tags", "x,y"]
    if collapse is not None:
        args += ["--collapse-at", collapse]
    msgs, _, _ = publish(cli, sub, *args)
    streams = by_stream(msgs)
    for a in range(2):
        for b, tag in enumerate("xy"):
            got = np.array([m["z"] for m in streams[(f"synthetic-{a}", tag)]])
            want, amp = synth_reference(seed, k, R, 12, sigma, collapse, 3, a, b)
            assert np.allclose(got, want, rtol=1e-5, atol=1e-7), (a, b)
            if sigma == 0 and collapse is None:  # ||z|| = ||c|| / (A sqrt R), c_i in A +- b_i
                lo = math.sqrt(sum((10 - x) ** 2 for x in amp) / (100 * R))
                hi = math.sqrt(sum((10 + x) ** 2 for x in amp) / (100 * R))
                n = np.linalg.norm(got, axis=1)
                assert np.all((n > lo - 1e-6) & (n < hi + 1e-6))


# ---- replay ---------------------------------------------------------------------------------


def write_npy(path, arr, version):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=version)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_replay_npy_round_trips(cli, sub, tmp_path, version, dtype):
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((40, 24)).astype(np.float32)  # f32-exact also as <f8
    path = tmp_path / "z.npy"
    write_npy(path, rows.astype(dtype), version)
    msgs, _, _ = publish(cli, sub, "replay", path, "--run", "rp", "--tag", "model/l.0", "--start",
                         100, "--seed", 9, "--kind", "gaussian")
    assert [m["step"] for m in msgs] == list(range(100, 140))
    for m, row in zip(msgs, rows):
        assert (m["run"], m["tag"], m["k"], m["seed"], m["kind"], m["s"]) == \
            ("rp", "model/l.0", 24, 9, 2, 0)
        assert m["raw"] == row.astype("<f4").tobytes()  # bit for bit


def test_replay_raw_and_f16(cli, sub, tmp_path):
    rows = (np.arange(5 * 6, dtype=np.float32).reshape(5, 6) - 7) / 3
    path = tmp_path / "z.bin"
    path.write_bytes(rows.astype("<f4").tobytes())
    msgs, _, _ = publish(cli, sub, "replay", path, "--k", 6, "--dtype", "f16", "--rate", 200)
    assert [m["step"] for m in msgs] == list(range(5))
    for m, row in zip(msgs, rows):
        assert m["dtype"] == "f16" and m["run"] == "replay" and m["tag"] == "all"
        assert np.array_equal(m["z"], row.astype(np.float16).astype(np.float64))


def npy_with_header(header, payload=b"", version=1):
    h = header.encode()
    pre = 10 if version == 1 else 12
    h += b" " * ((64 - (pre + len(h) + 1) % 64) % 64) + b"\n"
    ln = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + ln + h + payload


GOOD = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"


@pytest.mark.parametrize("content,extra,rc,msg", [
    (b"hello world, not numpy", [], 2, "is not a .npy file"),
    (b"abcdefghij", ["--k", 4], 1, "not a multiple of the row size 4 x k = 16"),
    (npy_with_header(GOOD, bytes(24))[:7], [], 1, "truncated .npy preamble"),
    (b"\x93NUMPY\x09\x00" + bytes(8), [], 1, "version 9.0 is not supported"),
    (npy_with_header(GOOD.replace("<f4", "<i4"), bytes(24)), [], 1, "dtype '<i4' is not supported"),
    (npy_with_header(GOOD.replace("<f4", ">f4"), bytes(24)), [], 1, "big-endian"),
    (npy_with_header(GOOD.replace("False", "True"), bytes(24)), [], 1, "Fortran order"),
    (npy_with_header(GOOD.replace("(2, 3)", "(6,)"), bytes(24)), [], 1, "1-D"),
    (npy_with_header(GOOD.replace("(2, 3)", "(1, 2, 3)"), bytes(24)), [], 1, "3-D"),
    (npy_with_header(GOOD.replace("(2, 3)", "(2, 0)")), [], 1, "k = 0 is outside"),
    (npy_with_header(GOOD, bytes(20)), [], 1, "truncated: shape (2, 3) of <f4 needs 24 bytes"),
    (npy_with_header(GOOD, bytes(28)), [], 1, "4 bytes after the data"),
    (npy_with_header("{'descr': '<f4', 'shape': (2, 3), }", bytes(24)), [], 1,
     "header lacks 'fortran_order'"),
    (npy_with_header("{'descr': '<f4' 'fortran_order': False}", bytes(24)), [], 1,
     "malformed header"),
    (npy_with_header(GOOD + "x", bytes(24))[:40], [], 1, "truncated .npy header"),
    (npy_with_header(GOOD, bytes(24)), ["--k", 5], 2, "has k = 3 (shape[1]) but --k says 5"),
    (npy_with_header(GOOD, np.array([1, 2, 3, 4, np.nan, 6], "<f4").tobytes()), [], 1,
     "row 1 (step 1): NaN or Inf"),
    (npy_with_header(GOOD.replace("<f4", "<f8"), np.array([1, 2, 3, 1e39, 5, 6], "<f8").tobytes()),
     [], 1, "row 1 (step 1)"),
])
def test_replay_bad_files_name_the_problem(cli, tmp_path, content, extra, rc, msg):
    path = tmp_path / "bad.npy"
    path.write_bytes(content)
    p = run(cli, "replay", path, "--wait", 0, "--endpoint", "tcp://127.0.0.1:9", *extra,
            "--retry-ms", 0)
    assert p.returncode == rc, p.stderr
    assert msg in p.stderr


def test_replay_without_subscriber_fails(cli, tmp_path):
    path = tmp_path / "z.npy"
    np.save(path, np.ones((3, 4), np.float32))
    p = run(cli, "replay", path, "--wait", 0.1, "--endpoint", "tcp://127.0.0.1:9")
    assert p.returncode == 1
    assert "3 of 3 rows were not sent (the first: row 0)" in p.stderr


# ---- a real HTTP server with canned answers ------------------------------------------------


class Canned:
    """Routes: path -> (status, body) or a callable(handler) for streams."""

    def __init__(self, token=None):
        self.routes = {}
        self.requests = []  # (path, query dict, headers)
        self.token = token
        self.sse_connections = 0
        srv = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        srv.daemon_threads = True
        self.server = srv
        self.url = f"http://127.0.0.1:{srv.server_address[1]}"
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    def _handler(self):
        canned = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                canned.requests.append((u.path, urllib.parse.parse_qs(u.query), dict(self.headers)))
                if canned.token and self.headers.get("Authorization") != f"Bearer {canned.token}":
                    return self.reply(401, {"error": "missing or bad token"})
                r = canned.routes.get(u.path)
                if r is None:
                    return self.reply(404, {"error": "not found"})
                if callable(r):
                    return r(self)
                self.reply(*r)

            def reply(self, status, obj):
                body = (json.dumps(obj) if not isinstance(obj, bytes) else obj)
                body = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return H

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http():
    c = Canned()
    yield c
    c.close()


SERIES = {"run": "r1", "tag": "all", "step": [1, 2, 10],
          "kappa_ema": [0.5, None, 0.123456789012345], "rank_90": [3, 4, None]}


def test_query_table(cli, http):
    http.routes["/api/v1/series"] = (200, SERIES)
    p = run(cli, "query", "r1", "all", "kappa_ema", "rank_90", "--server", http.url)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [l.split() for l in lines] == [["step", "kappa_ema", "rank_90"], ["1", "0.5", "3"],
                                          ["2", "-", "4"], ["10", "0.123457", "-"]]
    assert len({len(l) for l in lines}) == 1  # right-aligned columns
    path, q, _ = http.requests[-1]
    assert path == "/api/v1/series"
    assert q == {"run": ["r1"], "tag": ["all"], "metrics": ["kappa_ema,rank_90"]}


def test_query_csv_json_and_ranges(cli, http):
    http.routes["/api/v1/series"] = (200, SERIES)
    p = run(cli, "query", "r1", "all", "kappa_ema", "rank_90", "--csv", "--server", http.url,
            "--from", 1, "--to", 10, "--max-points", 50)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["step,kappa_ema,rank_90", "1,0.5,3", "2,,4",
                                     "10,0.123456789012345,"]
    assert float(p.stdout.splitlines()[3].split(",")[1]) == 0.123456789012345
    assert http.requests[-1][1] == {"run": ["r1"], "tag": ["all"], "metrics": ["kappa_ema,rank_90"],
                                    "from": ["1"], "to": ["10"], "max_points": ["50"]}
    p = run(cli, "query", "r1", "all", "kappa_ema", "rank_90", "--json", "--server", http.url)
    assert p.returncode == 0 and json.loads(p.stdout) == SERIES


def test_query_all_metrics_and_tag_with_slash(cli, http):
    http.routes["/api/v1/series"] = (200, {"run": "r1", "tag": "model/enc.0", "step": [5],
                                           "kappa_onestep": [1e-300], "sigma_1": [2.5]})
    p = run(cli, "query", "r1", "model/enc.0", "all", "--csv", "--server", http.url + "/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["step,kappa_onestep,sigma_1", "5,1e-300,2.5"]
    assert http.requests[-1][1] == {"run": ["r1"], "tag": ["model/enc.0"]}  # no metrics: all


def test_query_errors(cli, http, tmp_path):
    http.routes["/api/v1/series"] = (404, {"error": "unknown stream"})
    p = run(cli, "query", "r1", "nope", "kappa_ema", "--server", http.url)
    assert p.returncode == 1 and "server answered 404: unknown stream" in p.stderr
    http.routes["/api/v1/series"] = (200, {"run": "r1", "tag": "all", "step": [1, 2],
                                           "kappa_ema": [1.0]})
    p = run(cli, "query", "r1", "all", "kappa_ema", "--server", http.url)
    assert p.returncode == 1 and "\"kappa_ema\" is not an array as long as \"step\"" in p.stderr
    http.routes["/api/v1/series"] = (200, b"<html>oops</html>")
    p = run(cli, "query", "r1", "all", "kappa_ema", "--server", http.url)
    assert p.returncode == 1 and "not JSON" in p.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run(cli, "query", "r1", "all", "kappa_ema", "--server", f"http://127.0.0.1:{port}")
    assert p.returncode == 1 and "cannot get" in p.stderr
    p = run(cli, "query", "r1", "all", "kappa_ema", "--token-file", tmp_path / "missing")
    assert p.returncode == 1 and "--token-file" in p.stderr


def test_query_token(cli, tmp_path):
    c = Canned(token="s3cret")
    try:
        c.routes["/api/v1/series"] = (200, SERIES)
        p = run(cli, "query", "r1", "all", "kappa_ema", "rank_90", "--server", c.url)
        assert p.returncode == 1 and "server answered 401: missing or bad token" in p.stderr
        tf = tmp_path / "token"
        tf.write_text("s3cret\n")
        p = run(cli, "query", "r1", "all", "kappa_ema", "rank_90", "--server", c.url,
                "--token-file", tf)
        assert p.returncode == 0, p.stderr
        assert c.requests[-1][2]["Authorization"] == "Bearer s3cret"
        p = run(cli, "query", "r1", "all", "kappa_ema", "rank_90", "--server", c.url, "--token",
                "s3cret", "--csv")
        assert p.returncode == 0 and p.stdout.startswith("step,kappa_ema,rank_90\n")
    finally:
        c.close()


# ---- export -----------------------------------------------------------------------------------


def export_routes(http):
    http.routes["/api/v1/runs/r1/streams"] = (200, {"streams": [
        {"tag": "all", "k": 256, "points": 2, "last_step": 2, "last_seen": 0},
        {"tag": "layer/1", "k": 256, "points": 1, "last_step": 7, "last_seen": 0}]})
    data = {"all": {"step": [1, 2], "kappa_ema": [0.25, None], "rank_90": [3, 5],
                    "loss": [2.5, 1 / 3]},
            "layer/1": {"step": [7], "kappa_ema": [1e-7], "rank_90": [None], "loss": [None]}}

    def series(h):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        tag = q["tag"][0]
        d = dict(run="r1", tag=tag, step=data[tag]["step"])
        names = q["metrics"][0].split(",") if "metrics" in q else ["kappa_ema", "rank_90", "loss"]
        for n in names:
            d[n] = data[tag][n]
        h.reply(200, d)
    http.routes["/api/v1/series"] = series


def test_export_csv(cli, http):
    export_routes(http)
    p = run(cli, "export", "r1", "--format", "csv", "--server", http.url)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["run,tag,step,kappa_ema,rank_90,loss",
                                     "r1,all,1,0.25,3,2.5",
                                     "r1,all,2,,5,0.3333333333333333",
                                     "r1,layer/1,7,1e-07,,"]
    assert float(p.stdout.splitlines()[2].split(",")[-1]) == 1 / 3
    assert [r[0] for r in http.requests] == ["/api/v1/runs/r1/streams", "/api/v1/series",
                                             "/api/v1/series"]


def test_export_jsonl_metrics_and_tag(cli, http):
    export_routes(http)
    p = run(cli, "export", "r1", "--format", "jsonl", "--metrics", "loss,kappa_ema",
            "--server", http.url)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(l) for l in p.stdout.splitlines()]
    assert rows == [{"run": "r1", "tag": "all", "step": 1, "loss": 2.5, "kappa_ema": 0.25},
                    {"run": "r1", "tag": "all", "step": 2, "loss": 1 / 3, "kappa_ema": None},
                    {"run": "r1", "tag": "layer/1", "step": 7, "loss": None, "kappa_ema": 1e-7}]
    assert http.requests[-1][1]["metrics"] == ["loss,kappa_ema"]
    http.requests.clear()
    p = run(cli, "export", "r1", "--tag", "layer/1", "--format", "jsonl", "--server", http.url)
    assert p.returncode == 0, p.stderr
    assert [json.loads(l) for l in p.stdout.splitlines()] == [
        {"run": "r1", "tag": "layer/1", "step": 7, "kappa_ema": 1e-7, "rank_90": None,
         "loss": None}]
    assert [r[0] for r in http.requests] == ["/api/v1/series"]  # no stream listing


def test_export_unknown_run(cli, http):
    http.routes["/api/v1/runs/zz/streams"] = (404, {"error": "unknown run"})
    p = run(cli, "export", "zz", "--server", http.url)
    assert p.returncode == 1 and "server answered 404: unknown run" in p.stderr


# ---- tail ---------------------------------------------------------------------------------------


def point(run_, tag, step, k1, ke, r90):
    return {"run": run_, "tag": tag, "step": step, "kappa_onestep": k1, "kappa_ema": ke,
            "rank_90": r90, "loss": None}


def sse_route(chunks, close=False):
    """Stream the given byte chunks (a little apart), then hold the
    connection open until the client leaves (or close it)."""
    def handler(h):
        h.server_version = "canned"
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        if close:
            h.send_header("Connection", "close")
        h.end_headers()
        try:
            for c in chunks:
                h.wfile.write(c)
                h.wfile.flush()
                time.sleep(0.02)
            if close:
                h.close_connection = True
                return
            for _ in range(200):
                time.sleep(0.05)
                h.wfile.write(b": hb\n\n")
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
    return handler


def ev(name, obj):
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def test_tail_prints_points_and_alerts(cli, http):
    alert = {"name": "kappa_jump", "state": "firing", "run": "r1", "tag": "all",
             "metric": "kappa_ema", "value": 3.5, "severity": "warning"}
    chunks = [b": hello\n\n",
              ev("point", point("r1", "all", 100, 0.0123, 0.5, 4)),
              ev("point", point("r2", "all", 5, 1, 1, 1)),          # filtered out by --run
              # CRLF line endings, a CR split across reads, data in two lines
              b"event: point\r\ndata: " + json.dumps(point("r1", "all", 101, None, 0.25, 7))[:20].encode(),
              json.dumps(point("r1", "all", 101, None, 0.25, 7))[20:].encode() + b"\r",
              b"\n\r\n",
              ev("alert", alert),
              ev("resync", {}),
              b"event: point\ndata: {\"run\": \"r1\", \"tag\": \"all\",\ndata: \"step\": 102, "
              b"\"kappa_onestep\": 2, \"kappa_ema\": 1.05, \"rank_90\": 40}\n\n",
              ev("point", point("r1", "all", 103, 0, 0, 0))]   # beyond --count
    http.routes["/api/v1/events"] = sse_route(chunks)
    p = run(cli, "tail", "--run", "r1", "--count", 3, "--server", http.url, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["step", "run/tag", "kappa_1step", "kappa_ema", "rank_90"]
    assert [l.split() for l in lines[1:]] == [
        ["100", "r1/all", "0.0123", "0.5", "4"],
        ["101", "r1/all", "-", "0.25", "7"],
        ["ALERT", "state=firing", "name=kappa_jump", "severity=warning", "run=r1", "tag=all",
         "metric=kappa_ema", "value=3.5"],
        ["102", "r1/all", "2", "1.05", "40"]]
    assert "resync" in p.stderr
    assert http.requests[-1][1] == {"run": ["r1"]}


def test_tail_json_and_reconnect(cli, http):
    n = {"conn": 0}

    def handler(h):
        n["conn"] += 1
        sse_route([ev("point", point("r1", "t", n["conn"], 0.1, 0.2, 3))], close=True)(h)
    http.routes["/api/v1/events"] = handler
    p = run(cli, "tail", "--json", "--count", 2, "--tag", "t", "--server", http.url, timeout=30)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(l) for l in p.stdout.splitlines()]
    assert [(r["event"], r["data"]["step"]) for r in rows] == [("point", 1), ("point", 2)]
    assert n["conn"] == 2 and "reconnecting" in p.stderr


def test_tail_errors(cli, http):
    p = run(cli, "tail", "--server", http.url + "/nope", timeout=30)
    assert p.returncode == 1 and "server answered 404: not found" in p.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run(cli, "tail", "--server", f"http://127.0.0.1:{port}", timeout=30)
    assert p.returncode == 1 and "cannot get" in p.stderr


def test_tail_stops_on_sigint(cli, http):
    import signal
    http.routes["/api/v1/events"] = sse_route([ev("point", point("r1", "all", 1, 0.1, 0.1, 1))])
    proc = subprocess.Popen([cli, "tail", "--server", http.url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.split()[0] == "step"
    assert proc.stdout.readline().split()[:2] == ["1", "r1/all"]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=scaled(30))
    assert proc.returncode == 0, err


# ---- against the real daemon ($GW_DAEMON, started by conftest's Daemon) -----------------


@pytest.fixture
def gwd(tmp_path):
    if not os.environ.get("GW_DAEMON"):
        pytest.skip("GW_DAEMON not set (ctest's integration test sets it)")
    from conftest import Daemon
    d = Daemon(os.environ["GW_DAEMON"], tmp_path, extra=["--window", "64", "--rank-every", "1"])
    d.start()
    yield d
    assert d.stop() == 0, d.log.read_text()


def test_daemon_sees_the_documented_structure(cli, gwd):
    server = f"http://127.0.0.1:{gwd.http_port}"
    p = run(cli, "publish", "--synthetic", "--run", "e2e", "--tags", 2, "--steps", 200, "--k", 128,
            "--rank", 3, "--collapse-at", 130, "--rate", 0, "--loss", "--endpoint", gwd.endpoint,
            "--report")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("total: sent 400  dropped 0")

    def rows():
        q = run(cli, "query", "e2e", "layer0", "rank_90", "kappa_onestep", "loss", "--csv",
                "--server", server)
        if q.returncode == 1 and "unknown stream" in q.stderr:
            return []  # not ingested yet
        assert q.returncode == 0, q.stderr
        return [l.split(",") for l in q.stdout.splitlines()[1:]]
    gwd.wait_for(lambda: len(rows()) == 199, what="199 points")
    r = {int(s): (float(r90), float(k1), float(loss)) for s, r90, k1, loss in rows()}
    assert r[129][0] == 3 and r[129][1] == pytest.approx(0.005, rel=0.25)   # before: rank R
    assert r[199][0] > 30 and 1.5 < r[199][1] < 2.5                          # after: noise
    assert r[50][2] == pytest.approx(0.1 + 2.2 * math.exp(-0.05), rel=1e-12)

    e = run(cli, "export", "e2e", "--format", "jsonl", "--metrics", "rank_90", "--server", server)
    assert e.returncode == 0, e.stderr
    pts = [json.loads(l) for l in e.stdout.splitlines()]
    assert sorted({p["tag"] for p in pts}) == ["layer0", "layer1"] and len(pts) == 2 * 199

    # tail: a slow stream publishes until tail has printed 3 of its points
    tail = popen(cli, "tail", "--run", "live", "--count", 3, "--server", server,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pub = popen(cli, "publish", "--synthetic", "--run", "live", "--rate", 20, "--endpoint",
                gwd.endpoint, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        out, err = tail.communicate(timeout=scaled(60))
    finally:
        pub.terminate()
        assert pub.wait(scaled(30)) == 0  # SIGTERM: flush and exit 0
    assert tail.returncode == 0, err
    got = [l.split() for l in out.splitlines()[1:]]
    steps = [int(g[0]) for g in got]
    assert len(got) == 3 and all(g[1] == "live/all" for g in got)
    assert steps == list(range(steps[0], steps[0] + 3)) and all(len(g) == 5 for g in got)
