"""The native CPU path of gradwatch.torch.watch (libgradwatch through ctypes)
and the device path's logic, exercised on the CPU.

Bit-for-bit comparisons use dyadic gradients (multiples of 2^-6 below 2 in
magnitude): every partial sum is then exact in float64, so the C sketch, the
torch scatter and NumPy's bincount, which add the same terms in different
orders, must agree to the last bit; s is 1 or 4, where 1/sqrt(s) is exact,
so folding the scale into each entry (as C does for short buffers) changes
nothing either. On ordinary random gradients they agree to rounding (1e-12).
The library is the one the build made (ctest sets GRADWATCH_LIB); the
fallback test hides it.
"""
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import zmq

import gradwatch
import gradwatch.torch as gt
from gradwatch import _native
from conftest import CLIENT, SKETCH_JSON, free_port, ref_sketch

LIB, WHY = _native.load()
need_lib = pytest.mark.skipif(LIB is None, reason=f"libgradwatch not built: {WHY}")

SHAPES = [(37,), (5, 7), (3, 4, 5), (1,), (64, 33), (0,), (300,)]


class Net(torch.nn.Module):
    def __init__(self, dtypes):
        super().__init__()
        for i, (shape, dt) in enumerate(zip(SHAPES, dtypes)):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(shape, dtype=dt)))


def dyadic(net, seed):
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = (torch.randint(-128, 129, p.shape, generator=g).double() / 64).to(p.dtype)


def gaussian(net, seed):
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)


def numpy_ref(net, k, seed, s):
    """Per layer: the NumPy Sketcher at the layer's global offset; "all": the
    sketch of the concatenated gradient (not a sum of rows)."""
    sk = gradwatch.Sketcher(k, seed, "sjlt", s)
    out, off, flat = {}, 0, []
    for name, p in net.named_parameters():
        g = p.grad.float().numpy().reshape(-1) if p.dtype in (torch.float16, torch.bfloat16) \
            else p.grad.numpy().reshape(-1)
        out[name] = (sk.sketch(g, off), float(np.sqrt(np.dot(g.astype(np.float64),
                                                             g.astype(np.float64)))))
        flat.append(g.astype(np.float64))
        off += g.size
    whole = np.concatenate(flat)
    out["all"] = (sk.sketch(whole), float(np.sqrt(np.dot(whole, whole))))
    return out


def last_of(net, k, seed, s, **kw):
    """One log() of a watch with these sketch parameters (to a closed port)."""
    with gradwatch.Publisher("tcp://127.0.0.1:9", run="r", k=k, seed=seed, s=s) as pub:
        w = gt.watch(net, pub, per_layer=True, **kw)
        w.log(1)
        if w.path == "native":
            w.close()  # the torch path's chunks stay for the caller to inspect
    return w, {t: (z.copy(), gn) for t, (z, gn) in w.last.items()}


def relerr(a, b):
    return np.max(np.abs(a - b)) / max(np.linalg.norm(b), 1e-300)


# -- the library itself -----------------------------------------------------


