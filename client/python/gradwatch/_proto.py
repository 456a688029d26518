"""The gradwatch wire format, version 2 (version 1 still read), in Python
(proto/PROTOCOL.md is normative).

A message is two ZeroMQ frames: the topic b"gw1/<run>/<tag>" and a body made of
a 72-byte little-endian header and k payload elements (f32, f16 or bf16):

    0 u32 magic 0x4B535747 | 4 u8 version 2 | 5 u8 dtype | 6 u8 kind | 7 u8 s
    8 u32 k | 12 u32 flags (bit 0 grad_norm, 1 loss, 2 lr) | 16 u64 step
    24 i64 wall_ns | 32 u64 seed | 40 f64 grad_norm | 48 f64 loss | 56 f64 lr
    64 u64 incarnation (never 0) | 72 payload

Version 1 is the same without the incarnation (payload at 64). The
incarnation is a random id a publisher draws once (new_incarnation()) and
sends with every message, so that a receiver restarts a stream when a run is
rerun or resumed instead of rejecting its steps as out of order.

encode() builds the two frames (absent scalars written as zero), decode()
validates both frames in the order of PROTOCOL.md section 6 and raises
DecodeError whose .reason is the receiver's snake_case reason name.
"""

import re
import secrets
import struct
from typing import NamedTuple, Optional

import numpy as np

from ._sketch import K_MAX, KIND_NAMES, S_MAX

MAGIC = 0x4B535747
VERSION = 2  # what senders write
HEADER_SIZES = {1: 64, 2: 72}  # by version: where the payload starts
HEADER_SIZE = HEADER_SIZES[VERSION]
INCARNATION_MAX = (1 << 64) - 1
TOPIC_PREFIX = b"gw1/"
NAME_MAX = 128
STEP_MAX = (1 << 63) - 1
DTYPES = {"f32": 1, "f16": 2, "bf16": 3}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
DTYPE_ALIASES = {"f32": "f32", "float32": "f32", "f16": "f16", "float16": "f16",
                 "half": "f16", "bf16": "bf16", "bfloat16": "bf16"}
DTYPE_SIZE = {1: 4, 2: 2, 3: 2}
HAS_GRAD_NORM, HAS_LOSS, HAS_LR = 0x1, 0x2, 0x4
FLAGS_KNOWN = HAS_GRAD_NORM | HAS_LOSS | HAS_LR

HEADER = struct.Struct("<IBBBBIIQqQddd")  # the 64 bytes both versions share
INCARNATION = struct.Struct("<Q")  # version 2, at offset 64
assert HEADER.size == HEADER_SIZES[1]
assert HEADER.size + INCARNATION.size == HEADER_SIZES[2]
# The same header as a NumPy structured dtype (packed, little-endian), used to
# encode many messages at once.
HEADER_FIELDS = [("magic", "<u4"), ("version", "u1"), ("dtype", "u1"), ("kind", "u1"),
                 ("s", "u1"), ("k", "<u4"), ("flags", "<u4"), ("step", "<u8"),
                 ("wall_ns", "<i8"), ("seed", "<u8"), ("grad_norm", "<f8"), ("loss", "<f8"),
                 ("lr", "<f8")]
HEADER_FIELDS_BY_VERSION = {1: HEADER_FIELDS, 2: HEADER_FIELDS + [("incarnation", "<u8")]}
PAYLOAD_NP = {"f32": "<f4", "f16": "<f2", "bf16": "<u2"}  # bf16 as its bits
# Largest finite magnitude of each payload type: a sketch element beyond it
# would be sent as Inf (rejected by receivers), so the sender refuses it.
LARGEST = {"f32": float(np.finfo(np.float32).max), "f16": 65504.0,
           "bf16": float.fromhex("0x1.fep127")}


def message_dtype(k, dtype, version=VERSION):
    """Structured dtype of one body (header of version + k payload elements)."""
    dt = np.dtype(HEADER_FIELDS_BY_VERSION[version] + [("payload", PAYLOAD_NP[dtype], (k,))])
    assert dt.itemsize == HEADER_SIZES[version] + k * DTYPE_SIZE[DTYPES[dtype]]
    return dt


def new_incarnation():
    """A fresh incarnation id: 64 random bits from the OS's CSPRNG, never 0."""
    while True:
        v = secrets.randbits(64)
        if v:
            return v


