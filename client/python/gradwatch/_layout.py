"""gradwatch._layout: where a model's gradient coordinates go. Pure Python,
no torch: the plan is a function of names, sizes and offsets only.

    offsets(layout)                    -> [(name, global offset, numel)], d
    streams(names, per_layer)          -> Streams: the tags published and the
                                          stream id of every parameter
    check_pieces(pieces, d)            -> the (offset, start, length) this
                                          process holds, validated
    plan_chunks(pieces, keys, offs, layer_sid, chunk_coords)
                                       -> per device key, Chunks of at most
                                          chunk_coords coordinates, cut into
                                          Segments at layer boundaries

Flattening order (normative for gradwatch.torch): the model's gradient is the
concatenation, in layout order, of each parameter's row-major flattened
gradient; a parameter's global offset is the total numel before it.

Streams: "all" (the whole gradient) and one per chosen parameter, tagged
with its name. Stream ids number the chosen parameters 0..nlayer-1; the
parameters not chosen share one extra, unpublished id nlayer (the "rest"),
which exists only when some parameter is not chosen, so the streams'
sketches always add up to "all".

Pieces (sharded gradients): piece i says "coordinates offset..offset+length-1
of the global gradient are elements start..start+length-1 of my tensor i".
A rank's pieces may not overlap; a piece may span several parameters.
Chunks gather the pieces of one device into buffers of at most chunk_coords
coordinates; a chunk's Segments are its maximal runs inside one parameter,
in buffer order: (start in the buffer, length, stream id, global offset).
"""

import bisect
from typing import NamedTuple

# Largest global coordinate + 1 supported (the gaussian hash computes
# i * 65536 in int64).
COORD_LIMIT = 1 << 47

__all__ = ["COORD_LIMIT", "Streams", "Piece", "Segment", "Chunk", "offsets", "streams",
           "check_pieces", "layers_of", "plan_chunks"]


class Streams(NamedTuple):
    tags: list        # "all", then the chosen parameter names in layout order
    chosen: list      # the chosen parameter names
    layer_sid: list   # stream id of every parameter, in layout order
    nlayer: int       # published per-layer streams
    nstreams: int     # stream ids in use (nlayer, + 1 for the rest if any)


class Piece(NamedTuple):
    offset: int  # global coordinate of the piece's first element
    start: int   # first element in the tensor's flattened gradient
    length: int


class Segment(NamedTuple):
    start: int   # in the chunk's buffer
    length: int
    sid: int     # stream id
    offset: int  # global coordinate of start


class Chunk:
    """A run of one device's coordinates, sketched from one buffer."""
    __slots__ = ("pieces", "n", "segments")

    def __init__(self):
        self.pieces = []    # (piece index, start in its flat gradient, length)
        self.n = 0          # coordinates (buffer length)
        self.segments = []  # Segment, in buffer order

    def __repr__(self):
        return f"Chunk(pieces={self.pieces!r}, n={self.n}, segments={self.segments!r})"


def offsets(layout):
    """[(name, numel)] -> ([(name, offset, numel)], total d); ValueError on bad input."""
    out, off = [], 0
    for name, n in layout:
        if n < 0:
            raise ValueError(f"layout: parameter {name!r} has negative numel {n}")
        out.append((name, off, n))
        off += n
    if not out:
        raise ValueError("the model has no parameters that require grad")
    if off > COORD_LIMIT:
        raise ValueError(f"model too large: {off} coordinates > 2^47")
    return out, off