@need_lib
@pytest.mark.parametrize("dt", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,s", [(16, 4), (256, 4), (7, 1), (64, 1)])
def test_native_equals_torch_and_numpy_bit_for_bit(dt, k, s):
    net = Net([dt, torch.float32, dt, torch.float64, dt, dt, torch.float32])
    dyadic(net, k * 10 + s)
    with gradwatch.Publisher("tcp://127.0.0.1:9", run="r", k=k, seed=k + 5, s=s) as pub:
        wn = gt.watch(net, pub, native=True)
        wt = gt.watch(net, pub, native=False)
        assert (wn.path, wt.path) == ("native", "torch")
        wn.log(1)
        wn.flush()  # the worker's step (when it publishes in the background) is counted
        dropped = pub.dropped
        wt.log(1)
        ref = numpy_ref(net, k, k + 5, s)
        assert set(wn.last) == set(wt.last) == set(ref) == {"all"} | {f"p{i}" for i in
                                                                      range(len(SHAPES))}
        for tag, (z, gn) in ref.items():
            zn, gnn = wn.last[tag]
            zt, gnt = wt.last[tag]
            assert np.array_equal(zn, zt), tag
            assert np.array_equal(zn, z), tag
            assert gnn == gnt == gn, tag
        # "all" is the sum of the layers' rows (linearity), and not all zero
        rows = sum(wn.last[f"p{i}"][0] for i in range(len(SHAPES)))
        assert np.array_equal(wn.last["all"][0], rows) and np.any(rows != 0)
        # nothing reached a daemon: every message was counted as dropped, by C
        assert dropped == wn.published == 1 + len(SHAPES) and pub.sent == 0


@need_lib
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_native_close_to_reference_on_random_gradients(dt):
    net = Net([dt] * len(SHAPES))
    gaussian(net, 3)
    _, nat = last_of(net, 32, 9, 4, native=True)
    _, tor = last_of(net, 32, 9, 4, native=False)
    for tag in nat:
        assert relerr(nat[tag][0], tor[tag][0]) < 1e-12, tag
        assert abs(nat[tag][1] - tor[tag][1]) <= 1e-12 * tor[tag][1], tag
    # one layer against the independent Python-integer reference
    g = net.p4.grad.numpy().reshape(-1)
    off = sum(int(np.prod(s)) for s in SHAPES[:4])
    assert relerr(nat["p4"][0], np.array(ref_sketch(g, 32, 9, "sjlt", 4, off))) < 1e-12


@need_lib
def test_sketch_bufs_matches_accum_and_golden_vectors():
    """gw_sketch_bufs gives each row exactly gw_sketch_accum_f32/_f64's z, which
    is the C sketch the golden vectors (proto/vectors) check."""
    accum32, accum64 = LIB.gw_sketch_accum_f32, LIB.gw_sketch_accum_f64
    for fn in (accum32, accum64):
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(_native._Params), ctypes.c_void_p, ctypes.c_size_t,
                       ctypes.c_uint64, ctypes.c_void_p]
    with open(SKETCH_JSON) as f:
        cases = [c for c in json.load(f)["vectors"] if c["kind"] in ("sjlt", 1)]
    assert cases
    for c in cases:
        k, s, seed, off = int(c["k"]), int(c["s"]), int(c["seed"]), int(c.get("offset", 0))
        g = np.asarray(c["input"], dtype=np.float32)
        g64 = g.astype(np.float64) * 1.5
        prm = _native._Params(k, 1, s, seed)
        bufs = (_native._Buf * 2)(_native._Buf(g.ctypes.data, g.size, off, 0),
                                  _native._Buf(g64.ctypes.data, g64.size, off + 3, 1))
        z, sq = np.full((2, k), np.nan), np.zeros(2)
        assert LIB.gw_sketch_bufs(ctypes.byref(prm), bufs, 2, z.ctypes.data, sq.ctypes.data) == 0
        a, b = np.zeros(k), np.zeros(k)
        assert accum32(ctypes.byref(prm), g.ctypes.data, g.size, off, a.ctypes.data) == 0
        assert accum64(ctypes.byref(prm), g64.ctypes.data, g64.size, off + 3, b.ctypes.data) == 0
        assert np.array_equal(z[0], a) and np.array_equal(z[1], b), c["name"]
        want = np.asarray(c["expected"], dtype=np.float64)
        assert np.max(np.abs(z[0] - want)) <= 1e-6 * max(np.linalg.norm(want), 1e-30), c["name"]
        assert abs(sq[0] - np.dot(g.astype(np.float64), g)) <= 1e-12 * max(sq[0], 1e-300)


@need_lib
def test_sketch_bufs_rejects_bad_input():
    prm = _native._Params(8, 1, 4, 0)
    x = np.ones(4, np.float32)
    z = np.zeros((1, 8))

    def call(buf, p=prm):
        rc = LIB.gw_sketch_bufs(ctypes.byref(p), (_native._Buf * 1)(buf), 1, z.ctypes.data,
                                None)
        return "ok" if rc == 0 else LIB.gw_strerror(rc).decode()
    assert call(_native._Buf(x.ctypes.data, 4, 0, 0)) == "ok"
    assert call(_native._Buf(x.ctypes.data, 4, 0, 9)) == "invalid argument"  # unknown dtype
    assert call(_native._Buf(None, 4, 0, 0)) == "invalid argument"  # NULL data with n > 0
    assert call(_native._Buf(x.ctypes.data, 4, 2 ** 64 - 2, 0)) == "invalid argument"  # > 2^64
    assert call(_native._Buf(None, 0, 0, 0)) == "ok"  # empty is fine
    assert call(_native._Buf(x.ctypes.data, 4, 0, 0), _native._Params(8, 1, 9, 0)) != "ok"


