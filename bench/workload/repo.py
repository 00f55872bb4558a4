"""The benchmark's stand-in apt repository and the untimed host preparation/reset commands.

The play installs ``gpufleet-bench-hello`` (built here with dpkg-deb: a script that sleeps, run by the service)
from a ``file:`` repository copied into each host, with every network apt source switched off on the hosts while
the benchmark runs: apt-get update then reads only local files, so no tool's time depends on a mirror.
The repository also carries Debian's python3-apt (and its two arch-independent companions), fetched with
``apt-get download`` on the controller: Ansible's apt module needs it on the host, and installing it is part of
the untimed preparation (Ansible documents it as a host requirement), not of any tool's measured run.
"""
from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import tempfile
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

HERE = Path(__file__).resolve().parent
PKG = "gpufleet-bench-hello"
PKG_VERSION = "1.0.0"
REPO_ON_HOST = "/srv/gpufleet-bench-repo"
DEBIAN_DEPS = ("python3-apt", "python-apt-common", "distro-info-data")
BENCH_PORT = 9477

TESTBED_PKG = "libnvidia-container-tools"   # from the testbed's stand-in NVIDIA repo (pulls libnvidia-container1)
TESTBED_KEYRING = "/usr/share/keyrings/gpufleet-bench-nvidia-container.asc"


def package_for(source: str) -> str:
    return TESTBED_PKG if source == "testbed" else PKG


def prepare_script(toolkit_url: str | None = None) -> str:
    """Untimed host preparation: python3-apt from the local file repo, network sources off except the testbed's
    stand-in repository (its key comes in the same tarball as the file repo)."""
    nvidia = ""
    if toolkit_url:
        nvidia = (f"install -m 0644 {REPO_ON_HOST}/nvidia-container.asc {TESTBED_KEYRING}\n"
                  f"echo 'deb [signed-by={TESTBED_KEYRING}] {toolkit_url} /' > "
                  "/etc/apt/sources.list.d/gpufleet-bench-nvidia.list\n")
    return f"""set -e
mkdir -p {REPO_ON_HOST} /etc/apt/gpufleet-bench-disabled
tar -x -C {REPO_ON_HOST}
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  case "$f" in *gpufleet-bench*) continue;; esac
  if grep -qE 'https?://' "$f" && ! grep -q 'nvidia-repo' "$f"; then mv "$f" /etc/apt/gpufleet-bench-disabled/; fi
done
echo 'deb [trusted=yes] file:{REPO_ON_HOST} ./' > /etc/apt/sources.list.d/gpufleet-bench.list
{nvidia}apt-get update -qq
dpkg -s python3-apt >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-apt >/dev/null
echo prepared
"""


# Back to "never provisioned": each tool's first apply starts from the same state (apt lists emptied too, so
# every first apply really updates the cache).
RESET = f"""systemctl disable --now gpufleet-bench >/dev/null 2>&1 || true
rm -f /etc/systemd/system/gpufleet-bench.service
systemctl daemon-reload
dpkg --purge {PKG} {TESTBED_PKG} libnvidia-container1 >/dev/null 2>&1 || true
rm -rf /etc/gpufleet-bench /etc/default/gpufleet-bench /var/lib/apt/periodic/update-success-stamp /var/cache/apt/*.bin
find /var/lib/apt/lists -maxdepth 1 -type f -delete
touch -d '2 days ago' /var/lib/apt/lists /var/lib/apt/lists/partial  # Ansible reads the cache age from here
echo reset
"""

# Undo PREPARE (only needed when hosts outlive the benchmark).
UNPREPARE = f"""{RESET}
mv /etc/apt/gpufleet-bench-disabled/* /etc/apt/sources.list.d/ 2>/dev/null || true
rm -rf {REPO_ON_HOST} /etc/apt/sources.list.d/gpufleet-bench.list /etc/apt/gpufleet-bench-disabled
"""


def _build_deb(work: Path, out: Path) -> None:
    root = work / PKG
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {PKG}\nVersion: {PKG_VERSION}\nArchitecture: all\nMaintainer: gpufleet bench <bench@invalid>\n"
        "Description: stand-in daemon for the gpufleet provisioner benchmark\n")
    script = root / "usr/bin" / PKG
    script.write_text("#!/bin/sh\n# stand-in daemon: idles until stopped\nexec sleep infinity\n")
    script.chmod(0o755)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True,
                   capture_output=True)


def build_repo(dest: Path) -> Path:
    """Build (or reuse) the repository folder at ``dest``; returns it."""
    if (dest / "Packages").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-deb-") as tmp:
        _build_deb(Path(tmp), dest)
    # Debian's python3-apt for the hosts (same release as the controller and the testbed image: bookworm).
    subprocess.run(["apt-get", "download", *DEBIAN_DEPS], cwd=dest, check=True, capture_output=True)
    pkgs = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=dest, check=True,
                          capture_output=True, text=True).stdout
    (dest / "Packages").write_text(pkgs)
    return dest


def repo_tarball(dest: Path, nvidia_key: Path | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(dest.iterdir()):
            tar.add(p, arcname=p.name)
        if nvidia_key:
            tar.add(nvidia_key, arcname="nvidia-container.asc")
    return buf.getvalue()


def rendered_config(hostname: str) -> bytes:
    env = Environment(loader=FileSystemLoader(str(HERE / "files")), undefined=StrictUndefined,
                      keep_trailing_newline=True)
    return env.get_template("bench.conf.j2").render(inventory_hostname=hostname, bench_port=BENCH_PORT).encode()


def floor_check_command(hostname: str, package: str = PKG) -> str:
    """One shell command that checks every task of the play and prints one line per task (the floor)."""
    conf_sha = hashlib.sha1(rendered_config(hostname)).hexdigest()
    unit_sha = hashlib.sha1((HERE / "files/gpufleet-bench.service").read_bytes()).hexdigest()
    return (
        "c=missing; [ -n \"$(find /var/lib/apt/lists -maxdepth 0 -mmin -60 2>/dev/null)\" ] && c=ok; echo cache=$c; "
        f"echo pkg=$(dpkg-query -W -f='${{Status}}' {package} 2>/dev/null | grep -q 'install ok installed' && echo ok); "
        "echo dir=$(stat -c '%F:%a' /etc/gpufleet-bench 2>/dev/null); "
        f"echo conf=$(sha1sum /etc/gpufleet-bench/bench.conf 2>/dev/null | grep -q {conf_sha} && echo ok); "
        "echo line=$(grep -qx 'BENCH_LEVEL=3' /etc/default/gpufleet-bench 2>/dev/null && echo ok); "
        f"echo unit=$(sha1sum /etc/systemd/system/gpufleet-bench.service 2>/dev/null | grep -q {unit_sha} && echo ok); "
        "echo svc=$(systemctl is-enabled gpufleet-bench 2>/dev/null)/$(systemctl is-active gpufleet-bench 2>/dev/null)"
    )


FLOOR_EXPECTED = {"cache": "ok", "pkg": "ok", "dir": "directory:755", "conf": "ok", "line": "ok", "unit": "ok",
                  "svc": "enabled/active"}


def floor_all_ok(stdout: str) -> bool:
    got = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return all(got.get(k) == v for k, v in FLOOR_EXPECTED.items())


if __name__ == "__main__":  # build it by hand: python3 -m bench.workload.repo DEST
    import sys
    print(build_repo(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpufleet-bench-repo")))
