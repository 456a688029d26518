"""The gradwatch sketch z = S g in NumPy (proto/SKETCH.md is normative).

This module owns the sketch parameters' validation, the documented 64-bit hash
and a NumPy implementation of S that the C library and the torch implementation
(gradwatch.torch) reproduce.

Definition (all integer arithmetic on uint64 modulo 2^64, >> logical):

    fmix64(x): x ^= x >> 33; x *= 0xFF51AFD7ED558CCD; x ^= x >> 33;
               x *= 0xC4CEB9FE1A85EC53; x ^= x >> 33
    G = 0x9E3779B97F4A7C15
    H(seed, i, j) = fmix64((seed * G) ^ (i * 8 + j))

    sjlt, s nonzeros per column: block j of rows is [lo_j, hi_j) with
    lo_j = floor(j k / s); h = H(seed, i, j); row = lo_j + ((h >> 32) * w_j) >> 32;
    sign = +1 if h & 1 == 0 else -1; S[row, i] = sign / sqrt(s).

    gaussian: h = fmix64((seed * G) ^ (i * 65536 + b) ^ 2^63) for row b;
    u1 = ((h >> 32) + 0.5) / 2^32, u2 = ((h & 0xFFFFFFFF) + 0.5) / 2^32;
    S[b, i] = sqrt(-2 ln u1) cos(2 pi u2) / sqrt(k).

Column i depends only on (seed, i): a vector that is a slice of a larger one
starting at global coordinate `offset` is sketched with columns offset.. and
the partial sketches of the slices add up to the sketch of the whole.

Implementation: sjlt sketches are computed with np.bincount over 2k bins
(bin 2*row for a + sign, 2*row+1 for a - sign), accumulated in float64, so
z = (bins[0::2] - bins[1::2]) / sqrt(s). The bin indices of a slice depend only
on (seed, k, s, offset, n) and are cached, LRU, within a byte budget.
"""

import math
from collections import OrderedDict

import numpy as np

K_MAX = 65536
S_MAX = 8
KINDS = {"sjlt": 1, "gaussian": 2}
KIND_NAMES = {v: k for k, v in KINDS.items()}

GOLDEN = 0x9E3779B97F4A7C15
FMIX_M1 = 0xFF51AFD7ED558CCD
FMIX_M2 = 0xC4CEB9FE1A85EC53
GAUSS_XOR = 0x8000000000000000
MASK64 = (1 << 64) - 1

# Coordinates per chunk when hashing: bounds temporaries to a few tens of MB.
_CHUNK = 1 << 20
# Gaussian matrix elements per chunk (k * n).
_GAUSS_CHUNK = 1 << 22


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_params(k, seed=0, kind="sjlt", s=None):
    """Validate sketch parameters; return (k, seed, kind, s) normalised.

    kind is "sjlt" or "gaussian" (or the wire codes 1, 2); s defaults to 4
    for sjlt (capped at k) and must be 0 (or None) for gaussian. Raises
    TypeError or ValueError naming the bad argument.
    """
    if not _is_int(k):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= K_MAX:
        raise ValueError(f"k must be in 1..{K_MAX}, got {k}")
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= MASK64:
        raise ValueError(f"seed must be in 0..2^64-1, got {seed}")
    if _is_int(kind) and int(kind) in KIND_NAMES:
        kind = KIND_NAMES[int(kind)]
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be 'sjlt' or 'gaussian', got {kind!r}")
    if s is not None and not _is_int(s):
        raise TypeError(f"s must be an int, got {type(s).__name__}")
    if kind == "sjlt":
        s = min(4, k) if s is None else int(s)
        if not 1 <= s <= S_MAX:
            raise ValueError(f"s must be in 1..{S_MAX} for kind 'sjlt', got {s}")
        if s > k:
            raise ValueError(f"s must be <= k for kind 'sjlt', got s={s} > k={k}")
    else:
        s = 0 if s is None else int(s)
        if s != 0:
            raise ValueError(f"s must be 0 for kind 'gaussian', got {s}")
    return k, seed, kind, s


def fmix64(x):
    """fmix64 of one Python int (reference for tests and scalar use)."""
    x &= MASK64
    x ^= x >> 33
    x = (x * FMIX_M1) & MASK64
    x ^= x >> 33
    x = (x * FMIX_M2) & MASK64
    x ^= x >> 33
    return x


def hash64(seed, i, j):
    """H(seed, i, j) of proto/SKETCH.md, as a Python int."""
    return fmix64(((seed * GOLDEN) & MASK64) ^ ((i * 8 + j) & MASK64))


_U33 = np.uint64(33)
_U32 = np.uint64(32)
_M1 = np.uint64(FMIX_M1)
_M2 = np.uint64(FMIX_M2)


def _fmix64_np(x):
    """fmix64 in place on a uint64 array (wrapping multiplication)."""
    x ^= x >> _U33
    x *= _M1
    x ^= x >> _U33
    x *= _M2
    x ^= x >> _U33
    return x


