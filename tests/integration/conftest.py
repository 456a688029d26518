"""Fixtures for black-box tests of the real gradwatchd on loopback.

`daemon` starts the binary named by $GW_DAEMON (set by ctest) on free
loopback ports and a temp database, waits for /readyz, and stops it with
SIGTERM afterwards, failing the test if it did not exit 0. Frames are built
here with `struct`, straight from proto/PROTOCOL.md, independent of the C
and Python client code.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import zmq

MAGIC = 0x4B535747
DTYPES = {"f32": 1, "f16": 2, "bf16": 3}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def encode(run, tag, step, z, *, seed=0, kind=1, s=4, dtype="f32", grad_norm=None,
           loss=None, lr=None, wall_ns=None, version=1, magic=MAGIC):
    """Return [topic, body] of one message, per proto/PROTOCOL.md."""
    z = np.asarray(z)
    flags = (grad_norm is not None) | ((loss is not None) << 1) | ((lr is not None) << 2)
    if dtype == "f32":
        payload = z.astype("<f4").tobytes()
    elif dtype == "f16":
        payload = z.astype("<f2").tobytes()
    else:
        payload = (z.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    hdr = struct.pack("<IBBBBIIQqQddd", magic, version, DTYPES[dtype], kind, s, len(z),
                      flags, step, wall_ns if wall_ns is not None else time.time_ns(),
                      seed, grad_norm or 0.0, loss or 0.0, lr or 0.0)
    assert len(hdr) == 64
    return [f"gw1/{run}/{tag}".encode(), hdr + payload]


class Daemon:
    def __init__(self, binary, tmp_path, extra=(), token=None):
        self.binary = binary
        self.tmp = tmp_path
        self.db = str(tmp_path / "gw.db")
        self.zmq_port = free_port()
        self.http_port = free_port()
        self.extra = list(extra)
        self.proc = None
        self.log = tmp_path / "daemon.log"
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def endpoint(self):
        return f"tcp://127.0.0.1:{self.zmq_port}"

    def start(self, *more):
        args = [self.binary, "--zmq", self.endpoint, "--http", f"127.0.0.1:{self.http_port}",
                "--db", self.db, "--log-level", "debug", *self.extra, *more]
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if self.get("/readyz", self.auth)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("daemon not ready: " + self.log.read_text())

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if not self.proc:
            return 0
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.proc = None
        self.logf.close()
        return rc

    def get(self, path, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, path, headers=None):
        code, body, _ = self.get(path, headers)
        return code, json.loads(body)

    def stats(self):
        return self.json("/api/v1/stats", self.auth)[1]

    def wait_for(self, pred, timeout=10, what="condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; stats={self.stats()}")


@pytest.fixture
def daemon_bin():
    b = os.environ.get("GW_DAEMON")
    if not b or not os.path.exists(b):
        pytest.fail("GW_DAEMON must name the built gradwatchd (ctest sets it)")
    return b


@pytest.fixture
def daemon(daemon_bin, tmp_path):
    d = Daemon(daemon_bin, tmp_path)
    yield d
    if d.proc:
        rc = d.stop()
        assert rc == 0, d.log.read_text()


class Pub:
    """A PUB socket aimed at a daemon; connect_daemon() once it is started."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 1000000)
        self.sock.setsockopt(zmq.LINGER, 2000)

    def connect_daemon(self):
        self.sock.connect(self.daemon.endpoint)
        time.sleep(0.3)  # PUB/SUB slow joiner: let the subscription arrive
        return self

    def send_multipart(self, frames):
        self.sock.send_multipart(frames)


@pytest.fixture
def pub(daemon):
    p = Pub(daemon)
    yield p
    p.sock.close()
