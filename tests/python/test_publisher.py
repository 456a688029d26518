"""Publisher: API, argument checking, non-blocking drops, and end to end with a
real ZeroMQ SUB socket standing in for the daemon; incarnations, `connected`
and the no-daemon warning (its delay cut through GW_PUBLISHER_WARN_MS)."""
import math
import struct
import time
import warnings

import numpy as np
import pytest
import torch
import zmq

import gradwatch
from conftest import free_port, ref_sketch


def recv_msgs(sub, n, timeout=30.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if sub.poll(100):
            frames = sub.recv_multipart()
            assert len(frames) == 2
            if frames[0].endswith(b"/@meta"):  # run metadata: not a sketch message
                continue
            out.append(gradwatch.decode(frames[0], frames[1]))
    return out


@pytest.fixture
def sub():
    """A SUB socket bound on loopback, subscribed to everything of protocol v1."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    port = free_port()
    s.bind(f"tcp://127.0.0.1:{port}")
    s.setsockopt(zmq.SUBSCRIBE, b"gw1/")
    yield s
    s.close(linger=0)


def ep(sock):
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def handshake(pub, *subs, timeout=30.0, tag=None):
    """Wait until pub sees a subscription, keeping the SUB sockets serviced.

    A bound SUB socket attaches an accepted connection (and sends its
    subscriptions) only when it processes commands, i.e. inside a call on the
    socket; a daemon's event loop does this all the time, an idle test socket
    does not (libzmq issue #2267).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in subs:
            s.getsockopt(zmq.EVENTS)
        if pub.wait_subscribed(0.01, tag=tag):
            return True
    return False


def test_end_to_end_publish_decodes(sub):
    rng = np.random.default_rng(0)
    g = rng.standard_normal((30, 20)).astype(np.float32)
    with gradwatch.Publisher(ep(sub), run="e2e-1", k=64, seed=5, kind="sjlt", s=4) as pub:
        assert handshake(pub, sub)
        assert pub.publish("all", 1, g, loss=0.5, lr=0.1) is True
        assert pub.publish("layer1.weight", 2, torch.from_numpy(g)) is True
        z = np.arange(64, dtype=np.float32) / 10
        assert pub.publish_sketch("all", 3, z, grad_norm=2.0) is True
        assert (pub.sent, pub.dropped) == (3, 0)
        msgs = recv_msgs(sub, 3)
    assert [(m.run, m.tag, m.step) for m in msgs] == \
        [("e2e-1", "all", 1), ("e2e-1", "layer1.weight", 2), ("e2e-1", "all", 3)]
    want = np.asarray(ref_sketch(g.reshape(-1), 64, 5, "sjlt", 4), np.float32)
    m = msgs[0]
    assert (m.k, m.seed, m.kind, m.s, m.dtype, m.version) == (64, 5, "sjlt", 4, "f32", 2)
    assert all(x.incarnation == pub.incarnation != 0 for x in msgs)
    assert np.array_equal(m.z(), want.astype(np.float64))
    assert m.grad_norm == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-12)
    assert (m.loss, m.lr) == (0.5, 0.1)
    assert abs(m.wall_ns - time.time_ns()) < 60e9
    assert np.array_equal(msgs[1].z(), want.astype(np.float64))
    assert (msgs[1].loss, msgs[1].lr) == (None, None)
    assert np.array_equal(msgs[2].z(), z.astype(np.float64))
    assert (msgs[2].grad_norm, msgs[2].loss, msgs[2].flags) == (2.0, None, 1)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_payloads(sub, dtype):
    g = np.random.default_rng(1).standard_normal(500)
    with gradwatch.Publisher(ep(sub), run="half", k=32, seed=1, dtype=dtype) as pub:
        assert handshake(pub, sub)
        pub.publish("all", 0, g)
        (m,) = recv_msgs(sub, 1)
        z = pub.sketch(g)
    assert m.dtype == dtype and m.k == 32
    want = gradwatch.decode(*gradwatch.encode("half", "all", 0, z, seed=1, dtype=dtype,
                                              incarnation=pub.incarnation)).z()
    assert np.array_equal(m.z(), want)
    assert np.allclose(m.z(), z, rtol={"f16": 1e-3, "bf16": 8e-3}[dtype], atol=1e-6)


def test_gaussian_kind(sub):
    g = np.random.default_rng(2).standard_normal(40)
    with gradwatch.Publisher(ep(sub), run="g", k=8, seed=3, kind="gaussian") as pub:
        assert pub.s == 0
        assert handshake(pub, sub)
        pub.publish("all", 0, g)
        (m,) = recv_msgs(sub, 1)
    assert (m.kind, m.s) == ("gaussian", 0)
    assert np.allclose(m.z(), ref_sketch(g, 8, 3, "gaussian", 0), rtol=1e-6, atol=1e-6)


def test_no_daemon_never_blocks_and_counts_drops():
    """100,000 publishes with nobody listening: prompt, all counted as dropped."""
    pub = gradwatch.Publisher(f"tcp://127.0.0.1:{free_port()}", run="nodaemon", k=16)
    g = np.ones(8, dtype=np.float32)
    t0 = time.monotonic()
    for step in range(100_000):
        pub.publish("all", step, g)
    dt = time.monotonic() - t0
    pub.close()
    assert (pub.sent, pub.dropped) == (0, 100_000)
    # With no peer a blocking send would never return; the bound is generous
    # (a loaded 2-core machine needs ~20 s) and still catches any per-call
    # wait of 0.6 ms or more.
    assert dt < 60.0, f"100k publishes took {dt:.1f} s"


def test_slow_subscriber_fills_hwm_then_drops():
    """A subscriber that does not read: sends fail at the high-water mark and are counted."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 5)
    s.bind("inproc://slow")
    s.setsockopt(zmq.SUBSCRIBE, b"")
    pub = gradwatch.Publisher("inproc://slow", run="slow", k=4, sndhwm=5, context=ctx)
    assert handshake(pub, s)
    t0 = time.monotonic()
    for step in range(2000):
        pub.publish_sketch("all", step, np.ones(4))
    assert time.monotonic() - t0 < 5.0
    assert pub.sent + pub.dropped == 2000
    assert 5 <= pub.sent <= 100 and pub.dropped >= 1900
    got = []
    while s.poll(200):
        f = s.recv_multipart()
        if not f[0].endswith(b"/@meta"):
            got.append(gradwatch.decode(*f).step)
    assert len(got) == pub.sent
    assert got == sorted(got) and got[0] == 0  # the first ones got through, in order
    pub.close()
    s.close(linger=0)
    ctx.term()


def test_only_matching_subscriptions_count(sub):
    sub.setsockopt(zmq.UNSUBSCRIBE, b"gw1/")
    sub.setsockopt(zmq.SUBSCRIBE, b"gw1/other/")
    with gradwatch.Publisher(ep(sub), run="mine", k=4) as pub:
        deadline = time.monotonic() + 5
        while not pub._subs and time.monotonic() < deadline:
            sub.getsockopt(zmq.EVENTS)
            pub._sock.poll(10)
            pub._poll_subscriptions()
        assert pub._subs == {b"gw1/other/"}
        assert not pub.subscribed()
        assert pub.publish_sketch("all", 0, np.ones(4)) is False
        assert (pub.sent, pub.dropped) == (0, 1)
        sub.setsockopt(zmq.SUBSCRIBE, b"gw1/mine/ab")  # one tag prefix of this run
        assert handshake(pub, sub, tag="abc")
        assert pub.subscribed() and not pub.subscribed(tag="all")
        assert pub.publish_sketch("all", 1, np.ones(4)) is False
        assert pub.publish_sketch("abc", 1, np.ones(4)) is True
        (m,) = recv_msgs(sub, 1)
        assert m.tag == "abc"


def test_subscriber_gone_means_dropped(sub):
    pub = gradwatch.Publisher(ep(sub), run="gone", k=4)
    assert handshake(pub, sub)
    assert pub.publish_sketch("all", 0, np.ones(4))
    sub.close(linger=0)
    deadline = time.monotonic() + 30
    while pub.subscribed() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pub.subscribed()
    assert pub.publish_sketch("all", 1, np.ones(4)) is False
    assert (pub.sent, pub.dropped) == (1, 1)
    pub.close()


def test_curve(port):
    srv_pub, srv_sec = zmq.curve_keypair()
    cli_pub, cli_sec = zmq.curve_keypair()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.CURVE_SERVER, 1)
    s.setsockopt(zmq.CURVE_SECRETKEY, srv_sec)
    s.bind(f"tcp://127.0.0.1:{port}")
    s.setsockopt(zmq.SUBSCRIBE, b"gw1/")
    try:
        with gradwatch.Publisher(f"tcp://127.0.0.1:{port}", run="sec", k=4,
                                 curve_serverkey=srv_pub, curve_publickey=cli_pub.decode(),
                                 curve_secretkey=cli_sec) as pub:
            assert handshake(pub, s)
            assert pub.publish_sketch("all", 0, np.ones(4))
            (m,) = recv_msgs(s, 1)
            assert m.run == "sec"
        # a publisher without CURVE never completes the handshake: all dropped
        with gradwatch.Publisher(f"tcp://127.0.0.1:{port}", run="plain", k=4) as pub:
            assert not handshake(pub, s, timeout=0.5)
            assert pub.publish_sketch("all", 0, np.ones(4)) is False
            assert pub.dropped == 1
        # the wrong server key: likewise
        wrong_pub, _ = zmq.curve_keypair()
        with gradwatch.Publisher(f"tcp://127.0.0.1:{port}", run="wrong", k=4,
                                 curve_serverkey=wrong_pub, curve_publickey=cli_pub,
                                 curve_secretkey=cli_sec) as pub:
            assert not handshake(pub, s, timeout=0.5)
        assert not s.poll(100)
    finally:
        s.close(linger=0)


def test_curve_keys_from_certificate_files(tmp_path, port):
    import zmq.auth
    pub_file, sec_file = zmq.auth.create_certificates(str(tmp_path), "client")
    srv_pub, _ = zmq.curve_keypair()
    with gradwatch.Publisher(f"tcp://127.0.0.1:{port}", run="files", k=4,
                             curve_serverkey=srv_pub, curve_publickey=pub_file,
                             curve_secretkey=sec_file) as pub:
        assert pub.closed is False
    from gradwatch.publisher import _curve_key
    want_pub, want_sec = zmq.auth.load_certificate(sec_file)
    assert _curve_key(pub_file, "k", "public") == want_pub
    assert _curve_key(sec_file, "k", "secret") == want_sec
    with pytest.raises(ValueError, match="curve_secretkey"):
        gradwatch.Publisher(f"tcp://127.0.0.1:{port}", run="files", k=4, curve_serverkey=srv_pub,
                            curve_publickey=pub_file, curve_secretkey=pub_file)


# -- argument checking ----------------------------------------------------------


@pytest.fixture
def pub():
    p = gradwatch.Publisher(f"tcp://127.0.0.1:{free_port()}", run="args", k=8, seed=1)
    yield p
    p.close()


@pytest.mark.parametrize("kw,exc,word", [
    (dict(run=""), ValueError, "run"), (dict(run="a/b"), ValueError, "run"),
    (dict(run="x" * 129), ValueError, "run"), (dict(run="sp ace"), ValueError, "run"),
    (dict(run="café"), ValueError, "run"), (dict(run=5), TypeError, "run"),
    (dict(k=0), ValueError, "k"), (dict(k=65537), ValueError, "k"),
    (dict(s=9), ValueError, "s"), (dict(k=2, s=3), ValueError, "s"),
    (dict(kind="gaussian", s=2), ValueError, "s"), (dict(kind="fft"), ValueError, "kind"),
    (dict(seed=-3), ValueError, "seed"), (dict(dtype="f64"), ValueError, "dtype"),
    (dict(sndhwm=0), ValueError, "sndhwm"), (dict(endpoint="localhost"), ValueError, "endpoint"),
    (dict(endpoint="bogus://x"), ValueError, "endpoint"),
    (dict(curve_serverkey=b"x" * 40), ValueError, "curve"),
    (dict(curve_serverkey=b"x" * 40, curve_publickey=b"x" * 40, curve_secretkey=b"short"),
     ValueError, "curve_secretkey"),
])
def test_constructor_rejects(kw, exc, word):
    args = dict(endpoint="tcp://127.0.0.1:1", run="r", k=8)
    args.update(kw)
    with pytest.raises(exc, match=word):
        gradwatch.Publisher(args.pop("endpoint"), **args)


def test_bad_tags(pub):
    for tag in ("", "a b", "t" * 129, "é", "a\n"):
        with pytest.raises(ValueError, match="tag"):
            pub.publish_sketch(tag, 0, np.ones(8))
    with pytest.raises(TypeError, match="tag"):
        pub.publish_sketch(None, 0, np.ones(8))
    pub.publish_sketch("t" * 128, 0, np.ones(8))
    pub.publish_sketch("model/enc.0/attn:q-proj", 0, np.ones(8))
    assert pub.dropped == 2


def test_bad_steps_and_scalars(pub):
    z = np.ones(8)
    with pytest.raises(ValueError, match="step"):
        pub.publish_sketch("all", -1, z)
    with pytest.raises(ValueError, match="step"):
        pub.publish_sketch("all", 2 ** 63, z)
    with pytest.raises(TypeError, match="step"):
        pub.publish_sketch("all", 1.0, z)
    for name in ("grad_norm", "loss", "lr"):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=name):
                pub.publish_sketch("all", 0, z, **{name: bad})
        with pytest.raises(TypeError, match=name):
            pub.publish_sketch("all", 0, z, **{name: "x"})
    pub.publish_sketch("all", 2 ** 63 - 1, z, loss=torch.tensor(0.5), lr=np.float32(0.1))


def test_bad_sketches_and_grads(pub):
    with pytest.raises(ValueError, match="length k=8"):
        pub.publish_sketch("all", 0, np.ones(7))
    with pytest.raises(ValueError, match="finite"):
        pub.publish_sketch("all", 0, np.array([1, 2, 3, 4, 5, 6, 7, np.nan]))
    with pytest.raises(ValueError, match="finite"):  # overflows float32
        pub.publish_sketch("all", 0, np.full(8, 1e39))
    for bad in (np.nan, np.inf, -np.inf):
        g = np.ones(100, dtype=np.float32)
        g[17] = bad
        with pytest.raises(ValueError, match="grad must be finite"):
            pub.publish("all", 0, g)
        with pytest.raises(ValueError, match="grad must be finite"):
            pub.publish("all", 0, torch.from_numpy(g))
        with pytest.raises(ValueError, match="grad must be finite"):
            pub.publish("all", 0, g, grad_norm=1.0)  # caught on the sketch
    with pytest.raises(TypeError, match="grad"):
        pub.publish("all", 0, np.arange(10))
    with pytest.raises(TypeError, match="grad"):
        pub.publish("all", 0, torch.arange(10))
    with pytest.raises(TypeError, match="z"):
        pub.publish_sketch("all", 0, ["a"] * 8)
    assert pub.sent == 0 and pub.dropped == 0  # nothing reached the socket


def test_f16_overflow_is_rejected():
    with gradwatch.Publisher("tcp://127.0.0.1:1", run="r", k=4, dtype="f16") as p:
        with pytest.raises(ValueError, match="f16"):
            p.publish_sketch("all", 0, np.array([1.0, 2.0, 7e4, 0.0]))
        p.publish_sketch("all", 0, np.array([1.0, 2.0, 6e4, 0.0]))


def test_grad_norm_is_float64_exact(pub, sub):
    g = np.full(1000, 0.1, dtype=np.float32)
    with gradwatch.Publisher(ep(sub), run="gn", k=8) as p:
        assert handshake(p, sub)
        p.publish("all", 0, g)
        p.publish("all", 1, torch.tensor(g, dtype=torch.bfloat16))
        m0, m1 = recv_msgs(sub, 2)
    assert m0.grad_norm == pytest.approx(math.sqrt(1000 * float(np.float32(0.1)) ** 2), rel=1e-14)
    assert m1.grad_norm == pytest.approx(math.sqrt(1000) * 0.1, rel=1e-2)


def test_incarnation_per_publisher(sub):
    """Same id in every message of a publisher, on every tag; another publisher
    of the same run (a rerun) has another; a chosen id and wire version 1."""
    z = np.ones(8)
    got = []
    with gradwatch.Publisher(ep(sub), run="same", k=8) as a, \
            gradwatch.Publisher(ep(sub), run="same", k=8) as b:
        assert isinstance(a.incarnation, int) and 0 < a.incarnation < 2 ** 64
        assert a.incarnation != b.incarnation != 0
        assert handshake(a, sub) and handshake(b, sub)
        for step in range(3):
            assert a.publish_sketch("all", step, z) and a.publish_sketch("l/0", step, z)
            assert b.publish_sketch("all", step, z)
        while len(got) < 9 and sub.poll(5000):
            f = sub.recv_multipart()
            if not f[0].endswith(b"/@meta"):
                got.append(f)
        ia, ib = a.incarnation, b.incarnation
    assert len(got) == 9
    incs = [struct.unpack_from("<Q", body, 64)[0] for _, body in got]
    assert [body[4] for _, body in got] == [2] * 9
    # (two connections: the SUB interleaves them fairly, not in send order)
    assert sorted(incs) == sorted([ia] * 6 + [ib] * 3)
    assert all(inc == ia for (t, _), inc in zip(got, incs) if t == b"gw1/same/l/0")
    assert [gradwatch.decode(t, body).incarnation for t, body in got] == incs

    with gradwatch.Publisher(ep(sub), run="chosen", k=8, incarnation=2 ** 64 - 1) as c, \
            gradwatch.Publisher(ep(sub), run="old", k=8, wire_version=1) as old:
        assert (c.incarnation, old.incarnation) == (2 ** 64 - 1, 0)
        assert handshake(c, sub) and handshake(old, sub)
        c.publish_sketch("all", 1, z)
        m = recv_msgs(sub, 1)[0]
        assert (m.run, m.version, m.incarnation) == ("chosen", 2, 2 ** 64 - 1)
        old.publish_sketch("all", 1, z)
        t, body = sub.recv_multipart()
        assert (t, body[4], len(body)) == (b"gw1/old/all", 1, 64 + 8 * 4)
        assert gradwatch.decode(t, body).incarnation == 0


@pytest.mark.parametrize("kw,exc", [
    (dict(incarnation=0), ValueError), (dict(incarnation=2 ** 64), ValueError),
    (dict(incarnation=-1), ValueError), (dict(incarnation="1"), TypeError),
    (dict(wire_version=3), ValueError), (dict(wire_version=1, incarnation=7), ValueError),
])
def test_constructor_rejects_incarnation(kw, exc):
    with pytest.raises(exc, match="incarnation|version"):
        gradwatch.Publisher("tcp://127.0.0.1:1", run="r", k=8, **kw)


def wait_connected(pub, want, *subs, timeout=5.0):
    """pub.connected until it equals want (servicing subs), or timeout; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        for s in subs:
            s.getsockopt(zmq.EVENTS)
        c = pub.connected
        if c == want or time.monotonic() > deadline:
            return c
        time.sleep(0.002)


def test_connected_follows_subscriptions():
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)  # connected, subscribed to nothing yet
    port = free_port()
    s.bind(f"tcp://127.0.0.1:{port}")
    try:
        with gradwatch.Publisher(f"tcp://127.0.0.1:{port}", run="mine", k=8) as mine, \
                gradwatch.Publisher(f"tcp://127.0.0.1:{port}", run="other", k=8) as other:
            assert wait_connected(mine, True, s, timeout=0.2) is False
            s.setsockopt(zmq.SUBSCRIBE, b"gw1/other/")  # another run only
            assert wait_connected(other, True, s) is True
            assert wait_connected(mine, True, s, timeout=0.2) is False
            s.setsockopt(zmq.SUBSCRIBE, b"gw1/mine/layer1.")  # one tag of the run counts
            assert wait_connected(mine, True, s) is True
            s.setsockopt(zmq.UNSUBSCRIBE, b"gw1/mine/layer1.")
            assert wait_connected(mine, False, s) is False
            s.setsockopt(zmq.SUBSCRIBE, b"gw1/")
            assert wait_connected(mine, True, s) is True
            s.close(linger=0)  # the daemon goes away, its subscriptions with it
            assert wait_connected(mine, False) is False
            mine.close()
            assert mine.connected is False
    finally:
        s.close(linger=0)


