#!/usr/bin/python3
"""Train a small PyTorch model on scikit-learn's bundled digits and publish its
gradient sketches to gradwatchd (no download: sklearn.datasets.load_digits).

    gradwatchd &                                   # listens on tcp://127.0.0.1:5557
    PYTHONPATH=client/python /usr/bin/python3 examples/train_digits.py \\
        --model cnn --opt adam --epochs 20 --sleep 0.05

Every `--every` steps it publishes stream `all` (the whole model's gradient)
and, with --per-layer (default), one stream per parameter, each with the loss
and the learning rate. --diverge-at STEP multiplies the learning rate by
--diverge-factor from that step of each training run on, so the run blows up
(for tuning alerts); --sleep slows steps down for a live demo; --loop starts a
fresh model whenever a run ends, forever, with the published step counting on
(steps of a stream must increase).
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

try:
    import gradwatch
    import gradwatch.torch
except ImportError:  # run from a checkout without installing
    import os
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "client", "python"))
    import gradwatch
    import gradwatch.torch


def load_data(test_fraction=0.2, seed=0):
    """Digits as float32 tensors: (x_train, y_train, x_test, y_test), pixels in [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 64)
        self.fc3 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = x.reshape(len(x), 64)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32 * 4 * 4, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = x.reshape(len(x), 1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def make_model(name):
    if name == "mlp":
        return MLP()
    if name == "cnn":
        return CNN()
    raise ValueError(f"--model must be mlp or cnn, got {name!r}")


def make_optimizer(name, params, lr, momentum=0.9):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"--opt must be sgd or adam, got {name!r}")


def batches(n, batch, gen):
    """Index batches of one epoch, shuffled."""
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n - batch + 1 if n >= batch else 1, batch):
        yield perm[i:i + batch]


@torch.no_grad()
def accuracy(model, x, y):
    return float((model(x).argmax(1) == y).float().mean())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--opt", choices=["sgd", "adam"], default="sgd",
                   help="sgd (with momentum) or adam")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps "
                   "(overrides --epochs)")
    p.add_argument("--endpoint", default=None,
                   help="daemon endpoint (default $GRADWATCH_ENDPOINT, else tcp://127.0.0.1:5557)")
    p.add_argument("--run", default=None,
                   help="run name (default $GRADWATCH_RUN, else digits-MODEL-OPT)")
    p.add_argument("--every", type=int, default=1, help="publish every N steps")
    p.add_argument("--per-layer", action=argparse.BooleanOptionalAction, default=True,
                   help="also publish one stream per parameter (default on)")
    p.add_argument("--diverge-at", type=int, default=None, metavar="STEP",
                   help="multiply the lr by --diverge-factor from this step of each run on")
    p.add_argument("--diverge-factor", type=float, default=100.0)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step")
    p.add_argument("--loop", action="store_true", help="restart training forever")
    p.add_argument("--k", type=int, default=256, help="sketch length")
    p.add_argument("--seed", type=int, default=0, help="sketch seed")
    p.add_argument("--kind", choices=["sjlt", "gaussian"], default="sjlt")
    p.add_argument("--s", type=int, default=None, help="sjlt nonzeros per column (default 4)")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                   help="payload element type")
    p.add_argument("--wait", type=float, default=2.0,
                   help="seconds to wait for the daemon's subscription before training")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--train-seed", type=int, default=0, help="model init / shuffling seed")
    p.add_argument("--print-every", type=int, default=50)
    a = p.parse_args(argv)
    if a.lr is None:
        a.lr = 0.05 if a.opt == "sgd" else 1e-3
    if a.run is None:
        a.run = os.environ.get("GRADWATCH_RUN", "").strip() or f"digits-{a.model}-{a.opt}"
    for name in ("batch", "epochs", "every"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.steps is not None and a.steps < 1:
        p.error("--steps must be >= 1")
    return a


def train_once(a, pub, data, state, cycle):
    """One training run from a fresh model; state["step"] is the global step."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(a.train_seed + cycle)
    model = make_model(a.model).to(a.device)
    opt = make_optimizer(a.opt, model.parameters(), a.lr, a.momentum)
    w = gradwatch.torch.watch(model, pub, per_layer=a.per_layer, every=a.every)
    gen = torch.Generator().manual_seed(a.train_seed + 1000 + cycle)
    total = a.steps if a.steps is not None else a.epochs * max(1, len(xtr) // a.batch)
    print(f"[{a.run}] run {cycle}: {a.model}/{a.opt} lr={a.lr} batch={a.batch} "
          f"params={sum(p.numel() for p in model.parameters())} streams={len(w.tags)} "
          f"steps={total}", flush=True)
    try:
        _train_loop(a, model, opt, w, xtr, ytr, xte, yte, gen, total, state, pub)
    finally:
        w.close()  # publishes what is still in flight (a GPU's last steps)
    if w.nonfinite:
        print(f"[{a.run}] {w.nonfinite} stream-steps skipped for NaN/Inf gradients", flush=True)


def _train_loop(a, model, opt, w, xtr, ytr, xte, yte, gen, total, state, pub):
    step, epoch, t0 = 0, 0, time.monotonic()
    diverged = False
    while step < total:
        for idx in batches(len(xtr), a.batch, gen):
            idx = idx.to(xtr.device)
            if step >= total:
                break
            if a.diverge_at is not None and step == a.diverge_at and not diverged:
                diverged = True
                for g in opt.param_groups:
                    g["lr"] *= a.diverge_factor
                print(f"[{a.run}] step {state['step']}: lr x{a.diverge_factor:g} -> "
                      f"{opt.param_groups[0]['lr']:g} (diverging on purpose)", flush=True)
            lr = opt.param_groups[0]["lr"]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            w.log(state["step"], loss=loss.detach(), lr=lr)
            opt.step()
            if step % a.print_every == 0:
                lv = float(loss)
                print(f"[{a.run}] step {state['step']:6d} epoch {epoch:3d} loss {lv:9.4f} "
                      f"lr {lr:.3g} sent {pub.sent} dropped {pub.dropped} "
                      f"{(step + 1) / (time.monotonic() - t0):6.1f} steps/s", flush=True)
            step += 1
            state["step"] += 1
            if a.sleep > 0:
                time.sleep(a.sleep)
        epoch += 1
        acc = accuracy(model, xte, yte)
        if a.steps is None or step >= total:
            print(f"[{a.run}] epoch {epoch} done: test accuracy {acc:.3f}", flush=True)


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = [t.to(a.device) for t in load_data()]
    pub = gradwatch.Publisher(a.endpoint, run=a.run, k=a.k, seed=a.seed, kind=a.kind, s=a.s,
                              dtype=a.dtype)
    if a.wait > 0 and not pub.wait_subscribed(a.wait):
        print(f"[{a.run}] no daemon subscribed at {pub.endpoint} after {a.wait:g} s; "
              f"training anyway (messages are counted as dropped)", flush=True)
    state, cycle = {"step": 0}, 0
    try:
        while True:
            train_once(a, pub, data, state, cycle)
            cycle += 1
            if not a.loop:
                break
    except KeyboardInterrupt:
        print(f"[{a.run}] interrupted", flush=True)
    finally:
        pub.close()
        print(f"[{a.run}] done: {state['step']} steps, sent {pub.sent}, dropped {pub.dropped}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
