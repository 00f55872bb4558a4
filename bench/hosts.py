"""Light hosts for the benchmarks (systemd + sshd, no GPUs, no Docker inside) and the three tools' inventories.

Hosts come from the project's testbed (``provision.testbed.Testbed`` with ``HostSpec(name)``) when it is importable;
``--hosts own`` (or a testbed that is not there yet) falls back to the same kind of container started here from an
image built the way docs and testbed-findings.md describe (systemd as PID 1, sshd, a fresh host key per host).
Either way every tool is given the same hosts, the same key and the same known_hosts file, with strict host key
checking on.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.common import PREFIX, raise_inotify_limits


@dataclass(frozen=True)
class BenchHost:
    name: str
    address: str
    port: int
    user: str
    key_file: str


@dataclass
class HostSet:
    hosts: list[BenchHost]
    known_hosts: str
    workdir: Path
    source: str                 # "testbed" or "own"
    inventory_from_testbed: str | None = None
    _teardown: object = None
    extra: dict = None
    host_vars: dict = None      # variables given to every host, by every tool (e.g. bench_package)

    # ---- inventories (same hosts, same key, same known_hosts, strict checking) ----
    def write_inventories(self, forks: int) -> dict[str, Path]:
        hosts_yaml = {}
        for h in self.hosts:
            hosts_yaml[h.name] = {
                "ansible_host": h.address, "ansible_port": h.port, "ansible_user": h.user,
                "ansible_ssh_private_key_file": h.key_file,
                "ansible_ssh_known_hosts_file": self.known_hosts,
                # Ansible's ssh connection reads known_hosts through OpenSSH: same file, strict checking.
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes",
                "ansible_python_interpreter": "/usr/bin/python3",
                **(self.host_vars or {}),
            }
        inv = {"all": {"hosts": hosts_yaml}}
        yml = self.workdir / "inventory.yml"
        yml.write_text(yaml.safe_dump(inv, sort_keys=False))
        py_lines = ["hosts = ["]
        for h in self.hosts:
            py_lines.append(
                f"    ({h.name!r}, {{'ssh_hostname': {h.address!r}, 'ssh_port': {h.port}, 'ssh_user': {h.user!r}, "
                f"'ssh_key': {h.key_file!r}, 'ssh_known_hosts_file': {self.known_hosts!r}, "
                f"'ssh_strict_host_key_checking': 'yes', **{(self.host_vars or {})!r}}}),")
        py_lines.append("]")
        pyinv = self.workdir / "inventory_pyinfra.py"
        pyinv.write_text("\n".join(py_lines) + "\n")
        cfg = self.workdir / "ansible.cfg"
        cfg.write_text(
            "[defaults]\n"
            f"forks = {forks}\n"
            "host_key_checking = True\n"
            "interpreter_python = /usr/bin/python3\n"
            "retry_files_enabled = False\n"
            f"local_tmp = {self.workdir}/ansible-local\n"
            "[ssh_connection]\n"
            f"control_path_dir = {self.workdir}/cp\n")
        cfg_pipe = self.workdir / "ansible-pipelining.cfg"
        cfg_pipe.write_text(cfg.read_text() + "pipelining = True\n")
        return {"yaml": yml, "pyinfra": pyinv, "ansible_cfg": cfg, "ansible_cfg_pipelining": cfg_pipe}

    def ssh_argv(self, h: BenchHost, command: str) -> list[str]:
        return ["ssh", "-p", str(h.port), "-i", h.key_file, "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ControlMaster=no",
                "-o", "ControlPath=none", f"{h.user}@{h.address}", command]

    def run_everywhere(self, command: str, *, stdin: bytes | None = None, parallel: int = 16,
                       timeout: float = 300) -> dict[str, subprocess.CompletedProcess]:
        """Untimed setup helper: one OpenSSH command per host."""
        def one(h):
            return h.name, subprocess.run(self.ssh_argv(h, command), input=stdin, capture_output=True,
                                          timeout=timeout)
        with cf.ThreadPoolExecutor(parallel) as pool:
            return dict(pool.map(one, self.hosts))

    def teardown(self) -> None:
        if callable(self._teardown):
            self._teardown()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- testbed

def from_testbed(n: int, workdir: Path) -> HostSet:
    """Light hosts from the project's testbed: Testbed("bench").up([HostSpec(name)...]) (no GPUs, no Docker)."""
    from provision.testbed import HostSpec, Testbed  # noqa: PLC0415 - only for --hosts-source testbed

    tb = Testbed("bench", workdir=workdir / "testbed")
    tb.down()  # leftovers of an interrupted run (found by label)
    tb.up([HostSpec(f"h{i:03d}") for i in range(1, n + 1)], timeout=300)
    hosts = [BenchHost(name, info.address, info.port, "root", str(tb.key_path))
             for name, info in sorted(tb.hosts.items())]
    from provision.testbed import repo as tbrepo  # noqa: PLC0415
    extra = {"testbed_repo_root": str(tbrepo.ensure_repo(log=lambda m: None)),
             "toolkit_url": f"{tb.repo_base_url}/{tbrepo.toolkit_path()}/",
             "toolkit_key": tbrepo.TOOLKIT_KEY}
    hs = HostSet(hosts, str(tb.known_hosts_path), workdir, "testbed", str(tb.inventory_path), _teardown=tb.down)
    hs.extra = extra
    return hs


