"""Wire format: the encoder reproduces proto/vectors/frames.json byte for byte
(versions 1 and 2), the decoder rejects every malformed frame with the
expected reason."""
import json
import os
import struct

import numpy as np
import pytest

import gradwatch
from gradwatch import _proto
from conftest import FRAMES_JSON


def frames():
    if not os.path.exists(FRAMES_JSON):
        pytest.skip(f"{os.path.relpath(FRAMES_JSON)} not written yet (PROTOCOL.md owner)")
    with open(FRAMES_JSON) as f:
        return json.load(f)


def _fields_to_encode_args(f, payload):
    flags = f["flags"]
    return dict(
        run=f["run"], tag=f["tag"], step=int(f["step"]), z=np.asarray(payload, np.float64),
        kind={1: "sjlt", 2: "gaussian"}[f["kind"]], seed=int(f["seed"]), s=f["s"],
        dtype=_proto.DTYPE_NAMES[f["dtype"]], wall_ns=int(f["wall_ns"]),
        grad_norm=f["grad_norm"] if flags & 1 else None,
        loss=f["loss"] if flags & 2 else None, lr=f["lr"] if flags & 4 else None,
        version=f["version"], incarnation=int(f["incarnation"]) or None)


def test_golden_frames_encode_byte_for_byte():
    golden = frames()["golden"]
    assert {g["fields"]["version"] for g in golden} == {1, 2}
    assert len(golden) >= 6
    for g in golden:
        topic, body = gradwatch.encode(**_fields_to_encode_args(g["fields"], g["payload"]))
        assert topic.hex() == g["topic_hex"], g["name"]
        assert body.hex() == g.get("canonical_body", g["body"]), g["name"]


def test_golden_frames_decode_to_fields():
    for g in frames()["golden"]:
        m = gradwatch.decode(bytes.fromhex(g["topic_hex"]), bytes.fromhex(g["body"]),
                             g["max_k"] or 65536)
        f = g["fields"]
        assert (m.run, m.tag, m.version, m.k, m.s, m.flags) == \
            (f["run"], f["tag"], f["version"], f["k"], f["s"], f["flags"]), g["name"]
        assert (_proto.DTYPES[m.dtype], {"sjlt": 1, "gaussian": 2}[m.kind]) == \
            (f["dtype"], f["kind"])
        assert (m.step, m.wall_ns, m.seed) == (int(f["step"]), int(f["wall_ns"]), int(f["seed"]))
        assert m.incarnation == int(f["incarnation"]), g["name"]
        assert (m.incarnation == 0) == (m.version == 1)
        assert len(m.payload) == len(g["body"]) // 2 - {1: 64, 2: 72}[m.version]
        for bit, name in ((1, "grad_norm"), (2, "loss"), (4, "lr")):
            assert getattr(m, name) == (f[name] if f["flags"] & bit else None), (g["name"], name)
        assert np.array_equal(m.z(), np.asarray(g["payload"], np.float64)), g["name"]


def test_malformed_frames_rejected_with_reason():
    bad = frames()["malformed"]
    assert len(bad) > 20
    assert "bad_incarnation" in {b["reason"] for b in bad}
    for b in bad:
        with pytest.raises(gradwatch.DecodeError) as ei:
            gradwatch.decode(bytes.fromhex(b["topic_hex"]), bytes.fromhex(b["body"]),
                             b["max_k"] or 65536)
        assert ei.value.reason == b["reason"], b["name"]


def test_non_finite_payload_rejected():
    for b in frames()["payload_rejected"]:
        with pytest.raises(gradwatch.DecodeError) as ei:
            gradwatch.decode(bytes.fromhex(b["topic_hex"]), bytes.fromhex(b["body"]),
                             b["max_k"] or 65536)
        assert ei.value.reason == b["reason"] == "non_finite", b["name"]


