#!/usr/bin/python3
"""bench_client.py — cost of gradwatch.torch.watch on a training step, and the
throughput of the torch sketch.

1. Step overhead. examples/train_digits.py's MLP and CNN (SGD with momentum,
   batch 64) train on CPU; steps alternate between "watched" (w.log(step,
   loss, lr) with watch(every=1, per_layer=True)) and "plain", in blocks of
   25 steps, in the same process on the same model, in ABBA order so drift
   cancels. A step is zero_grad + forward + backward [+ log] + optimizer
   step. Reported: median over blocks of the mean step time, watched / plain
   (block means, so work a watched step leaves to a thread or to the
   receiver is charged to the blocks it slows). Beside the wall-clock ratio,
   the same ratio in CPU time of the training thread (what log() itself
   costs it, less sensitive to other load on the machine) and of the whole
   process (adds ZeroMQ's I/O thread). The messages go to a real SUB socket drained by a
   separate process, so the sends are real; then again with nobody
   listening (everything but the sends).
   Models: "mlp" and "cnn" (examples/train_digits.py) and "transformer", a
   ~10M-parameter pre-norm transformer encoder (d_model 384, 5 layers, 6
   heads, feed-forward 1536, vocabulary 512) trained on synthetic tokens
   (batch 2 x 24, next-token loss, AdamW), ~100 ms a step on one core.
   --path picks watch()'s path: native (libgradwatch, the default when it
   loads), torch, or both (one after the other, same process).
2. Throughput. A 10^7-element float32 gradient (one parameter) sketched by
   watch on each path (native: one call into C that reads the tensor's
   memory; torch: cached indices, float64 copy, s index_add_, norm), by an
   uncached torch_sketch, and by the C library directly
   (gw_sketch_accum_f32 through ctypes), next to torch.sum over the same
   tensor; GB/s counts the float32 input bytes.

Usage: /usr/bin/python3 bench/bench_client.py [--blocks N] [--block B] [--threads T]
       [--models mlp,cnn,transformer] [--path native|torch|both] [--configs main|all]
"""
import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time

# torch.set_num_threads(T) does not reach the BLAS library Debian's torch
# calls (OpenBLAS, whose own pool would otherwise spin on every CPU after
# each matrix product): give it the same T, before torch loads it.
_T = next((sys.argv[i + 1] for i, x in enumerate(sys.argv[:-1]) if x == "--threads"), "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", _T)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import gradwatch  # noqa: E402
import gradwatch.torch as gt  # noqa: E402
import train_digits as td  # noqa: E402

