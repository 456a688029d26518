"""The sketch: NumPy and torch implementations against an independent reference.

The reference (conftest.ref_sketch) is a Python-integer transcription of the
definition; proto/vectors/sketch_vectors.json (written by others from the C
side) is checked too when present.
"""
import json
import math
import os

import numpy as np
import pytest
import torch

import gradwatch
import gradwatch.torch as gt
from gradwatch import _kernels, _sketch
from conftest import SKETCH_JSON, ref_fmix64, ref_hash, ref_sketch

CASES = [  # (kind, s, k)
    ("sjlt", 1, 1), ("sjlt", 1, 16), ("sjlt", 2, 3), ("sjlt", 4, 256), ("sjlt", 8, 8),
    ("sjlt", 8, 100), ("gaussian", 0, 1), ("gaussian", 0, 5), ("gaussian", 0, 33),
]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.linalg.norm(b), 1e-300)


def test_hash_matches_reference():
    for seed in (0, 1, 42, 2 ** 63, 2 ** 64 - 1):
        for i in (0, 1, 12345, 2 ** 40 + 3):
            for j in range(8):
                assert gradwatch.hash64(seed, i, j) == ref_hash(seed, i, j)
    # fmix64 of 0 is 0 and the hash is not the identity
    assert ref_fmix64(0) == 0 and gradwatch.hash64(0, 0, 1) != 1


def test_torch_fmix_matches_python_ints():
    rng = np.random.default_rng(1)
    xs = [int(v) for v in rng.integers(0, 2 ** 63, 200, dtype=np.uint64)] + \
         [0, 1, 2 ** 63, 2 ** 64 - 1, 0xDEADBEEFCAFEBABE]
    t = torch.tensor([gt._signed(x) for x in xs], dtype=torch.int64)
    got = [v & (2 ** 64 - 1) for v in gt._fmix64(t).tolist()]
    assert got == [ref_fmix64(x) for x in xs]


@pytest.mark.parametrize("kind,s,k", CASES)
@pytest.mark.parametrize("offset", [0, 977, 2 ** 40 + 5])
def test_numpy_and_torch_equal_reference(kind, s, k, offset):
    rng = np.random.default_rng(k * 31 + s)
    d = 37 if kind == "gaussian" else 301
    g = rng.standard_normal(d).astype(np.float32)
    seed = 0xC0FFEE + k
    ref = ref_sketch(g, k, seed, kind, s, offset)
    z_np = gradwatch.Sketcher(k, seed, kind, s).sketch(g, offset)
    z_t = gt.torch_sketch(torch.from_numpy(g), k, seed, kind, s, offset=offset).numpy()
    assert z_np.dtype == np.float64 and z_np.shape == (k,)
    assert rel_err(z_np, ref) < 1e-12
    assert rel_err(z_t, ref) < 1e-12
    # the torch index builder gives the same bins as the numpy one
    if kind == "sjlt":
        b_np = _sketch.sjlt_bins(seed, k, s, offset, d)
        b_t = gt.sjlt_bins(seed, k, s, offset, d).numpy()
        assert np.array_equal(b_np, b_t)


def test_publisher_sketch_is_the_same_s():
    g = np.linspace(-1, 1, 500, dtype=np.float32)
    with gradwatch.Publisher("tcp://127.0.0.1:1", run="r", k=64, seed=9, s=2) as pub:
        assert np.allclose(pub.sketch(g), ref_sketch(g, 64, 9, "sjlt", 2), rtol=0, atol=1e-12)
        # torch tensors and 2-d arrays (row-major) are accepted
        g2 = g.reshape(20, 25)
        assert np.array_equal(pub.sketch(torch.from_numpy(g2)), pub.sketch(g))
        assert np.array_equal(pub.sketch(g2), pub.sketch(g))


@pytest.mark.parametrize("kind,s", [("sjlt", 4), ("gaussian", 0)])
def test_sketches_of_slices_add_up(kind, s):
    """Column i depends only on (seed, i): slices at their offsets sum to the whole."""
    rng = np.random.default_rng(5)
    g = rng.standard_normal(1000)
    sk = gradwatch.Sketcher(32, 3, kind, s)
    whole = sk.sketch(g)
    parts = sk.sketch(g[:123]) + sk.sketch(g[123:700], 123) + sk.sketch(g[700:], 700)
    assert rel_err(parts, whole) < 1e-13
    tparts = sum(gt.torch_sketch(torch.from_numpy(g[a:b]), 32, 3, kind, s, offset=a)
                 for a, b in ((0, 400), (400, 1000))).numpy()
    assert rel_err(tparts, whole) < 1e-13


@pytest.mark.parametrize("kind,s", [("sjlt", 1), ("sjlt", 4), ("gaussian", 0)])
def test_norm_preserved_in_expectation(kind, s):
    """E||z||^2 = ||g||^2: mean over 200 seeds within 5 standard errors."""
    rng = np.random.default_rng(11)
    g = rng.standard_normal(400)
    k = 64
    ratios = [np.sum(gradwatch.sketch(g, k, seed, kind, s) ** 2) / np.sum(g ** 2)
              for seed in range(200)]
    se = np.std(ratios) / math.sqrt(len(ratios))
    assert abs(np.mean(ratios) - 1.0) < 5 * se + 1e-3
    assert 0.5 * math.sqrt(2 / k) < np.std(ratios) < 2 * math.sqrt(2 / k)


def test_sjlt_columns_have_s_nonzeros_of_the_right_size():
    S = gradwatch.sketch_matrix(200, 40, seed=1, kind="sjlt", s=4)
    nz = np.count_nonzero(S, axis=0)
    assert np.all(nz == 4)
    assert np.allclose(np.abs(S[S != 0]), 0.5)
    # one nonzero per row block [10 j, 10 j + 10)
    for j in range(4):
        assert np.all(np.count_nonzero(S[10 * j:10 * j + 10], axis=0) == 1)


