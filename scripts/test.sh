#!/usr/bin/env bash
# test.sh — the test command of README.md: installs what it needs (Debian
# packages, npm packages), builds, and runs every test twice: once plainly
# (warnings as errors), once under AddressSanitizer + UBSan and once under
# ThreadSanitizer.
#   GW_TEST_QUICK=1  skip the sanitizer passes (local iteration only; CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-$(nproc)}

bash scripts/deps.sh
if [ -f web/package-lock.json ]; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

run_pass() { # name, cmake flags... [-- ctest flags...]
  local dir="$ROOT/build-test-$1"; shift
  local cm=() ct=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do cm+=("$1"); shift; done
  [ $# -gt 0 ] && shift && ct=("$@")
  echo "=== configure+build $dir"
  cmake -S "$ROOT" -B "$dir" -DGW_WERROR=ON "${cm[@]}" >/dev/null
  cmake --build "$dir" -j"$JOBS"
  echo "=== ctest ($dir)"
  local t0=$SECONDS
  ctest --test-dir "$dir" --output-on-failure -j"$JOBS" --timeout 300 "${ct[@]}"
  echo "=== ctest ($dir) took $((SECONDS - t0)) s"
}

run_pass plain -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "${GW_TEST_QUICK:-0}" != 1 ]; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_pass asan -DCMAKE_BUILD_TYPE=Debug -DGW_SANITIZE=ON -DGW_BUILD_BENCH=OFF
  # ThreadSanitizer: the unit tests and the daemon integration tests (ctest
  # hands them this build's gradwatchd and CLI, so every daemon thread runs
  # instrumented). Left out: the Python client suite (pure Python, no C
  # code of ours runs in it), the fuzz targets (libFuzzer builds its own
  # ASan binaries; they are single-threaded) and the browser e2e test (it
  # drives the same daemon threads as the integration tests, and Chromium
  # under a TSan daemon's slowdown only adds time). Reports in third-party
  # code only are suppressed in tests/tsan.supp. OPENBLAS_NUM_THREADS=1: the
  # daemon runs OpenBLAS single-threaded (openblas_set_num_threads(1) in
  # main.c); unit tests calling the engine directly must too, or OpenBLAS's
  # own pool, which syncs by spinning on plain memory, reads as races.
  # GW_TEST_TIME_SCALE stretches the Python tests' deadlines for TSan's
  # slowdown.
  OPENBLAS_NUM_THREADS=1 GW_TEST_TIME_SCALE=3 \
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ROOT/tests/tsan.supp" \
    run_pass tsan -DCMAKE_BUILD_TYPE=Debug -DGW_TSAN=ON -DGW_BUILD_BENCH=OFF \
      -- -L "unit|integration"
fi
echo "=== all tests passed"