def sjlt_bins(seed, k, s, offset, n):
    """Bin indices of columns offset..offset+n-1, shape (s, n), dtype intp.

    bins[j, c] = 2 * row + (1 if sign < 0 else 0) for nonzero j of column
    offset + c; the value of S there is sign / sqrt(s).
    """
    sg = np.uint64((seed * GOLDEN) & MASK64)
    out = np.empty((s, n), dtype=np.intp)
    i = np.arange(offset, offset + n, dtype=np.uint64)
    base = i * np.uint64(8)
    base ^= sg  # (seed*G) ^ (i*8) then ^ j below equals (seed*G) ^ (i*8 + j), j < 8
    for j in range(s):
        lo = (j * k) // s
        w = ((j + 1) * k) // s - lo
        h = base ^ np.uint64(j)
        _fmix64_np(h)
        row = ((h >> _U32) * np.uint64(w)) >> _U32
        row += np.uint64(lo)
        out[j] = row.astype(np.intp) * 2 + (h & np.uint64(1)).astype(np.intp)
    return out


def gaussian_block(seed, k, offset, n):
    """Columns offset..offset+n-1 of the gaussian S, shape (k, n), float64."""
    sg = np.uint64(((seed * GOLDEN) & MASK64) ^ GAUSS_XOR)
    i = np.arange(offset, offset + n, dtype=np.uint64)
    x = (i * np.uint64(65536))[None, :] + np.arange(k, dtype=np.uint64)[:, None]
    x ^= sg
    _fmix64_np(x)
    u1 = ((x >> _U32).astype(np.float64) + 0.5) / 4294967296.0
    u2 = ((x & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 4294967296.0
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2) / math.sqrt(k)


def sketch_matrix(d, k, seed=0, kind="sjlt", s=None, offset=0):
    """The dense S[:, offset:offset+d] (k x d, float64). For tests and small d."""
    k, seed, kind, s = check_params(k, seed, kind, s)
    if kind == "gaussian":
        return gaussian_block(seed, k, offset, d)
    S = np.zeros((k, d))
    bins = sjlt_bins(seed, k, s, offset, d)
    cols = np.arange(d)
    for j in range(s):
        S[bins[j] // 2, cols] = np.where(bins[j] % 2 == 0, 1.0, -1.0) / math.sqrt(s)
    return S


class Sketcher:
    """z = S g for fixed (k, seed, kind, s), with cached bin indices.

    Not thread-safe (one per thread, like a ZeroMQ socket). cache_bytes bounds
    the memory kept for indices (sjlt: 8 s bytes per coordinate) or matrix
    blocks (gaussian: 8 k bytes per coordinate); 0 disables the cache.
    """

    def __init__(self, k, seed=0, kind="sjlt", s=None, cache_bytes=256 << 20):
        self.k, self.seed, self.kind, self.s = check_params(k, seed, kind, s)
        self.kind_code = KINDS[self.kind]
        self._cache = OrderedDict()
        self._cache_used = 0
        self.cache_bytes = int(cache_bytes)

    def _cached(self, key, make):
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        val = make()
        if val.nbytes <= self.cache_bytes:
            self._cache[key] = val
            self._cache_used += val.nbytes
            while self._cache_used > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cache_used -= old.nbytes
        return val

    def accumulate(self, z, g, offset=0):
        """z += S[:, offset:offset+len(g)] g, in float64 (z float64, length k)."""
        g = np.ascontiguousarray(g).reshape(-1)
        n = g.size
        if offset < 0 or offset + n > (1 << 61):
            raise ValueError(f"offset must be in 0..2^61-n, got {offset}")
        k, s = self.k, self.s
        if self.kind == "sjlt":
            inv = 1.0 / math.sqrt(s)
            for c0 in range(0, n, _CHUNK):
                c1 = min(n, c0 + _CHUNK)
                off = offset + c0
                bins = self._cached(("sjlt", off, c1 - c0),
                                    lambda: sjlt_bins(self.seed, k, s, off, c1 - c0))
                w = np.tile(g[c0:c1].astype(np.float64), s)
                acc = np.bincount(bins.reshape(-1), weights=w, minlength=2 * k)
                z += (acc[0::2] - acc[1::2]) * inv
        else:
            step = max(1, _GAUSS_CHUNK // k)
            for c0 in range(0, n, step):
                c1 = min(n, c0 + step)
                off = offset + c0
                blk = self._cached(("gauss", off, c1 - c0),
                                   lambda: gaussian_block(self.seed, k, off, c1 - c0))
                z += blk @ g[c0:c1].astype(np.float64)
        return z

    def sketch(self, g, offset=0):
        """S[:, offset:offset+d] g for a vector (or any array, flattened row-major)."""
        z = np.zeros(self.k)
        return self.accumulate(z, g, offset)


def sketch(g, k, seed=0, kind="sjlt", s=None, offset=0):
    """One-shot sketch of g (flattened row-major) as float64, no caching."""
    return Sketcher(k, seed, kind, s, cache_bytes=0).sketch(np.asarray(g), offset)
