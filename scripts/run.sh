#!/usr/bin/env bash
# run.sh — the README's run command: installs what's missing, builds, then
# starts gradwatchd (embedded SQLite at ./gradwatch.db) and a live demo: a
# real PyTorch training run on scikit-learn's digits that publishes to it.
# Open http://127.0.0.1:8080 . Ctrl-C stops both.
#   GW_HTTP=ADDR:PORT  GW_ZMQ=ENDPOINT  GW_DB=PATH   override the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GW_HTTP=${GW_HTTP:-127.0.0.1:8080}
GW_ZMQ=${GW_ZMQ:-tcp://127.0.0.1:5557}
GW_DB=${GW_DB:-./gradwatch.db}

GW_WITH_BROWSER=0 bash scripts/deps.sh
(cd web && npm ci --no-audit --no-fund --loglevel=error)   # uPlot, embedded into the binary
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGW_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target gradwatchd gradwatch_cli

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

./build/daemon/gradwatchd --zmq "$GW_ZMQ" --http "$GW_HTTP" --db "$GW_DB" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$GW_HTTP/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "gradwatch: dashboard at http://$GW_HTTP  (Ctrl-C to stop)"

# Two demo runs: a healthy SGD run and an Adam run, forever, at a watchable pace.
PYTHONPATH="$ROOT/client/python" /usr/bin/python3 examples/train_digits.py \
  --endpoint "$GW_ZMQ" --run demo-sgd --model mlp --opt sgd --per-layer --loop --sleep 0.05 &
pids+=($!)
PYTHONPATH="$ROOT/client/python" /usr/bin/python3 examples/train_digits.py \
  --endpoint "$GW_ZMQ" --run demo-adam-cnn --model cnn --opt adam --per-layer --loop --sleep 0.05 &
pids+=($!)
wait -n "${pids[@]}"
