#!/bin/sh
# bench/gpu_check.sh — the device path of gradwatch.torch.watch on a CUDA
# machine, in under 5 minutes: its tests, then the step-time overhead of
# watch(every=1, per_layer=True) on a ResNet-18 (32x32, batch 128) and the
# ~10M-parameter transformer (batch 16 x 64) on synthetic data, watched and
# plain blocks alternating ABBA in one process, printed as a table for
# bench/RESULTS.md. Where torch sees no CUDA device it says so and exits 0.
#
# Usage: bench/gpu_check.sh        (from anywhere; Debian's python3 by default,
#                                   GW_PYTHON3 overrides it)
set -eu
cd "$(dirname "$0")/.."
PY=${GW_PYTHON3:-/usr/bin/python3}
export PYTHONPATH="$PWD/client/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
    echo "gpu_check: no CUDA device visible to torch here: device path not measured (nothing run)"
    exit 0
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'

start=$(date +%s)
echo "== device tests (CUDA, and the device logic exercised on the CPU)"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/python/test_native.py \
    -k "cuda or fused_device" || { echo "gpu_check: device tests FAILED"; exit 1; }
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/python/test_torch.py \
    -k "device_watch or deferred or cache_and_chunking or accelerator" ||
    { echo "gpu_check: torch tests FAILED"; exit 1; }

echo "== overhead: watch(every=1, per_layer=True), ABBA, same run"
timeout 200 "$PY" bench/bench_client.py --device cuda --models resnet,transformer \
    --configs main --path torch --blocks 10 --block 10 --skip-throughput ||
    { echo "gpu_check: benchmark FAILED or timed out"; exit 1; }
echo "gpu_check: done in $(( $(date +%s) - start )) s"