def no_subscriber_warnings(caught):
    return [w for w in caught if issubclass(w.category, gradwatch.NoSubscriberWarning)]


def test_warns_once_without_daemon(monkeypatch):
    monkeypatch.setenv("GW_PUBLISHER_WARN_MS", "200")
    z = np.ones(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradwatch.Publisher("tcp://127.0.0.1:1", run="lonely-run", k=8) as p:
            time.sleep(0.25)  # the clock starts at the first publish, not at creation
            assert p.connected is False
            assert p.publish_sketch("all", 1, z) is False
            assert no_subscriber_warnings(caught) == []
            time.sleep(0.25)
            assert p.publish_sketch("all", 2, z) is False  # this line is blamed
            ws = no_subscriber_warnings(caught)
            assert len(ws) == 1
            assert "lonely-run" in str(ws[0].message) and "tcp://127.0.0.1:1" in str(ws[0].message)
            assert ws[0].filename == __file__  # points at the caller, not gradwatch
            for step in range(3, 8):
                p.publish_sketch("all", step, z)
                assert p.connected is False
            assert len(no_subscriber_warnings(caught)) == 1  # once
        # from `connected` alone, too
        with gradwatch.Publisher("tcp://127.0.0.1:1", run="r2", k=8) as p:
            p.publish_sketch("all", 1, z)
            time.sleep(0.25)
            assert p.connected is False
        assert len(no_subscriber_warnings(caught)) == 2
    # a bad value means the default 5 s: nothing after 250 ms
    monkeypatch.setenv("GW_PUBLISHER_WARN_MS", "soon")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradwatch.Publisher("tcp://127.0.0.1:1", run="r3", k=8) as p:
            p.publish_sketch("all", 1, z)
            time.sleep(0.25)
            p.publish_sketch("all", 2, z)
            assert p.connected is False
        assert no_subscriber_warnings(caught) == []


@pytest.mark.parametrize("background", [False, True])
def test_warning_from_torch_watch_points_at_the_caller(monkeypatch, background):
    """Also when the C publisher's warning comes from the worker's thread
    (background=True): it is issued on the caller's, pointing at the caller."""
    monkeypatch.setenv("GW_PUBLISHER_WARN_MS", "0")
    model = torch.nn.Linear(3, 2)
    model(torch.ones(4, 3)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradwatch.Publisher("tcp://127.0.0.1:1", run="w", k=8) as p:
            w = gradwatch.torch.watch(model, p, background=background)
            assert w.background is background or w.path != "native"
            w.log(1)
            w.log(2)
            w.close()
        ws = no_subscriber_warnings(caught)
    assert len(ws) == 1 and ws[0].filename == __file__


def test_never_warns_with_daemon(sub, monkeypatch):
    monkeypatch.setenv("GW_PUBLISHER_WARN_MS", "100")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradwatch.Publisher(ep(sub), run="watched", k=8) as p:
            assert handshake(p, sub)
            assert p.connected is True
            assert p.publish_sketch("all", 1, np.ones(8)) is True
            time.sleep(0.2)
            assert p.publish_sketch("all", 2, np.ones(8)) is True
            sub.close(linger=0)  # the daemon came, then left: still no warning
            assert wait_connected(p, False) is False
            time.sleep(0.15)
            p.publish_sketch("all", 3, np.ones(8))
    assert no_subscriber_warnings(caught) == []


def test_close(pub):
    pub.close()
    pub.close()
    assert pub.closed
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish_sketch("all", 0, np.ones(8))
    assert "dropped=0" in repr(pub)
