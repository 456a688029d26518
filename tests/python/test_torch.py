"""gradwatch.torch.watch: per-layer and whole-model sketches of a real model's
gradients against the independent reference, the publishing schedule,
non-finite handling, the deferred (device) publishing path, and sharded
gradients summed over 2 gloo processes."""
import os
import time
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import zmq

import gradwatch
import gradwatch.torch as gt
from conftest import free_port, ref_sketch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)  # weight (2, 1, 3, 3): row-major flattening
        self.fc1 = torch.nn.Linear(8, 5)
        self.fc2 = torch.nn.Linear(5, 3)
        self.unused = torch.nn.Linear(2, 2)  # no grad reaches it
        self.frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)  # (n, 2*2*2)
        return self.fc2(torch.relu(self.fc1(h)))


def make_grads(seed=0):
    torch.manual_seed(seed)
    net = Net()
    x = torch.randn(6, 1, 4, 4)
    loss = net(x).pow(2).mean()
    loss.backward()
    return net, loss


def reference(net, k, seed, kind, s):
    """tag -> (z, ||g||) from the flattening order written in the docs."""
    out, full, off = {}, [], 0
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        g = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double()
        g = g.numpy().reshape(-1)
        if p.grad is not None:
            out[name] = (np.array(ref_sketch(g, k, seed, kind, s, off)), np.linalg.norm(g))
        full.append(g)
        off += g.size
    full = np.concatenate(full).astype(np.float64)
    out["all"] = (np.array(ref_sketch(full, k, seed, kind, s)), np.linalg.norm(full))
    return out


def close(a, b, tol=1e-12):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) <= tol * max(np.linalg.norm(b), 1e-30)


@pytest.fixture
def sub():
    s = zmq.Context.instance().socket(zmq.SUB)
    s.bind(f"tcp://127.0.0.1:{free_port()}")
    s.setsockopt(zmq.SUBSCRIBE, b"gw1/")
    yield s
    s.close(linger=0)


def connect(sub, **kw):
    pub = gradwatch.Publisher(sub.getsockopt_string(zmq.LAST_ENDPOINT), **kw)
    deadline = time.monotonic() + 30
    while not pub.wait_subscribed(0.01):
        sub.getsockopt(zmq.EVENTS)  # let the bound SUB attach the connection
        assert time.monotonic() < deadline
    return pub


def drain(sub, timeout=1.0):
    """Everything received until `timeout` s pass without a message (the
    gap must outlast a descheduled sender on a loaded machine)."""
    out = []
    while sub.poll(timeout * 1000):
        f = sub.recv_multipart()
        if not f[0].endswith(b"/@meta"):  # run metadata: not a sketch message
            out.append(gradwatch.decode(*f))
    return out


@pytest.mark.parametrize("kind,s,k", [("sjlt", 4, 16), ("sjlt", 1, 5), ("gaussian", 0, 6)])
def test_watch_matches_reference_end_to_end(sub, kind, s, k):
    net, loss = make_grads()
    pub = connect(sub, run="watch", k=k, seed=77, kind=kind, s=s)
    w = gt.watch(net, pub, per_layer=True, every=1)
    w.log(3, loss=loss, lr=0.05)
    msgs = {m.tag: m for m in drain(sub)}
    ref = reference(net, k, 77, kind, s)
    # unused.* got no gradient: no stream for it this step; frozen is not in the layout
    assert set(msgs) == {"all", "conv.weight", "conv.bias", "fc1.weight", "fc1.bias",
                         "fc2.weight", "fc2.bias"} == set(ref)
    for tag, m in msgs.items():
        z, gn = ref[tag]
        assert (m.run, m.step, m.k, m.seed, m.kind, m.s) == ("watch", 3, k, 77, kind, s)
        assert close(m.z(), z.astype(np.float32), 1e-7), tag
        assert close(w.last[tag][0], z), tag
        assert m.grad_norm == pytest.approx(gn, rel=1e-12), tag
        assert m.loss == pytest.approx(float(loss), rel=1e-7) and m.lr == 0.05
    # linearity: the per-layer sketches add up to "all" (unused contributes zero)
    tot = sum(w.last[t][0] for t in w.last if t != "all")
    assert close(tot, w.last["all"][0])
    assert w.offsets[:3] == [("conv.weight", 0, 18), ("conv.bias", 18, 2), ("fc1.weight", 20, 40)]
    assert w.published == 7 and pub.sent == 7
    w.close()
    pub.close()


