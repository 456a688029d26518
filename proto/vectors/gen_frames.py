#!/usr/bin/python3
"""gen_frames.py -- golden and malformed wire frames of proto/PROTOCOL.md.

An independent encoder of the gradwatch wire format, versions 2 and 1,
written from proto/PROTOCOL.md with nothing but Python's struct (it shares no
code with proto/proto.c or client/python). It writes:

  proto/vectors/frames.json   golden frames (fields + payload as float64),
                              malformed frames (expected reason), frames whose
                              payload is rejected, and f16/bf16 conversions
  tests/fuzz/corpus/proto/    the same frames as libFuzzer seeds
                              (u16 LE topic length, topic, body)

and, with --markdown, prints the golden-frame section of PROTOCOL.md.

Usage: /usr/bin/python3 proto/vectors/gen_frames.py [--markdown]
Reproducible: the random conversion inputs come from a fixed seed.
"""
import json
import math
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# PROTOCOL.md section 3: the version 1 header is 64 little-endian bytes, no
# padding; version 2 appends the u64 incarnation (72 bytes).
HEADER = struct.Struct("<IBBBBIIQqQddd")
assert HEADER.size == 64
INCARNATION = struct.Struct("<Q")
HEADER_SIZE = {1: 64, 2: 72}
MAGIC = 0x4B535747
F32, F16, BF16 = 1, 2, 3
SJLT, GAUSSIAN = 1, 2
HAS_GRAD_NORM, HAS_LOSS, HAS_LR = 1, 2, 4
WIDTH = {F32: 4, F16: 2, BF16: 2}
DTYPE_NAME = {F32: "f32", F16: "f16", BF16: "bf16"}
KIND_NAME = {SJLT: "sjlt", GAUSSIAN: "gaussian"}


# ---- element encodings (PROTOCOL.md section 4) -------------------------------

def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(u):
    return struct.unpack("<f", struct.pack("<I", u))[0]


def f16_bits(x):
    """binary16, round to nearest even (struct 'e' rounds ties to even)."""
    try:
        return struct.unpack("<H", struct.pack("<e", x))[0]
    except OverflowError:  # |x| rounds past 65504: Inf
        return 0xFC00 if x < 0 else 0x7C00


def f16_value(h):
    return struct.unpack("<e", struct.pack("<H", h))[0]


def bf16_bits(x):
    """bfloat16 of the binary32 value of x, the rule of PROTOCOL.md 4."""
    u = f32_bits(x)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return (u >> 16) | 0x0040
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def bf16_value(h):
    return bits_f32(h << 16)


def encode_elem(dtype, x):
    if dtype == F32:
        return struct.pack("<f", x)
    if dtype == F16:
        return struct.pack("<H", f16_bits(x))
    return struct.pack("<H", bf16_bits(x))


def decode_elem(dtype, b):
    if dtype == F32:
        return struct.unpack("<f", b)[0]
    h = struct.unpack("<H", b)[0]
    return f16_value(h) if dtype == F16 else bf16_value(h)


# ---- frames ------------------------------------------------------------------

