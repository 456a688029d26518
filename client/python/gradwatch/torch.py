"""gradwatch.torch: sketch a PyTorch model's gradients on their own device.

    w = gradwatch.torch.watch(model, pub, per_layer=True, every=1)
    ...
    loss.backward()
    w.log(step, loss=loss, lr=lr)     # before optimizer.zero_grad()
    ...
    w.close()                         # publishes what is still in flight

What leaves the device: for every published stream k float64 numbers and its
squared gradient norm, plus loss/lr when they are tensors. Nothing calls
.item(), .cpu() or synchronises inside the training step on a CUDA device:
the packed result is copied to pinned host memory with non_blocking=True,
a CUDA event is recorded, and the step is published at a later log() (or at
flush()/close()) once that event has completed; at most max_pending steps
wait, further ones are dropped and counted in Watch.dropped. On the CPU,
log() sketches and publishes synchronously.

Flattening order (normative for this client). The model's gradient is the
vector g obtained by walking model.named_parameters() in order, keeping the
parameters with requires_grad=True at watch() time, and flattening each
parameter's .grad row-major (torch .reshape(-1)). A parameter's *global
offset* is the total numel of the parameters before it. Column i of S depends
only on (seed, i) (proto/SKETCH.md), so:

- stream "all" is S g, the sketch of the whole model's gradient;
- the per-layer stream tagged with a parameter's name (e.g. "0.weight") is
  S[:, off:off+n] g_p: the parameter's gradient sketched *at its global
  offset*, which is what makes the per-layer sketches add up exactly to
  "all". To reproduce one with a Publisher: pub.sketch(g_p, offset=off).
  watch(...).offsets lists (name, offset, numel).

Implementation. For sjlt the bin index of every (coordinate, nonzero),
2 * (stream * k + row) + (sign < 0), depends only on (seed, k, s, offset),
so it is computed once (the torch hash below, identical to the NumPy one and
the C one) and cached on the gradient's device (int32, 4 s bytes per
coordinate, on an accelerator; int64 on the CPU, where scatter_add_ with
int64 indices is faster; cache_indices=False recomputes it every step
instead). A step is then: copy the gradients into a float64 buffer
(chunk_coords coordinates at a time), s scatter/index adds into 2 k bins per
stream, one dot product (or a fused _foreach_norm on an accelerator) per
parameter for the norms, and a subtraction of the bin pairs. Accumulation is
float64 everywhere. The cost is about s scatter-adds per coordinate (~1 ns
each on one CPU core) plus a few torch calls per parameter and, per stream,
one message (bench/RESULTS.md, "Client").

Sharded gradients (FSDP/ZeRO style: no rank holds the whole gradient): pass
process_group=pg, layout=[(name, numel), ...] (the unsharded model's
flattening order, default: model.named_parameters()) and shards=[Shard(...)]
naming the pieces this rank holds: Shard(tensor, offset, start=0,
length=None) says that tensor.grad.reshape(-1)[start:start+length] holds the
global gradient coordinates offset..offset+length-1. Every rank sketches its
pieces at their global offsets (a piece may span several parameters), the
partial results are summed with torch.distributed.all_reduce (k + 1 numbers
per stream), and rank 0 of the group publishes. Together the ranks' shards
must cover each coordinate at most once (uncovered coordinates count as 0);
within a rank this is checked. Every rank must call log() for the same steps
(it is a collective). A gradient that is None counts as zeros, and every
per-layer stream is published (a rank cannot know another's Nones).

Non-finite gradients (a diverging run): a stream whose gradient or sketch is
NaN/Inf at a step is not published for that step; Watch.nonfinite counts
such stream-steps (a warning is issued once). A non-finite loss or lr is sent
as absent. Training is never interrupted.
"""

import math
import warnings
from collections import deque
from typing import NamedTuple, Optional

import numpy as np
import torch

from . import _proto
from ._sketch import FMIX_M1, FMIX_M2, GAUSS_XOR, GOLDEN, MASK64, check_params
from .publisher import Publisher

__all__ = ["watch", "Watch", "Shard", "torch_sketch", "sjlt_bins", "gaussian_block"]


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


# Largest global coordinate + 1 supported (i * 65536 must fit in int64).
COORD_LIMIT = 1 << 47


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