def check_incarnation(value):
    """value as an int if it is an incarnation id (1..2^64-1); ValueError/TypeError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"incarnation must be an int, got {type(value).__name__}")
    value = int(value)
    if not 1 <= value <= INCARNATION_MAX:
        raise ValueError(f"incarnation must be in 1..2^64-1 (0 is reserved), got {value}")
    return value


def check_version(version):
    if isinstance(version, bool) or version not in HEADER_SIZES:
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    return int(version)

_RUN_RE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_TAG_RE = re.compile(rb"[A-Za-z0-9._:/-]{1,128}")


class DecodeError(ValueError):
    """A message a receiver rejects; .reason is PROTOCOL.md's reason name."""

    def __init__(self, reason, message):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Message(NamedTuple):
    run: str
    tag: str
    version: int
    dtype: str  # "f32" | "f16" | "bf16"
    kind: str  # "sjlt" | "gaussian"
    s: int
    k: int
    flags: int
    step: int
    wall_ns: int
    seed: int
    grad_norm: Optional[float]  # None when absent
    loss: Optional[float]
    lr: Optional[float]
    payload: bytes  # raw payload bytes
    incarnation: int = 0  # the sender's id; 0 for version 1

    def z(self):
        """The payload as float64 (exact for every dtype)."""
        return payload_to_f64(self.payload, self.dtype)


def _name_bytes(name, what):
    if isinstance(name, str):
        try:
            return name.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{what} must be ASCII, got {name!r}") from None
    if isinstance(name, (bytes, bytearray)):
        return bytes(name)
    raise TypeError(f"{what} must be a str, got {type(name).__name__}")


def check_run(run):
    """run as bytes if it is 1..128 of [A-Za-z0-9._:-]; ValueError/TypeError otherwise."""
    b = _name_bytes(run, "run")
    if not _RUN_RE.fullmatch(b):
        raise ValueError(f"run must be 1..128 characters of [A-Za-z0-9._:-], got {run!r}")
    return b


def check_tag(tag):
    """tag as bytes if it is 1..128 of [A-Za-z0-9._:/-]; ValueError/TypeError otherwise."""
    b = _name_bytes(tag, "tag")
    if not _TAG_RE.fullmatch(b):
        raise ValueError(f"tag must be 1..128 characters of [A-Za-z0-9._:/-], got {tag!r}")
    return b


def check_dtype(dtype):
    """Normalise a payload dtype name to "f32" | "f16" | "bf16"."""
    if isinstance(dtype, str) and dtype.lower() in DTYPE_ALIASES:
        return DTYPE_ALIASES[dtype.lower()]
    if dtype is np.float32 or dtype is np.float16:
        return "f32" if dtype is np.float32 else "f16"
    raise ValueError(f"dtype must be 'f32', 'f16' or 'bf16', got {dtype!r}")


