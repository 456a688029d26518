#!/usr/bin/python3
"""The peer a researcher would write: a straightforward Python/NumPy ZeroMQ
subscriber computing the same metrics as gradwatchd (windowed and
cumulative κ for both predictors, rank_90/rank_99 from an SVD every
RANK_EVERY messages), without storage. Used by bench_ingest.py as the
comparison point.

    py_subscriber.py ENDPOINT N [WINDOW] [RANK_EVERY]
"""
import collections
import struct
import sys
import time

import numpy as np
import zmq

HDR = struct.Struct("<IBBBBIIQqQddd")


class Stream:
    def __init__(self, k, W, beta=0.9):
        self.W, self.beta = W, beta
        self.prev = None
        self.ema = None
        self.inc = collections.deque(maxlen=W)
        self.r1 = collections.deque(maxlen=W)
        self.re = collections.deque(maxlen=W)
        self.nz = collections.deque(maxlen=W)
        self.cum = [0.0, 0.0, 0.0]
        self.n = 0
        self.rank = (0, 0)

    def push(self, z, rank_every):
        if self.prev is None:
            self.prev, self.ema = z, z.copy()
            return None
        self.n += 1
        r1 = float(np.sum((z - self.prev) ** 2))
        re = float(np.sum((z - self.ema) ** 2))
        nz = float(np.sum(z * z))
        self.inc.append(z - self.prev)
        self.r1.append(r1), self.re.append(re), self.nz.append(nz)
        self.cum[0] += r1; self.cum[1] += re; self.cum[2] += nz
        self.ema = self.beta * self.ema + (1 - self.beta) * z
        self.prev = z
        N = sum(self.nz)
        k1, ke = sum(self.r1) / N, sum(self.re) / N
        if self.n % rank_every == 1 or rank_every == 1:
            s2 = np.linalg.svd(np.array(self.inc).T, compute_uv=False) ** 2
            frac = np.cumsum(s2) / max(s2.sum(), 1e-300)
            self.rank = (int(np.searchsorted(frac, 0.9) + 1), int(np.searchsorted(frac, 0.99) + 1))
        return k1, ke, self.rank


def main():
    ep, n = sys.argv[1], int(sys.argv[2])
    W = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    rank_every = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"gw1/")
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.bind(ep)
    print("ready", flush=True)
    streams = {}
    got = 0
    t0 = None
    try:
        while got < n:
            topic, body = sock.recv_multipart()
            if t0 is None:
                t0 = time.perf_counter()
            h = HDR.unpack_from(body)
            k = h[5]
            off = 72 if body[4] == 2 else 64  # wire version 2 adds the incarnation
            z = np.frombuffer(body, dtype="<f4", count=k, offset=off).astype(np.float64)
            if not np.isfinite(z).all():
                continue
            st = streams.get(topic)
            if st is None:
                st = streams[topic] = Stream(k, W)
            st.push(z, rank_every)
            got += 1
    except zmq.Again:
        pass
    dt = time.perf_counter() - t0 if t0 else 0
    print(f"received {got} in {dt:.3f} s = {(got - 1) / dt if dt else 0:.0f} msg/s", flush=True)


if __name__ == "__main__":
    main()