def test_f16_bf16_conversions():
    conv = frames()["conversions"]
    assert len(conv) > 100
    f32 = np.array([int(c["f32"], 16) for c in conv], dtype=np.uint32).view(np.float32)
    want16 = np.array([int(c["f16"], 16) for c in conv], dtype=np.uint16)
    wantbf = np.array([int(c["bf16"], 16) for c in conv], dtype=np.uint16)
    assert np.array_equal(_proto.f32_to_bf16_bits(f32), wantbf)
    finite = np.isfinite(f32)  # NaN payloads may differ and are never sent
    with np.errstate(over="ignore", invalid="ignore"):
        got16 = f32.astype("<f2").view(np.uint16)
    assert np.array_equal(got16[finite], want16[finite])


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_round_trip(dtype):
    z = np.array([0.5, -1.25, 3.0, 1e-3, 100.0])
    t, b = gradwatch.encode("run.1", "layer/0.w", 12, z, kind="sjlt", seed=7, s=2, dtype=dtype,
                            wall_ns=-5, loss=0.25, incarnation=2 ** 64 - 1)
    assert len(b) == 72 + 5 * (4 if dtype == "f32" else 2)
    assert b[4] == 2 and b[64:72] == b"\xff" * 8
    m = gradwatch.decode(t, b)
    assert (m.run, m.tag, m.step, m.seed, m.s, m.k, m.dtype, m.wall_ns) == \
        ("run.1", "layer/0.w", 12, 7, 2, 5, dtype, -5)
    assert (m.version, m.incarnation) == (2, 2 ** 64 - 1)
    # version 1: the same bytes without the incarnation
    t1, b1 = gradwatch.encode("run.1", "layer/0.w", 12, z, kind="sjlt", seed=7, s=2,
                              dtype=dtype, wall_ns=-5, loss=0.25, version=1)
    assert t1 == t and b1 == b[:4] + b"\x01" + b[5:64] + b[72:]
    m1 = gradwatch.decode(t1, b1)
    assert (m1.version, m1.incarnation, m1.payload) == (1, 0, m.payload)
    assert (m.grad_norm, m.loss, m.lr, m.flags) == (None, 0.25, None, 2)
    tol = {"f32": 1e-7, "f16": 1e-3, "bf16": 8e-3}[dtype]
    assert np.allclose(m.z(), z, rtol=tol, atol=1e-4)
    # absent scalars are written as zero bytes
    assert struct.unpack_from("<d", b, 40) == struct.unpack_from("<d", b, 56) == (0.0,)


