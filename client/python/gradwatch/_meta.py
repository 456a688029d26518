"""Run metadata on the wire (proto/PROTOCOL.md section 11).

A metadata message is two ZeroMQ frames: the topic b"gw1/<run>/@meta" and a
body of a 24-byte little-endian header followed by a UTF-8 JSON document:

    0 u32 magic 0x444D5747 ("GWMD") | 4 u8 version 1 | 5 3 bytes reserved, 0
    8 u64 incarnation (never 0) | 16 i64 wall_ns | 24 document

The document is an object with any of "config" (object), "tags" (list of
strings), "labels" (string -> string) and "client" (object, filled in by the
client library). make_document() checks the same rules and limits a
receiver applies, so a publisher learns of a bad argument at once
(ValueError/TypeError) instead of seeing its metadata rejected; decode()
applies them to received frames and raises _proto.DecodeError with the
receiver's reason (bad_meta, meta_too_large, ...).
"""

import json
import math
import re
import struct

from . import _proto

MAGIC = 0x444D5747
VERSION = 1
HEADER = struct.Struct("<IB3xQq")
HEADER_SIZE = HEADER.size  # 24
TAG = b"@meta"
DOC_MAX = 65536
TAGS_MAX = 64
LABELS_MAX = 64
NAME_MAX = 64
VALUE_MAX = 256
DEPTH_MAX = 16
MEMBERS = ("config", "tags", "labels", "client")

_TAG_RE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,64}")
_KEY_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def topic(run):
    return _proto.TOPIC_PREFIX + _proto.check_run(run) + b"/" + TAG


def _depth(x):
    if isinstance(x, dict):
        return 1 + max((_depth(v) for v in x.values()), default=0)
    if isinstance(x, (list, tuple)):
        return 1 + max((_depth(v) for v in x), default=0)
    return 0


def _value_ok(v):
    return (isinstance(v, str) and len(v.encode("utf-8", "surrogatepass")) <= VALUE_MAX
            and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in v))


def check_tags(tags):
    if isinstance(tags, (str, bytes)) or not hasattr(tags, "__iter__"):
        raise TypeError(f"tags must be a list of strings, got {tags!r}")
    out = []
    for t in tags:
        if not isinstance(t, str) or not _TAG_RE.fullmatch(t):
            raise ValueError(f"tag must be 1..64 characters of [A-Za-z0-9._:/+=@-], got {t!r}")
        if t not in out:
            out.append(t)
    if len(out) > TAGS_MAX:
        raise ValueError(f"at most {TAGS_MAX} tags, got {len(out)}")
    return out


def check_labels(labels):
    if not isinstance(labels, dict):
        raise TypeError(f"labels must be a dict of str -> str, got {labels!r}")
    if len(labels) > LABELS_MAX:
        raise ValueError(f"at most {LABELS_MAX} labels, got {len(labels)}")
    out = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not _KEY_RE.fullmatch(k):
            raise ValueError(f"label key must be 1..64 characters of [A-Za-z0-9._-], got {k!r}")
        if not isinstance(v, str):
            v = str(v)
        if not _value_ok(v):
            raise ValueError(f"label {k!r}: value must be at most {VALUE_MAX} bytes of UTF-8 "
                             f"without control characters, got {v!r}")
        out[k] = v
    return out


def _jsonable(x, what):
    """x as plain JSON types (dict/list/str/int/float/bool/None); non-finite floats -> None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v, what) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, what) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    try:  # numpy scalars, torch numbers
        return _jsonable(x.item(), what)
    except (AttributeError, ValueError, TypeError):
        return str(x)


def make_document(config=None, tags=None, labels=None, client=None):
    """The metadata document (a dict) from the publisher's arguments, checked."""
    doc = {}
    for name, v in (("config", config), ("client", client)):
        if v is None:
            continue
        if not isinstance(v, dict):
            raise TypeError(f"{name} must be a dict, got {type(v).__name__}")
        v = _jsonable(v, name)
        if _depth(v) > DEPTH_MAX:
            raise ValueError(f"{name} is nested deeper than {DEPTH_MAX} levels")
        doc[name] = v
    if tags is not None:
        doc["tags"] = check_tags(tags)
    if labels is not None:
        doc["labels"] = check_labels(labels)
    ordered = {m: doc[m] for m in MEMBERS if m in doc}
    if len(document_bytes(ordered)) > DOC_MAX:
        raise ValueError(f"metadata document is over {DOC_MAX} bytes as JSON")
    return ordered


