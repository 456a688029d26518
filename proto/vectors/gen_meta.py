#!/usr/bin/python3
"""gen_meta.py -- golden and malformed run-metadata frames (proto/PROTOCOL.md section 11).

An independent encoder of the metadata message, written from PROTOCOL.md
with nothing but Python's struct and json (it shares no code with
proto/meta.c, daemon/runmeta.c or client/python). It writes:

  proto/vectors/meta_frames.json  golden frames (fields, the document as JSON)
                                  and malformed frames with their expected reason
  tests/fuzz/corpus/proto/meta_*  the same frames as libFuzzer seeds
                                  (u16 LE topic length, topic, body)

and, with --markdown, prints the golden-frame part of PROTOCOL.md section 11.

Usage: /usr/bin/python3 proto/vectors/gen_meta.py [--markdown]
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# section 11.2: magic "GWMD", version 1, three reserved zero bytes,
# u64 incarnation, i64 wall_ns; the JSON document follows.
HEADER = struct.Struct("<IB3xQq")
assert HEADER.size == 24
MAGIC = 0x444D5747
DOC_MAX = 65536


def topic(run):
    return b"gw1/" + run.encode() + b"/@meta"


def doc_bytes(doc):
    if isinstance(doc, (bytes, bytearray)):
        return bytes(doc)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def body(doc, incarnation=0x0123456789ABCDEF, wall_ns=1767225600000000000, version=1, magic=MAGIC):
    return struct.pack("<IB3xQq", magic, version, incarnation, wall_ns) + doc_bytes(doc)


GOLDEN = [
    ("meta_full", "every member: config, tags, labels, client",
     "run-1", 0x8877665544332211, 1767225600123456789,
     {"config": {"lr": 0.001, "batch": 64, "model": {"layers": 12, "act": "gelu"}},
      "tags": ["baseline", "adam"],
      "labels": {"team": "vision", "dataset": "cifar10"},
      "client": {"host": "node-7", "pid": 4242, "gradwatch": "0.1.0"}}),
    ("meta_tags_only", "one member; the others are absent",
     "exp:a_b.c", 1, 0, {"tags": ["x"]}),
    ("meta_empty", "the empty document: valid, clears nothing but says nothing",
     "r", 0xFFFFFFFFFFFFFFFF, -1, {}),
    ("meta_unicode", "UTF-8 in a label value and in config",
     "run-u", 7, 5, {"labels": {"owner": "Zoë 李"}, "config": {"note": "κ≈1"}}),
]


def golden():
    out = []
    for name, about, run, inc, wall, doc in GOLDEN:
        t, b = topic(run), body(doc, inc, wall)
        out.append({"name": name, "about": about, "topic": t.decode(), "topic_hex": t.hex(),
                    "body": b.hex(), "fields": {"run": run, "version": 1,
                                                 "incarnation": str(inc), "wall_ns": str(wall)},
                    "doc": doc})
    return out


def malformed():
    good = {"tags": ["a"]}
    t = topic("run-1")
    out = []

    def add(name, reason, tp=t, b=None):
        b = body(good) if b is None else b
        out.append({"name": name, "topic_hex": tp.hex(), "body": b.hex(), "reason": reason})

    add("not_meta_tag", "bad_name", tp=b"gw1/run-1/@met")  # a tag with '@': not metadata
    add("bad_run", "bad_name", tp=b"gw1/run 1/@meta")
    add("empty_run", "bad_name", tp=b"gw1//@meta")
    add("short_body", "truncated", b=b"GWM")
    add("bad_magic", "bad_magic", b=body(good, magic=0x4B535747))
    add("bad_version", "bad_version", b=body(good, version=2))
    add("short_header", "truncated", b=body(good)[:20])
    add("reserved_set", "bad_flags", b=body(good)[:5] + b"\x01" + body(good)[6:])
    add("incarnation_zero", "bad_incarnation", b=body(good, incarnation=0))
    add("empty_doc", "bad_meta", b=body(b""))
    add("not_json", "bad_meta", b=body(b"{config:1}"))
    add("trailing_garbage", "bad_meta", b=body(b'{"tags":["a"]} x'))
    add("not_object", "bad_meta", b=body([1, 2]))
    add("unknown_member", "bad_meta", b=body({"tags": ["a"], "extra": 1}))
    add("repeated_member", "bad_meta", b=body(b'{"tags":["a"],"tags":["b"]}'))
    add("config_not_object", "bad_meta", b=body({"config": [1]}))
    add("config_too_deep", "bad_meta", b=body({"config": json.loads('{"a":' * 17 + '1' + '}' * 17)}))
    add("tags_not_array", "bad_meta", b=body({"tags": "a"}))
    add("tag_not_string", "bad_meta", b=body({"tags": [1]}))
    add("tag_empty", "bad_meta", b=body({"tags": [""]}))
    add("tag_bad_char", "bad_meta", b=body({"tags": ["a b"]}))
    add("tag_too_long", "bad_meta", b=body({"tags": ["a" * 65]}))
    add("too_many_tags", "meta_too_large", b=body({"tags": ["t%d" % i for i in range(65)]}))
    add("labels_not_object", "bad_meta", b=body({"labels": ["a"]}))
    add("label_not_string", "bad_meta", b=body({"labels": {"a": 1}}))
    add("label_key_bad_char", "bad_meta", b=body({"labels": {"a/b": "x"}}))
    add("label_key_too_long", "bad_meta", b=body({"labels": {"k" * 65: "x"}}))
    add("label_value_too_long", "bad_meta", b=body({"labels": {"k": "v" * 257}}))
    add("label_value_control", "bad_meta", b=body({"labels": {"k": "a\nb"}}))
    add("label_repeated", "bad_meta", b=body(b'{"labels":{"k":"a","k":"b"}}'))
    add("too_many_labels", "meta_too_large",
        b=body({"labels": {"k%d" % i: "v" for i in range(65)}}))
    add("client_not_object", "bad_meta", b=body({"client": "x"}))
    add("bad_utf8", "bad_meta", b=body(b'{"labels":{"k":"\xff"}}'))
    add("nul_in_doc", "bad_meta", b=body(b'{"tags":["a"]}\x00'))
    return out


def hexlines(data, width=32):
    h = data.hex()
    return [h[i:i + 2 * width] for i in range(0, len(h), 2 * width)]


def markdown(gold):
    out = ["<!-- meta-golden-frames: generated by `proto/vectors/gen_meta.py --markdown` -->"]
    for e in gold:
        b = bytes.fromhex(e["body"])
        out += ["### `%s`" % e["name"], "", "About: %s." % e["about"], "",
                "- topic: `%s` (%d bytes)" % (e["topic"], len(e["topic"])),
                "- header: magic `GWMD`, version 1, incarnation %s (0x%016X), wall_ns %s"
                % (e["fields"]["incarnation"], int(e["fields"]["incarnation"]),
                   e["fields"]["wall_ns"]),
                "- document (%d bytes): `%s`" % (len(b) - 24, b[24:].decode()),
                "- body (%d bytes):" % len(b), "", "```"] + hexlines(b) + ["```", ""]
    out.append("<!-- end meta-golden-frames -->")
    return "\n".join(out) + "\n"


def corpus(groups):
    d = os.path.join(ROOT, "tests", "fuzz", "corpus", "proto")
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old.startswith("meta_"):
            os.remove(os.path.join(d, old))
    for prefix, items in groups:
        for e in items:
            tp = bytes.fromhex(e["topic_hex"])
            b = bytes.fromhex(e["body"])
            name = e["name"] if e["name"].startswith("meta_") else "meta_" + e["name"]
            with open(os.path.join(d, name if prefix == "golden" else "meta_bad_" + e["name"]),
                      "wb") as f:
                f.write(struct.pack("<H", len(tp)) + tp + b)


def main():
    gold, bad = golden(), malformed()
    if "--markdown" in sys.argv[1:]:
        sys.stdout.write(markdown(gold))
        return
    doc = {"about": "gradwatch run-metadata test vectors (proto/PROTOCOL.md section 11); "
                    "generated by proto/vectors/gen_meta.py, do not edit",
           "golden": gold, "malformed": bad}
    with open(os.path.join(HERE, "meta_frames.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    corpus([("golden", gold), ("malformed", bad)])


if __name__ == "__main__":
    main()