def streams(names, per_layer, check_tag=None):
    """The streams for per_layer (True, False/None, or a collection of names).

    check_tag(name) raises ValueError for a name that is not a valid tag.
    """
    if per_layer is True:
        chosen = list(names)
    elif per_layer is False or per_layer is None:
        chosen = []
    else:
        if isinstance(per_layer, str):
            raise TypeError("per_layer must be a bool or a collection of parameter names")
        want = set(per_layer)
        unknown = want - set(names)
        if unknown:
            raise ValueError(f"per_layer names unknown parameters: {sorted(unknown)!r:.200}")
        chosen = [n for n in names if n in want]
    for n in chosen:
        if n == "all":
            raise ValueError("a parameter named 'all' clashes with the stream 'all'")
        if check_tag is not None:
            try:
                check_tag(n)
            except ValueError:
                raise ValueError(f"parameter name {n!r} is not a valid tag (1..128 of "
                                 f"[A-Za-z0-9._:/-]); pass per_layer as a list of names "
                                 f"to skip it") from None
    sid_of = {n: i for i, n in enumerate(chosen)}
    rest = len(chosen)
    nstreams = len(chosen) + (1 if len(chosen) < len(names) else 0)
    return Streams(["all"] + chosen, chosen, [sid_of.get(n, rest) for n in names],
                   len(chosen), nstreams)


def check_pieces(pieces, d):
    """Validate [(numel of the tensor, offset, start, length or None)] against d
    coordinates; returns [Piece]. ValueError names the bad piece."""
    out = []
    for idx, (numel, offset, start, length) in enumerate(pieces):
        start = int(start)
        length = numel - start if length is None else int(length)
        if start < 0 or length < 0 or start + length > numel:
            raise ValueError(f"shards[{idx}]: start={start}, length={length} outside a "
                             f"tensor of {numel} elements")
        if offset < 0 or offset + length > d:
            raise ValueError(f"shards[{idx}]: offset={offset} + length={length} outside "
                             f"the {d} coordinates of the layout")
        out.append(Piece(int(offset), start, length))
    order = sorted(range(len(out)), key=lambda i: out[i].offset)
    for a, b in zip(order, order[1:]):
        if out[a].offset + out[a].length > out[b].offset:
            raise ValueError(f"shards[{a}] and shards[{b}] overlap")
    return out


def layers_of(offs, offset, length):
    """Indices of the parameters that [offset, offset+length) intersects."""
    return [li for li, (_, o, n) in enumerate(offs) if o < offset + length and offset < o + n]


def _add_segments(ch, offs, starts, layer_sid, goff, n):
    """Append global range [goff, goff+n), cut at parameter boundaries, to ch
    at buffer position ch.n (ch.n itself is not advanced here)."""
    end, b0 = goff + n, ch.n
    li = bisect.bisect_right(starts, goff) - 1
    while goff < end:
        while offs[li][1] + offs[li][2] <= goff:
            li += 1
        lend = min(end, offs[li][1] + offs[li][2])
        ch.segments.append(Segment(b0, lend - goff, layer_sid[li], goff))
        b0 += lend - goff
        goff = lend


def plan_chunks(pieces, keys, offs, layer_sid, chunk_coords):
    """Chunks per device: keys[i] is piece i's device (any hashable). Returns a
    dict key -> [Chunk] in order of first appearance; pieces are taken in
    the given order and each chunk holds at most chunk_coords coordinates."""
    if isinstance(chunk_coords, bool) or not isinstance(chunk_coords, int) or chunk_coords < 1:
        raise ValueError(f"chunk_coords must be a positive int, got {chunk_coords!r}")
    starts = [o for _, o, _ in offs]
    groups = {}
    for pi, (p, key) in enumerate(zip(pieces, keys)):
        chunks = groups.get(key, [])
        pos = 0
        while pos < p.length:
            if not chunks or chunks[-1].n >= chunk_coords:
                chunks.append(Chunk())
            ch = chunks[-1]
            take = min(p.length - pos, chunk_coords - ch.n)
            _add_segments(ch, offs, starts, layer_sid, p.offset + pos, take)
            ch.pieces.append((pi, p.start + pos, take))
            ch.n += take
            pos += take
        if chunks:  # an empty piece makes no (empty) group
            groups[key] = chunks
    return groups
