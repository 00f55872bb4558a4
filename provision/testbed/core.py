"""Testbed: simulated GPU hosts as Debian 12 + systemd + sshd containers, plus the stand-in NVIDIA repository.

Every Docker object a testbed makes is named ``gpufleet-<name>-...`` and labelled ``gpufleet.testbed=<name>``, so
several testbeds coexist and ``down`` finds everything by label even when the state folder is gone.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import struct
import tarfile
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provision.testbed import docker, gpus as gpumod, repo as repomod
from provision.testbed.image import ensure_image, mini_tag

LABEL = "gpufleet.testbed"
REPO_ALIAS = "nvidia-repo"          # DNS name of the repository container on the testbed's network
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
INOTIFY = {"fs/inotify/max_user_instances": 8192, "fs/inotify/max_user_watches": 1048576}
DOCKER_IN_HOST = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
                  "--security-opt", "apparmor=unconfined", "--cgroupns=host",
                  "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]


class TestbedError(RuntimeError):
    """Something the testbed could not do; ``str()`` is one line."""


@dataclass(frozen=True)
class HostSpec:
    name: str
    gpus: tuple[str, ...] = ()
    docker: bool = False
    secure_boot: bool = False

    def __post_init__(self):
        # gpus: a tuple of model keys, or a string such as "8xH100-SXM" / "2xRTX-5090+1xL40S" / "none"
        gpus = gpumod.parse_gpus(self.gpus) if isinstance(self.gpus, str) else tuple(self.gpus or ())
        object.__setattr__(self, "gpus", gpus)


@dataclass(frozen=True)
class HostInfo:
    name: str
    address: str
    port: int
    container: str
    spec: HostSpec | None = field(default=None, compare=False)


def write_secure_boot_firmware(root: Path, enabled: bool = True) -> None:
    """A /sys/firmware look-alike saying Secure Boot is on: efivarfs files (4 attribute bytes + value), read by
    systemd and scripts, and the legacy sysfs ``efi/vars`` layout, which libefivar (mokutil) falls back to when
    efivarfs is not mounted (it cannot be, in a container)."""
    value = 1 if enabled else 0
    guid_text = SECURE_BOOT_VAR.split("-", 1)[1]
    guid = uuid.UUID(guid_text)
    efivars, vars_dir = root / "efi/efivars", root / "efi/vars"
    efivars.mkdir(parents=True, exist_ok=True)
    vars_dir.mkdir(parents=True, exist_ok=True)
    (vars_dir / "new_var").write_bytes(b"")
    (vars_dir / "del_var").write_bytes(b"")
    for name, data in (("SecureBoot", value), ("SetupMode", 0)):
        (efivars / f"{name}-{guid_text}").write_bytes(bytes([6, 0, 0, 0, data]))
        var = vars_dir / f"{name}-{guid_text}"
        var.mkdir(exist_ok=True)
        raw = (name.encode("utf-16-le").ljust(1024, b"\0") + guid.bytes_le + struct.pack("<Q", 1)
               + bytes([data]).ljust(1024, b"\0") + struct.pack("<QI", 0, 6))
        assert len(raw) == 2084     # efi_kernel_variable_64_t
        (var / "raw_var").write_bytes(raw)
        (var / "data").write_bytes(bytes([data]))
        (var / "size").write_text("0x1\n")
        (var / "attributes").write_text("EFI_VARIABLE_BOOTSERVICE_ACCESS\nEFI_VARIABLE_RUNTIME_ACCESS\n")
        (var / "guid").write_text(str(guid) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_inotify_limits() -> str | None:
    """Raise fs.inotify limits (systemd in each host needs instances). None when done, else why not (one line)."""
    problems = []
    for key, want in INOTIFY.items():
        path = Path("/proc/sys") / key
        try:
            if int(path.read_text()) < want:
                path.write_text(str(want))
        except (OSError, ValueError) as err:
            problems.append(f"{key.replace('/', '.')}: {err.strerror if isinstance(err, OSError) else err}")
    if problems:
        return ("could not raise inotify limits (" + "; ".join(problems) + "); past ~26 hosts new ones may exit "
                "at once: run sysctl -w fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=1048576")
    return None


class Testbed:
    def __init__(self, name: str = "lab", workdir: str | os.PathLike | None = None, log=None,
                 labels: dict[str, str] | None = None):
        if not NAME_RE.match(name or ""):
            raise TestbedError(f"testbed name '{name}' must be lower-case letters, digits and '-' (max 32)")
        self.name = name
        self.workdir = Path(workdir) if workdir else Path.cwd() / ".testbed" / name
        self.workdir = self.workdir.absolute()
        self.key_path = self.workdir / "id_ed25519"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.inventory_path = self.workdir / "inventory.yaml"
        self.hosts: dict[str, HostInfo] = {}
        self.image: str | None = None
        self.log = log or (lambda msg: None)
        self.timings: dict[str, float] = {}
        # extra labels on every object, e.g. gpufleet.owner=pytest-<pid> so orphans of a killed run can be found
        self.labels = dict(labels or {})

    # -- names ---------------------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"gpufleet-{self.name}"

    @property
    def network(self) -> str:
        return f"{self.prefix}-net"

    @property
    def repo_container(self) -> str:
        return f"{self.prefix}-repo"

    def container(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def volume(self, host: str) -> str:
        return f"{self.prefix}-{host}-docker"

    @property
    def repo_base_url(self) -> str:
        return f"http://{REPO_ALIAS}"

    def group_vars(self) -> dict:
        base = self.repo_base_url
        return {
            "gpufleet_testbed": True,
            "gpufleet_simulated_gpus": True,
            "gpufleet_testbed_name": self.name,
            "nvidia_cuda_repo_url": f"{base}/{repomod.cuda_path()}/",
            "nvidia_cuda_repo_key_url": f"{base}/{repomod.cuda_path()}/{repomod.CUDA_KEY}",
            "nvidia_container_toolkit_repo_url": f"{base}/{repomod.toolkit_path()}/",
            "nvidia_container_toolkit_repo_key_url": f"{base}/{repomod.TOOLKIT_KEY}",
            # Images reach testbed hosts only from the controller (docker save, streamed): a host must never try a
            # public registry (the network rule), which gpu_image's default `auto` would do first.
            "gpu_image_source": "stream",
            # What the demo needs, here so that `provision apply inventories/testbed.yaml` runs again as it is: the
            # dev containers' ports on the host's loopback, and SSH into them with the testbed's own key (the dev
            # image is the role's default name, which standin_images.ensure_dev() tags).
            "devcontainer_bind": "127.0.0.1",
            "devcontainer_authorized_keys": self.authorized_keys(),
        }

    def authorized_keys(self) -> list[str]:
        """The testbed's public key (written by ``up``), for the dev containers' SSH."""
        pub = self.workdir / "id_ed25519.pub"
        return [pub.read_text().strip()] if pub.exists() else []

    # -- validation ----------------------------------------------------------------------------------------------
    @staticmethod
    def validate(specs) -> list[HostSpec]:
        specs = list(specs)
        if not specs:
            raise TestbedError("a testbed needs at least one host")
        seen = set()
        out = []
        for s in specs:
            if not isinstance(s, HostSpec):
                raise TestbedError(f"expected HostSpec, got {type(s).__name__}")
            if not HOST_RE.match(s.name) or s.name == "repo":
                raise TestbedError(f"host name '{s.name}' must be lower-case letters, digits and '-', not 'repo'")
            if s.name in seen:
                raise TestbedError(f"host name '{s.name}' is given twice")
            seen.add(s.name)
            out.append(HostSpec(s.name, tuple(gpumod.canonical_model(g) for g in s.gpus), bool(s.docker),
                                bool(s.secure_boot)))
        return out

    # -- up ------------------------------------------------------------------------------------------------------
    def up(self, specs, inventory_path: str | os.PathLike | None = None, timeout: float = 120) -> "Testbed":
        specs = self.validate(specs)
        problem = docker.engine_problem()
        if problem:
            raise TestbedError(problem)
        if docker.names_with_label("container", f"{LABEL}={self.name}"):
            raise TestbedError(f"testbed '{self.name}' is already up (provision testbed down --name {self.name})")
        warn = raise_inotify_limits()
        if warn:
            self.log(f"testbed: warning: {warn}")
        if inventory_path:
            self.inventory_path = Path(inventory_path).absolute()
        t0 = time.monotonic()
        self.image = ensure_image(log=self.log)
        repo_root = repomod.ensure_repo(log=self.log)
        self.timings["image"] = time.monotonic() - t0
        t1 = time.monotonic()
        try:
            self._up(specs, repo_root, timeout)
        except BaseException:
            self.down()
            raise
        self.timings["bring_up"] = time.monotonic() - t1
        return self

    def _up(self, specs: list[HostSpec], repo_root: Path, timeout: float) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir / "hosts", ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        client_key = Ed25519PrivateKey.generate()
        self._write_private(self.key_path, client_key)
        pub = client_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH).decode()
        (self.workdir / "id_ed25519.pub").write_text(f"{pub} gpufleet-testbed-{self.name}\n")
        label = self._label_args()
        docker.run(["network", "create", *label, self.network])
        with ThreadPoolExecutor(max_workers=min(16, len(specs) + 1)) as pool:
            repo = pool.submit(docker.run, [
                "run", "-d", "--name", self.repo_container, *label, "--network", self.network,
                "--network-alias", REPO_ALIAS, "--restart", "always", "-v", f"{repo_root}:/srv/repo:ro",
                self.image, "python3", "-m", "http.server", "80", "--directory", "/srv/repo"])
            futures = [pool.submit(self._start_host, s, pub) for s in specs]
            repo.result()
            infos = [f.result() for f in futures]
        self.hosts = {i.name: i for i in infos}
        with ThreadPoolExecutor(max_workers=min(16, len(infos))) as pool:
            list(pool.map(lambda i: self._wait_ssh(i, timeout), infos))
        self._write_known_hosts()
        self.write_inventory()

    def _label_args(self) -> list[str]:
        args = ["--label", f"{LABEL}={self.name}"]
        for k, v in self.labels.items():
            args += ["--label", f"{k}={v}"]
        return args

    @staticmethod
    def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)

    def _start_host(self, spec: HostSpec, client_pub: str) -> HostInfo:
        hdir = self.workdir / "hosts" / spec.name
        pci = hdir / "pci"
        gpumod.write_pci_tree(pci, spec.gpus)
        host_key = Ed25519PrivateKey.generate()
        host_priv = host_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption())
        host_pub = host_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH).decode()
        (hdir / "ssh_host_ed25519_key.pub").write_text(host_pub + "\n")
        args = ["--hostname", spec.name, *self._label_args(), "--label", f"gpufleet.host={spec.name}",
                "--network", self.network, "--network-alias", spec.name, "--restart", "always",
                "--stop-signal", "SIGRTMIN+3", "--stop-timeout", "20",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", f"{pci}:/sys/bus/pci/devices:ro"]
        if spec.docker:
            vol = self.volume(spec.name)
            docker.run(["volume", "create", *self._label_args(), vol])
            args += DOCKER_IN_HOST + ["-v", f"{vol}:/var/lib/docker"]
        else:
            # CAP_SYS_ADMIN only for the boot-id bind mount made at each boot (see image.py).
            args += ["--cap-add", "SYS_ADMIN", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]
        if spec.secure_boot:
            fw = hdir / "firmware"
            write_secure_boot_firmware(fw, enabled=True)
            args += ["--security-opt", "systempaths=unconfined", "-v", f"{fw}:/sys/firmware:ro"]
        files = io.BytesIO()
        with tarfile.open(fileobj=files, mode="w") as tf:
            def add(name, data: bytes, mode, kind=tarfile.REGTYPE):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.size, info.mtime = kind, mode, len(data), int(time.time())
                tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
            add("root/.ssh", b"", 0o700, tarfile.DIRTYPE)
            add("root/.ssh/authorized_keys", (client_pub + "\n").encode(), 0o600)
            add("etc/ssh/ssh_host_ed25519_key", host_priv, 0o600)
            add("etc/ssh/ssh_host_ed25519_key.pub", (host_pub + " root@" + spec.name + "\n").encode(), 0o644)
        name = self.container(spec.name)
        last = None
        for _ in range(5):   # a port picked free can be taken before Docker binds it: pick another
            port = _free_port()
            docker.run(["create", "--name", name, *args, "-p", f"127.0.0.1:{port}:22", self.image])
            docker.run(["cp", "-", f"{name}:/"], input=files.getvalue())
            proc = docker.run(["start", name], check=False)
            if proc.returncode == 0:
                break
            last = proc.stderr.decode(errors="replace").strip()
            docker.run(["rm", "-f", name], check=False)
            if "already allocated" not in last and "address already in use" not in last:
                raise TestbedError(f"host {spec.name} did not start: {last.splitlines()[-1] if last else '?'}")
        else:
            raise TestbedError(f"host {spec.name} did not start: {last}")
        bound = docker.out(["port", name, "22/tcp"]).splitlines()[0]
        return HostInfo(spec.name, "127.0.0.1", int(bound.rsplit(":", 1)[1]), name, spec)

    def _wait_ssh(self, info: HostInfo, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((info.address, info.port), timeout=2) as s:
                    s.settimeout(3)
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                state = docker.out(["inspect", "-f", "{{.State.Status}} exit={{.State.ExitCode}}", info.container],
                                   check=False)
                raise TestbedError(f"host {info.name}: sshd did not answer on 127.0.0.1:{info.port} within "
                                   f"{timeout:.0f}s (container {state})")
            time.sleep(0.25)

    def _write_known_hosts(self) -> None:
        lines = []
        for name, info in sorted(self.hosts.items()):
            pub = (self.workdir / "hosts" / name / "ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"[{info.address}]:{info.port} {pub[0]} {pub[1]}")
        self.known_hosts_path.write_text("\n".join(lines) + "\n")

    def inventory(self) -> dict:
        groups: dict[str, dict] = {}
        for name, info in sorted(self.hosts.items()):
            spec = info.spec or HostSpec(name)
            hostvars = {
                "ansible_host": info.address, "ansible_port": info.port, "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.key_path),
                "ansible_ssh_known_hosts_file": str(self.known_hosts_path),
                "gpufleet_container": info.container,
                "gpufleet_gpus": list(spec.gpus),
                "gpufleet_docker_capable": spec.docker,
                "gpufleet_secure_boot": spec.secure_boot,
                "gpufleet_nvswitch": gpumod.nvswitch_board(spec.gpus) is not None,
            }
            first = True
            for group in gpumod.arches(spec.gpus) or ["nogpu"]:
                groups.setdefault(group, {"hosts": {}})["hosts"][name] = hostvars if first else {}
                first = False
        return {"all": {"vars": self.group_vars(), "children": groups}}

    def write_inventory(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path).absolute() if path else self.inventory_path
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# gpufleet testbed '{self.name}' (simulated GPU hosts; TEST EQUIPMENT). Written by "
                  f"`provision testbed up`; removed by `provision testbed down --name {self.name}`.\n")
        path.write_text(header + yaml.safe_dump(self.inventory(), sort_keys=False, default_flow_style=False))
        return path

    # -- use -----------------------------------------------------------------------------------------------------
    def _info(self, name: str) -> HostInfo:
        if name not in self.hosts:
            raise TestbedError(f"no host '{name}' in testbed '{self.name}'")
        return self.hosts[name]

    def exec(self, name: str, command: str, *, input: bytes | str | None = None,
             timeout: float | None = 300) -> tuple[int, str, str]:
        """Run ``sh -c command`` in the host through ``docker exec`` (not SSH): for tests to check state."""
        if isinstance(input, str):
            input = input.encode()
        args = ["exec", "-i"] if input is not None else ["exec"]
        proc = docker.run([*args, self._info(name).container, "sh", "-c", command], input=input, check=False,
                          timeout=timeout)
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")

    def stop_host(self, name: str) -> None:
        """Make the host unreachable (container stopped; it stays stopped until start_host)."""
        docker.run(["stop", "-t", "10", self._info(name).container])

    def start_host(self, name: str, timeout: float = 120) -> None:
        info = self._info(name)
        docker.run(["start", info.container])
        self._wait_ssh(info, timeout)

    def wait_ssh(self, name: str, timeout: float = 120) -> None:
        self._wait_ssh(self._info(name), timeout)

    def boot_id(self, name: str) -> str:
        rc, out, err = self.exec(name, "cat /proc/sys/kernel/random/boot_id")
        if rc != 0:
            raise TestbedError(f"host {name}: cannot read boot_id: {err.strip()}")
        return out.strip()

    def load_image(self, name: str, image: str | None = None) -> str:
        """``docker save IMAGE | docker load`` into a docker=True host (default: the small /bin/sh image)."""
        image = image or mini_tag()
        save = docker.run(["save", image], timeout=600)
        proc = docker.run(["exec", "-i", self._info(name).container, "docker", "load"], input=save.stdout,
                          check=False, timeout=600)
        if proc.returncode != 0:
            raise TestbedError(f"host {name}: docker load failed: {proc.stderr.decode(errors='replace').strip()}")
        return image

    def status(self) -> list[dict]:
        rows = []
        for cname in docker.names_with_label("container", f"{LABEL}={self.name}"):
            fmt = "{{.State.Status}}|{{index .Config.Labels \"gpufleet.host\"}}|{{.RestartCount}}"
            state, host, restarts = docker.out(["inspect", "-f", fmt, cname]).split("|")
            port = docker.out(["port", cname, "22/tcp"], check=False).split(":")[-1] if host else ""
            rows.append({"container": cname, "host": host or "(repo)", "state": state, "port": port,
                         "restarts": restarts})
        return rows

    # -- down ----------------------------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Remove every container, network and volume of this testbed (found by label); return what was removed."""
        removed = []
        label = f"{LABEL}={self.name}"
        containers = docker.names_with_label("container", label)
        if containers:
            docker.run(["rm", "-f", "-v", *containers], check=False, timeout=300)
            removed += containers
        for kind in ("network", "volume"):
            names = docker.names_with_label(kind, label)
            if names:
                docker.run([kind, "rm", *names], check=False, timeout=300)
                removed += names
        if (self.workdir / "hosts").exists():
            shutil.rmtree(self.workdir / "hosts", ignore_errors=True)
        self.hosts = {}
        return removed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()