class Msg:
    def __init__(self, run, tag, dtype, kind, s, k, values, flags=0, step=0,
                 wall_ns=0, seed=0, grad_norm=0.0, loss=0.0, lr=0.0, version=2,
                 incarnation=0x8877665544332211):
        self.version = version
        self.incarnation = incarnation if version >= 2 else 0
        self.run, self.tag = run, tag
        self.dtype, self.kind, self.s, self.k = dtype, kind, s, k
        self.values = values
        self.flags, self.step, self.wall_ns, self.seed = flags, step, wall_ns, seed
        self.grad_norm, self.loss, self.lr = grad_norm, loss, lr

    def topic(self):
        return ("gw1/%s/%s" % (self.run, self.tag)).encode("ascii")

    def payload(self):
        return b"".join(encode_elem(self.dtype, x) for x in self.values)

    def header(self, absent_slots=None):
        """Absent scalars are written as 0 unless absent_slots overrides them
        (to build frames that test the receiver ignores those bytes)."""
        sc = []
        for bit, v in ((HAS_GRAD_NORM, self.grad_norm), (HAS_LOSS, self.loss),
                       (HAS_LR, self.lr)):
            sc.append(v if self.flags & bit else 0.0)
        head = HEADER.pack(MAGIC, self.version, self.dtype, self.kind, self.s, self.k,
                           self.flags, self.step, self.wall_ns, self.seed, *sc)
        if self.version >= 2:
            head += INCARNATION.pack(self.incarnation)
        if absent_slots:
            head = bytearray(head)
            for off, raw in absent_slots.items():
                head[off:off + 8] = raw
            head = bytes(head)
        return head

    def body(self, absent_slots=None):
        return self.header(absent_slots) + self.payload()


    def hs(self):
        return HEADER_SIZE[self.version]


def patch(body, off, fmt, value):
    b = bytearray(body)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def jfloat(x):
    assert math.isfinite(x)
    return x


def golden_entry(name, m, doc=False, absent_slots=None, note=None):
    body = m.body(absent_slots)
    canonical = m.body()
    pay = body[m.hs():]
    w = WIDTH[m.dtype]
    decoded = [decode_elem(m.dtype, pay[i * w:(i + 1) * w]) for i in range(m.k)]
    e = {
        "name": name,
        "topic": m.topic().decode("ascii"),
        "topic_hex": m.topic().hex(),
        "body": body.hex(),
        "max_k": 0,
        "fields": {
            "run": m.run, "tag": m.tag, "version": m.version,
            "dtype": m.dtype, "kind": m.kind, "s": m.s, "k": m.k,
            "flags": m.flags,
            # 64-bit integers as decimal strings (JSON numbers are doubles)
            "step": str(m.step), "wall_ns": str(m.wall_ns), "seed": str(m.seed),
            "incarnation": str(m.incarnation),  # 0 for version 1
            # decoded scalars: the value when present, 0 when absent
            "grad_norm": jfloat(m.grad_norm if m.flags & HAS_GRAD_NORM else 0.0),
            "loss": jfloat(m.loss if m.flags & HAS_LOSS else 0.0),
            "lr": jfloat(m.lr if m.flags & HAS_LR else 0.0),
        },
        "payload": [jfloat(x) for x in decoded],
        "in_protocol_md": doc,
    }
    if canonical != body:
        e["canonical_body"] = canonical.hex()
    if note:
        e["note"] = note
    return e


def golden():
    """The six frames of version 1, then the same six in version 2 (names
    prefixed v2_), each v2 frame with its own incarnation."""
    v1 = golden_v(1)
    v2 = golden_v(2)
    return v1 + v2


def golden_v(version):
    inc = {"f32_k4_all_scalars": 0x8877665544332211,  # bit 63 set: any u64 but 0
           "f16_k3_no_scalars": 1, "bf16_gaussian_k5": 2 ** 64 - 1,
           "f32_s8_k8_longest_names": 0x0123456789ABCDEF,
           "absent_scalars_ignored": 0x00000000FFFFFFFF,
           "f16_edges": 0xFFFFFFFF00000000}
    out = []
    for name, m, doc, slots, note in golden_msgs():
        m.version = version
        m.incarnation = inc[name] if version >= 2 else 0
        if version >= 2:
            name = "v2_" + name
            note += ", incarnation 0x%016X" % m.incarnation
        # PROTOCOL.md shows three v2 frames and the first v1 frame
        doc = doc and (version >= 2 or name == "f32_k4_all_scalars")
        out.append(golden_entry(name, m, doc, slots, note))
    return out


