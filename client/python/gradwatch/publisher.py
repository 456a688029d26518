"""Publisher: sketch gradients and send them to gradwatchd without ever blocking.

A Publisher owns one ZeroMQ socket connected to the daemon's endpoint. It is
an XPUB socket (a PUB socket that also sees its subscribers' subscriptions)
with ZMQ_XPUB_NODROP set, so that every message that does not reach a
subscriber is *counted* instead of vanishing silently, as it would on a plain
PUB socket:

- no subscriber (daemon down, not yet connected, or subscribed to other
  prefixes) matches the topic            -> dropped
- a matching subscriber's queue holds SNDHWM messages (a slow daemon), so the
  non-blocking send fails with EAGAIN    -> dropped
- any other ZeroMQ error while sending   -> dropped (kept in .last_error)

Sends use ZMQ_DONTWAIT, so publish() costs the sketch plus a few microseconds
and never waits for the network. Subscriptions arrive asynchronously after
connect (the "slow joiner"): the first messages after start-up are dropped
until the daemon's subscription has arrived; wait_subscribed() waits for it
where that matters (tests, short scripts).

Is a daemon there? `connected` is True while some subscription takes a topic
of this run. If none has come 5 s after the first publish (checked on each
publish and on `connected`, no thread), a NoSubscriberWarning is issued once
through the warnings module; GW_PUBLISHER_WARN_MS (milliseconds, read when
the Publisher is created) replaces the 5 s.

Incarnation: every Publisher draws a random 64-bit id when it is created
(Publisher.incarnation, from the OS's CSPRNG, never 0) and sends it with every
message (wire version 2, PROTOCOL.md 3.2). A rerun, or a resume from a
checkpoint at an earlier step, is thus a new incarnation, and the daemon
restarts the run's streams instead of rejecting the repeated steps.

Rejected before sending, with ValueError or TypeError naming the argument:
bad run/tag names (PROTOCOL.md 2), k/s/seed/kind out of range, a sketch of
the wrong length, a step outside 0..2^63-1, non-finite scalars, and non-finite
gradients or sketches (NaN/Inf in grad, or a sketch that overflows the payload
dtype): the daemon would reject such a message anyway.

A Publisher is not thread-safe (neither is its socket): use one per thread.
"""

import math
import os
import platform
import socket
import sys
import time
import warnings

import numpy as np
import zmq

from . import _meta, _proto
from ._sketch import Sketcher, check_params


def _version():
    from . import __version__
    return __version__


def _curve_key(value, what, want):
    """A CURVE key as bytes (Z85, 40 chars, or raw 32 bytes), or read from a file.

    A path (str or os.PathLike) that is not itself a 40-character key names a
    ZeroMQ certificate file (zmq.auth format); want is "public" or "secret".
    """
    if isinstance(value, str) and len(value) == 40:
        value = value.encode("ascii")
    if isinstance(value, (bytes, bytearray)) and len(value) in (32, 40):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        import zmq.auth
        public, secret = zmq.auth.load_certificate(value)
        key = public if want == "public" else secret
        if key is None:
            raise ValueError(f"{what}: certificate file {value!s} holds no {want} key")
        return key
    raise ValueError(f"{what} must be a Z85 key (40 chars), 32 raw bytes or a "
                     f"certificate file, got {value!r:.60}")


def _as_numpy(grad, what="grad"):
    """A float numpy view/copy of a numpy array, sequence or (CPU) torch tensor."""
    mod = type(grad).__module__
    if mod.startswith("torch"):
        t = grad.detach()
        if t.dtype.is_complex or not t.dtype.is_floating_point:
            raise TypeError(f"{what} must be a floating-point tensor, got {t.dtype}")
        if t.dtype not in _torch_numpy_dtypes():
            t = t.float()
        return t.cpu().numpy()
    a = np.asarray(grad)
    if a.dtype.kind != "f":
        raise TypeError(f"{what} must be a floating-point array, got dtype {a.dtype}")
    return a