class Shard(NamedTuple):
    """tensor.grad.reshape(-1)[start:start+length] = global coordinates offset.. ."""
    tensor: torch.Tensor
    offset: int
    start: int = 0
    length: Optional[int] = None


class _Chunk:
    """A run of coordinates of one device, sketched from one float64 buffer."""
    __slots__ = ("pieces", "n", "segments", "bins", "gauss")

    def __init__(self):
        self.pieces = []  # (piece index, start in its flat grad, length)
        self.n = 0
        self.segments = []  # (start in buffer, length, stream id, global offset)
        self.bins = None  # cached (s, n) bins, or None (cache_indices=False)
        self.gauss = None  # cached gaussian blocks per segment


class _Views:
    """Where one chunk's gradient lives in a float64 buffer."""
    __slots__ = ("buf", "dest", "seg")

    def __init__(self, chunk, pieces, buf):
        self.buf = buf  # chunk.n elements
        self.dest, pos = [], 0  # per piece: the view its gradient is copied into
        for pi, _, ln in chunk.pieces:
            t = pieces[pi].tensor
            v = buf[pos:pos + ln]
            self.dest.append(v.view(t.shape) if ln == t.numel() else v)
            pos += ln
        self.seg = [buf[b0:b0 + ln] for b0, ln, _, _ in chunk.segments]  # per segment


class _Group:
    """The chunks of one device."""
    __slots__ = ("device", "chunks", "views", "seg_sid")

    def __init__(self, device):
        self.device = device
        self.chunks = []
        self.views = None  # per chunk, all in one buffer as long as the longest chunk
        self.seg_sid = None  # stream id (+ norm base) of every segment, in order


class _Pending(NamedTuple):
    step: int
    loss: Optional[float]
    lr: Optional[float]
    loss_in: bool  # loss is the packed tensor's element -2 (or -1 without lr)
    lr_in: bool
    missing: frozenset
    host: torch.Tensor
    event: object


