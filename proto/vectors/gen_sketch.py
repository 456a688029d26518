#!/usr/bin/python3
"""gen_sketch.py — test vectors for the gradwatch sketch (proto/SKETCH.md).

An implementation of the sketch independent of the C library: NumPy, with
uint64 arrays (whose arithmetic wraps modulo 2^64) for the hash and float64
for z. It writes proto/vectors/sketch_vectors.json, which every client's tests
read (format in proto/SKETCH.md, section "Test vectors").

    /usr/bin/python3 proto/vectors/gen_sketch.py            # rewrite the file
    /usr/bin/python3 proto/vectors/gen_sketch.py --check    # exit 1 if it differs
    /usr/bin/python3 proto/vectors/gen_sketch.py --explain  # the worked example

Inputs come from a fixed NumPy generator and are stored as float32 values, so
every implementation reads identical inputs; expected outputs are float64.
The hash is computed twice, with NumPy arrays and with Python integers, and
the two must agree before anything is written.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

M64 = (1 << 64) - 1
G = 0x9E3779B97F4A7C15
C1 = 0xFF51AFD7ED558CCD
C2 = 0xC4CEB9FE1A85EC53
GAUSS_TAG = 0x8000000000000000

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "sketch_vectors.json")
RNG_SEED = 20250201


# ---- the hash, twice -------------------------------------------------------

def fmix64_int(x):
    """fmix64 on one Python int (reference for the NumPy version)."""
    x ^= x >> 33
    x = (x * C1) & M64
    x ^= x >> 33
    x = (x * C2) & M64
    x ^= x >> 33
    return x


def hash_int(seed, i, j):
    return fmix64_int(((seed * G) & M64) ^ ((i * 8 + j) & M64))


def fmix64_np(x):
    """fmix64 on a uint64 array; NumPy array arithmetic wraps mod 2^64."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(C1)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(C2)
    x = x ^ (x >> np.uint64(33))
    return x


def hash_np(seed, i, j):
    """H(seed, i, j) for an array of coordinate indices i (uint64)."""
    key = np.uint64((seed * G) & M64)
    return fmix64_np(key ^ (i * np.uint64(8) + np.uint64(j)))


# ---- the two kinds of S ----------------------------------------------------

def sjlt_rows_signs(seed, k, s, i):
    """rows[j], signs[j] of the nonzeros j = 0..s-1 of columns i."""
    rows, signs = [], []
    for j in range(s):
        lo, hi = j * k // s, (j + 1) * k // s
        h = hash_np(seed, i, j)
        r = np.uint64(lo) + (((h >> np.uint64(32)) * np.uint64(hi - lo)) >> np.uint64(32))
        rows.append(r.astype(np.int64))
        signs.append(np.where((h & np.uint64(1)) == 0, 1.0, -1.0))
    return rows, signs


def sketch_sjlt(seed, k, s, g):
    g = np.asarray(g, dtype=np.float64)
    i = np.arange(len(g), dtype=np.uint64)
    z = np.zeros(k, dtype=np.float64)
    rows, signs = sjlt_rows_signs(seed, k, s, i)
    for r, sg in zip(rows, signs):
        np.add.at(z, r, sg * g / math.sqrt(s))
    return z


def gaussian_matrix(seed, k, d):
    key = np.uint64((seed * G) & M64)
    i = np.arange(d, dtype=np.uint64)[None, :]
    b = np.arange(k, dtype=np.uint64)[:, None]
    h = fmix64_np(key ^ (i * np.uint64(65536) + b) ^ np.uint64(GAUSS_TAG))
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0**32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2) / math.sqrt(k)


def sketch(kind, seed, k, s, g):
    if kind == "sjlt":
        return sketch_sjlt(seed, k, s, g)
    return gaussian_matrix(seed, k, len(g)) @ np.asarray(g, dtype=np.float64)


# ---- the file --------------------------------------------------------------

# (name, kind, s, k, d, seed, input style)
CASES = [
    ("sjlt-s1-k1-d1", "sjlt", 1, 1, 1, 0, "normal"),
    ("sjlt-s1-k7-d100", "sjlt", 1, 7, 100, 1, "normal"),
    ("sjlt-s1-k256-d3000", "sjlt", 1, 256, 3000, M64, "normal"),
    ("sjlt-s1-k16-d37-wide", "sjlt", 1, 16, 37, 0, "wide"),
    ("sjlt-s2-k16-d500", "sjlt", 2, 16, 500, 12345, "normal"),
    ("sjlt-s3-k7-d257", "sjlt", 3, 7, 257, 0, "normal"),
    ("sjlt-s4-k256-d2048", "sjlt", 4, 256, 2048, 42, "normal"),
    ("sjlt-s4-k7-d1000", "sjlt", 4, 7, 1000, M64, "wide"),
    ("sjlt-s8-k256-d1500", "sjlt", 8, 256, 1500, 7, "normal"),
    ("sjlt-s8-k16-d333", "sjlt", 8, 16, 333, 0xDEADBEEFCAFEF00D, "normal"),
    ("gaussian-k1-d5", "gaussian", 0, 1, 5, 0, "normal"),
    ("gaussian-k7-d64", "gaussian", 0, 7, 64, M64, "normal"),
    ("gaussian-k16-d300", "gaussian", 0, 16, 300, 3, "wide"),
    ("gaussian-k256-d100", "gaussian", 0, 256, 100, 99, "normal"),
]