def golden_msgs():
    g = []
    m1 = Msg("run-1", "all", F32, SJLT, 4, 4, [1.0, -2.0, 0.5, 3.25],
             flags=HAS_GRAD_NORM | HAS_LOSS | HAS_LR, step=1000,
             wall_ns=1767225600123456789, seed=42,
             grad_norm=3.5, loss=0.693359375, lr=0.001)
    g.append(("f32_k4_all_scalars", m1, True, None,
              "f32, sjlt s=4, k=4, grad_norm/loss/lr present"))
    m2 = Msg("exp:a_b.c", "layer1.weight", F16, SJLT, 1, 3,
             [1.0, -1.0 / 3.0, 2.0 ** -24], step=0, wall_ns=0, seed=0)
    g.append(("f16_k3_no_scalars", m2, True, None,
              "f16 (normal, rounded -1/3, smallest subnormal), sjlt s=1, no scalars"))
    m3 = Msg("r", "model/enc.0/attn:q-proj", BF16, GAUSSIAN, 0, 5,
             [math.pi, -1e-3, 0.0, -0.0, 3.0e38],
             flags=HAS_GRAD_NORM | HAS_LR, step=2 ** 63 - 1, wall_ns=-1,
             seed=2 ** 64 - 1, grad_norm=1e300, lr=3e-4)
    g.append(("bf16_gaussian_k5", m3, True, None,
              "bf16, gaussian (s=0), k=5, grad_norm+lr present, loss absent, "
              "largest step and seed, negative wall_ns"))
    m4 = Msg("R" * 128, "t/" * 63 + "xy", F32, SJLT, 8, 8,
             [0.0, -0.0, 1e-45, 3.4028234663852886e38, -1.5, 2.0, 7.0, 0.1],
             flags=HAS_LOSS, step=1, wall_ns=0, seed=1, loss=-2.5)
    g.append(("f32_s8_k8_longest_names", m4, False, None,
              "run and tag of 128 bytes (261-byte topic), s = k = 8, loss only"))
    m5 = Msg("a", "b", F32, SJLT, 1, 1, [42.0], flags=0, step=7, seed=3)
    nan = struct.pack("<Q", 0x7FF8000000000001)
    slots = {40: nan, 48: struct.pack("<d", 1.0), 56: struct.pack("<d", math.inf)}
    g.append(("absent_scalars_ignored", m5, False, slots,
              "flags = 0 but the absent slots hold NaN, 1.0, Inf: the receiver "
              "ignores them; canonical_body (zeros) is what an encoder writes"))
    m6 = Msg("sweep.lr:3e-4", "fc2.bias", F16, SJLT, 2, 6,
             [65504.0, -65504.0, 2.0 ** -14, -(2.0 ** -24) * 3, 0.1, 1.0009765625],
             flags=HAS_GRAD_NORM, step=123456789, wall_ns=1, seed=0xDEADBEEFCAFEF00D,
             grad_norm=0.0)
    g.append(("f16_edges", m6, False, None,
              "f16 largest finite, smallest normal, a subnormal, 1+2^-10"))
    return g


def m1_of(version):
    m = golden_msgs()[0][1]
    m.version = version
    m.incarnation = 0x8877665544332211 if version >= 2 else 0
    return m


