"""gradwatch: publish sketched gradients of a training run to gradwatchd.

    import gradwatch
    pub = gradwatch.Publisher("tcp://127.0.0.1:5557", run="r1", k=256, seed=0,
                              kind="sjlt", s=4)
    pub.publish("all", step, grad)          # numpy array or torch tensor
    pub.publish_sketch("all", step, z)      # an already projected z, length k
    z = pub.sketch(grad)                    # float64 numpy array, the S of C
    w = gradwatch.torch.watch(model, pub, per_layer=True, every=1)
    w.log(step, loss=loss, lr=lr)           # after loss.backward()
    w.close(); pub.close(); pub.dropped

The sketch z = S g (proto/SKETCH.md) is computed in float64 and sent as
f32 (default), f16 or bf16 (Publisher(dtype=...)) in the wire format of
proto/PROTOCOL.md (version 2): a topic frame b"gw1/<run>/<tag>" and a 72-byte
header plus payload. Sends never block: messages no subscriber would receive,
or that meet a full queue (SNDHWM), are counted in Publisher.dropped.
Publisher.connected says whether a daemon is subscribed to the run, and a
gradwatch.NoSubscriberWarning is issued once if none is 5 s after the first
publish. Each Publisher is one incarnation of its run (Publisher.incarnation,
a random id in every message): rerunning a script, or resuming it from a
checkpoint, starts the run's streams afresh in the daemon.

Flattening order. A gradient array is flattened row-major (numpy C order,
torch .reshape(-1)). gradwatch.torch.watch defines the model's gradient as the
concatenation, in model.named_parameters() order, of the flattened .grad of
every parameter with requires_grad=True; a parameter's global offset is the
cumulative numel of the parameters before it. Stream "all" is the sketch of
that vector; the per-layer stream of a parameter is its gradient sketched at
its global offset (pub.sketch(g, offset=off)), so per-layer sketches sum
exactly to "all" (column i of S depends only on (seed, i)).

Errors. Bad arguments raise TypeError (wrong type) or ValueError (bad value)
naming the argument: run/tag outside PROTOCOL.md's grammar, k outside
1..65536, s outside 1..8 or above k, a sketch of the wrong length, a step
outside 0..2^63-1, non-finite grad_norm/loss/lr. publish() rejects a gradient
holding NaN or Inf with ValueError (the daemon would drop it); watch() instead
skips such a stream for that step and counts it (never interrupting training).

Reading back. gradwatch.Client(url, token=None) reads a daemon's runs,
streams, series (a pandas DataFrame indexed by step), alerts and regime
summaries over HTTP; see gradwatch.client.

Environment. Left out, Publisher's endpoint comes from GRADWATCH_ENDPOINT
(else tcp://127.0.0.1:5557) and its run from GRADWATCH_RUN; Client's url
from GRADWATCH_SERVER and its token from GRADWATCH_TOKEN. Explicit
arguments win.

gradwatch.torch is imported on first use, so the NumPy-only parts work without
PyTorch.
"""

from ._proto import DecodeError, Message, decode, encode
from ._sketch import Sketcher, check_params, hash64, sketch, sketch_matrix
from .client import (BadRequest, Client, DaemonUnavailable, GradwatchError, NotFound, ServerError,
                     Unauthorized, UnknownRun, UnknownStream)
from .publisher import NoSubscriberWarning, Publisher

__version__ = "0.1.0"
__all__ = ["Publisher", "NoSubscriberWarning", "Sketcher", "sketch", "sketch_matrix", "hash64", "check_params",
           "encode", "decode", "DecodeError", "Message", "torch",
           "Client", "GradwatchError", "DaemonUnavailable", "Unauthorized", "NotFound", "UnknownRun",
           "UnknownStream", "BadRequest", "ServerError"]


def __getattr__(name):
    if name == "torch":
        import importlib
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
