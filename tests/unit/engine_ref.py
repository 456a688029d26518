#!/usr/bin/env python3
"""engine_ref.py — an independent float64 NumPy reference for the engine.

Written straight from docs/CONTRACT.md §2, sharing nothing with daemon/engine.c: residuals
from explicit predictors, window sums by slicing, singular values from
np.linalg.svd of the k×|J| increment matrix (not a Gram matrix). It generates
streams from a fixed seed and writes their inputs and the expected per-point
fields to one little-endian binary file that tests/unit/test_engine.c reads:

  "GWREF001"  u32 n_streams  u32 n_cases
  n_streams × { u32 k, u32 n_msgs, u64 step[n_msgs], f64 z[n_msgs][k] }
  n_cases   × { u32 stream, u32 window, u32 rank_every, u32 fd_rows, f64 beta,
                f64 point[n_msgs - 1][NFIELDS] }      (NaN = null)

The whole-run fields come from a float64 Frequent Directions sketch written
here from the papers (Liberty 2013; Ghashami et al. 2016), in time order and
through np.linalg.svd of the stacked rows, with the engine's schedule: after
message n with n % W == 0, C = [B; d_{n-W+1..n}] is shrunk by delta = the
l-th largest squared singular value, keeping sqrt(s_i^2 - delta) v_i for
i < l - 1 with s_i^2 > delta, rounded to float32 (the engine's storage).
The run fields are taken from C's singular values before the shrink; the
ranks from s_i^2 + Delta (Delta = the earlier shrinks' deltas summed)
against the exact total sum_j |d_j|^2; before the first shrink they are the
window's, ranks capped at l.

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
          + ["rank_step", "sketch_norm",
             "path_linear", "kappa_linear", "kappa_linear_cum",
             "path_onestep_cum", "path_ema_cum", "path_linear_cum",
             "kappa_best", "best_predictor", "tail_kappa_90",
             "rank_90_run", "rank_99_run"]
          + ["sigma_run_%d" % i for i in range(1, 9)]
          + ["rank_run_step", "window_zz"])   # window_zz: test tolerances only
NFIELDS = len(FIELDS)  # 50
TIE_MARGIN = 1e-9
N_MSGS = 160


def ratio(a, b):
    return a / b if b != 0 else float("nan")


def rank_fields(H, zw):
    """rank_90, rank_99, stable_rank, tail[8], sigma[8], tail_kappa_90 of the
    k×|J| matrix H; zw = the window's sum of |z_j|^2."""
    s = np.linalg.svd(H, compute_uv=False)
    sigma = np.zeros(8)
    if not np.any(H):
        return (0, 0, float("nan"), [float("nan")] * 8, sigma, ratio(0.0, zw),
                float("inf"))
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
    tk90 = ratio(float(np.sum(e[r90:])), zw)
    return r90, r99, float(total / e[0]), tail, sigma, tk90, margin


def run_ranks(lam, ell, total, delta=0.0):
    """Whole-run rank_90, rank_99 from the top eigenvalues lam (descending),
    each raised by the sketch's error bound delta (the upper end of Weyl's
    bracket), against the exact total; ell when never reached. Also the tie
    margin."""
    if total <= 0:
        return 0, 0, float("inf")
    frac = np.cumsum(lam[:ell] + delta) / total
    r90 = int(np.argmax(frac >= 0.9)) + 1 if np.any(frac >= 0.9) else ell
    r99 = int(np.argmax(frac >= 0.99)) + 1 if np.any(frac >= 0.99) else ell
    margin = float(np.min(np.minimum(np.abs(frac - 0.9), np.abs(frac - 0.99))))
    return r90, r99, margin


def fd_shrink(B, D, ell):
    """One Frequent Directions shrink of C = [B; D]: returns the new B
    (float32 values, held as float64), the eigenvalues of C^T C,
    descending, zero-padded to rows(C), and the shrink's delta."""
    C = np.vstack([B, D])
    m = C.shape[0]
    _, s, vt = np.linalg.svd(C, full_matrices=False)
    lam = np.zeros(m)
    lam[:len(s)] = s * s
    delta = lam[ell - 1] if m >= ell else 0.0
    r = 0
    while r < min(m, ell - 1, len(s)) and lam[r] > delta:
        r += 1
    newB = (np.sqrt(lam[:r] - delta)[:, None] * vt[:r]).astype(np.float32)
    return newB.astype(np.float64), lam, delta