def check_step(step):
    if not isinstance(step, (int, np.integer)) or isinstance(step, (bool, np.bool_)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    step = int(step)
    if not 0 <= step <= STEP_MAX:
        raise ValueError(f"step must be in 0..2^63-1, got {step}")
    return step


def check_scalar(value, what):
    """None, or a finite float; ValueError (non-finite) / TypeError otherwise."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be finite, got {v}")
    return v


def topic(run_b, tag_b):
    return TOPIC_PREFIX + run_b + b"/" + tag_b


def f32_to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (PROTOCOL.md 4)."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    r = ((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16))
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    r[nan] = (u[nan] >> np.uint64(16)) | np.uint64(0x0040)
    return r.astype("<u2")


def bf16_bits_to_f32(h):
    return (np.asarray(h, dtype="<u2").astype("<u4") << np.uint32(16)).view("<f4")


def payload_bytes(z, dtype):
    """Payload of z (already float32-rounded or float64) in dtype ("f32"|"f16"|"bf16").

    The sketch is first rounded to binary32 (the sketch "as computed" of
    PROTOCOL.md 4), then to f16/bf16 with round-to-nearest-even.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # callers check finiteness
        z32 = np.asarray(z, dtype="<f4")
        if dtype == "f32":
            return z32.tobytes()
        if dtype == "f16":
            return z32.astype("<f2").tobytes()
        return f32_to_bf16_bits(z32).tobytes()


def payload_to_f64(payload, dtype):
    with np.errstate(invalid="ignore"):
        return _payload_to_f64(payload, dtype)


def _payload_to_f64(payload, dtype):
    if dtype == "f32":
        return np.frombuffer(payload, dtype="<f4").astype(np.float64)
    if dtype == "f16":
        return np.frombuffer(payload, dtype="<f2").astype(np.float64)
    return bf16_bits_to_f32(np.frombuffer(payload, dtype="<u2")).astype(np.float64)


def encode(run, tag, step, z, *, kind="sjlt", seed=0, s=4, dtype="f32", wall_ns=0,
           grad_norm=None, loss=None, lr=None, incarnation=None, version=VERSION):
    """Encode one message; returns (topic, body) bytes. Validates every field.

    version 2 (the default) needs incarnation, the sender's id (1..2^64-1,
    the same for all its messages: draw it once with new_incarnation());
    version 1 has none (incarnation None or 0).
    """
    run_b, tag_b = check_run(run), check_tag(tag)
    step = check_step(step)
    dtype = check_dtype(dtype)
    from ._sketch import check_params
    z = np.asarray(z).reshape(-1)
    k, seed, kind, s = check_params(z.size if z.size else 0, seed, kind, s)
    scal = [check_scalar(grad_norm, "grad_norm"), check_scalar(loss, "loss"),
            check_scalar(lr, "lr")]
    flags = sum(bit for bit, v in zip((HAS_GRAD_NORM, HAS_LOSS, HAS_LR), scal) if v is not None)
    payload = payload_bytes(z, dtype)
    if not np.all(np.isfinite(payload_to_f64(payload, dtype))):
        raise ValueError(f"sketch must be finite in dtype {dtype} (NaN, Inf or overflow)")
    version = check_version(version)
    if version >= 2:
        if incarnation is None:
            raise ValueError("version 2 needs an incarnation: the sender's id, drawn once "
                             "with gradwatch._proto.new_incarnation() (or version=1)")
        incarnation = check_incarnation(incarnation)
    elif incarnation not in (None, 0):
        raise ValueError("version 1 carries no incarnation")
    hdr = HEADER.pack(MAGIC, version, DTYPES[dtype], 1 if kind == "sjlt" else 2, s, k,
                      flags, step, int(wall_ns), seed,
                      *[0.0 if v is None else v for v in scal])
    if version >= 2:
        hdr += INCARNATION.pack(incarnation)
    return topic(run_b, tag_b), hdr + payload


def decode(topic_b, body, max_k=K_MAX):
    """Validate and decode (topic, body); raise DecodeError(reason) on the first failed check.

    Also rejects a non-finite payload element (check 19), so a returned
    Message is one a receiver accepts.
    """
    t = bytes(topic_b)
    b = bytes(body)
    if not t.startswith(TOPIC_PREFIX):
        raise DecodeError("bad_topic", "topic does not start with gw1/")
    rest = t[len(TOPIC_PREFIX):]
    slash = rest.find(b"/")
    if slash < 0:
        raise DecodeError("bad_topic", "no / between run and tag")
    run_b, tag_b = rest[:slash], rest[slash + 1:]
    if not _RUN_RE.fullmatch(run_b):
        raise DecodeError("bad_name", f"bad run {run_b!r}")
    if not _TAG_RE.fullmatch(tag_b):
        raise DecodeError("bad_name", f"bad tag {tag_b!r}")
    if len(b) < 5:
        raise DecodeError("truncated", f"body of {len(b)} bytes")
    magic, version = struct.unpack_from("<IB", b, 0)
    if magic != MAGIC:
        raise DecodeError("bad_magic", f"magic 0x{magic:08x}")
    if version not in HEADER_SIZES:
        raise DecodeError("bad_version", f"version {version}")
    hs = HEADER_SIZES[version]
    if len(b) < hs:
        raise DecodeError("truncated", f"body of {len(b)} bytes < {hs}")
    (_, _, dt, kind, s, k, flags, step, wall_ns, seed,
     gn, loss, lr) = HEADER.unpack_from(b, 0)
    if dt not in DTYPE_NAMES:
        raise DecodeError("bad_dtype", f"dtype {dt}")
    if kind not in KIND_NAMES or (kind == 1 and not 1 <= s <= S_MAX) or (kind == 2 and s != 0):
        raise DecodeError("bad_sketch", f"kind {kind} s {s}")
    if not 1 <= k <= min(max_k, K_MAX):
        raise DecodeError("k_over_limit", f"k {k}")
    if kind == 1 and s > k:
        raise DecodeError("bad_sketch", f"s {s} > k {k}")
    if flags & ~FLAGS_KNOWN:
        raise DecodeError("bad_flags", f"flags 0x{flags:x}")
    if step >> 63:
        raise DecodeError("bad_flags", "step bit 63 set")
    present = []
    for bit, v in ((HAS_GRAD_NORM, gn), (HAS_LOSS, loss), (HAS_LR, lr)):
        if flags & bit:
            if v != v or v in (float("inf"), float("-inf")):
                raise DecodeError("non_finite", "non-finite scalar")
            present.append(v)
        else:
            present.append(None)
    incarnation = INCARNATION.unpack_from(b, 64)[0] if version >= 2 else 0
    if version >= 2 and incarnation == 0:
        raise DecodeError("bad_incarnation", "version 2 with incarnation 0")
    need = hs + k * DTYPE_SIZE[dt]
    if len(b) < need:
        raise DecodeError("truncated", f"body of {len(b)} bytes < {need}")
    if len(b) > need:
        raise DecodeError("bad_length", f"body of {len(b)} bytes > {need}")
    payload = b[hs:]
    dtype = DTYPE_NAMES[dt]
    if not np.all(np.isfinite(payload_to_f64(payload, dtype))):
        raise DecodeError("non_finite", "non-finite payload element")
    return Message(run_b.decode(), tag_b.decode(), version, dtype, KIND_NAMES[kind], s, k,
                   flags, step, wall_ns, seed, present[0], present[1], present[2], payload,
                   incarnation)
