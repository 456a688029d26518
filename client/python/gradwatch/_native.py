"""gradwatch._native: libgradwatch (the C client) through ctypes, for the
native CPU path of gradwatch.torch.watch.

What it owns: finding and loading the shared library, the ctypes mirror of
the few C types it passes (gw_sketch_params_t, gw_sketch_buf_t, gw_layer_t,
gw_extras_t and the leading fields of gw_publisher_config_t), and Layers,
which hands a model's gradient buffers to C once per step:

    Layers(lib, pub, params, tags)       one C publisher, the same run, sketch
                                         parameters and incarnation as pub
    Layers.step(step, grads, loss, lr)   data_ptr() of every gradient -> one call
                                         of gw_publisher_publish_layers (sketch
                                         every layer from its buffer, derive
                                         "all" by linearity, send from C)
    Layers.close()

No copy is made of a contiguous float32/float64/float16/bfloat16 CPU gradient
(a non-contiguous one is made contiguous first), nothing is staged in
float64, and there is one call into C per step whatever the number of layers.

Where the library is looked for, first found wins: $GRADWATCH_LIB (the file,
or a directory holding libgradwatch.so), next to this package, the build
directory of a source checkout (build/client/, then other build*/client/
at the top of the checkout this package sits in, skipping sanitizer
builds), then the system's (ctypes.util.find_library, i.e. an
installed libgradwatch). load() returns None, with the reason, when none
loads.
"""

import ctypes
import ctypes.util
import glob
import os

import numpy as np

__all__ = ["load", "Layers", "GRAD_DTYPES", "NativeError", "warn_fallback"]

_ENV = "GRADWATCH_LIB"
_PKG = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(_PKG)))  # client/python/gradwatch

# gw_grad_dtype_t, by torch dtype name (str(torch.float32) == "torch.float32").
GRAD_DTYPES = {"torch.float32": 0, "torch.float64": 1, "torch.float16": 2, "torch.bfloat16": 3}

# gw_layer_status_t
SENT, DROPPED, SKIPPED, NONFINITE = 0, 1, 2, 3
WORKER_DEPTH = 2  # GW_WORKER_DEPTH (gradwatch.h): steps a worker holds in flight

_HAS_GRAD_NORM, _HAS_LOSS, _HAS_LR = 1, 2, 4
_CONFIG_BYTES = 4096  # room for gw_publisher_config_t, whatever fields it gains


class NativeError(RuntimeError):
    """libgradwatch refused a call (carries its gw_strerror text)."""


class _Params(ctypes.Structure):
    _fields_ = [("k", ctypes.c_uint32), ("kind", ctypes.c_uint8), ("s", ctypes.c_uint8),
                ("seed", ctypes.c_uint64)]


class _Buf(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("n", ctypes.c_size_t), ("offset", ctypes.c_uint64),
                ("dtype", ctypes.c_int)]


class _Layer(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_char_p), ("grad", _Buf)]


class _Extras(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("grad_norm", ctypes.c_double),
                ("loss", ctypes.c_double), ("lr", ctypes.c_double)]


class _ConfigHead(ctypes.Structure):
    """The leading fields of gw_publisher_config_t (gradwatch.h), in order. It
    lives inside a _CONFIG_BYTES buffer that gw_publisher_config_init fills
    whole, so fields appended to the C struct keep their defaults."""
    _fields_ = [("endpoint", ctypes.c_char_p), ("run", ctypes.c_char_p), ("sketch", _Params),
                ("dtype", ctypes.c_uint8), ("socket", ctypes.c_int), ("sndhwm", ctypes.c_int),
                ("linger_ms", ctypes.c_int), ("curve_server_key", ctypes.c_char_p),
                ("curve_public_key", ctypes.c_char_p), ("curve_secret_key", ctypes.c_char_p),
                ("zmq_context", ctypes.c_void_p), ("incarnation", ctypes.c_uint64),
                ("wire_version", ctypes.c_int)]