OWNER_LABEL = "gpufleet.owner"


def list_testbeds() -> dict[str, dict]:
    """Every testbed on this engine: name -> {"containers": n, "owner": label or ""}."""
    out: dict[str, dict] = {}
    fmt = '{{.Label "gpufleet.testbed"}}|{{.Label "gpufleet.owner"}}'
    text = docker.out(["ps", "-a", "--filter", f"label={LABEL}", "--format", fmt])
    for line in text.splitlines():
        name, owner = (line.split("|") + [""])[:2]
        entry = out.setdefault(name, {"containers": 0, "owner": owner})
        entry["containers"] += 1
    return out


def prune_orphans(log=lambda msg: None) -> list[str]:
    """Remove testbeds whose owner label says ``pytest-<pid>`` on this machine and that process is gone (a test run
    killed before its fixtures could tear down). Testbeds made by ``provision testbed up`` carry no owner and are
    never touched."""
    removed = []
    for name, info in list_testbeds().items():
        owner = info["owner"]
        if not owner.startswith(f"pytest-{socket.gethostname()}-"):
            continue
        try:
            os.kill(int(owner.rsplit("-", 1)[1]), 0)
            continue                      # still running
        except ProcessLookupError:
            pass
        except (PermissionError, ValueError):
            continue
        log(f"testbed: removing orphan testbed {name} (owner {owner} is gone)")
        scratch = tempfile.mkdtemp(prefix="gpufleet-prune-")
        try:
            Testbed(name=name, workdir=scratch).down()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        removed.append(name)
    return removed
