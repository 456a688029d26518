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
log() sketches and publishes in the call, or (native path, background)
copies the gradients and leaves the rest to libgradwatch's worker thread.

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

Native CPU path. When every watched parameter is on the CPU (float32,
float64, float16 or bfloat16), the kind is sjlt and libgradwatch loads
(gradwatch._native: $GRADWATCH_LIB, next to the package, a checkout's
build*/client/, or the installed library), log() hands the data_ptr() of
every gradient to one C call, gw_publisher_publish_layers: each parameter is
sketched straight from its buffer at its global offset (no copy, no float64
staging, no per-parameter torch call), "all" is the sum of those rows
(linearity: the per-layer sketches are taken at global offsets, so they add
up to the sketch of the concatenation, and nothing is sketched twice), and
the messages leave from a C socket (a second connection to the daemon, with
the Publisher's run, sketch parameters and incarnation). Until the daemon's
subscription has reached that socket, the Publisher's own socket carries
the messages. Watch.path says which path runs.

Background publishing (native path). With background=True, or by default
(background=None) when this process may run on more CPUs than torch's
threads and one copy of the gradients is at most 1 GiB, log() only copies
the gradients into libgradwatch's worker (gw_worker_submit: one memcpy per
parameter) and returns; the worker's thread sketches and sends that step
while the next one trains. It waits between steps at the lowest scheduling
priority (SCHED_IDLE: its spin runs only on a CPU nothing else wants) and,
where the process may leave that class again (root, CAP_SYS_NICE, or
RLIMIT_NICE of 20), publishes at the normal one, so a busy process on the
spare CPU cannot starve it. Up to two steps are in flight: log() collects
the ones already published and waits for the oldest only when two are, so
a step that comes while the worker is still busy costs one more copy of
the gradients (allocated once, kept) instead of a wait. Watch.published,
Watch.nonfinite, pub.sent/pub.dropped and the warnings of a step are
therefore counted a log() or two later, or at flush()/close(); Watch.last
waits for the worker. Because the copy is taken inside log(), the
gradients may be changed or zeroed as soon as it returns.
Watch.background says whether it is on; background=False sketches in log()
as before. Without the library the torch path below runs, after one
warning per process; native=False chooses it, native=True refuses to fall
back. Options only the torch path has (cache_indices, chunk_coords,
index_dtype, index_budget, max_pending) choose it too unless native=True.

Implementation. The module is in three parts: _layout plans (pure Python:
offsets, streams, shards, chunks and their segments), _kernels hashes and
scatters (torch), and this module runs the plan on the device and publishes.
For sjlt the bin index of every (coordinate, nonzero),
2 * (stream * k + row) + (sign < 0), depends only on (seed, k, s, offset),
so it is computed once (the torch hash of _kernels, identical to the NumPy
one and the C one) and cached on the gradient's device (int32, 4 s bytes per
coordinate, on an accelerator; int64 on the CPU, where scatter_add_ with
int64 indices is faster; cache_indices=False recomputes it every step
instead). The cache is bounded by index_budget bytes (default 1 GiB, i.e.
67M parameters at s = 4 in int32): chunks beyond it hash their indices on
the fly each step, so a 1B-parameter model does not spend 16 GB on them
(Watch.index_bytes says what is cached). A step is then: copy the gradients into a float64 buffer
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
import os
import time
import warnings
from collections import deque
from typing import NamedTuple, Optional

import numpy as np
import torch

from . import _layout, _native, _proto
# Re-exported: the kernels stay reachable as gradwatch.torch.torch_sketch etc.
from ._kernels import (COORD_LIMIT, _fmix64, _signed, gaussian_block,  # noqa: F401
                       sjlt_bins, torch_sketch)
from ._kernels import fused_norms as _fused_norms  # a module global: tests swap it
from ._sketch import check_params
from .publisher import Publisher

# How long the first native log() waits for the C socket's subscription when
# the Publisher already has one (see _log_native).
_C_CONNECT_WAIT_S = 2.0

# While the C socket sends, the native path reads the Publisher's own socket
# (daemons subscribing, metadata due) at most this often.
_POLL_S = 0.01

# background=None hands publishing to the worker thread only when one copy of
# the gradients (what submit copies each step) is at most this many bytes.
_BACKGROUND_MAX_BYTES = 1 << 30

__all__ = ["watch", "Watch", "Shard", "torch_sketch", "sjlt_bins", "gaussian_block"]