def test_encode_rejects_bad_fields():
    z = np.ones(4)
    with pytest.raises(ValueError, match="run"):
        gradwatch.encode("a/b", "t", 0, z)
    with pytest.raises(ValueError, match="tag"):
        gradwatch.encode("a", "t t", 0, z)
    with pytest.raises(ValueError, match="step"):
        gradwatch.encode("a", "t", 2 ** 63, z)
    with pytest.raises(ValueError, match="loss"):
        gradwatch.encode("a", "t", 0, z, loss=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        gradwatch.encode("a", "t", 0, np.array([1.0, np.inf]), s=1)
    with pytest.raises(ValueError, match="finite"):  # overflows f16
        gradwatch.encode("a", "t", 0, np.array([1e6]), dtype="f16", s=1)
    with pytest.raises(ValueError, match="dtype"):
        gradwatch.encode("a", "t", 0, z, dtype="f64")
    with pytest.raises(ValueError, match="incarnation"):  # version 2 needs one
        gradwatch.encode("a", "t", 0, z)
    with pytest.raises(ValueError, match="incarnation"):
        gradwatch.encode("a", "t", 0, z, incarnation=0)
    with pytest.raises(ValueError, match="incarnation"):
        gradwatch.encode("a", "t", 0, z, incarnation=2 ** 64)
    with pytest.raises(TypeError, match="incarnation"):
        gradwatch.encode("a", "t", 0, z, incarnation=1.0)
    with pytest.raises(ValueError, match="incarnation"):
        gradwatch.encode("a", "t", 0, z, incarnation=5, version=1)
    with pytest.raises(ValueError, match="version"):
        gradwatch.encode("a", "t", 0, z, incarnation=5, version=3)


def test_new_incarnation_is_random_and_nonzero():
    ids = [_proto.new_incarnation() for _ in range(64)]
    assert all(1 <= i < 2 ** 64 for i in ids) and len(set(ids)) == 64
    ones = zeros = 0
    for i in ids:
        ones |= i
        zeros |= ~i & (2 ** 64 - 1)
    assert ones == zeros == 2 ** 64 - 1  # every bit varies


def test_publisher_encoder_reproduces_golden_frames():
    """The Publisher's batched encoder (the one that sends) against the same frames."""
    for g in frames()["golden"]:
        a = _fields_to_encode_args(g["fields"], g["payload"])
        with gradwatch.Publisher("tcp://127.0.0.1:1", run=a["run"], k=len(a["z"]),
                                 seed=a["seed"], kind=a["kind"], s=a["s"],
                                 dtype=a["dtype"], incarnation=a["incarnation"],
                                 wire_version=a["version"]) as pub:
            gns = None if a["grad_norm"] is None else np.array([a["grad_norm"]])
            rows, ok = pub._encode(a["step"], a["z"].reshape(1, -1), gns, a["loss"], a["lr"],
                                   wall_ns=a["wall_ns"])
            assert ok[0]
            assert rows[0].tobytes().hex() == g.get("canonical_body", g["body"]), g["name"]
            assert pub._topic(a["tag"]).hex() == g["topic_hex"]
            # a batch of several rows encodes each row the same way
            rows3, ok3 = pub._encode(a["step"], np.repeat(a["z"].reshape(1, -1), 3, 0),
                                     None if gns is None else np.repeat(gns, 3), a["loss"],
                                     a["lr"], wall_ns=a["wall_ns"])
            assert ok3.all() and all(r.tobytes() == rows[0].tobytes() for r in rows3)


# ---- run metadata (PROTOCOL.md section 11) ----------------------------------

META_JSON = os.path.join(os.path.dirname(FRAMES_JSON), "meta_frames.json")


def meta_frames():
    with open(META_JSON) as f:
        return json.load(f)


def test_meta_golden_frames_encode_and_decode():
    from gradwatch import _meta
    gold = meta_frames()["golden"]
    assert len(gold) >= 3
    for g in gold:
        f = g["fields"]
        topic, body = _meta.encode(f["run"], g["doc"], int(f["incarnation"]), int(f["wall_ns"]))
        assert topic.hex() == g["topic_hex"], g["name"]
        assert body.hex() == g["body"], g["name"]
        run, inc, wall, doc = _meta.decode(bytes.fromhex(g["topic_hex"]), bytes.fromhex(g["body"]))
        assert (run, inc, wall) == (f["run"], int(f["incarnation"]), int(f["wall_ns"]))
        assert doc == g["doc"]
        assert _meta.is_topic(topic)
        # what the daemon's old decoder sees: a bad tag, not a crash
        with pytest.raises(_proto.DecodeError) as e:
            _proto.decode(topic, body)
        assert e.value.reason == "bad_name"


def test_meta_malformed_frames_rejected_with_reason():
    from gradwatch import _meta
    bad = meta_frames()["malformed"]
    reasons = set()
    for m in bad:
        with pytest.raises(_proto.DecodeError) as e:
            _meta.decode(bytes.fromhex(m["topic_hex"]), bytes.fromhex(m["body"]))
        assert e.value.reason == m["reason"], m["name"]
        reasons.add(m["reason"])
    assert {"bad_meta", "meta_too_large", "truncated", "bad_magic", "bad_version",
            "bad_flags", "bad_incarnation", "bad_name"} <= reasons
    big = struct.pack("<IB3xQq", _meta.MAGIC, 1, 1, 0) + b" " * (_meta.DOC_MAX + 1)
    with pytest.raises(_proto.DecodeError) as e:
        _meta.decode(b"gw1/r/@meta", big)
    assert e.value.reason == "meta_too_large"


def test_make_document_checks_like_the_receiver():
    from gradwatch import _meta
    doc = _meta.make_document(config={"lr": np.float32(0.5), "n": np.int64(3), "bad": float("nan")},
                              tags=["a", "b", "a"], labels={"k": 1}, client={"pid": 1})
    assert list(doc) == ["config", "tags", "labels", "client"]
    assert doc["config"] == {"lr": 0.5, "n": 3, "bad": None}
    assert doc["tags"] == ["a", "b"] and doc["labels"] == {"k": "1"}
    for kw, exc in [({"tags": "ab"}, TypeError), ({"tags": ["a b"]}, ValueError),
                    ({"tags": ["t%d" % i for i in range(65)]}, ValueError),
                    ({"labels": {"a/b": "x"}}, ValueError), ({"labels": {"k": "\n"}}, ValueError),
                    ({"labels": {"k%d" % i: "v" for i in range(65)}}, ValueError),
                    ({"config": [1]}, TypeError),
                    ({"config": {"x": "y" * 70000}}, ValueError)]:
        with pytest.raises(exc):
            _meta.make_document(**kw)
    deep = {}
    cur = deep
    for _ in range(16):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(ValueError):
        _meta.make_document(config=deep)