# -- publishing from C over a real socket -------------------------------------


@pytest.fixture
def sub():
    s = zmq.Context.instance().socket(zmq.SUB)
    s.bind(f"tcp://127.0.0.1:{free_port()}")
    s.setsockopt(zmq.SUBSCRIBE, b"gw1/")
    yield s
    s.close(linger=0)


def pump_until(sub, cond, timeout=30.0):
    """A bound SUB attaches new connections (and sends them its subscription)
    only while its thread processes commands: do that until cond()."""
    deadline = time.monotonic() + timeout
    while not cond():
        sub.getsockopt(zmq.EVENTS)
        time.sleep(0.002)
        assert time.monotonic() < deadline, "no subscription arrived"


def drain(sub, timeout=1.0):
    out = []
    while sub.poll(timeout * 1000):
        f = sub.recv_multipart()
        if not f[0].endswith(b"/@meta"):  # run metadata: not a sketch message
            out.append(gradwatch.decode(*f))
    return out


@need_lib
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_published_from_c_to_a_real_subscriber(sub, dtype):
    net = Net([torch.float32, torch.float64, torch.bfloat16, torch.float32, torch.float32,
               torch.float32, torch.float16])
    dyadic(net, 1)
    net.p1.grad = None  # no gradient this step: no stream for p1, zeros in "all"
    net.p4.grad = net.p4.grad.t().contiguous().t()  # non-contiguous: made contiguous
    pub = gradwatch.Publisher(sub.getsockopt_string(zmq.LAST_ENDPOINT), run="native", k=16,
                              seed=3, dtype=dtype)
    pump_until(sub, lambda: pub.subscribed())
    w = gt.watch(net, pub, per_layer=[f"p{i}" for i in range(len(SHAPES)) if i != 6])
    assert w.path == "native"
    pump_until(sub, w._native.connected)  # from now on the C socket sends
    w.log(5, loss=torch.tensor(0.75), lr=0.125)
    w.flush()
    msgs = {m.tag: m for m in drain(sub)}
    want = {"all"} | {f"p{i}" for i in (0, 2, 3, 4, 5)}  # p1: no grad; p6 not chosen
    assert set(msgs) == want and w.published == len(want)
    assert pub.sent == len(want) and pub.dropped == 0  # counted from C into the Publisher
    net.p1.grad = torch.zeros(SHAPES[1], dtype=torch.float64)
    ref = numpy_ref(net, 16, 3, 4)
    for tag, m in msgs.items():
        assert (m.run, m.step, m.k, m.seed, m.kind, m.s) == ("native", 5, 16, 3, "sjlt", 4)
        assert m.incarnation == pub.incarnation and m.dtype == dtype
        assert m.loss == 0.75 and m.lr == 0.125
        z, gn = ref[tag]
        if dtype == "f32":
            assert np.array_equal(m.z(), z.astype(np.float32)), tag
        else:
            assert np.allclose(m.z(), z, rtol=2 ** -7, atol=0), tag
        assert m.grad_norm == pytest.approx(gn, rel=1e-15), tag
    w.close()
    pub.close()


@need_lib
def test_before_the_c_socket_is_subscribed_the_publisher_sends(sub):
    """The Publisher's own socket carries the C-computed sketches until the
    daemon's subscription has reached the native socket: nothing is lost."""
    net = Net([torch.float32] * len(SHAPES))
    dyadic(net, 2)
    pub = gradwatch.Publisher(sub.getsockopt_string(zmq.LAST_ENDPOINT), run="early", k=8)
    pump_until(sub, lambda: pub.subscribed())
    w = gt.watch(net, pub)
    w.log(0)  # the SUB has not processed the native connection yet
    msgs = drain(sub)
    assert len(msgs) == 1 + len(SHAPES) and w.published == len(msgs) and pub.sent == len(msgs)
    ref = numpy_ref(net, 8, 0, 4)
    for m in msgs:
        assert np.array_equal(m.z(), ref[m.tag][0].astype(np.float32)), m.tag
    w.close()
    pub.close()