_TORCH_NP = None

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_WARN_ENV = "GW_PUBLISHER_WARN_MS"
_WARN_AFTER_S = 5.0


class NoSubscriberWarning(UserWarning):
    """No gradwatch daemon subscribed to a Publisher's run within 5 s of its first publish."""


def _user_stacklevel():
    """warnings.warn stacklevel, for its caller, of the first frame outside gradwatch
    (publish(), connected, or gradwatch.torch's log() all point at user code)."""
    f = sys._getframe(2)  # the caller of warnings.warn's caller's caller: level 2
    level = 2
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _PKG_DIR:
        f = f.f_back
        level += 1
    return level


def _warn_after_s():
    """GW_PUBLISHER_WARN_MS as seconds if it is a whole number of ms, else 5."""
    v = os.environ.get(_WARN_ENV, "")
    if v.isdigit():
        return int(v) / 1000.0
    return _WARN_AFTER_S


def _torch_numpy_dtypes():
    global _TORCH_NP
    if _TORCH_NP is None:
        import torch
        _TORCH_NP = (torch.float32, torch.float64, torch.float16)
    return _TORCH_NP


DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
ENV_ENDPOINT = "GRADWATCH_ENDPOINT"
ENV_RUN = "GRADWATCH_RUN"


def _env_default(value, what, env, default):
    """(value, where it came from): the argument when given, else the
    environment variable env when set and non-empty, else default."""
    if value is not None:
        return value, what
    v = os.environ.get(env, "").strip()
    if v:
        return v, env
    return default, what