# ---------------------------------------------------------------------------------------------------- own hosts

OWN_IMAGE = f"{PREFIX}-host:latest"
OWN_NET = f"{PREFIX}-net"


def own_image_exists() -> bool:
    return subprocess.run(["docker", "image", "inspect", OWN_IMAGE], capture_output=True).returncode == 0


def build_own_image(mirror: str = "http://deb.debian.org/debian") -> None:
    """debootstrap minbase + systemd + sshd + python3 (Ansible needs it), then docker import (about a minute)."""
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-rootfs-") as root:
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=systemd,systemd-sysv,openssh-server,python3,sudo,iproute2,ca-certificates",
                        "bookworm", root, mirror], check=True, capture_output=True)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]', "-", OWN_IMAGE],
                       stdin=tar.stdout, check=True, capture_output=True)
        tar.wait()


def own_hosts(n: int, workdir: Path, *, parallel: int = 4) -> HostSet:
    raise_inotify_limits()
    if not own_image_exists():
        build_own_image()
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (workdir / "id_ed25519.pub").read_text()
    subprocess.run(["docker", "network", "create", "--label", f"{PREFIX}=1", OWN_NET], capture_output=True)
    names = [f"{PREFIX}-h{i:03d}" for i in range(1, n + 1)]

    def start(name):
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "run", "-d", "--name", name, "--hostname", name, "--label", f"{PREFIX}=1",
                        "--network", OWN_NET, "--tmpfs", "/run", "--tmpfs", "/run/lock",
                        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", OWN_IMAGE], check=True, capture_output=True)
        # wait for systemd to have started sshd once, then: fresh host keys (the image's are shared), our key
        for _ in range(150):
            r = subprocess.run(["docker", "exec", name, "systemctl", "is-active", "-q", "ssh"], capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        script = ("rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; mkdir -p /root/.ssh; chmod 700 /root/.ssh; "
                  "cat > /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys; "
                  "systemctl reset-failed ssh 2>/dev/null; systemctl restart ssh; "
                  "cat /etc/ssh/ssh_host_ed25519_key.pub")
        r = subprocess.run(["docker", "exec", "-i", name, "sh", "-c", script], input=pub.encode(), capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"{name}: could not prepare sshd: {r.stderr.decode()[-300:]}")
        hostkey = r.stdout.decode().split()[:2]
        ip = subprocess.run(["docker", "inspect", "-f",
                             "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
                            check=True, capture_output=True, text=True).stdout.strip()
        return BenchHost(name, ip, 22, "root", str(key)), f"{ip} {' '.join(hostkey)}\n"

    try:
        with cf.ThreadPoolExecutor(parallel) as pool:
            got = list(pool.map(start, names))
    except Exception:
        _own_down(names)
        raise
    kh = workdir / "known_hosts"
    kh.write_text("".join(line for _, line in got))
    hs = HostSet([h for h, _ in got], str(kh), workdir, "own", _teardown=lambda: _own_down(names))
    try:
        _wait_ssh(hs)
    except Exception:
        _own_down(names)
        raise
    return hs


def _wait_ssh(hs: HostSet, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = list(hs.hosts)
    while pending and time.monotonic() < deadline:
        res = {h.name: subprocess.run(hs.ssh_argv(h, "true"), capture_output=True, timeout=30).returncode
               for h in pending}
        pending = [h for h in pending if res[h.name] != 0]
        if pending:
            time.sleep(0.5)
    if pending:
        raise RuntimeError(f"ssh not answering on {[h.name for h in pending]}")


def _own_down(names) -> None:
    for i in range(0, len(names), 25):
        subprocess.run(["docker", "rm", "-f", *names[i:i + 25]], capture_output=True)
    subprocess.run(["docker", "network", "rm", OWN_NET], capture_output=True)


def bring_up(n: int, source: str = "auto") -> HostSet:
    workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    os.chmod(workdir, 0o700)
    if source in ("auto", "testbed"):
        try:
            return from_testbed(n, workdir)
        except ImportError:
            if source == "testbed":
                raise
    return own_hosts(n, workdir)
