"""gradwatch._layout: the torch client's layout planner, without torch.

Plans are checked against expectations worked out by hand (offsets, stream
ids, chunks and segments), and against a NumPy model of the data flow: a
random layout sharded over ranks, each rank's buffers filled from its pieces
the way gradwatch.torch fills them, must reproduce every coordinate of the
global gradient once, under the right stream. The import graph is checked
in fresh interpreters.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from gradwatch import _layout as L

# A layout with an empty parameter, used by several cases:
#   a: 0..5, b: (empty, at 6), c: 6..9, d: 10..19
LAYOUT = [("a", 6), ("b", 0), ("c", 4), ("d", 10)]


def test_offsets():
    offs, d = L.offsets(LAYOUT)
    assert offs == [("a", 0, 6), ("b", 6, 0), ("c", 6, 4), ("d", 10, 10)]
    assert d == 20
    with pytest.raises(ValueError, match="negative"):
        L.offsets([("a", 3), ("b", -1)])
    with pytest.raises(ValueError, match="no parameters"):
        L.offsets([])
    with pytest.raises(ValueError, match="too large"):
        L.offsets([("a", 1 << 46), ("b", 1 << 46), ("c", 1)])
    assert L.offsets([("a", 1 << 47)])[1] == L.COORD_LIMIT


def test_streams_per_layer():
    names = [n for n, _ in LAYOUT]
    st = L.streams(names, True)
    assert st.tags == ["all", "a", "b", "c", "d"]
    assert st.layer_sid == [0, 1, 2, 3]
    assert (st.nlayer, st.nstreams) == (4, 4)  # no "rest" stream
    st = L.streams(names, ["d", "a"])  # layout order, not the caller's
    assert st.tags == ["all", "a", "d"]
    assert st.layer_sid == [0, 2, 2, 1]  # b and c share the rest id 2
    assert (st.nlayer, st.nstreams) == (2, 3)
    for off in (False, None):
        st = L.streams(names, off)
        assert st.tags == ["all"] and st.layer_sid == [0, 0, 0, 0]
        assert (st.nlayer, st.nstreams) == (0, 1)


def test_streams_errors():
    with pytest.raises(ValueError, match="unknown"):
        L.streams(["a"], ["a", "zz"])
    with pytest.raises(TypeError, match="per_layer"):
        L.streams(["a"], "a")
    with pytest.raises(ValueError, match="'all'"):
        L.streams(["all", "b"], True)

    def check_tag(n):
        if " " in n:
            raise ValueError("bad")
    with pytest.raises(ValueError, match="a b.weight"):
        L.streams(["a b.weight"], True, check_tag)
    assert L.streams(["a b.weight", "ok"], ["ok"], check_tag).tags == ["all", "ok"]


def test_check_pieces():
    assert L.check_pieces([(10, 4, 2, None), (3, 0, 0, 3)], 20) == \
        [L.Piece(4, 2, 8), L.Piece(0, 0, 3)]
    with pytest.raises(ValueError, match=r"shards\[0\]: start=4, length=7 outside"):
        L.check_pieces([(10, 0, 4, 7)], 20)
    with pytest.raises(ValueError, match="start=-1"):
        L.check_pieces([(10, 0, -1, 2)], 20)
    with pytest.raises(ValueError, match="outside the 20 coordinates"):
        L.check_pieces([(10, 15, 0, None)], 20)
    with pytest.raises(ValueError, match=r"shards\[1\] and shards\[0\] overlap"):
        L.check_pieces([(5, 5, 0, None), (6, 0, 0, None)], 20)
    L.check_pieces([(5, 5, 0, None), (5, 0, 0, None)], 20)  # touching is fine


def test_layers_of():
    offs, _ = L.offsets(LAYOUT)
    # The empty b counts where it lies strictly inside the range (a piece
    # whose gradient is None then also withholds b's stream), not at its ends.
    assert L.layers_of(offs, 0, 20) == [0, 1, 2, 3]
    assert L.layers_of(offs, 6, 4) == [2]
    assert L.layers_of(offs, 0, 6) == [0]
    assert L.layers_of(offs, 5, 2) == [0, 1, 2]
    assert L.layers_of(offs, 10, 1) == [3]
    assert L.layers_of(offs, 20, 0) == []


def test_replicated_plan_by_hand():
    """One piece per parameter (an unsharded model), chunks of 8 coordinates."""
    offs, d = L.offsets(LAYOUT)
    st = L.streams([n for n, _ in LAYOUT], True)
    pieces = L.check_pieces([(n, o, 0, n) for _, o, n in offs], d)
    plan = L.plan_chunks(pieces, ["cpu"] * 4, offs, st.layer_sid, 8)
    assert list(plan) == ["cpu"]
    c0, c1, c2 = plan["cpu"]
    S = L.Segment
    assert (c0.n, c0.pieces, c0.segments) == (8, [(0, 0, 6), (2, 0, 2)],
                                              [S(0, 6, 0, 0), S(6, 2, 2, 6)])
    assert (c1.n, c1.pieces, c1.segments) == (8, [(2, 2, 2), (3, 0, 6)],
                                              [S(0, 2, 2, 8), S(2, 6, 3, 10)])
    assert (c2.n, c2.pieces, c2.segments) == (4, [(3, 6, 4)], [S(0, 4, 3, 16)])
    # Per stream, the segments add up to the parameter's numel; in all, to d.
    per_sid = {}
    for ch in plan["cpu"]:
        for seg in ch.segments:
            per_sid[seg.sid] = per_sid.get(seg.sid, 0) + seg.length
    assert per_sid == {0: 6, 2: 4, 3: 10}
    assert sum(ch.n for ch in plan["cpu"]) == d


def test_sharded_plan_by_hand():
    """Flat shards of 7, 7 and 6 coordinates over three ranks (FSDP style):
    one piece per rank, spanning parameter boundaries."""
    offs, d = L.offsets(LAYOUT)
    st = L.streams([n for n, _ in LAYOUT], ["a", "d"])  # c goes to the rest, id 2
    want = [
        [L.Segment(0, 6, 0, 0), L.Segment(6, 1, 2, 6)],
        [L.Segment(0, 3, 2, 7), L.Segment(3, 4, 1, 10)],
        [L.Segment(0, 6, 1, 14)],
    ]
    covered = []
    for rank, (start, length) in enumerate([(0, 7), (7, 7), (14, 6)]):
        pieces = L.check_pieces([(length, start, 0, None)], d)
        plan = L.plan_chunks(pieces, ["dev"], offs, st.layer_sid, 1 << 20)
        (ch,) = plan["dev"]
        assert ch.pieces == [(0, 0, length)]
        assert ch.segments == want[rank]
        covered += [(s.offset, s.offset + s.length) for s in ch.segments]
    # The ranks' segments tile 0..d exactly once.
    covered.sort()
    assert covered[0][0] == 0 and covered[-1][1] == d
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))


def test_devices_and_empty_pieces():
    offs, d = L.offsets(LAYOUT)
    st = L.streams([n for n, _ in LAYOUT], True)
    pieces = L.check_pieces([(n, o, 0, n) for _, o, n in offs], d)
    plan = L.plan_chunks(pieces, ["gpu1", "gpu0", "gpu1", "gpu0"], offs, st.layer_sid, 100)
    assert list(plan) == ["gpu1", "gpu0"]  # first appearance; b (empty) makes no chunk
    assert [c.pieces for c in plan["gpu1"]] == [[(0, 0, 6), (2, 0, 4)]]
    assert [c.pieces for c in plan["gpu0"]] == [[(3, 0, 10)]]
    assert plan["gpu1"][0].segments == [L.Segment(0, 6, 0, 0), L.Segment(6, 4, 2, 6)]
    only_b = L.plan_chunks([L.Piece(6, 0, 0)], ["x"], offs, st.layer_sid, 100)
    assert only_b == {}
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="chunk_coords"):
            L.plan_chunks(pieces, ["cpu"] * 4, offs, st.layer_sid, bad)


@pytest.mark.parametrize("seed", range(6))
def test_random_shards_move_every_coordinate_once(seed):
    """NumPy model of the data flow: tensors hold slices of a random global
    gradient; filling each chunk's buffer from its pieces and reading its
    segments must give back g[offset:offset+length] under the stream of the
    parameter there, and every coordinate exactly once over all ranks."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 9, size=rng.integers(1, 7))
    sizes[rng.integers(len(sizes))] += 1  # at least one coordinate
    layout = [(f"p{i}", int(n)) for i, n in enumerate(sizes)]
    offs, d = L.offsets(layout)
    names = [n for n, _ in layout]
    chosen = [n for n in names if rng.random() < 0.6]
    st = L.streams(names, chosen)
    g = rng.standard_normal(d)
    sid_at = np.repeat(np.array(st.layer_sid, dtype=int), sizes)  # stream of each coordinate
    # Cut 0..d into runs, deal them to 3 ranks; each run lives at a random
    # start inside a padded tensor of its rank.
    cuts = np.unique(np.concatenate([[0, d], rng.integers(0, d + 1, size=4)]))
    runs = list(zip(cuts[:-1], cuts[1:]))
    hits = np.zeros(d, dtype=int)
    per_sid = np.zeros(st.nstreams)
    for rank in range(3):
        mine = [r for i, r in enumerate(runs) if i % 3 == rank]
        tensors, spec, keys = [], [], []
        for a, b in mine:
            pad = int(rng.integers(0, 3))
            t = np.concatenate([rng.standard_normal(pad), g[a:b], rng.standard_normal(2)])
            tensors.append(t)
            spec.append((t.size, int(a), pad, int(b - a)))
            keys.append(int(rng.integers(2)))  # two devices
        pieces = L.check_pieces(spec, d)
        chunk = int(rng.integers(1, 6))
        for chunks in L.plan_chunks(pieces, keys, offs, st.layer_sid, chunk).values():
            for ch in chunks:
                assert 0 < ch.n <= chunk
                buf = np.concatenate([tensors[pi][s:s + ln] for pi, s, ln in ch.pieces])
                assert buf.size == ch.n
                pos = 0
                for seg in ch.segments:
                    assert seg.start == pos and seg.length > 0
                    pos += seg.length
                    got = buf[seg.start:seg.start + seg.length]
                    assert np.array_equal(got, g[seg.offset:seg.offset + seg.length])
                    assert (sid_at[seg.offset:seg.offset + seg.length] == seg.sid).all()
                    hits[seg.offset:seg.offset + seg.length] += 1
                    per_sid[seg.sid] += got.sum()
                assert pos == ch.n
    assert (hits == 1).all()
    want = np.zeros(st.nstreams)
    np.add.at(want, sid_at, g)
    assert np.allclose(per_sid, want, rtol=1e-12, atol=1e-12)


def _fresh(code):
    """Run code in a fresh interpreter with client/python first on the path."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(here, "..", "..", "client", "python") + os.pathsep + \
        env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_import_graph():
    # The planner and the publisher load without torch; the publisher never
    # loads gradwatch.torch (no import circle).
    r = _fresh("import sys, gradwatch._layout, gradwatch.publisher\n"
               "bad = [m for m in ('torch', 'gradwatch.torch', 'gradwatch._kernels') "
               "if m in sys.modules]\n"
               "assert not bad, bad")
    assert r.returncode == 0, r.stderr
    pytest.importorskip("torch")
    # The kernels need torch but not the watch module.
    r = _fresh("import sys, gradwatch._kernels\n"
               "assert 'gradwatch.torch' not in sys.modules")
    assert r.returncode == 0, r.stderr