_WARN_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)

# Once per process: the library loaded (or why not), and the fallback warning.
_STATE = {"warned": False}


def _sanitized(path):
    """True for a sanitizer build (ASan/TSan abort a process that loads them
    without preloading their runtime): only $GRADWATCH_LIB may name one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return True
    return any(rt in data for rt in (b"libasan.so", b"libtsan.so", b"libubsan.so"))


def _candidates():
    env = os.environ.get(_ENV)
    if env:
        yield (os.path.join(env, "libgradwatch.so") if os.path.isdir(env) else env), True
        return  # an explicit choice: nothing else is tried
    builds = sorted(glob.glob(os.path.join(_CHECKOUT, "build*", "client")),
                    key=lambda d: (os.path.basename(os.path.dirname(d)) != "build", d))
    for d in [_PKG] + builds:
        p = os.path.join(d, "libgradwatch.so")
        if os.path.exists(p) and not _sanitized(p):
            yield p, False
    found = ctypes.util.find_library("gradwatch")
    if found:
        yield found, False


def _bind(lib):
    P, I, U64, SZ = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t
    sig = {
        "gw_sketch_bufs": (I, [ctypes.POINTER(_Params), ctypes.POINTER(_Buf), SZ, P, P]),
        "gw_publisher_config_init": (None, [P]),
        "gw_publisher_new": (I, [ctypes.POINTER(P), P]),
        "gw_publisher_free": (None, [P]),
        "gw_publisher_publish_layers": (I, [P, U64, ctypes.c_char_p, ctypes.POINTER(_Layer), SZ,
                                            ctypes.POINTER(_Extras), P, P, P]),
        "gw_publisher_set_warn": (I, [P, _WARN_FN, P]),
        "gw_publisher_connected": (I, [P]),
        "gw_publisher_sent": (U64, [P]),
        "gw_publisher_dropped": (U64, [P]),
        "gw_publisher_incarnation": (U64, [P]),
        "gw_strerror": (ctypes.c_char_p, [I]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)  # AttributeError: an older library without the native path
        fn.restype, fn.argtypes = res, args
    # The background worker: optional (a library without it publishes in log()).
    worker = {
        "gw_worker_new": (I, [ctypes.POINTER(P), P]),
        "gw_worker_free": (None, [P]),
        "gw_worker_submit": (I, [P, U64, ctypes.c_char_p, ctypes.POINTER(_Layer), SZ,
                                 ctypes.POINTER(_Extras)]),
        "gw_worker_pending": (I, [P]),
        "gw_worker_ready": (I, [P]),
        "gw_worker_wait": (I, [P, ctypes.POINTER(U64), P, P, P]),
        "gw_worker_last": (I, [P, ctypes.POINTER(U64), P]),
    }
    lib.gw_has_worker = all(hasattr(lib, n) for n in worker)
    if lib.gw_has_worker:
        for name, (res, args) in worker.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
    return lib


def load():
    """(ctypes.CDLL, None) for the first libgradwatch that loads and has the
    native path, else (None, why). Looked up once per process."""
    if "loaded" not in _STATE:
        _STATE["loaded"] = _load()
    return _STATE["loaded"]


def _load():
    why = []
    for path, explicit in _candidates():
        try:
            return _bind(ctypes.CDLL(path)), None
        except (OSError, AttributeError) as e:
            why.append(f"{path}: {e}")
            if explicit:
                break
    if not why:
        why.append(f"libgradwatch.so not found (set {_ENV}, or build the C library: "
                   f"cmake --build build --target gradwatch)")
    return None, "; ".join(why)


def warn_fallback(why):
    """Warn, once per process, that watch() runs the torch path instead."""
    if _STATE["warned"]:
        return
    _STATE["warned"] = True
    import warnings
    warnings.warn(f"gradwatch: libgradwatch not loaded, CPU gradients are sketched by the "
                  f"slower torch path ({why})", RuntimeWarning, stacklevel=4)


def _err(lib, rc, what):
    return NativeError(f"{what}: {lib.gw_strerror(rc).decode()} ({rc})")


def _sockopt_key(sock, opt):
    v = sock.getsockopt(opt)
    if isinstance(v, bytes):
        v = v.rstrip(b"\0")
    return v


class Layers:
    """One C publisher (or none: pub=None computes only) and the gw_layer_t
    array of a model's parameters, whose data pointers are rewritten each step.

    params: [(tensor, global offset)] in layout order; tags: per parameter its
    stream tag or None (counted into "all" only).
    """

    def __init__(self, lib, pub, k, seed, s, params, tags):
        self._lib = lib
        self._pub = None  # the gw_publisher_t *, when publishing
        self._pypub = pub
        self.k = k
        m = self.m = len(params)
        self._tags = [None if t is None else t.encode() for t in tags]  # kept alive for C
        self._layers = (_Layer * max(m, 1))()
        for i, ((t, off), tag) in enumerate(zip(params, self._tags)):
            self._layers[i].tag = tag
            self._layers[i].grad.n = t.numel()
            self._layers[i].grad.offset = off
        # Strided numpy views of the data pointers and dtypes: one assignment
        # per step instead of a ctypes attribute per layer.
        mem = np.frombuffer(self._layers, dtype=np.uint8)
        size = ctypes.sizeof(_Layer)
        base = _Layer.grad.offset
        self._ptrs = np.ndarray(m, np.uintp, mem, base + _Buf.data.offset, (size,))
        self._dtypes = np.ndarray(m, np.intc, mem, base + _Buf.dtype.offset, (size,))
        self.z = np.zeros((m + 1, k))
        self.norms = np.zeros(m + 1)
        self.status = np.zeros(m + 1, np.uint8)
        self._norms_ptr, self._status_ptr = self.norms.ctypes.data, self.status.ctypes.data
        self._params = _Params(k, 1, s, seed)
        self._extras = _Extras()
        self._keep = None  # contiguous copies made for the current step
        self._warn_cb = None
        self._warn_box = []  # messages the warn callback received, not yet issued
        self._c_connected = False
        self._plist, self._dlist = [0] * m, [0] * m  # reused by _point
        self._codes = {}  # torch dtype -> gw_grad_dtype_t
        self.present = np.zeros(m, bool)
        self._all_present = np.ones(m, bool)
        self._worker = None  # the gw_worker_t *, once start_background() ran
        self.pending = 0  # submitted steps not yet collected (at most WORKER_DEPTH)
        self._empty_buf = np.zeros(1)
        self._empty = self._empty_buf.ctypes.data  # non-NULL: "a gradient of 0 elements"
        if pub is not None:
            self._open(pub)

    def _open(self, pub):
        import zmq
        sock = pub._sock
        buf = ctypes.create_string_buffer(_CONFIG_BYTES)
        self._lib.gw_publisher_config_init(buf)
        cfg = _ConfigHead.from_buffer(buf)
        self._cfg_strings = [pub.endpoint.encode(), pub.run.encode()]
        cfg.endpoint, cfg.run = self._cfg_strings
        cfg.sketch = self._params
        cfg.dtype = pub._dtype_code
        cfg.socket = 0  # PUB
        cfg.sndhwm = sock.getsockopt(zmq.SNDHWM)
        cfg.linger_ms = sock.getsockopt(zmq.LINGER)
        if sock.getsockopt(zmq.MECHANISM) == zmq.CURVE:
            keys = [_sockopt_key(sock, o) for o in
                    (zmq.CURVE_SERVERKEY, zmq.CURVE_PUBLICKEY, zmq.CURVE_SECRETKEY)]
            if any(len(x) != 40 for x in keys):
                raise NativeError("cannot read the Publisher's CURVE keys back in Z85")
            self._cfg_strings += keys
            cfg.curve_server_key, cfg.curve_public_key, cfg.curve_secret_key = keys
        cfg.incarnation = pub.incarnation
        cfg.wire_version = pub.wire_version
        out = ctypes.c_void_p()
        rc = self._lib.gw_publisher_new(ctypes.byref(out), buf)
        if rc != 0:
            raise _err(self._lib, rc, "gw_publisher_new")
        self._pub = out
        box = self._warn_box = []

        def warn(_arg, msg):
            # The C publisher's no-daemon warning. It may come from the worker's
            # thread, where no Python frame leads to the caller: keep it, and
            # _warn() issues it on the caller's thread when the call returns.
            box.append(msg.decode(errors="replace"))
        self._warn_cb = _WARN_FN(warn)
        self._lib.gw_publisher_set_warn(self._pub, self._warn_cb, None)

    def connected(self):
        """True once the C socket has seen a daemon's subscription (sticky).
        While steps are in flight the worker owns the socket: the answer is
        then the last one (collect them first to look again)."""
        if not self._c_connected and self._pub is not None and not self.pending:
            self._c_connected = bool(self._lib.gw_publisher_connected(self._pub))
            self._warn()
        return self._c_connected

    def _point(self, grads):
        """Write every gradient's data pointer and dtype into the layer array
        (self.present: which rows have a gradient); returns the contiguous
        copies made (keep them alive during the call)."""
        keep = None
        missing = 0
        ptrs, dts, codes = self._plist, self._dlist, self._codes
        for i, g in enumerate(grads):
            if g is None:
                ptrs[i] = dts[i] = 0
                missing += 1
                continue
            if not g.is_cpu:
                raise ValueError(f"gradient on {g.device}: the native path reads CPU memory")
            if not g.is_contiguous():
                g = g.contiguous()
                keep = [] if keep is None else keep
                keep.append(g)
            ptrs[i] = g.data_ptr() or self._empty  # an empty tensor's may be NULL
            code = codes.get(g.dtype)
            if code is None:  # -1: the library says EINVAL
                code = codes[g.dtype] = GRAD_DTYPES.get(str(g.dtype), -1)
            dts[i] = code
        self._ptrs[:] = ptrs
        self._dtypes[:] = dts
        # The usual step has every gradient: one shared all-True array then
        # (never written), no comparison.
        self.present = self._all_present if not missing else self._ptrs != 0
        return keep

    def _set_extras(self, loss, lr):
        x = self._extras
        x.flags = (_HAS_LOSS if loss is not None else 0) | (_HAS_LR if lr is not None else 0)
        x.loss = 0.0 if loss is None else loss
        x.lr = 0.0 if lr is None else lr
        return x

    def _warn(self):
        """Issue the C publisher's no-daemon warning, as the Python one's."""
        if not self._warn_box:
            return
        msg = self._warn_box.pop()
        self._warn_box.clear()
        import warnings
        from .publisher import NoSubscriberWarning, _user_stacklevel
        pypub = self._pypub
        if not pypub._warned and not pypub._ever_connected:
            pypub._warned = True
            warnings.warn(msg, NoSubscriberWarning, stacklevel=_user_stacklevel())

    # -- background publishing (gw_worker: client/worker.c) ---------------

    def start_background(self):
        """Publish from libgradwatch's worker thread from now on: submit()
        copies the gradients and returns, collect() takes the outcomes, oldest
        first. False (nothing changes) without a C publisher or a library with
        the worker."""
        if self._pub is None or not getattr(self._lib, "gw_has_worker", False):
            return False
        out = ctypes.c_void_p()
        rc = self._lib.gw_worker_new(ctypes.byref(out), self._pub)
        if rc != 0:
            raise _err(self._lib, rc, "gw_worker_new")
        self._worker = out
        self._wstep = ctypes.c_uint64()
        return True

    @property
    def background(self):
        return self._worker is not None

    def submit(self, step, grads, loss=None, lr=None):
        """Copy the gradients into the worker and return; its thread sketches
        and publishes them after the steps already in flight. Fewer than
        WORKER_DEPTH steps may be in flight (collect() one first)."""
        keep = self._point(grads)
        rc = self._lib.gw_worker_submit(self._worker, step, b"all", self._layers, self.m,
                                        ctypes.byref(self._set_extras(loss, lr)))
        del keep
        if rc != 0:
            raise _err(self._lib, rc, "gw_worker_submit")
        self.pending += 1

    def ready(self):
        """True when the oldest step in flight has been published (collect()
        does not wait)."""
        return bool(self._lib.gw_worker_ready(self._worker))

    def collect(self):
        """Wait for the oldest step in flight; fill norms and status as
        step() does and return its step number (None if nothing was
        pending). z is left None: the sketches are read back only when
        wanted, by last_z()."""
        if not self.pending:
            return None
        self.pending -= 1
        self.z = None
        rc = self._lib.gw_worker_wait(self._worker, ctypes.byref(self._wstep), None,
                                      self._norms_ptr, self._status_ptr)
        self._warn()
        if rc != 0:
            raise _err(self._lib, rc, "gw_worker_wait")
        return self._wstep.value

    def last_z(self):
        """The sketches ((1+m) x k) of the step collect() returned last; only
        with nothing in flight."""
        z = np.empty((self.m + 1, self.k))
        rc = self._lib.gw_worker_last(self._worker, None, z.ctypes.data)
        if rc != 0:
            raise _err(self._lib, rc, "gw_worker_last")
        return z

    def step(self, step, grads, loss=None, lr=None, send=True):
        """Sketch (and, with send, publish from C) one step; grads per
        parameter (tensor or None).

        Fills self.z ((1+m) x k: "all", then the layers; a new array every
        step), self.norms and self.status (gw_layer_status_t per row; without
        send: SKIPPED, or NONFINITE). Raises NativeError for what the library
        refuses, ValueError for a gradient it cannot read.
        """
        keep = self._point(grads)
        self.z = np.empty((self.m + 1, self.k))
        if self._pub is None or not send:
            self._compute(grads)
            del keep
            return 0
        x = self._set_extras(loss, lr)
        rc = self._lib.gw_publisher_publish_layers(
            self._pub, step, b"all", self._layers, self.m, ctypes.byref(x),
            self.z.ctypes.data, self.norms.ctypes.data, self.status.ctypes.data)
        del keep
        if rc != 0:
            raise _err(self._lib, rc, "gw_publisher_publish_layers")
        self._warn()
        return 0

    def _compute(self, grads):
        """No publisher: the layer rows from gw_sketch_bufs, "all" summed here."""
        bufs = (_Buf * max(self.m, 1))()
        for i, g in enumerate(grads):
            bufs[i] = self._layers[i].grad
            if g is None:
                bufs[i].n = 0
        sq = np.zeros(self.m)
        rc = self._lib.gw_sketch_bufs(ctypes.byref(self._params), bufs, self.m,
                                      self.z[1:].ctypes.data, sq.ctypes.data)
        if rc != 0:
            raise _err(self._lib, rc, "gw_sketch_bufs")
        for i, g in enumerate(grads):
            if g is None:  # no gradient: zeros, and not a stream this step
                self.z[1 + i] = 0.0
                sq[i] = 0.0
        np.sum(self.z[1:], axis=0, out=self.z[0])
        self.norms[1:] = np.sqrt(sq)
        self.norms[0] = np.sqrt(sq.sum())
        ok = np.isfinite(self.norms) & np.isfinite(self.z).all(axis=1)
        self.status[:] = np.where(ok, SKIPPED, NONFINITE)
        return 0

    def close(self):
        """Stop the worker (the steps in flight are still sent; collect()
        them first to see their outcomes), then free the C publisher."""
        if self._worker is not None:
            self._lib.gw_worker_free(self._worker)
            self._worker = None
            self.pending = 0
        if self._pub is not None:
            self._lib.gw_publisher_free(self._pub)
            self._pub = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