def reference(Z, steps, W, R, beta, ell):
    """Expected points (n_msgs - 1) × NFIELDS for stream Z (n_msgs × k)."""
    n_msgs = Z.shape[0]
    out = np.zeros((n_msgs - 1, NFIELDS))
    r1 = np.zeros(n_msgs)
    re = np.zeros(n_msgs)
    rl = np.zeros(n_msgs)
    zz = np.zeros(n_msgs)
    B = np.zeros((0, Z.shape[1]))
    Delta = 0.0                                # sum of the shrinks' delta
    run = None
    e = Z[0].copy()                      # e_0 = z_0
    min_margin = float("inf")
    rank = None
    for n in range(1, n_msgs):
        z = Z[n]
        r1[n] = np.sum((z - Z[n - 1]) ** 2)    # one-step: m_n = z_{n-1}
        re[n] = np.sum((z - e) ** 2)           # EMA: m_n = e_{n-1}
        lin = 2.0 * Z[n - 1] - Z[n - 2] if n >= 2 else Z[0]
        rl[n] = np.sum((z - lin) ** 2)         # linear: m_n = 2z_{n-1} - z_{n-2}
        e = beta * e + (1.0 - beta) * z        # e_n
        zz[n] = np.sum(z * z)
        lo = max(1, n - W + 1)                 # J_n = lo..n
        p1, pe, zw = r1[lo:n + 1].sum(), re[lo:n + 1].sum(), zz[lo:n + 1].sum()
        c1, ce, cz = r1[1:n + 1].sum(), re[1:n + 1].sum(), zz[1:n + 1].sum()
        pl, cl = rl[lo:n + 1].sum(), rl[1:n + 1].sum()
        if (n - 1) % R == 0:
            H = (Z[lo:n + 1] - Z[lo - 1:n]).T  # columns z_j - z_{j-1}, j in J_n
            r90, r99, srank, tail, sigma, tk90, margin = rank_fields(H, zw)
            min_margin = min(min_margin, margin)
            rank = [r90, r99, srank] + list(tail) + list(sigma) + [float(steps[n])]
            if n < W:                          # the whole run is the window
                run = [min(r90, ell), min(r99, ell)] + list(sigma) + [float(steps[n])]
        if n % W == 0:                         # shrink the whole-run sketch
            B, lam, delta = fd_shrink(B, (Z[n - W + 1:n + 1] - Z[n - W:n]), ell)
            rr90, rr99, margin = run_ranks(lam, ell, c1, Delta)
            Delta += delta
            min_margin = min(min_margin, margin)
            srun = np.zeros(8)
            mm = min(8, len(lam), ell)
            srun[:mm] = np.sqrt(lam[:mm])
            run = [rr90, rr99] + list(srun) + [float(steps[n])]
        if zw != 0:
            ps = [p1, pe, pl]
            best = int(np.argmin(ps))         # first of equal minima
            kb, bp = ps[best] / zw, float(best)
        else:
            kb = bp = float("nan")
        out[n - 1] = ([n, n + 1 - lo, p1, pe, ratio(p1, zw), ratio(pe, zw),
                       ratio(c1, cz), ratio(ce, cz)] + rank[:-1] + [rank[-1]]
                      + [np.sqrt(zz[n]), pl, ratio(pl, zw), ratio(cl, cz), c1, ce, cl,
                         kb, bp, tk90] + run + [zw])
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
    # (W, rank_every, beta, fd_rows): the default l = 64, and small l so
    # that the sketch really discards (l - 1 < rank of the increments)
    configs = [(4, 1, 0.9, 64), (16, 1, 0.9, 64), (64, 1, 0.9, 64),
               (4, 5, 0.8, 64), (16, 5, 0.8, 64), (64, 5, 0.8, 64),
               (16, 1, 0.9, 8), (4, 5, 0.8, 8), (16, 5, 0.9, 3)]
    cases = []
    for si, (name, Z, steps) in enumerate(streams):
        for W, R, beta, ell in configs:
            pts, margin = reference(Z, steps, W, R, beta, ell)
            if margin < TIE_MARGIN:
                sys.exit("engine_ref: stream %s W=%d R=%d l=%d is within %g of a "
                         "rank tie; change the generator" % (name, W, R, ell, margin))
            cases.append((si, W, R, ell, beta, pts))

    tmp = args.out + ".tmp%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(b"GWREF001")
        f.write(struct.pack("<II", len(streams), len(cases)))
        for name, Z, steps in streams:
            f.write(struct.pack("<II", Z.shape[1], Z.shape[0]))
            f.write(steps.astype("<u8").tobytes())
            f.write(Z.astype("<f8").tobytes())
        for si, W, R, ell, beta, pts in cases:
            f.write(struct.pack("<IIIId", si, W, R, ell, beta))
            f.write(pts.astype("<f8").tobytes())
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