def test_offsets_reproduce_with_publisher_sketch():
    net, _ = make_grads(1)
    pub = gradwatch.Publisher("tcp://127.0.0.1:1", run="r", k=32, seed=5)
    w = gt.watch(net, pub)
    w.log(0)
    for name, off, n in w.offsets:
        p = dict(net.named_parameters())[name]
        if p.grad is not None:
            assert close(w.last[name][0], pub.sketch(p.grad, offset=off))
    pub.close()


def test_every_and_per_layer_subset(sub):
    net, _ = make_grads(2)
    pub = connect(sub, run="every", k=8, seed=1)
    w = gt.watch(net, pub, per_layer=["fc2.weight"], every=3)
    for step in range(1, 8):
        w.log(step)
    msgs = drain(sub)
    assert [(m.step, m.tag) for m in msgs] == [(3, "all"), (3, "fc2.weight"),
                                               (6, "all"), (6, "fc2.weight")]
    ref = reference(net, 8, 1, "sjlt", 4)
    assert close(msgs[0].z(), ref["all"][0].astype(np.float32), 1e-7)
    assert close(msgs[1].z(), ref["fc2.weight"][0].astype(np.float32), 1e-7)
    w2 = gt.watch(net, pub, per_layer=False)
    w2.log(10)
    assert [m.tag for m in drain(sub)] == ["all"]
    pub.close()


@pytest.mark.parametrize("opts", [dict(cache_indices=False), dict(chunk_coords=7),
                                  dict(chunk_coords=1, cache_indices=False),
                                  dict(index_dtype=torch.int32)])  # index_add_ (accelerators)
def test_cache_and_chunking_do_not_change_results(opts):
    net, _ = make_grads(3)
    a = gt.watch(net, None)
    a.log(1)
    b = gt.watch(net, None, **opts)
    b.log(1)
    assert b._scatter == ("index_dtype" not in opts)
    assert set(a.last) == set(b.last)
    for t in a.last:
        assert close(b.last[t][0], a.last[t][0], 1e-13) and \
            b.last[t][1] == pytest.approx(a.last[t][1], rel=1e-13)


def test_accelerator_code_paths_on_cpu(monkeypatch):
    """The norms and indices an accelerator uses (_foreach_norm, int32 index_add_)."""
    net, _ = make_grads(12)
    a = gt.watch(net, None)
    a.log(1)
    monkeypatch.setattr(gt, "_fused_norms", lambda dev: True)
    b = gt.watch(net, None, index_dtype=torch.int32)
    b.log(1)
    for t in a.last:
        assert close(b.last[t][0], a.last[t][0], 1e-13)
        assert b.last[t][1] == pytest.approx(a.last[t][1], rel=1e-13)


def test_float64_and_bfloat16_models():
    for dtype in (torch.float64, torch.bfloat16):
        net, _ = make_grads(4)
        ref = reference(net, 256, 0, "sjlt", 4)  # the defaults of watch(model, None)
        net = net.to(dtype)
        for p in net.parameters():
            if p.grad is not None:
                p.grad = p.grad.to(dtype)
        w = gt.watch(net, None)
        w.log(0)
        tol = 1e-12 if dtype == torch.float64 else 1e-2
        assert close(w.last["all"][0], ref["all"][0], tol)


def test_nonfinite_gradient_skips_streams_without_raising(sub):
    net, _ = make_grads(5)
    net.fc1.weight.grad[0, 0] = float("nan")
    net.fc2.bias.grad[1] = float("inf")
    pub = connect(sub, run="nan", k=8)
    w = gt.watch(net, pub)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        w.log(1, loss=float("nan"), lr=torch.tensor(0.1))
        w.log(2, loss=float("inf"))
    assert sum("NaN/Inf" in str(r.message) for r in rec) == 1  # warned once
    assert w.nonfinite == 6  # all, fc1.weight, fc2.bias at two steps
    msgs = drain(sub)
    assert sorted({m.tag for m in msgs}) == ["conv.bias", "conv.weight", "fc1.bias", "fc2.weight"]
    assert len(msgs) == 8 and all(m.loss is None for m in msgs)  # a NaN loss is sent as absent
    assert [m.lr for m in msgs if m.step == 1] == [pytest.approx(0.1)] * 4
    pub.close()


def test_f16_overflow_in_watch_is_skipped_and_counted():
    net, _ = make_grads(6)
    for p in net.parameters():
        if p.grad is not None:
            p.grad.fill_(1e5)
    pub = gradwatch.Publisher("tcp://127.0.0.1:1", run="r", k=8, dtype="f16")
    w = gt.watch(net, pub, per_layer=False)
    with pytest.warns(RuntimeWarning):
        w.log(1)
        w.flush()  # a step published in the background is counted once collected
    assert w.nonfinite == 1 and pub.dropped == 0
    pub.close()