class Publisher:
    """Sketch gradients with S(seed, kind, s, k) and publish them for one run.

    Publisher(endpoint=None, run=None, k=256, seed=0, kind="sjlt", s=4 (0 for gaussian),
    dtype="f32"|"f16"|"bf16", sndhwm=10000, linger_ms=1000,
    curve_serverkey=, curve_publickey=, curve_secretkey=, context=None,
    incarnation=None (draw one), wire_version=2,
    config=None, tags=None, labels=None, meta_every=30.0)

    endpoint None: $GRADWATCH_ENDPOINT, else tcp://127.0.0.1:5557; run None:
    $GRADWATCH_RUN, else ValueError. Explicit arguments win.

    Run metadata (PROTOCOL.md section 11): config (a dict, e.g. the
    hyper-parameters), tags (a list of strings) and labels (str -> str) are
    sent as one metadata message with "client" facts filled in here (host,
    pid, gradwatch and Python versions; gradwatch.torch.watch adds torch's
    version, the optimizer and the parameter count). It is sent with the
    first publish, again before the next publish after a daemon subscribes
    (so a daemon started after the publisher, or restarted, gets it), and
    every meta_every seconds while publishing (None: never periodically).
    set_meta() replaces it and sends it at once.

    Attributes: sent, dropped (messages), last_error, incarnation (the id
    sent with every message; 0 with wire_version=1, which sends the old
    layout without one), connected, and the parameters.
    """

    def __init__(self, endpoint=None, run=None, k=256, seed=0, kind="sjlt", s=None, *,
                 dtype="f32", sndhwm=10000, linger_ms=1000, curve_serverkey=None,
                 curve_publickey=None, curve_secretkey=None, context=None,
                 cache_bytes=256 << 20, incarnation=None, wire_version=_proto.VERSION,
                 config=None, tags=None, labels=None, meta_every=30.0):
        endpoint, ep_src = _env_default(endpoint, "endpoint", ENV_ENDPOINT, DEFAULT_ENDPOINT)
        run, run_src = _env_default(run, "run", ENV_RUN, None)
        if run is None:
            raise ValueError(f"run is required: pass run= or set {ENV_RUN}")
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"{ep_src} must be a ZeroMQ endpoint like "
                             f"'tcp://127.0.0.1:5557', got {endpoint!r}")
        if run_src == ENV_RUN:
            try:
                _proto.check_run(run)
            except ValueError:
                raise ValueError(f"{ENV_RUN} must be 1..128 characters of [A-Za-z0-9._:-], "
                                 f"got {run!r}") from None
        self._run_b = _proto.check_run(run)
        self.run = self._run_b.decode()
        self.k, self.seed, self.kind, self.s = check_params(k, seed, kind, s)
        self.kind_code = 1 if self.kind == "sjlt" else 2
        self.dtype = _proto.check_dtype(dtype)
        self._dtype_code = _proto.DTYPES[self.dtype]
        if isinstance(sndhwm, bool) or not isinstance(sndhwm, int) or sndhwm < 1:
            raise ValueError(f"sndhwm must be a positive int, got {sndhwm!r}")
        keys = (curve_serverkey, curve_publickey, curve_secretkey)
        if any(x is not None for x in keys) and not all(x is not None for x in keys):
            raise ValueError("CURVE needs all three of curve_serverkey, curve_publickey "
                             "and curve_secretkey")
        self.wire_version = _proto.check_version(wire_version)
        if self.wire_version >= 2:
            self.incarnation = (_proto.new_incarnation() if incarnation is None
                                else _proto.check_incarnation(incarnation))
        elif incarnation not in (None, 0):
            raise ValueError("wire_version 1 carries no incarnation")
        else:
            self.incarnation = 0
        if meta_every is not None and (isinstance(meta_every, bool) or
                                       not isinstance(meta_every, (int, float)) or
                                       not meta_every > 0):
            raise ValueError(f"meta_every must be a positive number of seconds or None, "
                             f"got {meta_every!r}")
        self.meta_every = meta_every
        self._meta_user = _meta.make_document(config=config, tags=tags, labels=labels)
        self._meta_client = {"host": socket.gethostname(), "pid": os.getpid(),
                             "gradwatch": _version(), "python": platform.python_version()}
        self._meta_frames = None  # (topic, body) of the current document
        self._meta_due = True  # send it before the next publish
        self._meta_sent_at = None  # time.monotonic() of the last metadata send
        self.meta_sent = 0
        self.endpoint = endpoint
        self.sent = 0
        self.dropped = 0
        self.last_error = None
        self._run_prefix = _proto.TOPIC_PREFIX + self._run_b + b"/"
        self._connected = False
        self._ever_connected = False
        self._first_publish = None  # time.monotonic() of the first send attempt
        self._warn_after = _warn_after_s()
        self._warned = False
        self._sketcher = Sketcher(self.k, self.seed, self.kind, self.s, cache_bytes)
        self._subs = set()
        self._match = {}  # topic -> bool, valid for the current self._subs
        self._topics = {}  # tag (str) -> topic bytes
        self._msg_dtype = _proto.message_dtype(self.k, self.dtype, self.wire_version)
        self._batches = {}  # m -> reusable structured array of m bodies
        self._closed = True
        self._sock = None
        ctx = context if context is not None else zmq.Context.instance()
        sock = ctx.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.SNDHWM, sndhwm)
            sock.setsockopt(zmq.LINGER, int(linger_ms))
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            # Every subscription is reported, also one a prefix already has
            # from another daemon: each new daemon is then sent the metadata.
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            # Pipes exist only while connected: while the daemon is away nothing
            # queues up (it is dropped and counted), and a lost connection
            # removes its subscriptions.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if curve_serverkey is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY,
                                _curve_key(curve_serverkey, "curve_serverkey", "public"))
                sock.setsockopt(zmq.CURVE_PUBLICKEY,
                                _curve_key(curve_publickey, "curve_publickey", "public"))
                sock.setsockopt(zmq.CURVE_SECRETKEY,
                                _curve_key(curve_secretkey, "curve_secretkey", "secret"))
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise ValueError(f"endpoint {endpoint!r}: {e}") from None
        self._sock = sock
        self._closed = False

    # -- sketching ---------------------------------------------------------

    def sketch(self, grad, offset=0):
        """z = S[:, offset:offset+d] g as a float64 numpy array of length k.

        grad: numpy array, sequence or torch tensor, flattened row-major.
        Tensors on an accelerator are sketched on their device (only k
        numbers are copied back). offset places a slice of a larger vector
        at its global coordinates (sketches of slices add up).
        """
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        if type(grad).__module__.startswith("torch") and getattr(grad, "is_cuda", False):
            from ._kernels import torch_sketch
            return torch_sketch(grad, self.k, self.seed, self.kind, self.s,
                                offset=int(offset)).cpu().numpy()
        return self._sketcher.sketch(_as_numpy(grad), int(offset))

    # -- publishing --------------------------------------------------------

    def _topic(self, tag):
        t = self._topics.get(tag)
        if t is None:
            t = _proto.topic(self._run_b, _proto.check_tag(tag))
            if len(self._topics) < 100000:
                self._topics[tag] = t
        return t

    def publish(self, tag, step, grad, grad_norm=None, loss=None, lr=None):
        """Sketch grad and send it; returns True if sent, False if dropped.

        grad_norm defaults to ||grad|| (computed here in float64). Raises
        ValueError if grad holds NaN/Inf (decided: a non-finite gradient is
        never sent, the daemon would reject it) and for bad arguments.
        """
        topic = self._topic(tag)
        step = _proto.check_step(step)
        if isinstance(grad, np.ndarray) and grad.dtype.kind == "f":
            g = grad
        elif type(grad).__module__.startswith("torch") and getattr(grad, "is_cuda", False):
            from ._kernels import torch_sketch
            zn = torch_sketch(grad, self.k, self.seed, self.kind, self.s, with_norm=True)
            zn = zn.cpu().numpy()
            z, gn = zn[:-1], math.sqrt(zn[-1])
            return self._publish_z(topic, step, z, grad_norm if grad_norm is not None else gn,
                                   loss, lr, what="grad")
        else:
            g = _as_numpy(grad)
        g = g.reshape(-1)
        if grad_norm is None:
            g64 = g.astype(np.float64, copy=False)
            grad_norm = math.sqrt(float(np.dot(g64, g64)))
            if not math.isfinite(grad_norm):
                raise ValueError("grad must be finite (it contains NaN or Inf)")
        z = self._sketcher.sketch(g)
        return self._publish_z(topic, step, z, grad_norm, loss, lr, what="grad")

    def publish_sketch(self, tag, step, z, grad_norm=None, loss=None, lr=None):
        """Send an already projected sketch z (length k); True if sent, False if dropped."""
        topic = self._topic(tag)
        step = _proto.check_step(step)
        z = _as_numpy(z, "z").reshape(-1)
        if z.size != self.k:
            raise ValueError(f"z must have length k={self.k}, got {z.size}")
        return self._publish_z(topic, step, z, grad_norm, loss, lr, what="z")

    def _publish_z(self, topic, step, z, grad_norm, loss, lr, what):
        gn = _proto.check_scalar(grad_norm, "grad_norm")
        loss = _proto.check_scalar(loss, "loss")
        lr = _proto.check_scalar(lr, "lr")
        rows, ok = self._encode(step, np.asarray(z, dtype=np.float64).reshape(1, -1),
                                None if gn is None else np.array([gn]), loss, lr)
        if not ok[0]:
            raise ValueError(f"{what} must be finite: its sketch has NaN/Inf or "
                             f"overflows dtype {self.dtype}")
        return self._send(topic, rows[0])

    def _encode(self, step, Z, gns, loss, lr, wall_ns=None):
        """Bodies of m messages at once: (rows, ok).

        Z: (m, k) float64 sketches; gns: (m,) grad norms or None (absent);
        loss, lr: float or None. rows[i] (uint8, header + k w bytes) is the body
        of message i; ok[i] is False when Z[i] or gns[i] is NaN/Inf or Z[i]
        exceeds the largest finite value of the payload dtype (the row must
        then not be sent). The returned rows are reused by the next call.
        """
        m = Z.shape[0]
        arr = self._batches.get(m)
        if arr is None:
            arr = np.zeros(m, dtype=self._msg_dtype)
            arr["magic"], arr["version"], arr["dtype"] = (_proto.MAGIC, self.wire_version,
                                                          self._dtype_code)
            if self.wire_version >= 2:
                arr["incarnation"] = self.incarnation
            arr["kind"], arr["s"], arr["k"], arr["seed"] = self.kind_code, self.s, self.k, self.seed
            if len(self._batches) > 8:
                self._batches.clear()
            self._batches[m] = arr
        ok = np.abs(Z).max(axis=1) <= _proto.LARGEST[self.dtype]  # False for NaN too
        flags = 0
        if gns is not None:
            ok &= np.isfinite(gns)
            flags |= _proto.HAS_GRAD_NORM
            arr["grad_norm"] = gns
        else:
            arr["grad_norm"] = 0.0
        if loss is not None:
            flags |= _proto.HAS_LOSS
        if lr is not None:
            flags |= _proto.HAS_LR
        arr["flags"] = flags
        arr["step"] = step
        arr["wall_ns"] = time.time_ns() if wall_ns is None else wall_ns
        arr["loss"] = 0.0 if loss is None else loss
        arr["lr"] = 0.0 if lr is None else lr
        src = Z if ok.all() else np.where(ok[:, None], Z, 0.0)
        if self.dtype == "f32":
            arr["payload"] = src
        elif self.dtype == "f16":
            arr["payload"] = src.astype(np.float32)  # via binary32, as PROTOCOL.md 4 says
        else:
            arr["payload"] = _proto.f32_to_bf16_bits(src.astype(np.float32))
        return arr.view(np.uint8).reshape(m, -1), ok

    def _poll_subscriptions(self):
        """Read pending (un)subscription messages from the XPUB socket.

        The one place that learns about daemons: it keeps the subscription
        set, `connected` and whether a daemon was ever there, and returns
        True when a daemon newly subscribed to this run (the hook for
        sending a daemon something when it arrives).
        """
        sock = self._sock
        changed = False
        pre = self._run_prefix
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                m = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if m[:1] == b"\x01":
                if pre.startswith(m[1:]) or m[1:].startswith(pre):
                    self._meta_due = True  # a daemon (re)subscribed to this run
                self._subs.add(m[1:])
            elif m[:1] == b"\x00":
                self._subs.discard(m[1:])
            changed = True
        if not changed:
            return False
        self._match.clear()
        was = self._connected
        self._connected = any(pre.startswith(p) or p.startswith(pre) for p in self._subs)
        if self._connected:
            self._ever_connected = True
        return self._connected and not was

    def _check_warn(self):
        """Warn once if no daemon was ever there _warn_after s after the first publish."""
        if (self._warned or self._ever_connected or self._first_publish is None
                or time.monotonic() - self._first_publish < self._warn_after):
            return
        self._warned = True
        warnings.warn(
            f"no gradwatch daemon has subscribed to run {self.run!r} at {self.endpoint} within "
            f"{self._warn_after:g} s of the first publish; messages are dropped (counted in "
            f"Publisher.dropped) until one does (is gradwatchd running, listening there, and "
            f"subscribed to this run?)", NoSubscriberWarning, stacklevel=_user_stacklevel())

    def _matches(self, topic):
        m = self._match.get(topic)
        if m is None:
            m = any(topic.startswith(p) for p in self._subs)
            self._match[topic] = m
        return m

    # -- run metadata -------------------------------------------------------

    def set_meta(self, config=None, tags=None, labels=None):
        """Replace the run's config, tags and labels (None: an absent member)
        and send the metadata now; returns True if it was sent."""
        self._meta_user = _meta.make_document(config=config, tags=tags, labels=labels)
        self._meta_frames = None
        return self.send_meta()

    def update_client_meta(self, **facts):
        """Add facts to the "client" member (libraries use this: the torch
        watcher adds the optimizer); sent with the next publish."""
        self._meta_client.update(_meta._jsonable(facts, "client"))
        self._meta_frames = None
        self._meta_due = True

    @property
    def meta(self):
        """The metadata document as sent (a dict)."""
        return _meta.make_document(client=self._meta_client, **self._meta_user)

    def send_meta(self):
        """Send the metadata message now; True if sent (counted in meta_sent,
        not in sent/dropped)."""
        if self._closed:
            raise RuntimeError("publisher is closed")
        self._poll_subscriptions()
        return self._send_meta()

    def _send_meta(self):
        if self.wire_version < 2:
            return False  # metadata names the incarnation: version 2 publishers only
        if self._meta_frames is None:
            self._meta_frames = _meta.encode(self.run, self.meta, self.incarnation,
                                             time.time_ns())
        topic, body = self._meta_frames
        self._meta_due = False
        self._meta_sent_at = time.monotonic()
        if not self._matches(topic):
            self._meta_due = True  # nobody to tell yet: on the next publish
            return False
        try:
            self._sock.send(topic, zmq.SNDMORE | zmq.NOBLOCK)
        except zmq.ZMQError:
            self._meta_due = True
            return False
        self._sock.send(body, zmq.NOBLOCK)
        self.meta_sent += 1
        return True

    def _meta_tick(self):
        """Send the metadata if it is due (new document, a daemon newly
        subscribed) or meta_every seconds have passed. Called before every
        publish; the torch watcher calls it on its native path too."""
        if self._meta_due or (self.meta_every is not None and self._meta_sent_at is not None and
                              time.monotonic() - self._meta_sent_at >= self.meta_every):
            self._send_meta()

    def _send(self, topic, body, poll=True):
        if self._closed:
            raise RuntimeError("publisher is closed")
        if poll:
            self._poll_subscriptions()
        self._meta_tick()
        if not self._ever_connected:
            if self._first_publish is None:
                self._first_publish = time.monotonic()
            self._check_warn()
        if not self._matches(topic):
            self.dropped += 1
            return False
        try:
            self._sock.send(topic, zmq.SNDMORE | zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        except zmq.ZMQError as e:
            self.last_error = e
            self.dropped += 1
            return False
        # The first frame was accepted, so the high-water mark check has passed
        # for this message and the second frame is accepted too.
        self._sock.send(body, zmq.NOBLOCK)
        self.sent += 1
        return True

    @property
    def connected(self):
        """True while a daemon takes this run's messages: some subscription matches
        a topic of the run (one subscribed only to other runs does not count)."""
        if self._closed:
            return False
        self._poll_subscriptions()
        self._check_warn()
        return self._connected

    def subscribed(self, tag=None):
        """True if some subscriber would receive this run's messages (for tag, if given)."""
        if self._closed:
            return False
        self._poll_subscriptions()
        if tag is not None:
            return self._matches(self._topic(tag))
        pre = _proto.TOPIC_PREFIX + self._run_b + b"/"
        return any(pre.startswith(p) or p.startswith(pre) for p in self._subs)

    def wait_subscribed(self, timeout=5.0, tag=None):
        """Wait up to timeout seconds for a subscriber (see subscribed()); returns bool.

        For start-up in scripts and tests; never needed for correctness.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.subscribed(tag):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._closed:
                return False
            self._sock.poll(min(left, 0.05) * 1000, zmq.POLLIN)

    def close(self):
        """Close the socket (waiting at most linger_ms for queued messages). Idempotent."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed:
                self._sock.close(linger=0)
        except Exception:
            pass

    def __repr__(self):
        return (f"Publisher({self.endpoint!r}, run={self.run!r}, k={self.k}, seed={self.seed}, "
                f"kind={self.kind!r}, s={self.s}, dtype={self.dtype!r}, "
                f"incarnation=0x{self.incarnation:016x}, sent={self.sent}, "
                f"dropped={self.dropped})")