DRAIN = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.SUB)
port = s.bind_to_random_port("tcp://127.0.0.1")
s.setsockopt(zmq.SUBSCRIBE, b"gw1/")
sink = ctx.socket(zmq.PUB)  # nobody subscribes: messages end here, in C
sink.bind("inproc://sink")
print(port, flush=True)
zmq.proxy(s, sink)  # receives in C until the process is terminated
"""


def start_drain():
    """A receiver process that takes the messages off the wire as cheaply as possible
    (a C-level zmq.proxy into a PUB socket nobody reads), standing in for the daemon."""
    p = subprocess.Popen([sys.executable, "-c", DRAIN], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    return p, f"tcp://127.0.0.1:{port}"


def stop_drain(p):
    p.terminate()
    p.wait()


class Transformer(torch.nn.Module):
    """A small pre-norm transformer encoder language model (~9.4M parameters)."""

    def __init__(self, vocab=512, d=384, layers=5, heads=6, ff=1536, ctx=64):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(ctx, d))
        layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True,
                                                 norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, x):
        h = self.emb(x) + self.pos[:x.shape[1]]
        return self.head(self.norm(self.body(h)))


class Block(torch.nn.Module):
    """A ResNet basic block (two 3x3 convolutions, batch norm, identity or 1x1 shortcut)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNet(torch.nn.Module):
    """ResNet-18 for 32x32 images (11.2M parameters, 62 tensors)."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                        torch.nn.BatchNorm2d(64), torch.nn.ReLU())
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
                             (512, 2), (512, 1)):
            blocks.append(Block(cin, cout, stride))
            cin = cout
        self.blocks = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def make_task(name, device="cpu"):
    """(model, optimizer, next_loss()) for a benchmark model on device. The
    digits models train on examples/train_digits.py's data; the transformer
    and the ResNet on synthetic data (larger batches on an accelerator)."""
    torch.manual_seed(0)
    gpu = device != "cpu"
    if name in ("transformer", "resnet"):
        gen = torch.Generator(device=device).manual_seed(1)
        if name == "transformer":
            model = Transformer().to(device)
            shape = (16, 65) if gpu else (2, 25)

            def next_loss():
                tok = torch.randint(0, 512, shape, generator=gen, device=device)
                out = model(tok[:, :-1])
                return F.cross_entropy(out.reshape(-1, out.shape[-1]), tok[:, 1:].reshape(-1))
        else:
            model = ResNet().to(device)
            batch = 128 if gpu else 8

            def next_loss():
                x = torch.randn((batch, 3, 32, 32), generator=gen, device=device)
                y = torch.randint(0, 10, (batch,), generator=gen, device=device)
                return F.cross_entropy(model(x), y)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        return model, opt, next_loss
    data = td.load_data()
    xtr, ytr = data[0], data[1]
    xtr, ytr = xtr.to(device), ytr.to(device)
    model = td.make_model(name).to(device)
    opt = td.make_optimizer("sgd", model.parameters(), 0.05)
    gen = torch.Generator().manual_seed(1)
    it = [iter(())]

    def next_loss():
        try:
            idx = next(it[0])
        except StopIteration:
            it[0] = td.batches(len(xtr), 64, gen)
            idx = next(it[0])
        return F.cross_entropy(model(xtr[idx]), ytr[idx])
    return model, opt, next_loss


def sync(device):
    if device != "cpu":
        torch.cuda.synchronize()


def bench_model(name, blocks, block, endpoint, wait=True, per_layer=True, every=1,
                native=None, device="cpu", s=4, background=None):
    """Median over blocks of the mean step time, watched blocks vs plain blocks (ABBA).
    On a GPU the device is synchronised at block boundaries only."""
    model, opt, next_loss = make_task(name, device)
    pub = gradwatch.Publisher(endpoint, run=f"bench-{name}", k=256, seed=0, s=s)
    if wait:
        assert pub.wait_subscribed(10.0), "drain process did not subscribe"
    w = gt.watch(model, pub, per_layer=per_layer, every=every, native=native,
                 background=background if native is not False else None)
    if wait and w.path == "native":  # the C socket's own subscription
        t_end = time.monotonic() + 10
        while not w._native.connected() and time.monotonic() < t_end:
            time.sleep(0.005)
    on_t, off_t, log_t = [], [], []
    cpu = {True: [], False: []}  # (thread CPU, process CPU) per step, per block
    per_step = {True: [], False: []}  # every step's wall time (CPU runs)
    step = 0
    for bi in range(2 + 2 * blocks):  # the first two blocks warm up
        on = (bi % 4) in (1, 2)  # ABBA
        in_log = 0.0
        sync(device)
        c0, p0 = time.thread_time(), time.process_time()
        t0 = time.perf_counter()
        for _ in range(block):
            ts = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = next_loss()
            loss.backward()
            if on:
                t1 = time.perf_counter()
                w.log(step, loss=loss.detach(), lr=0.05)
                in_log += time.perf_counter() - t1
            step += 1
            opt.step()
            if device == "cpu" and bi >= 2:
                per_step[on].append(time.perf_counter() - ts)
        sync(device)
        dt = (time.perf_counter() - t0) / block
        c1, p1 = time.thread_time(), time.process_time()
        if bi >= 2:
            cpu[on].append(((c1 - c0) / block, (p1 - p0) / block))
            (on_t if on else off_t).append(dt)
            if on:
                log_t.append(in_log / block)
    w.close()
    nparams = sum(p.numel() for p in model.parameters())
    res = dict(model=name, params=nparams, streams=len(w.tags),
               path=w.path + (", background" if w.background else ""),
               plain_ms=1e3 * statistics.median(off_t), watched_ms=1e3 * statistics.median(on_t),
               sent=pub.sent, dropped=pub.dropped + w.dropped)
    res["ratio"] = res["watched_ms"] / res["plain_ms"]
    # Median single step: robust to other processes taking the core for a
    # while (it misses work left to other threads, which the block means see).
    res["step_ratio"] = (statistics.median(per_step[True]) / statistics.median(per_step[False])
                         if per_step[True] else float("nan"))
    res["log_us"] = 1e6 * statistics.median(log_t)
    med = lambda on, i: statistics.median(x[i] for x in cpu[on])  # noqa: E731
    res["thread_ratio"] = med(True, 0) / med(False, 0)
    res["process_ratio"] = med(True, 1) / med(False, 1)
    pub.close()
    return res


def bench_log_cost(name, reps, endpoint, native, s=4):
    """The cost of one log() against one plain step, each the median of reps,
    interleaved (plain step, then log() on that step's gradients, sent to the
    drain): a figure that preemption by other processes hardly moves, since
    medians drop the steps that lost the core. Estimated ratio = 1 + log/plain."""
    model, opt, next_loss = make_task(name)
    pub = gradwatch.Publisher(endpoint, run=f"cost-{name}", k=256, seed=0, s=s)
    assert pub.wait_subscribed(10.0), "drain process did not subscribe"
    w = gt.watch(model, pub, per_layer=True, every=1, native=native)
    t_end = time.monotonic() + 10
    while w.path == "native" and not w._native.connected() and time.monotonic() < t_end:
        time.sleep(0.005)
    steps, logs = [], []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        next_loss().backward()
        opt.step()
        t1 = time.perf_counter()
        w.log(i, lr=0.05)
        t2 = time.perf_counter()
        if i >= 3:
            steps.append(t1 - t0)
            logs.append(t2 - t1)
    w.close()
    pub.close()
    plain, log = statistics.median(steps), statistics.median(logs)
    return dict(model=name, path=w.path, plain_ms=1e3 * plain, log_us=1e6 * log,
                est=1 + log / plain)


def timeit(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_throughput(d, reps):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(d))
    p.grad = torch.randn(d)
    model = torch.nn.Module()
    model.w = p
    t_setup = time.perf_counter()
    w = gt.watch(model, None, per_layer=False, native=False)  # compute only: no publisher
    w.log(0)
    t_setup = time.perf_counter() - t_setup
    t_watch = timeit(lambda: w.log(1), reps)
    t_native = t_c = None
    lib, _ = gt._native.load()
    if lib is not None:
        wn = gt.watch(model, None, per_layer=False, native=True)
        wn.log(0)
        prm = gt._native._Params(256, 1, 4, 0)
        z = torch.zeros(256, dtype=torch.float64)
        fn = lib.gw_sketch_accum_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(gt._native._Params), ctypes.c_void_p, ctypes.c_size_t,
                       ctypes.c_uint64, ctypes.c_void_p]
        ts_n, ts_c = [], []
        for _ in range(reps):  # interleaved, so both see the same machine
            t0 = time.perf_counter()
            wn.log(1)
            t1 = time.perf_counter()
            fn(ctypes.byref(prm), p.grad.data_ptr(), d, 0, z.data_ptr())
            t2 = time.perf_counter()
            ts_n.append(t1 - t0)
            ts_c.append(t2 - t1)
        t_native, t_c = statistics.median(ts_n), statistics.median(ts_c)
    t_sketch = timeit(lambda: gt.torch_sketch(p.grad, 256, 0), max(1, reps // 3))
    t_sum = timeit(lambda: p.grad.sum(), reps)
    t_sum64 = timeit(lambda: p.grad.sum(dtype=torch.float64), reps)
    gb = d * 4 / 1e9
    extra = {}
    if t_native is not None:
        extra = dict(native_ms=1e3 * t_native, native_gbs=gb / t_native, c_ms=1e3 * t_c,
                     c_gbs=gb / t_c)
    return dict(extra, d=d, setup_s=t_setup, watch_ms=1e3 * t_watch, watch_gbs=gb / t_watch,
                sketch_ms=1e3 * t_sketch, sketch_gbs=gb / t_sketch, sum_ms=1e3 * t_sum,
                sum_gbs=gb / t_sum, sum64_ms=1e3 * t_sum64, sum64_gbs=gb / t_sum64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=40, help="measured blocks per mode")
    ap.add_argument("--block", type=int, default=25, help="steps per block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d", type=int, default=10 ** 7)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--path", choices=("native", "torch", "both"), default="native")
    ap.add_argument("--configs", choices=("main", "all"), default="all",
                    help="main: only every=1 per_layer with a subscriber")
    ap.add_argument("--transformer-blocks", type=int, default=12)
    ap.add_argument("--transformer-block", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--s", type=int, default=4, help="sjlt nonzeros per coordinate")
    ap.add_argument("--background", choices=("auto", "on", "off", "both"), default="auto",
                    help="native path: publish from libgradwatch's worker thread (on), in "
                         "log() (off), watch()'s default (auto), or both in turn")
    ap.add_argument("--log-cost", type=int, default=0, metavar="REPS",
                    help="only the median cost of log() vs a plain step, REPS of each")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) "
          f"(OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}), "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}; "
          f"{a.blocks} x {a.block} steps per mode; k = 256, s = {a.s}")
    proc, endpoint = start_drain()
    dead = "tcp://127.0.0.1:9"  # nobody listens: everything but the send itself
    if a.log_cost:
        paths = {"native": [True], "torch": [False], "both": [True, False]}[a.path]
        print("| model | path | plain step ms (median) | log() µs (median) | 1 + log/plain |\n"
              "|---|---|---:|---:|---:|")
        try:
            for name in a.models.split(","):
                for nat in paths:
                    reps = a.log_cost if name != "transformer" else max(5, a.log_cost // 10)
                    r = bench_log_cost(name, reps, endpoint, nat, a.s)
                    print(f"| {r['model']} | {r['path']} | {r['plain_ms']:.3f} | "
                          f"{r['log_us']:.0f} | {r['est']:.3f} |", flush=True)
        finally:
            stop_drain(proc)
        return
    try:
        configs = [("every=1 per_layer, subscriber", endpoint, True, 1),
                   ("every=1 per_layer, no subscriber", dead, True, 1),
                   ("every=1 all only, subscriber", endpoint, False, 1),
                   ("every=10 per_layer, subscriber", endpoint, True, 10)]
        if a.configs == "main":
            configs = configs[:1]
        bgs = {"auto": [None], "on": [True], "off": [False], "both": [True, False]}[a.background]
        paths = [(nat, bg) for nat in {"native": [True], "torch": [False],
                                       "both": [True, False]}[a.path]
                 for bg in (bgs if nat else [None])]
        table = []
        for name, (native, bg), (label, ep, pl, every) in (
                (n, nat, c) for n in a.models.split(",") for c in configs for nat in paths):
            blocks, block = a.blocks, a.block
            if name in ("transformer", "resnet") and a.device == "cpu":
                blocks, block = a.transformer_blocks, a.transformer_block
            if a.device != "cpu":
                native = None  # the device path
            r = bench_model(name, blocks, block, ep, ep is endpoint, pl, every, native, a.device,
                            a.s, bg)
            table.append((r, label))
            print(f"{r['model']} [{label}, {r['path']}]: {r['params']} params, "
                  f"{r['streams']} streams: "
                  f"plain {r['plain_ms']:.3f} ms/step, watched {r['watched_ms']:.3f} "
                  f"ms/step, ratio {r['ratio']:.3f}, median-step ratio {r['step_ratio']:.3f}, "
                  f"in log() {r['log_us']:.0f} us; "
                  f"CPU-time ratio: training thread {r['thread_ratio']:.3f}, process "
                  f"{r['process_ratio']:.3f} (sent {r['sent']}, dropped "
                  f"{r['dropped']})", flush=True)
    finally:
        stop_drain(proc)
    dev = torch.cuda.get_device_name(0) if a.device != "cpu" else "CPU"
    print("\n| model | params | streams | device | path | watch | plain ms/step | "
          "watched ms/step | ratio | median-step ratio | thread CPU ratio | in log() µs |\n"
          "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r, label in table:
        print(f"| {r['model']} | {r['params']} | {r['streams']} | {dev} | {r['path']} | {label} | "
              f"{r['plain_ms']:.3f} | {r['watched_ms']:.3f} | **{r['ratio']:.3f}** | "
              f"{r['step_ratio']:.3f} | {r['thread_ratio']:.3f} | {r['log_us']:.0f} |")
    if not a.skip_throughput:
        r = bench_throughput(a.d, a.reps)
        print(f"d={r['d']:.0e} float32: watch (cached) {r['watch_ms']:.1f} ms = "
              f"{r['watch_gbs']:.2f} GB/s; torch_sketch (uncached) {r['sketch_ms']:.1f} ms = "
              f"{r['sketch_gbs']:.2f} GB/s; torch.sum {r['sum_ms']:.2f} ms = "
              f"{r['sum_gbs']:.1f} GB/s; torch.sum(float64) {r['sum64_ms']:.2f} ms = "
              f"{r['sum64_gbs']:.1f} GB/s; index setup {r['setup_s']:.2f} s")
        if "native_ms" in r:
            print(f"d={r['d']:.0e} float32, interleaved: watch native path {r['native_ms']:.1f} ms"
                  f" = {r['native_gbs']:.2f} GB/s; C gw_sketch_accum_f32 {r['c_ms']:.1f} ms = "
                  f"{r['c_gbs']:.2f} GB/s; native/C = {r['native_gbs'] / r['c_gbs']:.1%}")


if __name__ == "__main__":
    main()
