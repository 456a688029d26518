"""The three task families of the evaluation, the failures injected into them,
and one training run that streams its gradients to a real gradwatchd.

    run_one(spec, endpoint) -> record (dict, JSON-ready)

spec (a dict, see run.py's plan) names the family, model, optimizer, lr,
batch, seed, steps, and the failure with its injection step. The run trains
on CPU with one thread, publishes every step through gradwatch.torch.watch
(stream `all` plus one per parameter, the client's default) and keeps its own
log of the loss and the global gradient norm per step, from which the
baselines are computed offline (score.py).

Families (no download; everything ships with Debian):
  vision   MLP or CNN (examples/train_digits.py) on scikit-learn's digits
  language a 2-layer character transformer on /usr/share/common-licenses
  control  an MLP controller regressed onto a saturated LQR policy of a
           fixed random 4-state, 2-input linear system (LQR gain from the
           discrete Riccati recursion in NumPy). Regression (behaviour
           cloning) rather than backprop through a rollout, so that the
           controller has labels and every failure, label corruption
           included, means the same thing as in the other two families.

Failures (from step S = spec["inject"] on):
  lr10 / lr100 / lr1000  the learning rate multiplied by 10 / 100 / 1000
  stuck      the data loader returns the same batch forever
  labels     the targets of each batch are shuffled (a random permutation)
  frozen     one layer's gradient is zero (chosen by the run's seed)
  blowup     every gradient multiplied by 1000 before the optimizer step,
             no clipping (a broken loss scale)
  optreset   the optimizer's moments are zeroed once (Adam's exp_avg and
             exp_avg_sq; its step count is kept)
  slowdiv    the learning rate ramps linearly over 200 steps to 30x, then
             stays there
"""
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

FAILURES = ["lr10", "lr100", "lr1000", "stuck", "labels", "frozen", "blowup", "optreset",
            "slowdiv"]
FAMILIES = ["vision", "language", "control"]
BLOWUP = 1000.0
SLOWDIV_FACTOR, SLOWDIV_RAMP = 30.0, 200

# ------------------------------------------------------------------ data


def _digits():
    from train_digits import load_data
    xtr, ytr, _, _ = load_data(seed=0)
    return xtr, ytr


TEXT_FILES = ["GPL-3", "Apache-2.0", "LGPL-2.1", "MPL-2.0", "Artistic", "GPL-2"]
CTX, VOCAB = 32, 128


def _text():
    parts = []
    for name in TEXT_FILES:
        p = os.path.join("/usr/share/common-licenses", name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                parts.append(f.read())
    if not parts:  # the Python standard library ships everywhere Python does
        import json
        with open(json.__file__.replace(".pyc", ".py"), "rb") as f:
            parts.append(f.read())
    raw = np.frombuffer(b"\n".join(parts), dtype=np.uint8)
    return torch.tensor(np.where(raw < VOCAB, raw, ord("?")).astype(np.int64))


def lqr_system(seed=12345, n=4, m=2):
    """(A, B, K): a fixed random system, lightly unstable, and its LQR gain
    (Q = I, R = 0.1 I) from the discrete Riccati recursion."""
    rng = np.random.default_rng(seed)
    A = np.eye(n) + 0.1 * rng.standard_normal((n, n))
    A *= 1.02 / max(abs(np.linalg.eigvals(A)))
    B = rng.standard_normal((n, m))
    Q, R = np.eye(n), 0.1 * np.eye(m)
    P = Q.copy()
    for _ in range(2000):
        K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A - B @ K)
    return A, B, K


U_MAX = 1.0


def _control(seed=12345, n_states=4096):
    """States visited by the noisy closed-loop system and the saturated LQR
    action there: u* = clip(-K x, -U_MAX, U_MAX)."""
    A, B, K = lqr_system(seed)
    rng = np.random.default_rng(seed + 1)
    xs = []
    while len(xs) < n_states:
        x = 3.0 * rng.standard_normal(A.shape[0])
        for _ in range(16):
            xs.append(x)
            u = np.clip(-K @ x, -U_MAX, U_MAX)
            x = A @ x + B @ u + 0.1 * rng.standard_normal(A.shape[0])
    x = np.array(xs[:n_states])
    u = np.clip(-x @ K.T, -U_MAX, U_MAX)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(u, dtype=torch.float32)


# ---------------------------------------------------------------- models


class CharLM(torch.nn.Module):
    """A 2-layer pre-norm causal transformer over bytes < 128."""

    def __init__(self, d=48, heads=4, layers=2, ff=128):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, d)
        self.pos = torch.nn.Parameter(0.02 * torch.randn(CTX, d))
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            b = torch.nn.Module()
            b.ln1 = torch.nn.LayerNorm(d)
            b.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
            b.ln2 = torch.nn.LayerNorm(d)
            b.ff1 = torch.nn.Linear(d, ff)
            b.ff2 = torch.nn.Linear(ff, d)
            self.blocks.append(b)
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, VOCAB)
        self.register_buffer("mask", torch.triu(torch.ones(CTX, CTX, dtype=torch.bool), 1))

    def forward(self, x):
        h = self.emb(x) + self.pos[: x.shape[1]]
        t = x.shape[1]
        for b in self.blocks:
            a = b.ln1(h)
            h = h + b.attn(a, a, a, attn_mask=self.mask[:t, :t], need_weights=False)[0]
            h = h + b.ff2(F.gelu(b.ff1(b.ln2(h))))
        return self.head(self.ln(h))