class Shard(NamedTuple):
    """tensor.grad.reshape(-1)[start:start+length] = global coordinates offset.. ."""
    tensor: torch.Tensor
    offset: int
    start: int = 0
    length: Optional[int] = None


class _Chunk:
    """A planned chunk (_layout.Chunk) and its cached indices on the device."""
    __slots__ = ("pieces", "n", "segments", "bins", "gauss")

    def __init__(self, plan):
        self.pieces = plan.pieces  # (piece index, start in its flat grad, length)
        self.n = plan.n
        self.segments = plan.segments  # (start in buffer, length, stream id, global offset)
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
                 max_pending=64, index_dtype=None, native=None, index_budget=1 << 30,
                 optimizer=None, background=None):
        if pub is not None and not isinstance(pub, Publisher):
            raise TypeError(f"pub must be a gradwatch.Publisher or None, got {type(pub).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(chunk_coords, bool) or not isinstance(chunk_coords, int) or chunk_coords < 1:
            raise ValueError(f"chunk_coords must be a positive int, got {chunk_coords!r}")
        if native not in (None, True, False):
            raise ValueError(f"native must be None, True or False, got {native!r}")
        if background not in (None, True, False):
            raise ValueError(f"background must be None, True or False, got {background!r}")
        if isinstance(index_budget, bool) or not isinstance(index_budget, int) or index_budget < 0:
            raise ValueError(f"index_budget must be a non-negative int, got {index_budget!r}")
        self.pub = pub
        self.every = every
        self.process_group = process_group
        if pub is not None:
            pub.update_client_meta(**_client_meta(model, optimizer))
        if pub is not None:
            self.k, self.seed, self.kind, self.s = pub.k, pub.seed, pub.kind, pub.s
        else:
            self.k, self.seed, self.kind, self.s = check_params(256)
        k = self.k

        # -- layout, streams, pieces and chunks: planned by _layout ----------
        shards_given, layout_given = shards is not None, layout is not None
        if layout is None:
            if model is None:
                raise ValueError("layout is required when model is None")
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            layout = [(n, p.numel()) for n, p in params]
        else:
            params = None
            layout = [(str(n), int(m if isinstance(m, int) else math.prod(m))) for n, m in layout]
        self.offsets, self.d = _layout.offsets(layout)
        st = _layout.streams([n for n, _ in layout], per_layer, _proto.check_tag)
        self.tags = st.tags
        self._nlayer = st.nlayer
        self._nstreams = st.nstreams
        self._layer_sid = st.layer_sid
        if pub is not None:
            self._topics = [pub._topic(t) for t in self.tags]

        if process_group is not None and shards is None:
            raise ValueError("process_group needs shards= (a replicated gradient would be "
                             "counted once per rank)")
        if shards is None:
            if params is None:
                raise ValueError("shards are required with an explicit layout")
            shards = [Shard(p, o, 0, n) for (_, p), (_, o, n) in zip(params, self.offsets)]
        shards = [sh if isinstance(sh, Shard) else Shard(*sh) for sh in shards]
        for idx, sh in enumerate(shards):
            if not isinstance(sh.tensor, torch.Tensor):
                raise TypeError(f"shards[{idx}].tensor must be a tensor, got "
                                f"{type(sh.tensor).__name__}")
        planned = _layout.check_pieces(
            [(sh.tensor.numel(), int(sh.offset), sh.start, sh.length) for sh in shards], self.d)
        pieces = [Shard(sh.tensor, p.offset, p.start, p.length)
                  for sh, p in zip(shards, planned)]
        self._pieces = pieces
        self._piece_layers = [_layout.layers_of(self.offsets, p.offset, p.length)
                              for p in pieces]
        self._native = None
        self._c_waited = False  # the first native log waited for the C socket
        self.path = "torch"  # "native" (libgradwatch) or "torch"
        self.index_bytes = 0  # bytes of cached indices (torch path)
        # Options only the torch path has (index cache, chunks, index type,
        # results in flight) choose it unless native=True says otherwise.
        torch_opts = (index_dtype is not None or not cache_indices or chunk_coords != 1 << 23
                      or index_budget != 1 << 30 or max_pending != 64)
        if native or (native is None and not torch_opts):
            why = _native_unsuitable(self, params, shards_given, layout_given)
            if why is None:
                self._start_native(params, native)
            elif native:
                raise ValueError(f"native=True, but {why}")
        self.background = False  # the native path publishes from libgradwatch's worker
        if self._native is not None:
            self._groups = []
            self._device = torch.device("cpu")
            self._init_counters(process_group, max_pending)
            self._start_background(background)
            return
        if background:
            raise ValueError(f"background=True is for the native CPU path, which this watch "
                             f"does not take (path: {self.path})")

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
        plan = _layout.plan_chunks(planned, [p.tensor.device for p in pieces], self.offsets,
                                   self._layer_sid, chunk_coords)
        groups = {}
        for dev, chunks in plan.items():
            g = groups[dev] = _Group(dev)
            g.chunks = [_Chunk(c) for c in chunks]
        self._groups = list(groups.values())
        for g in self._groups:
            buf = torch.empty(max(ch.n for ch in g.chunks), dtype=torch.float64,
                              device=g.device)
            g.views = [_Views(ch, pieces, buf[:ch.n]) for ch in g.chunks]
            sids = []
            for ch in g.chunks:
                sids += [self._nbins + sid for _, _, sid, _ in ch.segments]
                need = self._index_cost(ch)
                if self._cache and self.index_bytes + need <= index_budget:
                    self._build_indices(ch, g.device)
                    self.index_bytes += need
            g.seg_sid = torch.tensor(sids, dtype=torch.int64, device=g.device)
        if self._groups:
            self._device = self._groups[0].device
        elif model is not None and any(True for _ in model.parameters()):
            self._device = next(model.parameters()).device
        else:
            self._device = torch.device("cpu")

        self._init_counters(process_group, max_pending)

    def _init_counters(self, process_group, max_pending):
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
        self._last = {}  # tag -> (z float64 ndarray, grad_norm) of the last sketched step
        self._warned = False
        self._closed = False

    # -- setup helpers ---------------------------------------------------

    def _start_native(self, params, native):
        lib, why = _native.load()
        if lib is None:
            if native:
                raise RuntimeError(f"native=True, but libgradwatch cannot be loaded: {why}")
            _native.warn_fallback(why)
            return
        chosen = set(self.tags[1:])
        self._native_params = [p for _, p in params]
        self._native_ti = {}  # parameter index -> its index in self.tags
        tags = []
        for i, (name, _) in enumerate(params):
            if name in chosen:
                self._native_ti[i] = self.tags.index(name)
                tags.append(name)
            else:
                tags.append(None)
        # (row of the native result, index in self.tags) of every published stream
        self._native_rows = [(0, 0)] + sorted((1 + i, ti) for i, ti in self._native_ti.items())
        self._native = _native.Layers(lib, self.pub, self.k, self.seed, self.s,
                                      [(p, off) for (_, p), (_, off, _) in
                                       zip(params, self.offsets)], tags)
        self._native_rows_np = (np.array([r for r, _ in self._native_rows], np.intp),
                                np.array([t for _, t in self._native_rows], np.intp))
        self._poll_at = 0.0  # when _log_native next polls the Publisher's socket
        self._bg_present = deque()  # per step in the worker, oldest first: which grads it had
        self._status_ok = None  # the status bytes of a complete step, every stream sent
        self._sent_ok = 0  # how many messages such a step sent
        self.path = "native"

    def _start_background(self, background):
        """Hand publishing to libgradwatch's worker thread when asked, or, by
        default, when a CPU is left over beside torch's threads and one copy
        of the gradients fits in _BACKGROUND_MAX_BYTES."""
        if background is False or self.pub is None:
            if background and self.pub is None:
                raise ValueError("background=True needs a Publisher (pub is None)")
            return
        if background is None:
            nbytes = sum(p.numel() * p.element_size() for p in self._native_params)
            if nbytes > _BACKGROUND_MAX_BYTES or _cpus() <= torch.get_num_threads():
                return
        self.background = self._native.start_background()
        if background and not self.background:
            raise RuntimeError("background=True, but the loaded libgradwatch has no worker "
                               "(an older build: rebuild it)")

    def _index_cost(self, ch):
        """Bytes the cached indices of chunk ch take (sjlt: s per coordinate)."""
        if self.kind == "sjlt":
            return self.s * ch.n * torch.empty((), dtype=self._index_dtype).element_size()
        return 8 * self.k * ch.n

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
        """Copy chunk ch's gradients into its views v; grads that are None read as 0.

        All present: one torch.cat into the float64 buffer (one kernel on an
        accelerator, instead of one copy per parameter)."""
        grads = [self._pieces[pi].tensor.grad for pi, _, _ in ch.pieces]
        if len(grads) > 1 and all(g is not None for g in grads):
            torch.cat([g.reshape(-1) if ln == g.numel() else g.reshape(-1)[start:start + ln]
                       for g, (_, start, ln) in zip(grads, ch.pieces)], out=v.buf)
            return
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
        if self._native is not None:
            self._log_native(step, loss, lr)
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

    def _log_native(self, step, loss, lr):
        """One call into libgradwatch: sketch every layer from its buffer, sum
        them into "all", publish (see _native)."""
        nl, pub = self._native, self.pub
        if nl.pending:
            # Outcomes of steps the worker published meanwhile; the oldest is
            # waited for only when the queue is full. Until the C socket has
            # a daemon, everything is collected: connected() below can then
            # look at the socket, which the worker owns while it publishes.
            drain = not nl._c_connected
            while nl.pending and (drain or nl.pending >= _native.WORKER_DEPTH or nl.ready()):
                self._collect_native()
        grads = [p.grad for p in self._native_params]
        if all(g is None for g in grads):
            return  # no gradients at all (log() before backward()?)
        lossv = None if loss is None else _scalar(loss, "loss")
        lrv = None if lr is None else _scalar(lr, "lr")
        # The C socket is a second connection to the daemon, whose
        # subscription reaches it a little after the Publisher's: until it
        # has, while the Publisher's socket has one, the sketches computed in
        # C are sent through the Publisher (no message is lost to the switch).
        # Two sockets reach the daemon by two connections, and it reads them
        # in no fixed order: a step sent by C could overtake an earlier one
        # still queued on the Publisher's socket (the earlier one is then
        # refused as out_of_order). So the first step waits (at most
        # _C_CONNECT_WAIT_S, once) for the C socket's subscription when the
        # Publisher already has one, and nothing is sent before the switch.
        if pub is not None and not self._c_waited:
            self._c_waited = True
            if pub._connected and not nl.connected():
                deadline = time.monotonic() + _C_CONNECT_WAIT_S
                while not nl.connected() and time.monotonic() < deadline:
                    time.sleep(0.002)
        via_c = pub is None or nl.connected() or not pub._connected
        # The Publisher's own hooks (daemons coming and going, the run's
        # metadata) keep running, every _POLL_S while C sends.
        poll = pub is not None and (not via_c or time.monotonic() >= self._poll_at)
        if nl.background and via_c:
            nl.submit(step, grads, lossv, lrv)  # copies; the worker sketches and sends
            self._bg_present.append(nl.present)
        else:
            nl.step(step, grads, lossv, lrv, send=via_c)
        if poll:
            self._poll_at = time.monotonic() + _POLL_S
            pub._poll_subscriptions()
            pub._meta_tick()
        self.last_step = step
        if not nl.pending:
            self._native_results(step, nl.present, via_c, lossv, lrv)

    def _collect_native(self):
        """The outcome of the oldest step the worker holds: last, counters."""
        step = self._native.collect()
        self._native_results(step, self._bg_present.popleft(), True, None, None)

    def _native_results(self, step, present, via_c, lossv, lrv):
        """Counters, and Watch.last (built when read), from the native result
        of step; while the C socket has no subscription yet, the Publisher
        sends. present: per parameter, whether it had a gradient."""
        nl, pub = self._native, self.pub
        z, norms, status = nl.z, nl.norms, nl.status
        rows, tis = self._native_rows_np
        if via_c and status.tobytes() == self._status_ok and present is nl._all_present:
            # The usual step (every gradient there, every stream sent, as in
            # the step that set _status_ok): no array work.
            self._last, self._last_native = None, (z, norms, rows, tis)
            self.published += self._sent_ok
            pub.sent += self._sent_ok
            return
        keep = np.ones(len(rows), bool)
        keep[1:] = present[rows[1:] - 1]
        bad = keep & (status[rows] == _native.NONFINITE)
        if bad.any():
            for ti in tis[bad]:
                self._nonfinite(int(ti))
            keep &= ~bad
        rows, tis = rows[keep], tis[keep]
        self._last, self._last_native = None, (z, norms, rows, tis)
        if pub is None:
            return
        if via_c:
            # What C sent or dropped, counted on the Publisher as its own sends are.
            sent = int(np.count_nonzero(status == _native.SENT))
            dropped = int(np.count_nonzero(status == _native.DROPPED))
            self.published += sent + dropped
            pub.sent += sent
            pub.dropped += dropped
            if (present is nl._all_present and len(rows) == len(self._native_rows_np[0])
                    and not dropped and (status[rows] == _native.SENT).all()):
                self._status_ok, self._sent_ok = status.tobytes(), sent
            return
        bodies, ok = pub._encode(step, z[rows], norms[rows], lossv, lrv)
        for i, ti in enumerate(tis.tolist()):
            if not ok[i]:
                self._nonfinite(ti)
                continue
            pub._send(self._topics[ti], bodies[i], poll=False)
            self.published += 1

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

    @property
    def last(self):
        """{tag: (z float64 ndarray, grad_norm)} of the last sketched step
        (waits for the worker when it is still publishing that step)."""
        while self._native is not None and self._native.pending:
            self._collect_native()
        if self._last is None:  # the native path builds it on first read
            z, norms, rows, tis = self._last_native
            if z is None:  # published by the worker: its sketches are read back now
                z = self._native.last_z()
                self._last_native = (z, norms, rows, tis)
            self._last = {self.tags[ti]: (z[row], float(norms[row]))
                          for row, ti in zip(rows.tolist(), tis.tolist())}
        return self._last

    @last.setter
    def last(self, value):
        self._last = value

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
        if self._native is not None:
            while self._native.pending:
                self._collect_native()

    def close(self):
        """flush(), then stop; the Publisher stays open (close it yourself)."""
        if not self._closed:
            self.flush()
            self._closed = True
            self._groups = []
            if self._native is not None:
                ln = getattr(self, "_last_native", None)
                if ln is not None and ln[0] is None:  # Watch.last stays readable
                    self._last_native = (self._native.last_z(),) + ln[1:]
                self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cpus():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _native_unsuitable(w, params, shards_given, layout_given):
    """Why watch w cannot take the native path (None if it can)."""
    if w.process_group is not None or shards_given or layout_given:
        return "sharded gradients (process_group/layout/shards) use the torch path"
    if w.kind != "sjlt":
        return "the gaussian kind uses the torch path (its blocks are cached there)"
    for name, p in params:
        if p.device.type != "cpu":
            return f"parameter {name!r} is on {p.device} (the native path is for the CPU)"
        if str(p.dtype) not in _native.GRAD_DTYPES:
            return f"parameter {name!r} has dtype {p.dtype}"
    return None


def _travels(v):
    """True for a tensor on an accelerator: it rides along with the sketch, no .item()."""
    return isinstance(v, torch.Tensor) and v.device.type != "cpu"


def _scalar(v, what):
    if isinstance(v, torch.Tensor):
        v = v.item()  # CPU tensor: no device synchronisation (no detach needed)
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number or a 0-d tensor, got {type(v).__name__}") \
            from None
    return v if math.isfinite(v) else None


_HYPER = ("lr", "momentum", "betas", "weight_decay", "eps", "nesterov", "dampening", "alpha")


def _client_meta(model, optimizer):
    """What the run's metadata says about torch, the model and the optimizer."""
    facts = {"torch": torch.__version__}
    if model is not None:
        facts["parameters"] = int(sum(p.numel() for p in model.parameters()))
        facts["trainable_parameters"] = int(sum(p.numel() for p in model.parameters()
                                                if p.requires_grad))
        facts["model"] = type(model).__name__
    if optimizer is not None:
        groups = getattr(optimizer, "param_groups", None) or [{}]
        hyper = {}
        for key in _HYPER:
            if key in groups[0]:
                v = groups[0][key]
                if isinstance(v, torch.Tensor):
                    v = v.tolist()
                hyper[key] = list(v) if isinstance(v, tuple) else v
        facts["optimizer"] = {"class": type(optimizer).__name__, **hyper,
                              "param_groups": len(groups)}
    return facts


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
    module docstring); native (None: the native CPU path when it applies and
    libgradwatch loads; False: never; True: required); cache_indices (default
    True); index_budget (bytes of cached indices, default 2^30); chunk_coords
    (float64 buffer size, default 2^23); max_pending (device steps in flight
    before dropping, default 64); optimizer (a torch.optim.Optimizer: its
    class and hyper-parameters lr, momentum or betas, weight_decay, eps of
    its first param group go into the run's metadata, with torch's version
    and the parameter count); background (native path: None publishes from
    libgradwatch's worker thread when a CPU is spare, True always, False
    never; see the module docstring).
    """
    return Watch(model, pub, per_layer=per_layer, every=every, **kw)
