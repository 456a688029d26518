"""Build options: a daemon configured with -DGW_DASHBOARD=OFF builds in a
build directory of its own, answers GET / with a short note that the
dashboard was not built, and serves the API as usual.

Configures <build>/dashboard-off (build dir: GW_BUILD_DIR, else the one
holding CMakeCache.txt above $GW_DAEMON) and builds only gradwatchd, so it
costs one daemon build (about 20 s on two cores)."""
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port


def build_dir():
    if os.environ.get("GW_BUILD_DIR"):
        return Path(os.environ["GW_BUILD_DIR"]).resolve()
    d = Path(os.environ.get("GW_DAEMON", "")).resolve()
    for p in d.parents:
        if (p / "CMakeCache.txt").exists():
            return p
    pytest.skip("no build directory: set GW_BUILD_DIR or GW_DAEMON")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def test_daemon_without_dashboard(tmp_path):
    build = build_dir()
    cache = (build / "CMakeCache.txt").read_text()
    src = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", cache, re.M).group(1)
    off = build / "dashboard-off"
    subprocess.run(["cmake", "-S", src, "-B", str(off), "-DGW_DASHBOARD=OFF",
                    "-DGW_BUILD_TESTS=OFF", "-DGW_BUILD_BENCH=OFF", "-DGW_MANPAGES=OFF",
                    "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(off), "-j2", "--target", "gradwatchd"],
                   check=True, capture_output=True)
    daemon = off / "daemon" / "gradwatchd"
    assets = (off / "daemon" / "gw_assets.c").read_text()
    assert "uPlot" not in assets and "/vendor/" not in assets

    http = free_port()
    p = subprocess.Popen([str(daemon), "--db", ":memory:", "--http", f"127.0.0.1:{http}",
                          "--zmq", f"tcp://127.0.0.1:{free_port()}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                if get(f"http://127.0.0.1:{http}/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        status, ctype, body = get(f"http://127.0.0.1:{http}/")
        assert status == 200 and ctype.startswith("text/html")
        assert "built without its dashboard" in body
        status, _, body = get(f"http://127.0.0.1:{http}/api/v1/runs")
        assert status == 200 and json.loads(body) == {"runs": []}
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f"http://127.0.0.1:{http}/vendor/uPlot.iife.min.js")
        assert e.value.code == 404
    finally:
        p.terminate()
        assert p.wait(timeout=20) == 0, p.stderr.read()