@need_lib
def test_first_step_waits_for_the_c_socket_so_steps_stay_in_order(sub):
    """The daemon reads the Publisher's and the C socket's connections in no
    fixed order: a first step sent by the Publisher could arrive after the
    second, sent by C (and be refused as out of order). The first log()
    waits for the C socket's subscription instead; every step arrives, in
    order, on every stream."""
    net = Net([torch.float32] * len(SHAPES))
    pub = gradwatch.Publisher(sub.getsockopt_string(zmq.LAST_ENDPOINT), run="order", k=8)
    pump_until(sub, lambda: pub.subscribed())
    w = gt.watch(net, pub, background=False)  # spied on below: Layers.step
    assert not w._native.connected()  # the SUB has not attached the C socket yet
    stop = threading.Event()

    def pump():  # the daemon's side attaches the C socket a little later
        time.sleep(0.2)
        while not stop.is_set():
            sub.getsockopt(zmq.EVENTS)
            time.sleep(0.001)

    sends = []  # which socket sent each step: True = the C socket
    nl_step = w._native.step

    def step_spy(*a, send=True, **kw):
        sends.append(send)
        return nl_step(*a, send=send, **kw)

    w._native.step = step_spy
    t = threading.Thread(target=pump)
    t.start()
    try:
        for step in range(6):
            dyadic(net, step + 1)
            w.log(step)
        assert sends == [True] * 6  # all from C: no switch between sockets
    finally:
        stop.set()
        t.join()
    by_tag = {}
    for m in drain(sub):
        by_tag.setdefault(m.tag, []).append(m.step)
    assert len(by_tag) == 1 + len(SHAPES)
    for tag, steps in by_tag.items():
        assert steps == list(range(6)), tag
    assert w.published == 6 * (1 + len(SHAPES)) and pub.dropped == 0
    w.close()
    pub.close()


@need_lib
def test_nonfinite_layer_is_skipped_and_counted():
    net = Net([torch.float32] * len(SHAPES))
    dyadic(net, 4)
    net.p2.grad[1, 2, 3] = float("nan")
    with gradwatch.Publisher("tcp://127.0.0.1:9", run="nan", k=8) as pub:
        w = gt.watch(net, pub, native=True)
        with pytest.warns(RuntimeWarning, match="NaN"):
            w.log(1)
            w.flush()
        assert w.nonfinite == 2  # p2 and "all"
        assert set(w.last) == {f"p{i}" for i in range(len(SHAPES)) if i != 2}
        assert pub.dropped == w.published == len(SHAPES) - 1


# -- publishing from libgradwatch's worker thread (background) ----------------


@need_lib
def test_background_equals_synchronous_from_a_copy_taken_at_log():
    """background=True publishes from a copy of the gradients taken in log():
    overwriting them in place right after log() (an optimizer, zero_grad with
    set_to_none=False) changes nothing, and every row equals the synchronous
    path's bit for bit."""
    net = Net([torch.float32, torch.float64, torch.bfloat16, torch.float32, torch.float16,
               torch.float32, torch.float32])
    for step in range(1, 4):
        dyadic(net, 40 + step)
        with gradwatch.Publisher("tcp://127.0.0.1:9", run="bg", k=32, seed=9) as pub:
            ws = gt.watch(net, pub, background=False)
            wb = gt.watch(net, pub, background=True)
            assert (ws.background, wb.background) == (False, True)
            ws.log(step)
            wb.log(step)
            ref = numpy_ref(net, 32, 9, 4)
            for p in net.parameters():
                p.grad.fill_(7.0)  # in place, while the worker may still be sketching
            assert wb._native.pending or wb.published == 0
            assert set(wb.last) == set(ws.last) == set(ref)  # .last waits for the worker
            for tag, (z, gn) in ws.last.items():
                assert np.array_equal(wb.last[tag][0], z), tag
                assert wb.last[tag][1] == gn, tag
                assert np.array_equal(z, ref[tag][0]), tag
            wb.flush()
            assert wb.published == ws.published == 1 + len(SHAPES)  # dropped: port 9
            wb.close()
            ws.close()