HASH_CASES = [
    (1, 2, 0),  # the worked example of SKETCH.md
    (0, 0, 0),
    (0, 1, 0),
    (0, 0, 7),
    (42, 123456789, 3),
    (M64, 0, 0),
    (M64, (1 << 61) - 1, 7),  # the largest i whose i*8+j does not wrap
    (0x0123456789ABCDEF, 1 << 62, 5),  # i*8 wraps modulo 2^64
]


def f32_text(x):
    """Shortest decimal that reads back (as float64, then float32) as x."""
    t = np.format_float_scientific(np.float32(x), unique=True, trim="-")
    assert np.float32(float(t)) == np.float32(x), (t, x)
    assert "nan" not in t and "inf" not in t
    return t


def make_input(rng, d, style):
    g = rng.standard_normal(d)
    if style == "wide":  # magnitudes over six decades, some exact zeros
        g = g * 10.0 ** rng.uniform(-3.0, 3.0, d)
        g[rng.random(d) < 0.1] = 0.0
    return g.astype(np.float32)


def build():
    rng = np.random.default_rng(RNG_SEED)
    hashes = []
    for seed, i, j in HASH_CASES:
        h = hash_int(seed, i, j)
        hn = int(hash_np(seed, np.array([i], dtype=np.uint64), j)[0])
        assert h == hn, (seed, i, j, h, hn)
        hashes.append({"seed": str(seed), "i": str(i), "j": str(j), "h": str(h)})

    vectors = []
    for name, kind, s, k, d, seed, style in CASES:
        g = make_input(rng, d, style)
        z = sketch(kind, seed, k, s, g)
        if kind == "sjlt":  # second, plain-loop computation of the same z
            z2 = np.zeros(k)
            for i in range(d):
                for j in range(s):
                    h = hash_int(seed, i, j)
                    lo, hi = j * k // s, (j + 1) * k // s
                    row = lo + (((h >> 32) * (hi - lo)) >> 32)
                    z2[row] += (1.0 if h & 1 == 0 else -1.0) * float(g[i]) / math.sqrt(s)
            assert np.allclose(z, z2, rtol=0, atol=1e-12 * max(1.0, np.linalg.norm(z)))
        vectors.append({
            "name": name, "kind": kind, "s": s, "k": k, "d": d, "seed": str(seed),
            "input": [f32_text(x) for x in g],
            "expected": [float(x) for x in z],
        })
    return {"format": "gradwatch-sketch-vectors", "version": 1,
            "generator": "proto/vectors/gen_sketch.py", "rng_seed": RNG_SEED,
            "hashes": hashes, "vectors": vectors}


def dumps(doc):
    """JSON text with the float32 inputs written as bare numbers."""
    lines = ["{"]
    head = {k: v for k, v in doc.items() if k not in ("hashes", "vectors")}
    for key, v in head.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(v)},")
    lines.append('  "hashes": [')
    lines.append(",\n".join("    " + json.dumps(h) for h in doc["hashes"]))
    lines.append("  ],")
    lines.append('  "vectors": [')
    out = []
    for v in doc["vectors"]:
        meta = ", ".join(f"{json.dumps(key)}: {json.dumps(v[key])}"
                         for key in ("name", "kind", "s", "k", "d", "seed"))
        out.append("    {" + meta + ",\n"
                   + '     "input": [' + ", ".join(v["input"]) + "],\n"
                   + '     "expected": [' + ", ".join(repr(x) for x in v["expected"]) + "]}")
    lines.append(",\n".join(out))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # must be valid JSON
    return text


def explain():
    seed, i, j = 1, 2, 0
    key = (seed * G) & M64
    x = key ^ (i * 8 + j)
    print(f"seed*G            = 0x{key:016X}")
    print(f"x = seed*G ^ (i*8+j) = 0x{x:016X}")
    x ^= x >> 33
    print(f"x ^= x >> 33      = 0x{x:016X}")
    x = (x * C1) & M64
    print(f"x *= C1           = 0x{x:016X}")
    x ^= x >> 33
    print(f"x ^= x >> 33      = 0x{x:016X}")
    x = (x * C2) & M64
    print(f"x *= C2           = 0x{x:016X}")
    x ^= x >> 33
    print(f"H = x ^= x >> 33  = 0x{x:016X} = {x}")
    for k in (256, 7):
        print(f"k={k}, s=1: row = ((H>>32)*{k})>>32 = {((x >> 32) * k) >> 32}, "
              f"sign = {'+1' if x & 1 == 0 else '-1'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="compare with the file on disk instead of writing it")
    ap.add_argument("--explain", action="store_true",
                    help="print the intermediate values of H(1, 2, 0)")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    if a.explain:
        explain()
        return 0
    text = dumps(build())
    if a.check:
        with open(a.out, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{a.out}: {'up to date' if same else 'DIFFERS from the generator'}")
        return 0 if same else 1
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {a.out} ({len(text)} bytes, {len(CASES)} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