def test_float32_and_float64_inputs_agree():
    g = np.random.default_rng(2).standard_normal(999).astype(np.float32)
    a = gradwatch.sketch(g, 128, 1)
    b = gradwatch.sketch(g.astype(np.float64), 128, 1)
    assert np.array_equal(a, b)  # float64 accumulation: float32 inputs are exact


def test_large_vector_chunked_equals_unchunked(monkeypatch):
    g = np.random.default_rng(3).standard_normal(5000)
    whole = gradwatch.sketch(g, 16, 7)
    monkeypatch.setattr(_sketch, "_CHUNK", 333)
    assert rel_err(gradwatch.Sketcher(16, 7).sketch(g), whole) < 1e-13
    monkeypatch.setattr(_kernels, "_HASH_CHUNK", 257)  # the torch kernels live there
    assert rel_err(gt.torch_sketch(torch.from_numpy(g), 16, 7).numpy(), whole) < 1e-13


@pytest.mark.parametrize("args,exc,word", [
    (dict(k=0), ValueError, "k"), (dict(k=65537), ValueError, "k"), (dict(k=2.0), TypeError, "k"),
    (dict(k=8, s=0), ValueError, "s"), (dict(k=8, s=9), ValueError, "s"),
    (dict(k=3, s=4), ValueError, "s"), (dict(k=8, kind="gaussian", s=4), ValueError, "s"),
    (dict(k=8, kind="dense"), ValueError, "kind"), (dict(k=8, seed=-1), ValueError, "seed"),
    (dict(k=8, seed=2 ** 64), ValueError, "seed"), (dict(k=True), TypeError, "k"),
])
def test_bad_parameters(args, exc, word):
    with pytest.raises(exc, match=rf"\b{word}\b"):
        gradwatch.check_params(**args)


def test_default_s():
    assert gradwatch.check_params(256) == (256, 0, "sjlt", 4)
    assert gradwatch.check_params(2)[3] == 2  # capped at k
    assert gradwatch.check_params(8, kind="gaussian")[3] == 0


# -- proto/vectors/sketch_vectors.json ------------------------------------------


def _load_vectors():
    if not os.path.exists(SKETCH_JSON):
        pytest.skip(f"{os.path.relpath(SKETCH_JSON)} not written yet (proto/SKETCH.md owner)")
    with open(SKETCH_JSON) as f:
        data = json.load(f)
    return data


def _cases(data):
    if isinstance(data, list):
        return data
    for key in ("vectors", "cases", "sketches"):
        if key in data:
            return data[key]
    raise AssertionError(f"unknown sketch_vectors.json layout: keys {list(data)}")


def _vec_params(c):
    kind = c["kind"]
    if isinstance(kind, int):
        kind = {1: "sjlt", 2: "gaussian"}[kind]
    return int(c["seed"]), kind, int(c.get("s", 0)), int(c["k"]), int(c.get("offset", 0))


def test_sketch_vectors_numpy_and_torch():
    cases = _cases(_load_vectors())
    assert cases, "no sketch vectors"
    for c in cases:
        seed, kind, s, k, offset = _vec_params(c)
        g = np.asarray(c["input"], dtype=np.float64)
        if np.array_equal(g.astype(np.float32), g):  # inputs are float32 values: use float32
            g = g.astype(np.float32)
        assert g.size == int(c.get("d", g.size))
        want = np.asarray(c["expected"], dtype=np.float64)
        z_np = gradwatch.Sketcher(k, seed, kind, s).sketch(g, offset)
        z_t = gt.torch_sketch(torch.from_numpy(g), k, seed, kind, s, offset=offset).numpy()
        tol = 1e-6 * max(np.linalg.norm(want), 1e-30)
        assert np.max(np.abs(z_np - want)) <= tol, c.get("name", c)
        assert np.max(np.abs(z_t - want)) <= tol, c.get("name", c)


def test_sketch_vectors_agree_with_reference():
    """Guards the vectors themselves against the definition (small cases)."""
    cases = _cases(_load_vectors())
    checked = 0
    for c in cases:
        seed, kind, s, k, offset = _vec_params(c)
        g = np.asarray(c["input"], dtype=np.float64)
        if g.size * (k if kind == "gaussian" else s) > 200000:
            continue
        want = np.asarray(c["expected"], dtype=np.float64)
        ref = ref_sketch(g, k, seed, kind, s, offset)
        assert np.max(np.abs(np.asarray(ref) - want)) <= 1e-6 * max(np.linalg.norm(want), 1e-30)
        checked += 1
    assert checked > 0


def test_sketch_vectors_hashes():
    data = _load_vectors()
    hashes = data.get("hashes") if isinstance(data, dict) else None
    if not hashes:
        pytest.skip("sketch_vectors.json has no 'hashes' section")
    for h in hashes:
        seed, i, j, want = (int(h[x]) for x in ("seed", "i", "j", "h"))
        assert gradwatch.hash64(seed, i, j) == want
        assert ref_hash(seed, i, j) == want
        key = np.array([(i * 8 + j) & (2 ** 64 - 1)], dtype=np.uint64)
        key ^= np.uint64((seed * _sketch.GOLDEN) & _sketch.MASK64)
        assert int(_sketch._fmix64_np(key)[0]) == want
        tkey = torch.tensor([gt._signed(((seed * _sketch.GOLDEN) & _sketch.MASK64)
                                        ^ ((i * 8 + j) & _sketch.MASK64))])
        assert int(gt._fmix64(tkey)[0]) & _sketch.MASK64 == want
