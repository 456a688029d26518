"""gradwatch._kernels: the sketch of proto/SKETCH.md as torch tensor kernels.

The hash (fmix64 on int64 tensors) gives every (coordinate, nonzero) its bin
and sign, identical to the NumPy implementation (_sketch.py) and the C one:

    sjlt_bins      coordinates -> bin indices 2 * row + (sign < 0) (+ a base)
    gaussian_block coordinates -> the columns of the gaussian S
    torch_sketch   S[:, offset:offset+d] g on g's device, uncached

These are the building blocks of gradwatch.torch.watch (which caches the
bins and scatters whole models at once) and of Publisher.sketch for tensors
on an accelerator. This module imports torch; nothing here imports the
publisher or gradwatch.torch.
"""

import math

import torch

from ._layout import COORD_LIMIT
from ._sketch import FMIX_M1, FMIX_M2, GAUSS_XOR, GOLDEN, MASK64, check_params

__all__ = ["torch_sketch", "sjlt_bins", "gaussian_block", "COORD_LIMIT"]


def _signed(x):
    x &= MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


_M1 = _signed(FMIX_M1)
_M2 = _signed(FMIX_M2)
_LOW31 = (1 << 31) - 1  # mask after an arithmetic >> 33 = logical >> 33
_LOW32 = (1 << 32) - 1
# Coordinates hashed at once when building indices: small on the CPU, where
# big temporaries cost page faults (10x slower at 2^22), larger on devices,
# where each chunk costs ~40 kernel launches.
_HASH_CHUNK = 1 << 16
_HASH_CHUNK_DEVICE = 1 << 22


def _hash_chunk(device):
    return _HASH_CHUNK if torch.device(device).type == "cpu" else _HASH_CHUNK_DEVICE



def _fmix64(x):
    """fmix64 on an int64 tensor: wrapping multiply, logical shifts via masks."""
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _M1
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _M2
    x = x ^ ((x >> 33) & _LOW31)
    return x


def sjlt_bins(seed, k, s, offset, n, device="cpu", base=0, dtype=torch.int64, out=None):
    """Bin indices (s, n) of columns offset..offset+n-1: base + 2 row + (sign < 0).

    Written into out (an (s, n) integer tensor) when given.
    """
    if out is None:
        out = torch.empty((s, n), dtype=dtype, device=device)
    sg = _signed(seed * GOLDEN)
    step = _hash_chunk(device)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        i = torch.arange(offset + c0, offset + c1, dtype=torch.int64, device=device)
        key = (i * 8) ^ sg
        for j in range(s):
            lo = (j * k) // s
            w = ((j + 1) * k) // s - lo
            h = _fmix64(key ^ j)
            row = (((h >> 32) & _LOW32) * w) >> 32
            out[j, c0:c1] = row * 2 + (h & 1) + (2 * lo + base)
    return out


def gaussian_block(seed, k, offset, n, device="cpu"):
    """Columns offset..offset+n-1 of the gaussian S, (k, n) float64, on device."""
    sg = _signed(((seed * GOLDEN) & MASK64) ^ GAUSS_XOR)
    i = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    b = torch.arange(k, dtype=torch.int64, device=device)
    h = _fmix64(((i * 65536)[None, :] + b[:, None]) ^ sg)
    u1 = (((h >> 32) & _LOW32).double() + 0.5) / 4294967296.0
    u2 = ((h & _LOW32).double() + 0.5) / 4294967296.0
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2) / math.sqrt(k)


def torch_sketch(g, k, seed=0, kind="sjlt", s=None, offset=0, with_norm=False):
    """S[:, offset:offset+d] g on g's device, float64 tensor of length k.

    g is flattened row-major. with_norm appends ||g||^2 (length k + 1).
    Nothing is cached; see watch() for the cached, per-step path.
    """
    k, seed, kind, s = check_params(k, seed, kind, s)
    if not isinstance(g, torch.Tensor) or not g.dtype.is_floating_point:
        raise TypeError("g must be a floating-point torch.Tensor")
    g = g.detach().reshape(-1)
    n = g.numel()
    if offset < 0 or offset + n > COORD_LIMIT:
        raise ValueError(f"offset must be in 0..2^47-d, got {offset}")
    dev = g.device
    out = torch.zeros(k + 1 if with_norm else k, dtype=torch.float64, device=dev)
    if kind == "sjlt":
        acc = torch.zeros(2 * k, dtype=torch.float64, device=dev)
        step = _hash_chunk(dev)
        for c0 in range(0, n, step):
            c1 = min(n, c0 + step)
            bins = sjlt_bins(seed, k, s, offset + c0, c1 - c0, dev)
            src = g[c0:c1].double()
            for j in range(s):
                acc.index_add_(0, bins[j], src)
        out[:k] = (acc[0::2] - acc[1::2]) * (1.0 / math.sqrt(s))
    else:
        step = max(1, (1 << 22) // k)
        for c0 in range(0, n, step):
            c1 = min(n, c0 + step)
            out[:k] += gaussian_block(seed, k, offset + c0, c1 - c0, dev) @ g[c0:c1].double()
    if with_norm:
        g64 = g.double()
        out[k] = torch.dot(g64, g64)
    return out


def fused_norms(dev):
    """Per-parameter norms in one _foreach_norm launch (accelerators) or dot products."""
    return dev.type != "cpu" and hasattr(torch, "_foreach_norm")