class Watch:
    """Sketches a model's gradients at log(); see the module docstring."""

    def __init__(self, model, pub, per_layer=True, every=1, *, process_group=None,
                 layout=None, shards=None, cache_indices=True, chunk_coords=1 << 23,
                 max_pending=64, index_dtype=None):
        if pub is not None and not isinstance(pub, Publisher):
            raise TypeError(f"pub must be a gradwatch.Publisher or None, got {type(pub).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(chunk_coords, bool) or not isinstance(chunk_coords, int) or chunk_coords < 1:
            raise ValueError(f"chunk_coords must be a positive int, got {chunk_coords!r}")
        self.pub = pub
        self.every = every
        self.process_group = process_group
        if pub is not None:
            self.k, self.seed, self.kind, self.s = pub.k, pub.seed, pub.kind, pub.s
        else:
            self.k, self.seed, self.kind, self.s = check_params(256)
        k = self.k

        # -- layout: names, sizes, global offsets ------------------------
        if layout is None:
            if model is None:
                raise ValueError("layout is required when model is None")
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            layout = [(n, p.numel()) for n, p in params]
        else:
            params = None
            layout = [(str(n), int(m if isinstance(m, int) else math.prod(m))) for n, m in layout]
        if not layout:
            raise ValueError("the model has no parameters that require grad")
        self.offsets = []
        off = 0
        for name, n in layout:
            if n < 0:
                raise ValueError(f"layout: parameter {name!r} has negative numel {n}")
            self.offsets.append((name, off, n))
            off += n
        self.d = off
        if self.d > COORD_LIMIT:
            raise ValueError(f"model too large: {self.d} coordinates > 2^47")

        # -- streams -----------------------------------------------------
        names = [n for n, _ in layout]
        if per_layer is True:
            chosen = names
        elif per_layer is False or per_layer is None:
            chosen = []
        else:
            if isinstance(per_layer, str):
                raise TypeError("per_layer must be a bool or a collection of parameter names")
            want = set(per_layer)
            unknown = want - set(names)
            if unknown:
                raise ValueError(f"per_layer names unknown parameters: {sorted(unknown)!r:.200}")
            chosen = [n for n in names if n in want]
        for n in chosen:
            if n == "all":
                raise ValueError("a parameter named 'all' clashes with the stream 'all'")
            try:
                _proto.check_tag(n)
            except ValueError:
                raise ValueError(f"parameter name {n!r} is not a valid tag (1..128 of "
                                 f"[A-Za-z0-9._:/-]); pass per_layer as a list of names "
                                 f"to skip it") from None
        self.tags = ["all"] + chosen
        sid_of = {n: i for i, n in enumerate(chosen)}
        self._nlayer = len(chosen)
        self._nstreams = len(chosen) + (1 if len(chosen) < len(names) else 0)
        rest = len(chosen)
        self._layer_sid = [sid_of.get(n, rest) for n in names]
        if pub is not None:
            self._topics = [pub._topic(t) for t in self.tags]

        # -- pieces this process holds -----------------------------------
        if process_group is not None and shards is None:
            raise ValueError("process_group needs shards= (a replicated gradient would be "
                             "counted once per rank)")
        if shards is None:
            if params is None:
                raise ValueError("shards are required with an explicit layout")
            shards = [Shard(p, o, 0, n) for (_, p), (_, o, n) in zip(params, self.offsets)]
        pieces = []
        for idx, sh in enumerate(shards):
            if not isinstance(sh, Shard):
                sh = Shard(*sh)
            t = sh.tensor
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"shards[{idx}].tensor must be a tensor, got {type(t).__name__}")
            start = int(sh.start)
            length = t.numel() - start if sh.length is None else int(sh.length)
            if start < 0 or length < 0 or start + length > t.numel():
                raise ValueError(f"shards[{idx}]: start={start}, length={length} outside a "
                                 f"tensor of {t.numel()} elements")
            if sh.offset < 0 or sh.offset + length > self.d:
                raise ValueError(f"shards[{idx}]: offset={sh.offset} + length={length} outside "
                                 f"the {self.d} coordinates of the layout")
            pieces.append(Shard(t, int(sh.offset), start, length))
        order = sorted(range(len(pieces)), key=lambda i: pieces[i].offset)
        for a, b in zip(order, order[1:]):
            if pieces[a].offset + pieces[a].length > pieces[b].offset:
                raise ValueError(f"shards[{a}] and shards[{b}] overlap")
        self._pieces = pieces
        self._piece_layers = [self._layers_of(p.offset, p.length) for p in pieces]

        # -- chunks per device, and cached indices -------------------------
        self._nbins = self._nstreams * (2 * k if self.kind == "sjlt" else k)
        total_bins = self._nbins + self._nstreams
        # On the CPU, scatter_add_ with int64 indices is a third faster than
        # index_add_ on small models (0.75 vs 1.1 ns per element); on an
        # accelerator index_add_ takes int32 indices, half the cached memory.
        cpu_only = all(p.tensor.device.type == "cpu" for p in pieces)
        if index_dtype is None:
            index_dtype = torch.int64 if cpu_only or total_bins >= (1 << 31) else torch.int32
        self._index_dtype = index_dtype
        self._scatter = index_dtype == torch.int64
        self._cache = bool(cache_indices)
        groups = {}
        for pi, p in enumerate(pieces):
            dev = p.tensor.device
            g = groups.get(dev)
            if g is None:
                g = groups[dev] = _Group(dev)
            pos = 0
            while pos < p.length:
                if not g.chunks or g.chunks[-1].n >= chunk_coords:
                    g.chunks.append(_Chunk())
                ch = g.chunks[-1]
                take = min(p.length - pos, chunk_coords - ch.n)
                self._add_segments(ch, p.offset + pos, take)
                ch.pieces.append((pi, p.start + pos, take))
                ch.n += take
                pos += take
        self._groups = list(groups.values())
        for g in self._groups:
            buf = torch.empty(max(ch.n for ch in g.chunks), dtype=torch.float64,
                              device=g.device)
            g.views = [_Views(ch, pieces, buf[:ch.n]) for ch in g.chunks]
            sids = []
            for ch in g.chunks:
                sids += [self._nbins + sid for _, _, sid, _ in ch.segments]
                if self._cache:
                    self._build_indices(ch, g.device)
            g.seg_sid = torch.tensor(sids, dtype=torch.int64, device=g.device)
        if self._groups:
            self._device = self._groups[0].device
        elif model is not None and any(True for _ in model.parameters()):
            self._device = next(model.parameters()).device
        else:
            self._device = torch.device("cpu")

        self._async = self._device.type == "cuda"
        self._max_pending = max_pending
        self._pending = deque()
        self._pinned = []  # free pinned host buffers
        self._rank = 0
        if process_group is not None:
            import torch.distributed as dist
            self._rank = dist.get_rank(process_group)
        self.published = 0  # messages handed to the publisher
        self.nonfinite = 0  # stream-steps skipped because of NaN/Inf
        self.dropped = 0  # steps dropped because max_pending results were in flight
        self.last_step = None
        self.last = {}  # tag -> (z float64 ndarray, grad_norm) of the last sketched step
        self._warned = False
        self._closed = False

    # -- setup helpers ---------------------------------------------------

    def _layers_of(self, offset, length):
        """Layer indices that [offset, offset+length) intersects."""
        out = []
        for li, (_, o, n) in enumerate(self.offsets):
            if o < offset + length and offset < o + n:
                out.append(li)
        return out

    def _add_segments(self, ch, goff, n):
        """Split global range [goff, goff+n) at layer boundaries into ch.segments."""
        end = goff + n
        import bisect
        starts = [o for _, o, _ in self.offsets]
        li = bisect.bisect_right(starts, goff) - 1
        while goff < end:
            while self.offsets[li][1] + self.offsets[li][2] <= goff:
                li += 1
            lend = min(end, self.offsets[li][1] + self.offsets[li][2])
            ch.segments.append((ch.n + (goff - (end - n)), lend - goff, self._layer_sid[li], goff))
            goff = lend

    def _chunk_bins(self, ch, device):
        k, s = self.k, self.s
        bins = torch.empty((s, ch.n), dtype=self._index_dtype, device=device)
        for b0, ln, sid, goff in ch.segments:
            sjlt_bins(self.seed, k, s, goff, ln, device, base=sid * 2 * k,
                      out=bins[:, b0:b0 + ln])
        return bins

    def _build_indices(self, ch, device):
        if self.kind == "sjlt":
            ch.bins = self._chunk_bins(ch, device)
        else:
            ch.gauss = [gaussian_block(self.seed, self.k, goff, ln, device)
                        for _, ln, _, goff in ch.segments]

    # -- per step --------------------------------------------------------

    def _fill(self, ch, v, missing):
        """Copy chunk ch's gradients into its views v; grads that are None read as 0."""
        for (pi, start, ln), dst in zip(ch.pieces, v.dest):
            gr = self._pieces[pi].tensor.grad
            if gr is None:
                missing.update(self._piece_layers[pi])
                dst.zero_()
            elif ln == gr.numel():
                dst.copy_(gr)
            else:
                dst.copy_(gr.reshape(-1)[start:start + ln])

    def _accumulate(self, acc, sq, ch, v, dev, fused):
        """acc += the chunk's bins (sjlt) or sketch rows (gaussian); sq += its segment norms."""
        k = self.k
        if self.kind == "sjlt":
            bins = ch.bins if ch.bins is not None else self._chunk_bins(ch, dev)
            if self._scatter:
                for j in range(self.s):
                    acc.scatter_add_(0, bins[j], v.buf)
            else:
                for j in range(self.s):
                    acc.index_add_(0, bins[j], v.buf)
        else:
            for si, (b0, ln, sid, goff) in enumerate(ch.segments):
                blk = ch.gauss[si] if ch.gauss is not None else \
                    gaussian_block(self.seed, k, goff, ln, dev)
                acc[sid * k:(sid + 1) * k] += blk @ v.seg[si]
        if fused:  # one launch on an accelerator: norms, squared in _compute
            sq.extend(torch._foreach_norm(v.seg))
        else:
            sq.extend([torch.dot(x, x) for x in v.seg])

    def _compute(self):
        """The float64 accumulator [bins | squared norms] on the main device.

        Per chunk: the gradients are copied into a float64 buffer, s scatter
        adds put them into their bins (sjlt) or a matrix product per segment
        does (gaussian), and each segment's squared norm is a dot product (a
        scatter of squares would serialise on the few norm bins). Returns
        (acc, missing layers).
        """
        total = None
        missing = set()
        for g in self._groups:
            dev = g.device
            acc = torch.zeros(self._nbins + self._nstreams, dtype=torch.float64, device=dev)
            sq = []
            fused = _fused_norms(dev)
            for ch, v in zip(g.chunks, g.views):
                self._fill(ch, v, missing)
                self._accumulate(acc, sq, ch, v, dev, fused)
            sq = torch.stack(sq)
            acc.index_add_(0, g.seg_sid, sq * sq if fused else sq)
            if total is None:
                total = acc
            else:
                total += acc.to(total.device, non_blocking=True)
        return total, missing

    def _pack_on_device(self, acc, extras):
        """acc -> [z (nstreams * k), sq (nstreams), extras...] on the device."""
        k, ns = self.k, self._nstreams
        if self.kind == "sjlt":
            v = acc[:self._nbins].view(ns, k, 2)
            z = (v[:, :, 0] - v[:, :, 1]) * (1.0 / math.sqrt(self.s))
            parts = [z.reshape(-1), acc[self._nbins:]]
        else:
            parts = [acc]
        parts.extend(extras)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def log(self, step, loss=None, lr=None):
        """Sketch the current gradients for step (call after loss.backward()).

        Sketches only when step % every == 0. loss and lr may be numbers or
        0-d tensors (tensors on an accelerator travel with the sketch, no
        synchronisation). Publishes results of earlier steps whose copies
        have completed.
        """
        if self._closed:
            raise RuntimeError("watch is closed")
        step = _proto.check_step(step)
        if self._async:
            self._drain(block=False)
        if step % self.every:
            return
        loss_t, lr_t = _travels(loss), _travels(lr)
        lossv = None if loss is None or loss_t else _scalar(loss, "loss")
        lrv = None if lr is None or lr_t else _scalar(lr, "lr")
        with torch.no_grad():
            acc, missing = self._compute()
            if self.process_group is not None:
                missing = set()  # a rank cannot know the others' missing grads: zeros
            elif len(missing) == len(self.offsets):
                return  # no gradients at all (log() before backward()?)
            if not self._async and self.process_group is None:
                self._publish(step, acc.numpy(), lossv, lrv, missing, packed=False)
                return
            extras = []
            if loss_t:
                extras.append(loss.detach().reshape(1).to(torch.float64))
            if lr_t:
                extras.append(lr.detach().reshape(1).to(torch.float64))
            packed = self._pack_on_device(acc, extras)
            if self.process_group is not None:
                import torch.distributed as dist
                n_red = self._nstreams * (self.k + 1)
                dist.all_reduce(packed[:n_red], group=self.process_group)
            if not self._async:  # CPU, or a device without CUDA events: synchronous
                self._publish(step, packed.cpu().numpy(), lossv, lrv, missing, packed=True,
                              loss_in=loss_t, lr_in=lr_t)
                return
            if len(self._pending) >= self._max_pending:
                self.dropped += 1
                return
            host, ev = self._to_host(packed)
            self._pending.append(_Pending(step, lossv, lrv, loss_t, lr_t, frozenset(missing),
                                          host, ev))

    def _to_host(self, packed):
        """Start the copy of packed to pinned host memory; (host tensor, CUDA event)."""
        host = self._pinned_buffer(packed.numel())
        host.copy_(packed, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self._device))
        return host, ev

    def _pinned_buffer(self, n):
        for i, b in enumerate(self._pinned):
            if b.numel() == n:
                return self._pinned.pop(i)
        return torch.empty(n, dtype=torch.float64, pin_memory=True)

    def _drain(self, block):
        while self._pending:
            p = self._pending[0]
            if not block and not p.event.query():
                break
            if block:
                p.event.synchronize()
            self._pending.popleft()
            self._publish(p.step, p.host.numpy(), p.loss, p.lr, p.missing, packed=True,
                          loss_in=p.loss_in, lr_in=p.lr_in)
            self._pinned.append(p.host)

    def _publish(self, step, arr, lossv, lrv, missing, packed, loss_in=False, lr_in=False):
        """Publish one step from host memory: arr is the accumulator (packed=False,
        the CPU path) or the packed [z | sq | loss? | lr?] of a device or a reduce."""
        k, ns, nl = self.k, self._nstreams, self._nlayer
        # Z rows: "all", then the per-layer streams; the stream sketches are
        # written straight into Z[1:] (row ns is the unpublished "rest", if any).
        Z = np.empty((1 + ns, k))
        zs = Z[1:]
        if packed:
            zs[:] = arr[:ns * k].reshape(ns, k)
            sq = arr[ns * k:ns * k + ns]
            tail = ns * k + ns
            if loss_in:
                lossv = float(arr[tail])
                tail += 1
                if not math.isfinite(lossv):
                    lossv = None
            if lr_in:
                lrv = float(arr[tail])
                if not math.isfinite(lrv):
                    lrv = None
        elif self.kind == "sjlt":
            v = arr[:self._nbins].reshape(ns, k, 2)
            np.subtract(v[:, :, 0], v[:, :, 1], out=zs)
            zs *= 1.0 / math.sqrt(self.s)
            sq = arr[self._nbins:]
        else:
            zs[:] = arr[:self._nbins].reshape(ns, k)
            sq = arr[self._nbins:]
        self.last_step = step
        np.sum(zs, axis=0, out=Z[0])
        gns = np.empty(1 + ns)
        gns[0] = sq.sum()
        gns[1:] = sq
        np.sqrt(gns, out=gns)
        if missing:
            missing_sids = {self._layer_sid[li] for li in missing}
            keep = [sid for sid in range(nl) if sid not in missing_sids]
            rows = [0] + [sid + 1 for sid in keep]
            Z, gns = Z[rows], gns[rows]
            tis = rows
        else:
            Z, gns = Z[:1 + nl], gns[:1 + nl]
            tis = range(1 + nl)
        pub = self.pub if self._rank == 0 else None
        if pub is None:
            ok = np.isfinite(gns) & np.isfinite(Z).all(axis=1)
        else:
            rows, ok = pub._encode(step, Z, gns, lossv, lrv)
            pub._poll_subscriptions()
        last = {}
        for i, ti in enumerate(tis):
            if not ok[i]:
                self._nonfinite(ti)
                continue
            last[self.tags[ti]] = (Z[i], float(gns[i]))
            if pub is not None:
                pub._send(self._topics[ti], rows[i], poll=False)
                self.published += 1
        self.last = last

    def _nonfinite(self, ti):
        self.nonfinite += 1
        if not self._warned:
            self._warned = True
            warnings.warn(f"gradwatch: step skipped for stream {self.tags[ti]!r}: NaN/Inf "
                          f"gradient or sketch overflow (counted in Watch.nonfinite)",
                          RuntimeWarning, stacklevel=4)

    def flush(self):
        """Publish every step still in flight (waits for device copies / the worker)."""
        if self._async:
            self._drain(block=True)

    def close(self):
        """flush(), then stop; the Publisher stays open (close it yourself)."""
        if not self._closed:
            self.flush()
            self._closed = True
            self._groups = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fused_norms(dev):
    """Per-parameter norms in one _foreach_norm launch (accelerators) or dot products."""
    return dev.type != "cpu" and hasattr(torch, "_foreach_norm")


def _travels(v):
    """True for a tensor on an accelerator: it rides along with the sketch, no .item()."""
    return isinstance(v, torch.Tensor) and v.device.type != "cpu"


def _scalar(v, what):
    if isinstance(v, torch.Tensor):
        v = v.detach().item()  # CPU tensor: no device synchronisation
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number or a 0-d tensor, got {type(v).__name__}") \
            from None
    return v if math.isfinite(v) else None


def watch(model, pub, per_layer=True, every=1, **kw):
    """Watch model's gradients; returns a Watch. Call .log(step, loss, lr) after backward().

    model: torch.nn.Module (its named_parameters() with requires_grad define
      the layout), or None with layout= and shards=.
    pub: gradwatch.Publisher (its k, seed, kind, s are used), or None to only
      compute (results in Watch.last; k=256, seed=0, sjlt, s=4).
    per_layer: True (a stream per parameter), False (only "all"), or a
      collection of parameter names.
    every: sketch when step % every == 0.
    Keyword options: process_group, layout, shards (sharded gradients, see the
    module docstring); cache_indices (default True); chunk_coords (float64
    buffer size, default 2^23); max_pending (device steps in flight before
    dropping, default 64).
    """
    return Watch(model, pub, per_layer=per_layer, every=every, **kw)