def test_no_gradients_yet_publishes_nothing():
    net = Net()
    pub = gradwatch.Publisher("tcp://127.0.0.1:1", run="r", k=8)
    w = gt.watch(net, pub)
    w.log(0)
    assert w.published == 0 and w.last_step is None
    pub.close()


class FakeEvent:
    def __init__(self):
        self.ready = False
        self.synced = False

    def query(self):
        return self.ready

    def synchronize(self):
        self.synced = self.ready = True


def test_deferred_publishing_path(sub, monkeypatch):
    """The accelerator path without an accelerator: results wait for their
    event, are published in step order at a later log(), and flushed at close.
    (The copy to pinned memory itself needs CUDA; here it is a clone.)"""
    net, loss = make_grads(7)
    pub = connect(sub, run="async", k=8)
    w = gt.watch(net, pub, per_layer=False, max_pending=3)
    events = []

    def to_host(packed):
        events.append(FakeEvent())
        return packed.clone(), events[-1]

    monkeypatch.setattr(w, "_to_host", to_host)
    # a tensor loss/lr rides along in the packed result, as a CUDA tensor would
    monkeypatch.setattr(gt, "_travels", lambda v: isinstance(v, torch.Tensor))
    w._async = True
    w.log(1, loss=loss, lr=torch.tensor(0.25))
    w.log(2, loss=loss)
    assert w.published == 0 and drain(sub, 0.05) == []  # nothing ready yet
    events[0].ready = True
    w.log(3)
    (m1,) = drain(sub)
    assert (m1.step, m1.loss, m1.lr) == (1, pytest.approx(float(loss)), 0.25)
    w.log(4)
    w.log(5)  # 2, 3, 4 pending: the 4th is dropped, never blocking
    assert w.dropped == 1 and len(events) == 4
    events[2].ready = True  # step 3 done, but 2 is not: order is kept
    w.log(6)
    assert drain(sub, 0.05) == []
    w.close()  # waits for the rest
    assert all(e.synced or e.ready for e in events)
    msgs = drain(sub)
    assert [m.step for m in msgs] == [2, 3, 4]
    assert msgs[0].loss == pytest.approx(float(loss)) and msgs[1].loss is None
    ref = reference(net, 8, 0, "sjlt", 4)
    assert close(msgs[0].z(), ref["all"][0].astype(np.float32), 1e-7)
    pub.close()


def test_watch_rejects_bad_arguments():
    net, _ = make_grads()
    pub = gradwatch.Publisher("tcp://127.0.0.1:1", run="r", k=8)
    with pytest.raises(ValueError, match="every"):
        gt.watch(net, pub, every=0)
    with pytest.raises(TypeError, match="pub"):
        gt.watch(net, "tcp://127.0.0.1:5557")
    with pytest.raises(TypeError, match="model"):
        gt.watch(object(), pub)
    with pytest.raises(ValueError, match="per_layer"):
        gt.watch(net, pub, per_layer=["nope"])
    bad = torch.nn.ModuleDict({"a b": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="a b.weight"):
        gt.watch(bad, pub)
    gt.watch(bad, pub, per_layer=False)  # fine: only "all"
    with pytest.raises(ValueError, match="'all'"):
        gt.watch(_AllNet(), pub)
    with pytest.raises(ValueError, match="shards"):
        gt.watch(net, pub, process_group=object())
    layout = [("a", 10), ("b", (2, 3))]
    t = torch.zeros(10, requires_grad=True)
    with pytest.raises(ValueError, match="outside"):
        gt.watch(None, pub, layout=layout, shards=[(t, 7)])
    with pytest.raises(ValueError, match="overlap"):
        gt.watch(None, pub, layout=layout, shards=[gt.Shard(t, 0, 0, 6), gt.Shard(t, 5, 6, 4)])
    with pytest.raises(ValueError, match="start"):
        gt.watch(None, pub, layout=layout, shards=[gt.Shard(t, 0, 8, 4)])
    w = gt.watch(net, pub)
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.log(1)
    with pytest.raises(ValueError, match="step"):
        gt.watch(net, pub).log(-1)
    pub.close()


class _AllNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.all = torch.nn.Parameter(torch.zeros(3))


# -- sharded gradients over 2 gloo processes -------------------------------------

SHARD_K = 16


def _full_grads():
    net, loss = make_grads(11)
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    layout = [(n, p.numel()) for n, p in named]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for _, p in named])
    return net, loss, layout, flat


