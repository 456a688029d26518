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
2. Throughput. A 10^7-element float32 gradient (one parameter) sketched by
   watch (cached indices, every step's real work: float64 copy, s index_add_,
   norm) and by an uncached torch_sketch, next to torch.sum over the same
   tensor; GB/s counts the float32 input bytes.

Usage: /usr/bin/python3 bench/bench_client.py [--blocks N] [--block B] [--threads T]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

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


def bench_model(name, blocks, block, endpoint, wait=True, per_layer=True, every=1):
    """Median over blocks of the mean step time, watched blocks vs plain blocks (ABBA)."""
    data = td.load_data()
    xtr, ytr = data[0], data[1]
    torch.manual_seed(0)
    model = td.make_model(name)
    opt = td.make_optimizer("sgd", model.parameters(), 0.05)
    pub = gradwatch.Publisher(endpoint, run=f"bench-{name}", k=256, seed=0)
    if wait:
        assert pub.wait_subscribed(10.0), "drain process did not subscribe"
    w = gt.watch(model, pub, per_layer=per_layer, every=every)
    gen = torch.Generator().manual_seed(1)
    on_t, off_t, log_t = [], [], []
    cpu = {True: [], False: []}  # (thread CPU, process CPU) per step, per block
    step = 0
    idx_iter = iter(())
    for bi in range(2 + 2 * blocks):  # the first two blocks warm up
        on = (bi % 4) in (1, 2)  # ABBA
        in_log = 0.0
        c0, p0 = time.thread_time(), time.process_time()
        t0 = time.perf_counter()
        for _ in range(block):
            try:
                idx = next(idx_iter)
            except StopIteration:
                idx_iter = td.batches(len(xtr), 64, gen)
                idx = next(idx_iter)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            if on:
                t1 = time.perf_counter()
                w.log(step, loss=loss.detach(), lr=0.05)
                in_log += time.perf_counter() - t1
            step += 1
            opt.step()
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
               plain_ms=1e3 * statistics.median(off_t), watched_ms=1e3 * statistics.median(on_t),
               sent=pub.sent, dropped=pub.dropped + w.dropped)
    res["ratio"] = res["watched_ms"] / res["plain_ms"]
    res["log_us"] = 1e6 * statistics.median(log_t)
    med = lambda on, i: statistics.median(x[i] for x in cpu[on])  # noqa: E731
    res["thread_ratio"] = med(True, 0) / med(False, 0)
    res["process_ratio"] = med(True, 1) / med(False, 1)
    pub.close()
    return res


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
    w = gt.watch(model, None, per_layer=False)  # compute only: no publisher
    w.log(0)
    t_setup = time.perf_counter() - t_setup
    t_watch = timeit(lambda: w.log(1), reps)
    t_sketch = timeit(lambda: gt.torch_sketch(p.grad, 256, 0), max(1, reps // 3))
    t_sum = timeit(lambda: p.grad.sum(), reps)
    t_sum64 = timeit(lambda: p.grad.sum(dtype=torch.float64), reps)
    gb = d * 4 / 1e9
    return dict(d=d, setup_s=t_setup, watch_ms=1e3 * t_watch, watch_gbs=gb / t_watch,
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
    ap.add_argument("--models", default="mlp,cnn")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs visible; {a.blocks} x {a.block} steps per mode")
    proc, endpoint = start_drain()
    dead = "tcp://127.0.0.1:9"  # nobody listens: everything but the send itself
    try:
        for name in a.models.split(","):
            for label, ep, pl, every in (
                    ("every=1 per_layer, subscriber", endpoint, True, 1),
                    ("every=1 per_layer, no subscriber", dead, True, 1),
                    ("every=1 all only, subscriber", endpoint, False, 1),
                    ("every=10 per_layer, subscriber", endpoint, True, 10)):
                r = bench_model(name, a.blocks, a.block, ep, ep is endpoint, pl, every)
                print(f"{r['model']} [{label}]: {r['params']} params, {r['streams']} streams: "
                      f"plain {r['plain_ms']:.3f} ms/step, watched {r['watched_ms']:.3f} "
                      f"ms/step, ratio {r['ratio']:.3f}, in log() {r['log_us']:.0f} us; "
                      f"CPU-time ratio: training thread {r['thread_ratio']:.3f}, process "
                      f"{r['process_ratio']:.3f} (sent {r['sent']}, dropped "
                      f"{r['dropped']})", flush=True)
    finally:
        stop_drain(proc)
    if not a.skip_throughput:
        r = bench_throughput(a.d, a.reps)
        print(f"d={r['d']:.0e} float32: watch (cached) {r['watch_ms']:.1f} ms = "
              f"{r['watch_gbs']:.2f} GB/s; torch_sketch (uncached) {r['sketch_ms']:.1f} ms = "
              f"{r['sketch_gbs']:.2f} GB/s; torch.sum {r['sum_ms']:.2f} ms = "
              f"{r['sum_gbs']:.1f} GB/s; torch.sum(float64) {r['sum64_ms']:.2f} ms = "
              f"{r['sum64_gbs']:.1f} GB/s; index setup {r['setup_s']:.2f} s")


if __name__ == "__main__":
    main()
