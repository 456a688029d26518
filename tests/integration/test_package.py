"""The Debian package, end to end on the real system (root only).

Builds the .deb with CPack from the build directory (GW_BUILD_DIR, else the
directory holding CMakeCache.txt above $GW_DAEMON); a build not configured
for prefix /usr gets a packaging build of its own in <build>/deb-pkg. Then:
lintian reports no errors; `dpkg -i` installs it; the installed daemon
answers --version and accepts the installed config with --check-config;
`systemd-analyze verify` accepts the installed unit; the Python client
imports from dist-packages outside the source tree; sysusers/tmpfiles ran;
and `dpkg --purge` removes every file the package listed, leaving no
gradwatch directory behind.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PKG = "gradwatch"


def run(*cmd, check=True, **kw):
    r = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def build_dir():
    if os.environ.get("GW_BUILD_DIR"):
        return Path(os.environ["GW_BUILD_DIR"]).resolve()
    d = Path(os.environ.get("GW_DAEMON", "")).resolve()
    for p in d.parents:
        if (p / "CMakeCache.txt").exists():
            return p
    pytest.skip("no build directory: set GW_BUILD_DIR or GW_DAEMON")


def cache_var(build, name):
    m = re.search(rf"^{name}:[A-Z]+=(.*)$", (build / "CMakeCache.txt").read_text(), re.M)
    return m.group(1) if m else None


def installed(pkg):
    r = run("dpkg-query", "-W", "-f=${Status}", pkg, check=False)
    return r.returncode == 0 and "install ok installed" in r.stdout


@pytest.fixture(scope="module")
def deb():
    if os.geteuid() != 0:
        pytest.skip("installs a package into the system: needs root")
    for tool in ("dpkg", "cpack"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is absent")
    if installed(PKG):
        pytest.skip("a gradwatch package is already installed; not touching it")
    build = build_dir()
    if cache_var(build, "CMAKE_INSTALL_PREFIX") != "/usr":
        src = cache_var(build, "CMAKE_HOME_DIRECTORY")
        pkg_build = build / "deb-pkg"
        run("cmake", "-S", src, "-B", str(pkg_build), "-DCMAKE_INSTALL_PREFIX=/usr",
            "-DGW_BUILD_TESTS=OFF", "-DGW_BUILD_BENCH=OFF", "-DGW_MANPAGES=ON",
            "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
        run("cmake", "--build", str(pkg_build), "-j2")
        build = pkg_build
    for old in build.glob("gradwatch_*.deb"):
        old.unlink()
    run("cpack", "-G", "DEB", cwd=build)
    debs = list(build.glob("gradwatch_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def test_lintian_has_no_errors(deb):
    assert shutil.which("lintian"), "lintian (Debian package lintian) is required: scripts/deps.sh"
    r = run("lintian", "--fail-on", "error", str(deb), check=False)
    errors = [l for l in r.stdout.splitlines() if l.startswith("E:")]
    assert r.returncode == 0 and not errors, r.stdout + r.stderr


def test_package_contents(deb):
    names = run("dpkg-deb", "-c", str(deb)).stdout
    for path in ["./usr/bin/gradwatchd", "./usr/bin/gradwatch", "./etc/gradwatch/gradwatchd.conf",
                 "./lib/systemd/system/gradwatchd.service", "./usr/lib/sysusers.d/gradwatch.conf",
                 "./usr/lib/tmpfiles.d/gradwatch.conf", "./usr/include/gradwatch/gradwatch.h",
                 "/pkgconfig/gradwatch.pc", "/libgradwatch.so.0",
                 "./usr/share/man/man8/gradwatchd.8.gz", "./usr/share/man/man1/gradwatch.1.gz",
                 "./usr/share/doc/gradwatch/copyright", "./usr/share/doc/gradwatch/CONTRACT.md",
                 "./usr/lib/python3/dist-packages/gradwatch/__init__.py",
                 "./usr/share/doc/gradwatch/examples/grafana/gradwatch.json",
                 "./usr/share/doc/gradwatch/examples/grafana/provisioning/dashboards/gradwatch.yml",
                 "./usr/share/doc/gradwatch/examples/grafana/provisioning/datasources/gradwatch.yml",
                 "./usr/share/doc/gradwatch/examples/prometheus/alertmanager-slack-pagerduty.yml"]:
        assert path in names, path
    info = run("dpkg-deb", "-I", str(deb)).stdout
    assert "conffiles" in info and "postinst" in info and "triggers" in info
    extract = run("sh", "-c", f"dpkg-deb -I {deb} conffiles").stdout
    assert extract.split() == ["/etc/gradwatch/gradwatchd.conf"]
    unit = run("sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./lib/systemd/system/gradwatchd.service").stdout
    assert re.search(r"^ExecStart=/usr/bin/gradwatchd --config /etc/gradwatch/gradwatchd.conf ", unit, re.M)
    assert re.search(r"^User=gradwatch$", unit, re.M)


def test_install_use_purge(deb, tmp_path):
    run("dpkg", "-i", str(deb))
    try:
        files = [Path(l) for l in run("dpkg", "-L", PKG).stdout.splitlines() if l.strip()]
        assert Path("/usr/bin/gradwatchd") in files
        conf = run("dpkg-query", "-W", "-f=${Conffiles}", PKG).stdout
        assert "/etc/gradwatch/gradwatchd.conf" in conf

        r = run("/usr/bin/gradwatchd", "--version")
        assert re.match(r"gradwatchd \d+\.\d+\.\d+", r.stdout), r.stdout
        r = run("/usr/bin/gradwatchd", "--check-config", "/etc/gradwatch/gradwatchd.conf", timeout=30)
        assert r.stderr == "", r.stderr
        bad = tmp_path / "bad.conf"
        bad.write_text("[window]\nwindow = 1\n")
        r = run("/usr/bin/gradwatchd", "--check-config", str(bad), check=False, timeout=30)
        assert r.returncode == 1 and f"{bad}:2:" in r.stderr, r.stderr
        r = run("/usr/bin/gradwatch", "--version")
        assert r.stdout.startswith("gradwatch ")

        sa = shutil.which("systemd-analyze")
        assert sa, "systemd-analyze (Debian package systemd) is required"
        r = run(sa, "verify", "/lib/systemd/system/gradwatchd.service", check=False)
        # verify also talks about the host (no systemd running in a container);
        # only lines naming our unit count.
        ours = [l for l in (r.stdout + r.stderr).splitlines() if "gradwatchd.service" in l]
        assert not ours, ours

        # postinst ran sysusers and tmpfiles
        assert run("getent", "passwd", "gradwatch").stdout.startswith("gradwatch:")
        st = Path("/var/lib/gradwatch").stat()
        assert oct(st.st_mode & 0o777) == "0o750"

        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = run("/usr/bin/python3", "-c", "import gradwatch; print(gradwatch.__file__)",
                cwd="/", env=env)
        assert r.stdout.strip() == "/usr/lib/python3/dist-packages/gradwatch/__init__.py"

        r = run("pkg-config", "--modversion", PKG)
        assert re.match(r"\d+\.\d+\.\d+", r.stdout.strip())
        assert Path("/usr/share/man/man8/gradwatchd.8.gz").exists()
    finally:
        run("dpkg", "--purge", PKG)
    assert not installed(PKG)
    left = [str(f) for f in files if f.exists() and not f.is_dir()]
    assert not left, left
    for d in ["/etc/gradwatch", "/usr/share/doc/gradwatch", "/usr/include/gradwatch",
              "/usr/lib/python3/dist-packages/gradwatch", "/var/lib/gradwatch",
              "/var/log/gradwatch"]:
        assert not Path(d).exists(), d