class Controller(torch.nn.Module):
    def __init__(self, n=4, m=2, hidden=64):
        super().__init__()
        self.fc1 = torch.nn.Linear(n, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.fc3 = torch.nn.Linear(hidden, m)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


# ------------------------------------------------------------- a family


class Family:
    """Data, model and loss of one family; batch(idx) -> (inputs, targets)."""

    def __init__(self, name, model_name):
        self.name = name
        if name == "vision":
            from train_digits import make_model
            self.x, self.y = _digits()
            self.model = make_model(model_name)
            self.n = len(self.x)
        elif name == "language":
            self.text = _text()
            self.model = CharLM()
            self.n = len(self.text) - CTX - 1
        elif name == "control":
            self.x, self.y = _control()
            self.model = Controller()
            self.n = len(self.x)
        else:
            raise ValueError(f"unknown family {name!r}")

    def batch(self, idx):
        if self.name == "language":
            offs = idx[:, None] + torch.arange(CTX + 1)[None, :]
            seq = self.text[offs]
            return seq[:, :-1], seq[:, 1:]
        return self.x[idx], self.y[idx]

    def loss(self, inp, tgt):
        out = self.model(inp)
        if self.name == "vision":
            return F.cross_entropy(out, tgt)
        if self.name == "language":
            return F.cross_entropy(out.reshape(-1, VOCAB), tgt.reshape(-1))
        return F.mse_loss(out, tgt)

    def shuffle_targets(self, tgt, gen):
        """Label corruption: the batch's targets permuted (every position of
        a text batch gets another position's next character)."""
        flat = tgt.reshape(len(tgt), -1) if self.name == "language" else tgt
        if self.name == "language":
            f = tgt.reshape(-1)
            return f[torch.randperm(len(f), generator=gen)].reshape(tgt.shape)
        return flat[torch.randperm(len(flat), generator=gen)]


def _sampler(n, batch, gen):
    """Indices of shuffled epochs, batch at a time, forever."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i:i + batch]


def _zero_moments(opt):
    for st in opt.state.values():
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in st and st[key] is not None:
                st[key].zero_()


def run_one(spec, endpoint):
    """Train one run of spec, publishing to endpoint; returns its record."""
    import gradwatch
    import gradwatch.torch

    torch.set_num_threads(1)
    seed = spec["seed"]
    torch.manual_seed(seed)
    fam = Family(spec["family"], spec.get("model"))
    model = fam.model
    params = list(model.parameters())
    if spec["opt"] == "sgd":
        opt = torch.optim.SGD(params, lr=spec["lr"], momentum=0.9)
    else:
        opt = torch.optim.Adam(params, lr=spec["lr"])
    gen = torch.Generator().manual_seed(seed + 1)
    lgen = torch.Generator().manual_seed(seed + 2)
    batches = _sampler(fam.n, spec["batch"], gen)
    failure, S = spec.get("failure"), spec.get("inject")
    frozen = None
    if failure == "frozen":
        weights = [n for n, p in model.named_parameters() if p.dim() >= 2]
        frozen = weights[np.random.default_rng(seed).integers(len(weights))]
    named = dict(model.named_parameters())
    pub = gradwatch.Publisher(endpoint, run=spec["run"])
    subscribed = pub.wait_subscribed(10.0)
    w = gradwatch.torch.watch(model, pub)
    losses, gnorms, lrs = [], [], []
    base_lr = spec["lr"]
    stuck = None
    t0 = time.monotonic()
    try:
        for step in range(spec["steps"]):
            failing = failure is not None and step >= S
            lr = base_lr
            if failing and failure.startswith("lr"):
                lr = base_lr * float(failure[2:])
            elif failing and failure == "slowdiv":
                lr = base_lr * (1 + (SLOWDIV_FACTOR - 1) * min(1.0, (step - S + 1) / SLOWDIV_RAMP))
            for g in opt.param_groups:
                g["lr"] = lr
            if failing and failure == "optreset" and step == S:
                _zero_moments(opt)
            idx = next(batches)
            if failing and failure == "stuck":
                if stuck is None:
                    stuck = idx
                idx = stuck
            inp, tgt = fam.batch(idx)
            if failing and failure == "labels":
                tgt = fam.shuffle_targets(tgt, lgen)
            opt.zero_grad(set_to_none=True)
            loss = fam.loss(inp, tgt)
            loss.backward()
            if failing and failure == "frozen":
                named[frozen].grad.zero_()
            if failing and failure == "blowup":
                for p in params:
                    p.grad.mul_(BLOWUP)
            with torch.no_grad():
                sq = sum(float(torch.dot(p.grad.reshape(-1), p.grad.reshape(-1)))
                         for p in params if p.grad is not None)
            lv = float(loss.detach())
            losses.append(lv)
            gnorms.append(math.sqrt(sq) if math.isfinite(sq) else float("nan"))
            lrs.append(lr)
            w.log(step, loss=lv, lr=lr)
            opt.step()
    finally:
        w.close()
        sent, dropped, nonfinite = pub.sent, pub.dropped, w.nonfinite
        pub.close()
    return {"spec": spec, "loss": losses, "grad_norm": gnorms, "frozen_layer": frozen,
            "tags": list(w.tags), "sent": sent, "dropped": dropped, "nonfinite": nonfinite,
            "subscribed": subscribed, "seconds": time.monotonic() - t0}
