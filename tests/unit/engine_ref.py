#!/usr/bin/env python3
"""engine_ref.py — an independent float64 NumPy reference for the engine.

Written straight from SPEC §2, sharing nothing with daemon/engine.c: residuals
from explicit predictors, window sums by slicing, singular values from
np.linalg.svd of the k×|J| increment matrix (not a Gram matrix). It generates
streams from a fixed seed and writes their inputs and the expected per-point
fields to one little-endian binary file that tests/unit/test_engine.c reads:

  "GWREF001"  u32 n_streams  u32 n_cases
  n_streams × { u32 k, u32 n_msgs, u64 step[n_msgs], f64 z[n_msgs][k] }
  n_cases   × { u32 stream, u32 window, u32 rank_every, u32 0, f64 beta,
                f64 point[n_msgs - 1][NFIELDS] }      (NaN = null)

Point fields, in order: see FIELDS below. Ranks are generated away from ties:
the script fails if any cumulative energy fraction lies within TIE_MARGIN of
0.9 or 0.99, so "rank exactly equal" is a fair test.

Usage: engine_ref.py --out FILE
"""
import argparse
import os
import struct
import sys

import numpy as np

FIELDS = (["n", "window_len", "path_onestep", "path_ema", "kappa_onestep",
           "kappa_ema", "kappa_onestep_cum", "kappa_ema_cum", "rank_90",
           "rank_99", "stable_rank"]
          + ["tail_energy_%d" % r for r in range(1, 9)]
          + ["sigma_%d" % i for i in range(1, 9)]
          + ["rank_step", "sketch_norm"])
NFIELDS = len(FIELDS)  # 29
TIE_MARGIN = 1e-9
N_MSGS = 160


def ratio(a, b):
    return a / b if b != 0 else float("nan")


def rank_fields(H):
    """rank_90, rank_99, stable_rank, tail[8], sigma[8] of the k×|J| matrix H."""
    s = np.linalg.svd(H, compute_uv=False)
    sigma = np.zeros(8)
    if not np.any(H):
        return 0, 0, float("nan"), [float("nan")] * 8, sigma, float("inf")
    e = s * s
    cum = np.cumsum(e)
    total = cum[-1]
    frac = cum / total
    r90 = int(np.argmax(frac >= 0.9)) + 1
    r99 = int(np.argmax(frac >= 0.99)) + 1
    margin = float(np.min(np.minimum(np.abs(frac - 0.9), np.abs(frac - 0.99))))
    tail = [float(np.sum(e[r:]) / total) for r in range(1, 9)]
    m = min(8, len(s))
    sigma[:m] = s[:m]
    return r90, r99, float(total / e[0]), tail, sigma, margin


def reference(Z, steps, W, R, beta):
    """Expected points (n_msgs - 1) × NFIELDS for stream Z (n_msgs × k)."""
    n_msgs = Z.shape[0]
    out = np.zeros((n_msgs - 1, NFIELDS))
    r1 = np.zeros(n_msgs)
    re = np.zeros(n_msgs)
    zz = np.zeros(n_msgs)
    e = Z[0].copy()                      # e_0 = z_0
    min_margin = float("inf")
    rank = None
    for n in range(1, n_msgs):
        z = Z[n]
        r1[n] = np.sum((z - Z[n - 1]) ** 2)    # one-step: m_n = z_{n-1}
        re[n] = np.sum((z - e) ** 2)           # EMA: m_n = e_{n-1}
        e = beta * e + (1.0 - beta) * z        # e_n
        zz[n] = np.sum(z * z)
        lo = max(1, n - W + 1)                 # J_n = lo..n
        p1, pe, zw = r1[lo:n + 1].sum(), re[lo:n + 1].sum(), zz[lo:n + 1].sum()
        c1, ce, cz = r1[1:n + 1].sum(), re[1:n + 1].sum(), zz[1:n + 1].sum()
        if (n - 1) % R == 0:
            H = (Z[lo:n + 1] - Z[lo - 1:n]).T  # columns z_j - z_{j-1}, j in J_n
            r90, r99, srank, tail, sigma, margin = rank_fields(H)
            min_margin = min(min_margin, margin)
            rank = [r90, r99, srank] + list(tail) + list(sigma) + [float(steps[n])]
        out[n - 1] = ([n, n + 1 - lo, p1, pe, ratio(p1, zw), ratio(pe, zw),
                       ratio(c1, cz), ratio(ce, cz)] + rank + [np.sqrt(zz[n])])
    return out, min_margin


