"""Fixtures for black-box tests of the real gradwatchd on loopback.

`daemon` starts the binary named by $GW_DAEMON (set by ctest) on free
loopback ports and a temp database, waits for /readyz, and stops it with
SIGTERM afterwards, failing the test if it did not exit 0. Frames are built
here with `struct`, straight from proto/PROTOCOL.md, independent of the C
and Python client code.

Waits poll for the condition under a generous deadline, never sleep for a
fixed time: the suite runs on loaded 2-core machines and under
ThreadSanitizer. GW_TEST_TIME_SCALE (default 1; the TSan pass sets more)
multiplies every deadline here (scaled()).
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
TIME_SCALE = float(os.environ.get("GW_TEST_TIME_SCALE", "1"))


def scaled(seconds):
    """A deadline of `seconds` on a quiet machine, stretched for slow builds."""
    return seconds * TIME_SCALE


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
        """Start the daemon and wait for /readyz. A port taken between
        free_port() and the daemon's bind (another test file running beside
        this one) makes it exit at once: then it is retried on fresh ports."""
        for attempt in range(3):
            if self._start_once(more):
                return self
            self.zmq_port, self.http_port = free_port(), free_port()
        raise RuntimeError("daemon could not bind free ports: " + self.log.read_text())

    def _start_once(self, more):
        args = [self.binary, "--zmq", self.endpoint, "--http", f"127.0.0.1:{self.http_port}",
                "--db", self.db, "--log-level", "debug", *self.extra, *more]
        mark = self.log.stat().st_size if self.log.exists() else 0
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.time() + scaled(60)
        while time.time() < deadline:
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                self.logf.close()
                text = self.log.read_bytes()[mark:].decode(errors="replace")
                if "Address already in use" in text:
                    return False
                raise RuntimeError(f"daemon exited {rc}: {self.log.read_text()}")
            try:
                if self.get("/readyz", self.auth)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("daemon not ready: " + self.log.read_text())

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if not self.proc:
            return 0
        self.proc.send_signal(sig)
        rc = self.proc.wait(scaled(timeout))
        self.proc = None
        self.logf.close()
        return rc

    def get(self, path, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=scaled(30)) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, path, headers=None):
        code, body, _ = self.get(path, headers)
        return code, json.loads(body)

    def stats(self):
        return self.json("/api/v1/stats", self.auth)[1]

    def wait_for(self, pred, timeout=30, what="condition"):
        deadline = time.time() + scaled(timeout)
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


def subscribed_pub(endpoint, timeout=30, **opts):
    """A publisher connected to `endpoint` that has heard the daemon
    subscribe. XPUB rather than PUB: the daemon's subscription arrives as a
    message, so nothing is sent before the daemon listens (no slow-joiner
    loss, however loaded the machine). `opts`: socket options by name."""
    s = zmq.Context.instance().socket(zmq.XPUB)
    s.setsockopt(zmq.SNDHWM, 1000000)
    s.setsockopt(zmq.LINGER, 2000)
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k.upper()), v)
    s.connect(endpoint)
    if not s.poll(int(scaled(timeout) * 1000), zmq.POLLIN):
        s.close(linger=0)
        raise AssertionError(f"the daemon at {endpoint} never subscribed")
    assert s.recv().startswith(b"\x01")
    return s


class Pub:
    """A publisher aimed at a daemon; connect_daemon() once it is started
    (again after a restart: a fresh socket that waits for the subscription)."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.sock = None

    def connect_daemon(self):
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = subscribed_pub(self.daemon.endpoint)
        return self

    def send_multipart(self, frames):
        self.sock.send_multipart(frames)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def pub(daemon):
    p = Pub(daemon)
    yield p
    p.close()