def document_bytes(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def encode(run, doc, incarnation, wall_ns=0):
    """(topic, body) of a metadata message; doc is a dict (make_document) or JSON bytes."""
    data = doc if isinstance(doc, (bytes, bytearray)) else document_bytes(doc)
    incarnation = _proto.check_incarnation(incarnation)
    if not 1 <= len(data) <= DOC_MAX:
        raise ValueError(f"document must be 1..{DOC_MAX} bytes, got {len(data)}")
    return topic(run), HEADER.pack(MAGIC, VERSION, incarnation, int(wall_ns)) + bytes(data)


def is_topic(topic_b):
    t = bytes(topic_b)
    if not t.startswith(_proto.TOPIC_PREFIX):
        return False
    rest = t[len(_proto.TOPIC_PREFIX):]
    slash = rest.find(b"/")
    return slash >= 0 and rest[slash + 1:] == TAG


def _reject(reason, msg):
    raise _proto.DecodeError(reason, msg)


def _check_doc(data):
    if b"\x00" in data:
        _reject("bad_meta", "NUL byte in the document")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _reject("bad_meta", "document is not UTF-8")

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError("repeated member")
        return dict(items)

    try:
        doc = json.loads(text, object_pairs_hook=pairs,
                         parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, RecursionError) as e:
        _reject("bad_meta", f"not a JSON document: {e}")
    if not isinstance(doc, dict):
        _reject("bad_meta", "document is not an object")
    for m in doc:
        if m not in MEMBERS:
            _reject("bad_meta", f"unknown member {m!r}")
    for m in ("config", "client"):
        if m in doc and (not isinstance(doc[m], dict) or _depth(doc[m]) > DEPTH_MAX):
            _reject("bad_meta", f"{m} is not an object of depth <= {DEPTH_MAX}")
    if "tags" in doc:
        tags = doc["tags"]
        if not isinstance(tags, list):
            _reject("bad_meta", "tags is not an array")
        if len(tags) > TAGS_MAX:
            _reject("meta_too_large", f"{len(tags)} tags")
        for t in tags:
            if not isinstance(t, str) or not _TAG_RE.fullmatch(t) or not t.isascii():
                _reject("bad_meta", f"bad tag {t!r}")
    if "labels" in doc:
        labels = doc["labels"]
        if not isinstance(labels, dict):
            _reject("bad_meta", "labels is not an object")
        if len(labels) > LABELS_MAX:
            _reject("meta_too_large", f"{len(labels)} labels")
        for k, v in labels.items():
            if not _KEY_RE.fullmatch(k) or not k.isascii() or not _value_ok(v):
                _reject("bad_meta", f"bad label {k!r}")
    return {m: doc[m] for m in MEMBERS if m in doc}


def decode(topic_b, body):
    """Validate a metadata message like a receiver; returns (run, incarnation, wall_ns, doc)."""
    t, b = bytes(topic_b), bytes(body)
    if not t.startswith(_proto.TOPIC_PREFIX):
        _reject("bad_topic", "topic does not start with gw1/")
    rest = t[len(_proto.TOPIC_PREFIX):]
    slash = rest.find(b"/")
    if slash < 0:
        _reject("bad_topic", "no / after the run")
    run_b = rest[:slash]
    if not _proto._RUN_RE.fullmatch(run_b) or rest[slash + 1:] != TAG:
        _reject("bad_name", f"not a metadata topic: {t!r}")
    if len(b) < 5:
        _reject("truncated", f"body of {len(b)} bytes")
    magic, version = struct.unpack_from("<IB", b, 0)
    if magic != MAGIC:
        _reject("bad_magic", f"magic 0x{magic:08x}")
    if version != VERSION:
        _reject("bad_version", f"version {version}")
    if len(b) < HEADER_SIZE:
        _reject("truncated", f"body of {len(b)} bytes < {HEADER_SIZE}")
    if b[5:8] != b"\0\0\0":
        _reject("bad_flags", "reserved bytes set")
    _, _, incarnation, wall_ns = HEADER.unpack_from(b, 0)
    if incarnation == 0:
        _reject("bad_incarnation", "incarnation 0")
    data = b[HEADER_SIZE:]
    if not data:
        _reject("bad_meta", "empty document")
    if len(data) > DOC_MAX:
        _reject("meta_too_large", f"document of {len(data)} bytes")
    return run_b.decode(), incarnation, wall_ns, _check_doc(data)
