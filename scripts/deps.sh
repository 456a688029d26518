#!/usr/bin/env bash
# deps.sh — install the Debian packages gradwatch builds, tests and runs with
# (help2man: the man pages; lintian: the .deb's check in test_package.py;
# prometheus-alertmanager: the Alertmanager push test; snappy and protobuf-c:
# the remote-write sink; pandas: the notebook client's DataFrames).
# Idempotent: only calls apt-get when something is missing.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config clang
  libuv1-dev libzmq3-dev libsqlite3-dev sqlite3 libopenblas-dev liblapacke-dev
  libmicrohttpd-dev libinih-dev libcjson-dev libcurl4-openssl-dev libsystemd-dev
  libcmocka-dev
  python3 python3-numpy python3-zmq python3-torch python3-sklearn python3-pytest
  prometheus prometheus-alertmanager systemd curl nodejs
  help2man lintian fakeroot
  libsnappy-dev libprotobuf-c-dev protobuf-c-compiler libzstd-dev python3-pandas
)
# The dashboard's browser test needs Chromium; the run command does not.
if [ "${GW_WITH_BROWSER:-1}" = 1 ]; then PKGS+=(chromium); fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# nodejs from Debian ships npm separately; a nodesource nodejs bundles it.
if ! command -v npm >/dev/null; then
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -q --no-install-recommends npm
fi
