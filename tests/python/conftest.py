"""Shared helpers for the gradwatch Python client tests.

Makes client/python importable without installing it, and provides an
independent float64 reference of the sketch written straight from the lead's
definition (proto/SKETCH.md) with Python integers: no code shared with the
package under test.
"""
import math
import os
import socket
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLIENT = os.path.join(ROOT, "client", "python")
if CLIENT not in sys.path:
    sys.path.insert(0, CLIENT)

FRAMES_JSON = os.path.join(ROOT, "proto", "vectors", "frames.json")
SKETCH_JSON = os.path.join(ROOT, "proto", "vectors", "sketch_vectors.json")

M64 = (1 << 64) - 1


def ref_fmix64(x):
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    x ^= x >> 33
    return x


def ref_hash(seed, i, j):
    return ref_fmix64(((seed * 0x9E3779B97F4A7C15) & M64) ^ ((i * 8 + j) & M64))


def ref_column(seed, k, kind, s, i):
    """Column i of S as a dict row -> value (float64), per the definition."""
    col = {}
    if kind == "sjlt":
        for j in range(s):
            lo = j * k // s
            hi = (j + 1) * k // s
            h = ref_hash(seed, i, j)
            row = lo + (((h >> 32) * (hi - lo)) >> 32)
            col[row] = col.get(row, 0.0) + (1.0 if h & 1 == 0 else -1.0) / math.sqrt(s)
    else:
        for b in range(k):
            h = ref_fmix64(((seed * 0x9E3779B97F4A7C15) & M64) ^ ((i * 65536 + b) & M64)
                           ^ 0x8000000000000000)
            u1 = ((h >> 32) + 0.5) / 2.0 ** 32
            u2 = ((h & 0xFFFFFFFF) + 0.5) / 2.0 ** 32
            col[b] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2) / math.sqrt(k)
    return col


def ref_sketch(g, k, seed=0, kind="sjlt", s=4, offset=0):
    """float64 z = S[:, offset:offset+d] g, one column at a time (slow, for small d)."""
    z = [0.0] * k
    for c, gv in enumerate(g):
        gv = float(gv)
        for row, v in ref_column(seed, k, kind, s, offset + c).items():
            z[row] += v * gv
    return z


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port():
    return free_port()
