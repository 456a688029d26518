"""examples/train_digits.py publishes `all` and per-layer streams with loss and lr."""
import importlib.util
import os
import threading
import time

import pytest
import zmq

import gradwatch
from conftest import ROOT, free_port


def load_example():
    path = os.path.join(ROOT, "examples", "train_digits.py")
    spec = importlib.util.spec_from_file_location("train_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("model,ntags", [("mlp", 7), ("cnn", 9)])
def test_train_digits_publishes(model, ntags, capsys):
    td = load_example()
    sub = zmq.Context.instance().socket(zmq.SUB)
    ep = f"tcp://127.0.0.1:{free_port()}"
    sub.bind(ep)
    sub.setsockopt(zmq.SUBSCRIBE, b"gw1/ex/")
    rc = []
    t = threading.Thread(target=lambda: rc.append(td.main([
        "--model", model, "--opt", "sgd", "--steps", "6", "--batch", "32", "--endpoint", ep,
        "--run", "ex", "--k", "16", "--wait", "10", "--diverge-at", "3",
        "--diverge-factor", "10", "--threads", "1"])))
    t.start()
    msgs = []
    deadline = time.monotonic() + 60
    while (t.is_alive() or sub.poll(1000)) and time.monotonic() < deadline:
        if sub.poll(20):
            f = sub.recv_multipart()
            if not f[0].endswith(b"/@meta"):  # run metadata: not a sketch message
                msgs.append(gradwatch.decode(*f))
    t.join()
    sub.close(linger=0)
    assert rc == [0]
    tags = sorted({m.tag for m in msgs})
    assert len(tags) == ntags and "all" in tags and "fc1.weight" in tags
    assert sorted({m.step for m in msgs}) == list(range(6))
    assert len(msgs) == 6 * ntags
    for m in msgs:
        assert m.run == "ex" and m.k == 16 and m.grad_norm > 0 and m.loss > 0
        assert m.lr == pytest.approx(0.05 if m.step < 3 else 0.5)
    out = capsys.readouterr().out
    assert "diverging on purpose" in out
    assert f"sent {6 * ntags}, dropped 0" in out


def test_train_digits_rejects_bad_flags():
    td = load_example()
    with pytest.raises(SystemExit):
        td.parse_args(["--model", "resnet"])
    with pytest.raises(SystemExit):
        td.parse_args(["--every", "0"])
    a = td.parse_args(["--opt", "adam"])
    assert (a.lr, a.run, a.per_layer) == (1e-3, "digits-mlp-adam", True)