def _shard_worker(rank, world, port, sub_port, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        net, loss, layout, flat = _full_grads()
        d = flat.numel()
        cut = 29  # inside fc1.weight (offsets 20..60): a parameter split across ranks
        if rank == 0:
            holder = torch.nn.Parameter(torch.zeros(cut))
            holder.grad = flat[:cut].clone()
            shards = [gt.Shard(holder, 0)]
        else:
            # two pieces, the second read from the middle of a larger flat tensor
            a = torch.nn.Parameter(torch.zeros(10))
            a.grad = flat[cut:cut + 10].clone()
            big = torch.nn.Parameter(torch.zeros(d))
            big.grad = torch.zeros(d)
            big.grad[5:5 + d - cut - 10] = flat[cut + 10:]
            shards = [gt.Shard(a, cut), gt.Shard(big, cut + 10, 5, d - cut - 10)]
        pub = gradwatch.Publisher(f"tcp://127.0.0.1:{sub_port}", run="sharded", k=SHARD_K,
                                  seed=21)
        if rank == 0:
            assert pub.wait_subscribed(20.0)
        dist.barrier()
        w = gt.watch(None, pub, per_layer=True, process_group=dist.group.WORLD, layout=layout,
                     shards=shards)
        w.log(4, loss=float(loss), lr=0.5)
        w.close()
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"),
                 **{t: np.append(z, gn) for t, (z, gn) in w.last.items()})
        pub.close()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_sharded_gradients_sum_to_full_sketch(tmp_path, sub):
    sub_port = int(sub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    ctx = mp.spawn(_shard_worker, args=(2, free_port(), sub_port, str(tmp_path)), nprocs=2,
                   join=False)
    msgs = []
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=0.05):
        assert time.monotonic() < deadline, "sharded workers did not finish"
        while sub.poll(0):
            f = sub.recv_multipart()
            if not f[0].endswith(b"/@meta"):
                msgs.append(gradwatch.decode(*f))
    msgs += drain(sub)
    net, loss, layout, flat = _full_grads()
    ref = reference(net, SHARD_K, 21, "sjlt", 4)
    # unused.* have no gradient, but a rank cannot know that for the others: sent as zeros
    tags = {"all"} | {n for n, _ in layout}
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert set(got.files) == tags
        for t in tags:
            z, gn = ref.get(t, (np.zeros(SHARD_K), 0.0))
            assert close(got[t][:-1], z), (rank, t)
            assert got[t][-1] == pytest.approx(gn, rel=1e-12, abs=1e-300), (rank, t)
    # only rank 0 published, once per stream
    assert sorted(m.tag for m in msgs) == sorted(tags)
    m = next(m for m in msgs if m.tag == "all")
    assert (m.run, m.step, m.lr) == ("sharded", 4, 0.5)
    assert close(m.z(), ref["all"][0].astype(np.float32), 1e-7)


# -- CUDA (skipped where there is no device) -----------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (none on this machine)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_device_watch_matches_reference_without_synchronising(sub, device):
    """On a GPU: the same sketches as the reference, and log() never synchronises
    (torch.cuda.set_sync_debug_mode("error") raises on any synchronising call).
    The CPU run checks the test itself."""
    net, loss = make_grads(13)
    ref = reference(net, 16, 3, "sjlt", 4)
    dev = torch.device(device)
    gnet = Net().to(dev)
    gnet.load_state_dict(net.state_dict())
    for p, q in zip(net.parameters(), gnet.parameters()):
        q.grad = None if p.grad is None else p.grad.to(dev)
    pub = connect(sub, run="dev", k=16, seed=3)
    w = gt.watch(gnet, pub)
    gloss = loss.detach().to(dev)
    glr = torch.tensor(0.5, device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        w.log(1, loss=gloss, lr=glr)
        w.log(2, loss=gloss)
        w.log(3, lr=0.125)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    w.close()
    msgs = drain(sub)
    assert sorted({m.step for m in msgs}) == [1, 2, 3] and len(msgs) == 3 * 7
    for m in msgs:
        z, gn = ref[m.tag]
        assert close(m.z(), z.astype(np.float32), 1e-6), m.tag
        assert m.grad_norm == pytest.approx(gn, rel=1e-9), m.tag
    one = [m for m in msgs if m.step == 1]
    assert all(m.loss == pytest.approx(float(loss)) and m.lr == 0.5 for m in one)
    assert all(m.lr is None for m in msgs if m.step == 2)
    assert all(m.loss is None and m.lr == 0.125 for m in msgs if m.step == 3)
    # the Publisher sketches device tensors on their device, with the same S
    assert close(pub.sketch(gnet.fc1.weight.grad, offset=20), ref["fc1.weight"][0], 1e-12)
    pub.close()