def malformed():
    """Every reason gw_proto_decode can return, each from a small change to
    golden frame f32_k4_all_scalars: version 1 (80-byte body), then the cases
    version 2 (88-byte body) adds or moves."""
    m1 = m1_of(1)
    t = m1.topic()
    b = m1.body()
    out = []

    def add(name, reason, topic=t, body=b, max_k=0):
        out.append({"name": name, "topic_hex": topic.hex(), "body": body.hex(),
                    "max_k": max_k, "reason": reason})

    # topic (checks 2-5)
    add("topic_empty", "bad_topic", topic=b"")
    add("topic_prefix_only", "bad_topic", topic=b"gw1/")
    add("topic_wrong_generation", "bad_topic", topic=b"gw2/run-1/all")
    add("topic_prefix_case", "bad_topic", topic=b"GW1/run-1/all")
    add("topic_short_prefix", "bad_topic", topic=b"gw1")
    add("topic_no_tag", "bad_topic", topic=b"gw1/run-1")
    add("run_empty", "bad_name", topic=b"gw1//all")
    add("tag_empty", "bad_name", topic=b"gw1/run-1/")
    add("run_129", "bad_name", topic=b"gw1/" + b"r" * 129 + b"/all")
    add("tag_129", "bad_name", topic=b"gw1/run-1/" + b"t" * 129)
    add("run_space", "bad_name", topic=b"gw1/run 1/all")
    add("run_at", "bad_name", topic=b"gw1/run@1/all")
    add("tag_nul", "bad_name", topic=b"gw1/run-1/a\x00b")
    add("tag_utf8", "bad_name", topic="gw1/run-1/caf\u00e9".encode("utf-8"))
    add("tag_backslash", "bad_name", topic=b"gw1/run-1/a\\b")
    add("topic_bad_before_body_bad", "bad_topic", topic=b"gw2/x/y", body=b"")
    # lengths (checks 6, 9, 17, 18)
    add("body_empty", "truncated", body=b"")
    add("body_4_bytes", "truncated", body=b[:4])
    add("body_63_bytes", "truncated", body=b[:63])
    add("payload_one_byte_short", "truncated", body=b[:-1])
    add("payload_one_byte_long", "bad_length", body=b + b"\x00")
    add("payload_one_element_long", "bad_length", body=b + b[-4:])
    add("header_only_k4", "truncated", body=b[:64])
    # magic and version (7, 8)
    add("magic_wrong", "bad_magic", body=patch(b, 0, "<I", MAGIC + 1))
    add("magic_big_endian", "bad_magic", body=patch(b, 0, ">I", MAGIC))
    add("magic_before_version", "bad_magic",
        body=patch(patch(b, 0, "<I", 0), 4, "<B", 9))
    add("version_0", "bad_version", body=patch(b, 4, "<B", 0))
    add("version_3", "bad_version", body=patch(b, 4, "<B", 3))
    add("version_3_five_bytes", "bad_version", body=patch(b, 4, "<B", 3)[:5])
    add("version_255", "bad_version", body=patch(b, 4, "<B", 255))
    # dtype (10)
    add("dtype_0", "bad_dtype", body=patch(b, 5, "<B", 0))
    add("dtype_4", "bad_dtype", body=patch(b, 5, "<B", 4))
    add("dtype_before_sketch", "bad_dtype",
        body=patch(patch(b, 5, "<B", 255), 6, "<B", 0))
    # kind and s (11, 13)
    add("kind_0", "bad_sketch", body=patch(b, 6, "<B", 0))
    add("kind_3", "bad_sketch", body=patch(b, 6, "<B", 3))
    add("sjlt_s_0", "bad_sketch", body=patch(b, 7, "<B", 0))
    add("sjlt_s_9", "bad_sketch", body=patch(b, 7, "<B", 9))
    add("gaussian_s_1", "bad_sketch",
        body=patch(patch(b, 6, "<B", GAUSSIAN), 7, "<B", 1))
    m_sk = Msg("run-1", "all", F32, SJLT, 3, 2, [1.0, 2.0], version=1)
    add("sjlt_s_over_k", "bad_sketch", body=m_sk.body())
    add("sketch_before_k", "bad_sketch",
        body=patch(patch(b, 6, "<B", 7), 8, "<I", 0))
    # k (12)
    add("k_0", "k_over_limit", body=patch(b, 8, "<I", 0))
    add("k_65537", "k_over_limit", body=patch(b, 8, "<I", 65537))
    add("k_max_u32", "k_over_limit", body=patch(b, 8, "<I", 0xFFFFFFFF))
    add("k_over_receiver_limit", "k_over_limit", max_k=3)
    add("k_before_s_over_k", "k_over_limit",
        body=patch(patch(b, 7, "<B", 1), 8, "<I", 0))
    add("k_before_flags", "k_over_limit",
        body=patch(patch(b, 8, "<I", 70000), 12, "<I", 0xFF))
    # flags and step (14, 15)
    add("flags_bit3", "bad_flags", body=patch(b, 12, "<I", 7 | 8))
    add("flags_bit31", "bad_flags", body=patch(b, 12, "<I", 0x80000007))
    add("step_2pow63", "bad_flags", body=patch(b, 16, "<Q", 2 ** 63))
    add("step_max_u64", "bad_flags", body=patch(b, 16, "<Q", 2 ** 64 - 1))
    add("flags_before_scalars", "bad_flags",
        body=patch(patch(b, 12, "<I", 15), 40, "<d", math.nan))
    # present scalars (16)
    add("grad_norm_nan", "non_finite", body=patch(b, 40, "<d", math.nan))
    add("loss_inf", "non_finite", body=patch(b, 48, "<d", math.inf))
    add("lr_neg_inf", "non_finite", body=patch(b, 56, "<d", -math.inf))
    add("grad_norm_signalling_nan", "non_finite",
        body=patch(b, 40, "<Q", 0x7FF0000000000001))
    add("scalars_before_length", "non_finite",
        body=patch(b, 48, "<d", math.nan)[:70])
    # a version 1 body labelled 2: its header is 72 bytes, so the first two
    # payload floats read as the incarnation and the payload is 8 bytes short
    add("v1_body_labelled_v2", "truncated", body=patch(b, 4, "<B", 2))

    # version 2 (checks 9, 17-19 move or appear)
    m2 = m1_of(2)
    b2 = m2.body()
    assert len(b2) == 88

    def add2(name, reason, body=b2, max_k=0):
        add("v2_" + name, reason, body=body, max_k=max_k)

    add2("incarnation_0", "bad_incarnation", body=patch(b2, 64, "<Q", 0))
    add2("body_64_bytes", "truncated", body=b2[:64])
    add2("body_71_bytes", "truncated", body=b2[:71])
    add2("header_only_k4", "truncated", body=b2[:72])
    add2("payload_one_byte_short", "truncated", body=b2[:-1])
    add2("payload_one_byte_long", "bad_length", body=b2 + b"\x00")
    add2("payload_one_element_long", "bad_length", body=b2 + b2[-4:])
    # a version 2 body labelled 1: 64-byte header, 8 bytes too many
    add2("body_labelled_v1", "bad_length", body=patch(b2, 4, "<B", 1))
    add2("version_3", "bad_version", body=patch(b2, 4, "<B", 3))
    add2("k_over_receiver_limit", "k_over_limit", max_k=3)
    add2("flags_before_incarnation", "bad_flags",
         body=patch(patch(b2, 12, "<I", 8), 64, "<Q", 0))
    add2("step_before_incarnation", "bad_flags",
         body=patch(patch(b2, 16, "<Q", 2 ** 63), 64, "<Q", 0))
    add2("scalars_before_incarnation", "non_finite",
         body=patch(patch(b2, 56, "<d", math.inf), 64, "<Q", 0))
    add2("incarnation_before_length", "bad_incarnation",
         body=patch(b2, 64, "<Q", 0)[:80])
    add2("grad_norm_nan", "non_finite", body=patch(b2, 40, "<d", math.nan))
    add2("dtype_4", "bad_dtype", body=patch(b2, 5, "<B", 4))
    return out


