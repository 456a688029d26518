#!/usr/bin/python3
"""bench_math_digits.py — the whole-run quantities on a real run (docs/MATH.md).

Trains the digits MLP of examples/train_digits.py (SGD, momentum 0.9, batch
32) and, at every step, takes the full flattened gradient g (d = 17226) and
its k = 256 sketch z = S g (the client's SJLT, s = 4). From both it computes
what the engine computes — windowed κ (one-step, EMA, linear; W = 64),
windowed rank_90 (SVD of the increment window), whole-run rank_90 (exact, of
every increment) — and, on the sketches, the engine's Frequent Directions
whole-run rank with l = 64 (tests/unit/engine_ref.py's float64 FD of the
same schedule). Prints the sketch's κ error next to sqrt(2/k), the
windowed and whole-run ranks, and checks the whole-run fields against the
documented Frequent Directions bound on the exact spectrum of the same
increments (exit status 1 if violated).

    PYTHONPATH=client/python /usr/bin/python3 bench/bench_math_digits.py [--steps 1536]
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "unit"))
import gradwatch._sketch as gsk  # noqa: E402
import train_digits  # noqa: E402
import engine_ref  # noqa: E402


def gradients(steps, seed=0):
    torch.manual_seed(seed)
    xtr, ytr, _, _ = train_digits.load_data()
    model = train_digits.MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < steps:
        for idx in train_digits.batches(len(xtr), 32, gen):
            opt.zero_grad()
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            out.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy().copy())
            opt.step()
            if len(out) == steps:
                break
    return np.array(out)


def rank90(e):
    frac = np.cumsum(e) / np.sum(e)
    return int(np.argmax(frac >= 0.9)) + 1


def window_stats(Z, W=64, beta=0.9):
    """Per n >= W: kappa one-step, EMA, linear, windowed rank_90."""
    n_msgs = Z.shape[0]
    e = Z[0].copy()
    r1, re, rl, zz = (np.zeros(n_msgs) for _ in range(4))
    out = []
    for n in range(1, n_msgs):
        z = Z[n]
        r1[n] = np.sum((z - Z[n - 1]) ** 2)
        re[n] = np.sum((z - e) ** 2)
        rl[n] = np.sum((z - (2 * Z[n - 1] - Z[n - 2] if n >= 2 else Z[0])) ** 2)
        e = beta * e + (1 - beta) * z
        zz[n] = z @ z
        if n >= W and n % 8 == 0:
            lo = n - W + 1
            D = Z[lo:n + 1] - Z[lo - 1:n]
            s = np.linalg.svd(D, compute_uv=False)
            zw = zz[lo:n + 1].sum()
            out.append((r1[lo:n + 1].sum() / zw, re[lo:n + 1].sum() / zw,
                        rl[lo:n + 1].sum() / zw, rank90(s * s)))
    return np.array(out)


def whole_run_rank(Z):
    D = np.diff(Z, axis=0)
    G = D @ D.T  # n×n: the same nonzero spectrum as DᵀD
    lam = np.clip(np.linalg.eigvalsh(G)[::-1], 0, None)
    return rank90(lam), lam


def fd_rank(Z, W=64, ell=64):
    """The engine's whole-run fields after its last shrink: (rank_90_run,
    rank_99_run) from lambda_i + Delta, rank_90 from lambda_i alone (never
    undercounts), Delta (the error of the sketch the fields come from),
    the total T and the number of increments n they cover."""
    D = np.diff(Z, axis=0)
    n = (len(D) // W) * W
    B = np.zeros((0, Z.shape[1]))
    Delta = prev = 0.0
    for j in range(0, n, W):
        prev = Delta
        B, lam, delta = engine_ref.fd_shrink(B, D[j:j + W], ell)
        Delta += delta
    total = np.sum(D[:n] ** 2)
    r90, r99, _ = engine_ref.run_ranks(lam, ell, total, prev)
    return r90, r99, engine_ref.run_ranks(lam, ell, total)[0], prev, total, n


def check_bound(Z, ell, r_run, q, Delta, total, n):
    """The documented guarantee against the exact spectrum of the same n
    increments: rank_q_run <= the exact rank, and at r = rank_q_run the
    exact cumulative energy fraction is at least q - r*Delta/T; Delta within
    min_r ||A - A_r||_F^2 / (ell - r). Returns (exact rank, fraction at
    r_run, slack r*Delta/T, bound on Delta / T, ok)."""
    D = np.diff(Z, axis=0)[:n]
    lam = np.clip(np.linalg.eigvalsh(D @ D.T)[::-1], 0, None)
    frac = np.cumsum(lam) / total
    exact = int(np.argmax(frac >= q)) + 1
    tails = total - np.concatenate([[0.0], np.cumsum(lam)[:ell - 1]])  # ||A - A_r||^2, r = 0..ell-1
    bound = float(np.min(tails / (ell - np.arange(ell))))
    f = float(frac[r_run - 1]) if r_run >= 1 else 0.0
    slack = r_run * Delta / total
    ok = r_run <= exact and f >= q - slack - 1e-12 and Delta <= bound * (1 + 1e-9)
    return exact, f, slack, bound / total, ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1536)
    ap.add_argument("--k", type=int, default=256)
    a = ap.parse_args()
    G = gradients(a.steps + 1)
    sk = gsk.Sketcher(a.k, seed=0)
    Z = np.array([np.asarray(sk.sketch(g.astype(np.float32)), dtype=np.float64) for g in G])
    full, sketched = window_stats(G), window_stats(Z)
    print("d = %d, k = %d, %d steps, sqrt(2/k) = %.3f" % (G.shape[1], a.k, a.steps, np.sqrt(2 / a.k)))
    for i, name in enumerate(["kappa_onestep", "kappa_ema", "kappa_linear"]):
        rel = np.abs(sketched[:, i] - full[:, i]) / full[:, i]
        print("%-14s full median %.3f  sketch rel. error median %.3f p90 %.3f max %.3f"
              % (name, np.median(full[:, i]), np.median(rel), np.percentile(rel, 90), rel.max()))
    dr = sketched[:, 3] - full[:, 3]
    print("rank_90 window: full median %d (range %d-%d), sketch median %d, sketch - full: "
          "mean %.2f, |.| max %d"
          % (np.median(full[:, 3]), full[:, 3].min(), full[:, 3].max(), np.median(sketched[:, 3]),
             dr.mean(), np.abs(dr).max()))
    rf, _ = whole_run_rank(G)
    rs, _ = whole_run_rank(Z)
    print("rank_90 whole run, exact: full gradients %d, sketches %d (sketch - full %+d)"
          % (rf, rs, rs - rf))
    failed = 0
    for ell in (64, 128):
        r90, r99, hi, Delta, total, n = fd_rank(Z, ell=ell)
        print("FD l=%d over %d increments: rank_90_run %d, rank_99_run %d (from lambda_i alone: "
              "rank_90 %d); Delta/T %.4f" % (ell, n, r90, r99, hi, Delta / total))
        for q, r in ((0.9, r90), (0.99, r99)):
            exact, f, slack, bnd, ok = check_bound(Z, ell, r, q, Delta, total, n)
            print("  rank_%d_run %d vs exact %d: exact energy at r = %.4f >= %.2f - r*Delta/T "
                  "(%.4f); Delta/T <= min_r tail_r/(l-r) = %.4f: %s"
                  % (round(q * 100), r, exact, f, q, slack, bnd, "within" if ok else "VIOLATED"))
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