def orthonormal(rng, k, r):
    q, _ = np.linalg.qr(rng.standard_normal((k, r)))
    return q


def gen_streams(rng):
    """(name, Z, steps) for each test stream."""
    n = N_MSGS
    t = np.arange(n, dtype=float)
    streams = []

    # low rank: z_n on a fixed r-dim subspace, smooth coefficients
    k, r = 256, 4
    U = orthonormal(rng, k, r)
    freq = np.array([0.05, 0.11, 0.23, 0.37])
    phase = rng.uniform(0, 2 * np.pi, r)
    C = np.sin(np.outer(t, freq) + phase) * np.array([3.0, 2.0, 1.2, 0.7])
    streams.append(("lowrank", C @ U.T + 0.5))

    # pure noise, full rank window
    streams.append(("noise", rng.standard_normal((n, 256))))

    # collapse: smooth rank-2 drift, then noise from message 100 on
    k = 64
    U = orthonormal(rng, k, 2)
    C = np.stack([np.sin(0.07 * t), np.cos(0.13 * t)], axis=1) * 4.0
    Z = C @ U.T
    Z[100:] += 1.5 * rng.standard_normal((n - 100, k))
    streams.append(("collapse", Z))

    # EMA-sensitive: a fixed mean plus an alternating part plus noise; the
    # EMA predicts the mean, the one-step predictor chases the oscillation
    k = 32
    mean, v = rng.standard_normal(k), rng.standard_normal(k)
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    streams.append(("ema", mean + np.outer(sign, v) + 0.2 * rng.standard_normal((n, k))))

    # k < W: the increment matrix has rank <= k
    streams.append(("smallk", rng.standard_normal((n, 8))))

    # frozen, then moving: H = 0 for the first windows (ranks 0, NaN fields)
    k = 16
    Z = np.tile(rng.standard_normal(k), (n, 1))
    Z[12:] += np.cumsum(rng.standard_normal((n - 12, k)), axis=0)
    streams.append(("frozen", Z))

    out = []
    for name, Z in streams:
        steps = 10 + np.cumsum(rng.integers(1, 4, size=Z.shape[0])).astype(np.uint64)
        out.append((name, np.ascontiguousarray(Z, dtype=np.float64), steps))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    rng = np.random.default_rng(20240601)
    streams = gen_streams(rng)
    configs = [(4, 1, 0.9), (16, 1, 0.9), (64, 1, 0.9),
               (4, 5, 0.8), (16, 5, 0.8), (64, 5, 0.8)]
    cases = []
    for si, (name, Z, steps) in enumerate(streams):
        for W, R, beta in configs:
            pts, margin = reference(Z, steps, W, R, beta)
            if margin < TIE_MARGIN:
                sys.exit("engine_ref: stream %s W=%d R=%d is within %g of a rank "
                         "tie; change the generator" % (name, W, R, margin))
            cases.append((si, W, R, beta, pts))

    tmp = args.out + ".tmp%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(b"GWREF001")
        f.write(struct.pack("<II", len(streams), len(cases)))
        for name, Z, steps in streams:
            f.write(struct.pack("<II", Z.shape[1], Z.shape[0]))
            f.write(steps.astype("<u8").tobytes())
            f.write(Z.astype("<f8").tobytes())
        for si, W, R, beta, pts in cases:
            f.write(struct.pack("<IIIId", si, W, R, 0, beta))
            f.write(pts.astype("<f8").tobytes())
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