def payload_rejected():
    """Frames that decode but whose payload gw_proto_read_payload rejects."""
    out = []
    cases = [
        ("f32_nan", F32, struct.pack("<I", 0x7FC00000)),
        ("f32_pos_inf", F32, struct.pack("<I", 0x7F800000)),
        ("f32_neg_inf", F32, struct.pack("<I", 0xFF800000)),
        ("f32_signalling_nan", F32, struct.pack("<I", 0x7F800001)),
        ("f16_pos_inf", F16, struct.pack("<H", 0x7C00)),
        ("f16_neg_inf", F16, struct.pack("<H", 0xFC00)),
        ("f16_nan", F16, struct.pack("<H", 0x7E00)),
        ("bf16_pos_inf", BF16, struct.pack("<H", 0x7F80)),
        ("bf16_nan", BF16, struct.pack("<H", 0xFFC1)),
    ]
    for version in (1, 2):
        for name, dt, bad in cases:
            m = Msg("run-1", "all", dt, SJLT, 1, 3, [1.0, 2.0, 3.0], version=version)
            w = WIDTH[dt]
            h = m.hs()
            body = bytearray(m.body())
            body[h + w:h + 2 * w] = bad  # the middle element
            out.append({"name": name if version == 1 else "v2_" + name,
                        "topic_hex": m.topic().hex(), "body": bytes(body).hex(),
                        "max_k": 0, "reason": "non_finite"})
    return out


