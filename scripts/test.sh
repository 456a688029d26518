#!/usr/bin/env bash
# test.sh — the test command of README.md: installs what it needs (Debian
# packages, npm packages), builds, and runs every test twice: once plainly
# (warnings as errors) and once under AddressSanitizer + UBSan.
#   GW_TEST_QUICK=1  skip the sanitizer pass (local iteration only; CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-$(nproc)}

bash scripts/deps.sh
if [ -f web/package-lock.json ]; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

run_pass() { # name, cmake flags...
  local dir="$ROOT/build-test-$1"; shift
  echo "=== configure+build $dir"
  cmake -S "$ROOT" -B "$dir" -DGW_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS"
  echo "=== ctest ($dir)"
  ctest --test-dir "$dir" --output-on-failure -j"$JOBS" --timeout 300
}

run_pass plain -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "${GW_TEST_QUICK:-0}" != 1 ]; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_pass asan -DCMAKE_BUILD_TYPE=Debug -DGW_SANITIZE=ON -DGW_BUILD_BENCH=OFF
fi
echo "=== all tests passed"