@need_lib
def test_background_sends_every_step_in_order_and_close_sends_the_last(sub):
    net = Net([torch.float32] * len(SHAPES))
    pub = gradwatch.Publisher(sub.getsockopt_string(zmq.LAST_ENDPOINT), run="bgorder", k=16,
                              seed=2)
    pump_until(sub, lambda: pub.subscribed())
    w = gt.watch(net, pub, background=True)
    assert w.background and w.path == "native"
    pump_until(sub, w._native.connected)
    steps = 30
    for step in range(steps):
        dyadic(net, 100 + step)
        w.log(step, loss=float(step))
    ref = numpy_ref(net, 16, 2, 4)  # the last step's gradients
    w.close()  # no flush(): close() collects the step in flight
    assert w.published == steps * (1 + len(SHAPES)) and pub.sent == w.published
    by_tag = {}
    for m in drain(sub):
        by_tag.setdefault(m.tag, []).append(m)
    assert set(by_tag) == set(ref)
    for tag, ms in by_tag.items():
        assert [m.step for m in ms] == list(range(steps)), tag
        assert [m.loss for m in ms] == [float(i) for i in range(steps)], tag
        assert np.array_equal(ms[-1].z(), ref[tag][0].astype(np.float32)), tag
    pub.close()


class _Big(torch.nn.Module):
    """One large parameter (its sketch takes the worker several ms) and a small one."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1 << 21))
        self.b = torch.nn.Parameter(torch.zeros(10))


@need_lib
def test_background_queue_publishes_each_step_from_its_own_copy(sub):
    """log() much faster than the worker's sketch: the worker holds
    WORKER_DEPTH steps, log() waits for the oldest only when that many are in
    flight, and every step is still published from its own copy (the
    gradients are overwritten in place right after each log()), in order."""
    net = _Big()
    steps = 6
    grads, refs = [], []
    for st in range(steps):
        dyadic(net, 500 + st)
        grads.append([p.grad.clone() for p in net.parameters()])
        refs.append(numpy_ref(net, 16, 3, 4))
    pub = gradwatch.Publisher(sub.getsockopt_string(zmq.LAST_ENDPOINT), run="bgq", k=16, seed=3)
    pump_until(sub, lambda: pub.subscribed())
    w = gt.watch(net, pub, background=True)
    pump_until(sub, w._native.connected)
    most = 0
    for st in range(steps):
        for p, g in zip(net.parameters(), grads[st]):
            p.grad.copy_(g)  # in place: what the worker sketches must be its copy
        w.log(st, lr=0.5)
        most = max(most, w._native.pending)
    assert most == _native.WORKER_DEPTH  # the queue filled (a 2M sketch vs an 8 MB copy)
    for tag, (z, gn) in w.last.items():  # waits for the rest
        assert np.array_equal(z, refs[-1][tag][0]), tag
        assert abs(gn - refs[-1][tag][1]) <= 1e-12 * refs[-1][tag][1], tag
    assert w._native.pending == 0
    w.close()
    assert w.published == pub.sent == steps * 3
    by_tag = {}
    for m in drain(sub):
        by_tag.setdefault(m.tag, []).append(m)
    assert set(by_tag) == {"all", "w", "b"}
    for tag, ms in by_tag.items():
        assert [m.step for m in ms] == list(range(steps)), tag
        for st, m in enumerate(ms):
            assert np.array_equal(m.z(), refs[st][tag][0].astype(np.float32)), (tag, st)
    pub.close()


@need_lib
def test_background_choice(monkeypatch):
    """background=None: the worker only where a CPU is left beside torch's
    threads and a copy of the gradients fits the budget; True/False as told."""
    net = Net([torch.float32] * len(SHAPES))
    with gradwatch.Publisher("tcp://127.0.0.1:9", run="choice", k=8) as pub:
        for cpus, threads, want in [(2, 1, True), (2, 2, False), (8, 8, False), (1, 1, False)]:
            monkeypatch.setattr(gt, "_cpus", lambda c=cpus: c)
            monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
            w = gt.watch(net, pub)
            assert w.background is want, (cpus, threads)
            w.close()
            w = gt.watch(net, pub, background=not want)
            assert w.background is (not want)
            w.close()
        monkeypatch.setattr(gt, "_cpus", lambda: 4)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        nbytes = 4 * sum(int(np.prod(sh)) for sh in SHAPES)
        monkeypatch.setattr(gt, "_BACKGROUND_MAX_BYTES", nbytes - 1)
        assert gt.watch(net, pub).background is False  # one copy would not fit
        monkeypatch.setattr(gt, "_BACKGROUND_MAX_BYTES", nbytes)
        assert gt.watch(net, pub).background is True
        with pytest.raises(ValueError, match="background"):
            gt.watch(net, pub, background="yes")
        with pytest.raises(ValueError, match="native CPU path"):
            gt.watch(net, pub, native=False, background=True)
    with pytest.raises(ValueError, match="Publisher"):
        gt.watch(net, None, background=True)
    assert gt.watch(net, None).background is False  # computing only: nothing to publish


@need_lib
def test_native_true_refuses_what_it_cannot_do():
    net = Net([torch.float32] * len(SHAPES))
    with gradwatch.Publisher("tcp://127.0.0.1:9", run="r", k=8, kind="gaussian") as pub:
        with pytest.raises(ValueError, match="gaussian"):
            gt.watch(net, pub, native=True)
        assert gt.watch(net, pub).path == "torch"  # auto: the torch path, silently
    with pytest.raises(ValueError, match="native"):
        gt.watch(net, None, native="yes")


FALLBACK = r"""
import sys, warnings
sys.path.insert(0, sys.argv[1])
import torch, gradwatch.torch as gt
net = torch.nn.Linear(5, 3)
net(torch.randn(2, 5)).sum().backward()
with warnings.catch_warnings(record=True) as ws:
    warnings.simplefilter("always")
    a = gt.watch(net, None); a.log(0)
    b = gt.watch(net, None); b.log(0)