def conversions():
    """binary32 -> f16 / bf16 (round to nearest even) and back, as bit
    patterns. NaN is left to the C tests (only its class is specified)."""
    xs = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99609375, 65520.0, 65536.0,
          1e10, -1e10, math.inf, -math.inf, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25,
          2.0 ** -25 * 1.0000001, 2.0 ** -26, 3 * 2.0 ** -25, 5 * 2.0 ** -25,
          1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -8,
          1.0 + 3 * 2.0 ** -8, 3.4028234663852886e38, 1e-45, 1.17549435e-38,
          math.pi, -math.e, 0.1, 1.0 / 3.0]
    rng = random.Random(20260101)
    for _ in range(400):
        e = rng.uniform(-40, 40)
        xs.append(rng.choice((-1.0, 1.0)) * 2.0 ** e)
    for _ in range(100):  # random bit patterns, any finite float
        u = rng.getrandbits(32)
        if (u & 0x7F800000) != 0x7F800000:
            xs.append(bits_f32(u))
    rows = []
    for x in xs:
        xf = bits_f32(f32_bits(x))  # the binary32 value actually converted
        rows.append({"f32": "%08x" % f32_bits(xf), "f16": "%04x" % f16_bits(xf),
                     "bf16": "%04x" % bf16_bits(xf)})
    return rows


def crosscheck_bf16_with_torch(rows):
    """Optional: torch's float32 -> bfloat16 cast also rounds to nearest
    even; agree with it when torch is importable."""
    try:
        import torch
    except ImportError:
        return
    for r in rows:
        x = bits_f32(int(r["f32"], 16))
        t = torch.tensor([x], dtype=torch.float32).to(torch.bfloat16)
        tb = t.view(torch.int16).item() & 0xFFFF
        assert tb == int(r["bf16"], 16), (r, hex(tb))


def hexlines(data, width=32):
    h = data.hex()
    return [h[i:i + 2 * width] for i in range(0, len(h), 2 * width)]


def markdown(entries):
    dn = {1: "f32", 2: "f16", 3: "bf16"}
    kn = {1: "sjlt", 2: "gaussian"}
    lines = []
    annotated = set()
    # version 2 first (what senders write), then version 1
    entries = sorted(entries, key=lambda e: -e["fields"]["version"])
    for e in entries:
        if not e["in_protocol_md"]:
            continue
        f = e["fields"]
        body = bytes.fromhex(e["body"])
        lines.append("### `%s` (version %d)" % (e["name"], f["version"]))
        lines.append("")
        lines.append("About: %s." % e["note"])
        lines.append("")
        lines.append("- topic: `%s` (%d bytes)" % (e["topic"], len(e["topic"])))
        inc = (", incarnation %s (0x%016X)" % (f["incarnation"], int(f["incarnation"]))
               if f["version"] >= 2 else "")
        lines.append("- header: version %d, dtype %d (%s), kind %d (%s), s %d, k %d, "
                     "flags %d, step %s, wall_ns %s, seed %s%s"
                     % (f["version"], f["dtype"], dn[f["dtype"]], f["kind"], kn[f["kind"]],
                        f["s"], f["k"], f["flags"], f["step"], f["wall_ns"], f["seed"], inc))
        sc = []
        for bit, key in ((1, "grad_norm"), (2, "loss"), (4, "lr")):
            sc.append("%s %s" % (key, repr(f[key]) if f["flags"] & bit else "absent (0)"))
        lines.append("- scalars: " + ", ".join(sc))
        lines.append("- payload (as float64): " + ", ".join(repr(x) for x in e["payload"]))
        lines.append("- body (%d bytes):" % len(body))
        lines.append("")
        lines.append("```")
        lines.extend(hexlines(body))
        lines.append("```")
        lines.append("")
        if f["version"] not in annotated:
            lines.extend(annotate(body, f))
            annotated.add(f["version"])
    return "\n".join(lines).rstrip() + "\n"


def annotate(body, f):
    """Field-by-field reading of one body, for PROTOCOL.md."""
    rows = [(0, 4, "magic", "0x%08X" % MAGIC), (4, 1, "version", str(f["version"])),
            (5, 1, "dtype", str(f["dtype"])), (6, 1, "kind", str(f["kind"])),
            (7, 1, "s", str(f["s"])), (8, 4, "k", str(f["k"])),
            (12, 4, "flags", str(f["flags"])), (16, 8, "step", f["step"]),
            (24, 8, "wall_ns", f["wall_ns"]), (32, 8, "seed", f["seed"]),
            (40, 8, "grad_norm", repr(f["grad_norm"])),
            (48, 8, "loss", repr(f["loss"])), (56, 8, "lr", repr(f["lr"]))]
    h = HEADER_SIZE[f["version"]]
    if f["version"] >= 2:
        rows.append((64, 8, "incarnation", "0x%016X" % int(f["incarnation"])))
    w = WIDTH[f["dtype"]]
    for i in range(f["k"]):
        x = decode_elem(f["dtype"], body[h + i * w:h + (i + 1) * w])
        rows.append((h + i * w, w, "payload[%d]" % i, repr(x)))
    out = ["The same body, field by field:", "",
           "| Offset | Bytes (in order) | Field | Value |",
           "|-------:|------------------|-------|-------|"]
    for off, n, name, val in rows:
        out.append("| %d | `%s` | `%s` | %s |"
                   % (off, " ".join("%02x" % c for c in body[off:off + n]), name, val))
    out.append("")
    return out


def corpus(groups):
    """Seeds for tests/fuzz: every file this script wrote before is replaced
    (the prefixes golden_, malformed_, payload_ are this script's)."""
    d = os.path.join(ROOT, "tests", "fuzz", "corpus", "proto")
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old.split("_", 1)[0] in ("golden", "malformed", "payload"):
            os.remove(os.path.join(d, old))
    for prefix, items in groups:
        for e in items:
            topic = bytes.fromhex(e["topic_hex"])
            body = bytes.fromhex(e["body"])
            with open(os.path.join(d, "%s_%s" % (prefix, e["name"])), "wb") as f:
                f.write(struct.pack("<H", len(topic)) + topic + body)


def main():
    gold = golden()
    bad = malformed()
    rej = payload_rejected()
    conv = conversions()
    crosscheck_bf16_with_torch(conv)
    if "--markdown" in sys.argv[1:]:
        sys.stdout.write(markdown(gold))
        return
    doc = {
        "about": "gradwatch wire protocol test vectors, versions 1 and 2 "
                 "(proto/PROTOCOL.md); generated by proto/vectors/gen_frames.py, "
                 "do not edit",
        "golden": gold,
        "malformed": bad,
        "payload_rejected": rej,
        "conversions": conv,
    }
    with open(os.path.join(HERE, "frames.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    corpus([("golden", gold), ("malformed", bad), ("payload", rej)])


if __name__ == "__main__":
    main()