assert a.path == b.path == "torch", (a.path, b.path)
msgs = [str(w.message) for w in ws if issubclass(w.category, RuntimeWarning)]
assert len(msgs) == 1 and "libgradwatch" in msgs[0], msgs
try:
    gt.watch(net, None, native=True)
    raise SystemExit("native=True did not raise")
except RuntimeError as e:
    assert "libgradwatch" in str(e)
print("fallback ok")
"""


def test_fallback_with_the_library_hidden(tmp_path):
    env = dict(os.environ, GRADWATCH_LIB=str(tmp_path / "nowhere" / "libgradwatch.so"))
    r = subprocess.run([sys.executable, "-c", FALLBACK, CLIENT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "fallback ok" in r.stdout, r.stderr


# -- the device path's logic on the CPU ---------------------------------------


@pytest.mark.parametrize("budget", [0, 3000, 1 << 30])
def test_fused_device_logic_with_bounded_index_cache(monkeypatch, budget):
    """int32 indices and index_add_, one fused norm call, chunks whose indices
    are cached within index_budget and hashed on the fly beyond it: the same
    float64 sums as the CPU default, to the last bit on the CPU (sequential
    index_add_; on a GPU atomics reorder the float64 adds: 1e-12)."""
    net = Net([torch.float32] * len(SHAPES))
    dyadic(net, 6)
    _, ref = last_of(net, 16, 2, 4, native=False)
    monkeypatch.setattr(gt, "_fused_norms", lambda dev: hasattr(torch, "_foreach_norm"))
    w, got = last_of(net, 16, 2, 4, native=False, index_dtype=torch.int32, chunk_coords=500,
                     index_budget=budget)
    d = sum(int(np.prod(s)) for s in SHAPES)
    assert w._index_dtype == torch.int32 and w.index_bytes <= budget
    cached = sum(ch.n for g in w._groups for ch in g.chunks if ch.bins is not None)
    assert w.index_bytes == 4 * 4 * cached  # int32, s = 4: 16 bytes per coordinate
    # greedy, in chunk order: 500-coordinate chunks need 8000 bytes, the last (45) 720
    assert cached == {0: 0, 3000: 45, 1 << 30: d}[budget] and d == 5 * 500 + 45
    for tag in ref:
        assert np.array_equal(got[tag][0], ref[tag][0]), tag
        assert got[tag][1] == pytest.approx(ref[tag][1], rel=1e-15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device_path_matches_cpu():
    net = Net([torch.float32] * len(SHAPES))
    gaussian(net, 8)
    _, ref = last_of(net, 64, 1, 4, native=False)
    dev = Net([torch.float32] * len(SHAPES)).cuda()
    for p, q in zip(dev.parameters(), net.parameters()):
        p.grad = q.grad.cuda()
    with gradwatch.Publisher("tcp://127.0.0.1:9", run="cuda", k=64, seed=1) as pub:
        w = gt.watch(dev, pub)
        assert w.path == "torch" and w._async and w._index_dtype == torch.int32
        for step in range(3):
            w.log(step, loss=torch.tensor(0.5, device="cuda"))
        w.flush()  # the pinned copies are published at a later log() or here
        assert w.published == 3 * (1 + len(SHAPES)) and w.dropped == 0
        for tag in ref:
            assert relerr(w.last[tag][0], ref[tag][0]) < 1e-12, tag
        w.close()
