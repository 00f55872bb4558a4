"""GPU fact sections: the shell command of each and its pure parser (registered in :data:`provision.facts.FACTS`).

The PCI scan is the ``pci`` section of :mod:`provision.facts.parsers` (every device; :func:`nvidia_on_bus` picks
the GPUs and NVSwitches out of it), dpkg's packages and holds the ``packages`` section. Here:

* ``nvidia_smi``: nvidia-smi looked up on PATH, then in /usr/bin and /usr/local/nvidia/bin (a driver mounted
  read-only there, as on some cloud images); its rc and message are kept when it fails;
* ``nvidia_module``: the loaded kernel module (/sys/module/nvidia/version, /proc/driver/nvidia/version): version,
  and open or proprietary from the "Open Kernel Module" banner;
* ``nvidia_runfile``: the .run installer's traces (``nvidia-uninstall`` on PATH or in /usr/bin, its log
  /var/log/nvidia-installer.log and the version it names);
* ``module_signing``, ``gpu_containers`` (with the reason when docker cannot list them), ``maintenance``;
* and what the rolling upgrade also reads: ``upgrade_state``, ``nvidia_devnodes``, ``docker_runtimes``,
  ``container_toolkit``.

Nothing here touches a host: the parsers are tested on recorded output (tests/fixtures/gpu/).
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

from agent.hostpaths import MAINTENANCE_MARKER, UPGRADE_STATE_FILE
from provision.versions import version_key

NVIDIA_VENDOR = "10de"
NVIDIA_SMI_FIELDS = ("index", "pci.bus_id", "name", "driver_version", "compute_cap", "uuid", "memory.total")
NVIDIA_SMI_PATHS = ("/usr/bin/nvidia-smi", "/usr/local/nvidia/bin/nvidia-smi")   # after PATH, in this order
MODULE_SIGNING_KEYS = ("/var/lib/shim-signed/mok/MOK.der", "/var/lib/dkms/mok.pub")

NVIDIA_SMI_COMMAND = (
    "p=$(command -v nvidia-smi); for c in " + " ".join(NVIDIA_SMI_PATHS) + "; do [ -n \"$p\" ] && break; "
    "[ -x \"$c\" ] && p=$c; done; "
    "if [ -z \"$p\" ]; then echo rc=127; else echo \"path=$p\"; t=; command -v timeout >/dev/null && t='timeout 60'; "
    "$t \"$p\" --query-gpu=" + ",".join(NVIDIA_SMI_FIELDS) + " --format=csv,noheader,nounits 2>&1; "
    "echo \"rc=$?\"; fi")
RUNFILE_UNINSTALLER = "/usr/bin/nvidia-uninstall"
RUNFILE_LOG = "/var/log/nvidia-installer.log"
NVIDIA_RUNFILE_COMMAND = (
    f"p=$(command -v nvidia-uninstall); [ -z \"$p\" ] && [ -x {RUNFILE_UNINSTALLER} ] && p={RUNFILE_UNINSTALLER}; "
    f"[ -n \"$p\" ] && echo \"uninstaller=$p\"; "
    f"[ -e {RUNFILE_LOG} ] && {{ echo \"log={RUNFILE_LOG}\"; "
    f"head -n 20 {RUNFILE_LOG} | grep -m 1 'installer version'; }}")
NVIDIA_MODULE_COMMAND = ("[ -r /sys/module/nvidia/version ] && echo \"sys=$(cat /sys/module/nvidia/version)\"; "
                         "head -n 1 /proc/driver/nvidia/version")
MODULE_SIGNING_COMMAND = f"for f in {' '.join(MODULE_SIGNING_KEYS)}; do [ -e \"$f\" ] && echo \"$f\"; done"
GPU_CONTAINERS_COMMAND = (
    "command -v docker >/dev/null || exit 0; ids=$(docker ps -q 2>&1) || { echo \"error: $ids\" | head -n 1; exit 0; }; "
    "[ -z \"$ids\" ] || docker inspect --format "
    "'{{.Name}} {{.HostConfig.Runtime}} {{json .HostConfig.DeviceRequests}} {{range .Config.Env}}{{.}} {{end}}' $ids")
MAINTENANCE_COMMAND = f"[ -e {MAINTENANCE_MARKER} ] && {{ echo present; head -c 2000 {MAINTENANCE_MARKER}; }}"
# what the rolling upgrade also looks at (read as root: Docker's socket is root's)
UPGRADE_STATE_COMMAND = f"cat {UPGRADE_STATE_FILE}"
NVIDIA_DEVNODES_COMMAND = "ls -d /dev/nvidia[0-9]*"
DOCKER_RUNTIMES_COMMAND = "command -v docker >/dev/null && docker info --format '{{json .Runtimes}}'"
CONTAINER_TOOLKIT_COMMAND = "command -v nvidia-ctk nvidia-container-runtime nvidia-container-cli"

# Packages that belong to the GPU stack (what `provision facts --gpu` shows of dpkg's list)
_GPU_PACKAGE = re.compile(r"^(nvidia|cuda-drivers|libnvidia|dkms|linux-headers|docker|containerd|gpu-agent)")
# The package that installs the whole driver: Ubuntu's nvidia-driver-<br>[-server][-open], the CUDA repository's
# nvidia-open-<br> / cuda-drivers-<br>, or their unversioned nvidia-open / cuda-drivers
DRIVER_PACKAGE = re.compile(r"^(nvidia-driver-|nvidia-open-|cuda-drivers-)(?P<branch>\d{3})"
                            r"(?P<suffix>(-server)?(-open)?)$|^(nvidia-open|cuda-drivers)(?P<suffix2>)$")


@dataclass(frozen=True)
class SmiGpu:
    index: int
    bus_id: str
    name: str
    driver_version: str
    compute_cap: str
    uuid: str
    memory_mib: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def norm_bus_id(bus: str) -> str:
    """'00000000:17:00.0' (nvidia-smi) and '0000:17:00.0' (sysfs) -> '0000:17:00.0'."""
    bus = bus.strip().lower()
    dom, _, rest = bus.partition(":")
    try:
        return f"{int(dom or '0', 16):04x}:{rest}" if rest else bus
    except ValueError:
        return bus


def parse_nvidia_smi(text: str) -> list[SmiGpu]:
    """Rows of the ``--query-gpu`` CSV (noheader, nounits); lines that are not GPU rows (errors) are skipped."""
    out = []
    for row in csv.reader(io.StringIO(text)):
        row = [c.strip() for c in row]
        if len(row) != len(NVIDIA_SMI_FIELDS) or not row[0].isdigit():
            continue
        mem = int(row[6]) if row[6].isdigit() else None
        out.append(SmiGpu(int(row[0]), norm_bus_id(row[1]), row[2], row[3], row[4], row[5], mem))
    return out


def nvidia_smi_result(text: str) -> dict:
    """The ``nvidia_smi`` section -> {rc, path, gpus: [SmiGpu dicts], error}. rc 127: no nvidia-smi anywhere;
    None: the section is missing. ``error`` is nvidia-smi's message when it failed (or answered no GPU rows)."""
    rc, path, body = None, None, []
    for line in text.splitlines():
        if line.startswith("rc=") and line[3:].strip().isdigit():
            rc = int(line[3:])
        elif line.startswith("path=") and path is None:
            path = line[5:].strip() or None
        else:
            body.append(line)
    rows = parse_nvidia_smi("\n".join(body)) if rc == 0 else []
    message = " ".join(ln.strip() for ln in body if ln.strip())[:300]
    error = None if rc in (127, None) or (rc == 0 and (rows or not message)) else message or f"rc {rc}"
    return {"rc": rc, "path": path, "gpus": [r.as_dict() for r in rows], "error": error}


def smi_problem(smi: Mapping) -> str:
    """Why an ``nvidia_smi`` result lists no GPU, in a few words."""
    if smi.get("rc") == 127:
        return "no nvidia-smi on PATH, in /usr/bin or /usr/local/nvidia/bin"
    return smi.get("error") or (f"nvidia-smi exit {smi.get('rc')}" if smi.get("rc") else "nvidia-smi lists no GPU")


def nvidia_module(text: str) -> dict:
    """The ``nvidia_module`` section -> {loaded, version, flavour}: the version from /sys/module/nvidia/version,
    else from the /proc/driver/nvidia/version banner; flavour open / proprietary from that banner (None without
    it)."""
    sys_version, banner = None, ""
    for line in text.splitlines():
        if line.startswith("sys="):
            sys_version = line[4:].strip() or None
        elif "Kernel Module" in line:
            banner = line
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", banner)
    flavour = ("open" if "open kernel module" in banner.lower() else "proprietary") if banner else None
    version = sys_version or (m.group(1) if m else None)
    return {"loaded": bool(version or banner), "version": version, "flavour": flavour}


def nvidia_runfile(text: str) -> dict:
    """The ``nvidia_runfile`` section -> {uninstaller: path, log: path, version: the installer's} (None each when
    absent): what the .run installer leaves behind (NVIDIA GPU Operator's driver detection looks at the same)."""
    out: dict = {"uninstaller": None, "log": None, "version": None}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("uninstaller", "log") and value.strip():
            out[key] = value.strip()
        elif "installer version" in line.lower():
            m = re.search(r"(\d+\.\d+(?:\.\d+)?)", line)
            out["version"] = m.group(1) if m else None
    return out


def nonblank_lines(text: str) -> list[str]:
    """A section that lists paths, one a line (module signing keys, device nodes, commands found)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def json_document(text: str):
    """A section that prints one JSON document (the upgrade's state file, Docker's runtimes); None if none."""
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def parse_gpu_containers(text: str) -> list[str]:
    """Names of running containers that hold GPUs: the nvidia runtime (unless NVIDIA_VISIBLE_DEVICES is void/none)
    or a GPU device request (--gpus). The env var alone does nothing under runc (CUDA images all set it)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        name, runtime, requests = parts[0].lstrip("/"), parts[1], parts[2]
        env = [p for p in parts[3:] if p.startswith("NVIDIA_VISIBLE_DEVICES=")]
        visible = env[-1].split("=", 1)[1] if env else ""
        if (runtime == "nvidia" and visible not in ("void", "none")) or '"gpu"' in requests:
            out.append(name)
    return sorted(out)


def gpu_containers(text: str) -> dict:
    """The ``gpu_containers`` section -> {gpu_containers: names, gpu_containers_error: why docker could not list
    them (not root nor in the docker group, say), else None}."""
    error = next((ln[len("error: "):].strip() for ln in text.splitlines() if ln.startswith("error: ")), None)
    return {"gpu_containers": parse_gpu_containers(text), "gpu_containers_error": error}


def maintenance_marker(text: str) -> dict:
    """The ``maintenance`` section -> {maintenance: bool, maintenance_reason: the marker's text (JSON
    {reason, by, since} when the upgrade wrote it)}."""
    ls = text.splitlines()
    present = bool(ls) and ls[0].strip() == "present"
    return {"maintenance": present, "maintenance_reason": "\n".join(ls[1:]).strip() if present else ""}


# ------------------------------------------------------------------------------------------ interpretation
def nvidia_on_bus(pci_devices: Iterable[Mapping], nvswitch_ids: Iterable[str] = ()) -> dict[str, list[str]]:
    """NVIDIA GPUs (display controllers, class 03xx) and NVSwitches (class 0680, or a known NVSwitch device id)
    among the ``pci`` section's devices -> {"gpus": [address], "nvswitches": [address]}, sorted."""
    ids = set(nvswitch_ids)
    gpus, switches = [], []
    for d in pci_devices:
        if _hex(d.get("vendor", "")) != NVIDIA_VENDOR:
            continue
        cls = _hex(d.get("class", d.get("cls", "")))
        if cls.startswith("03"):
            gpus.append(str(d.get("address", "")).lower())
        elif cls.startswith("0680") or _hex(d.get("device", "")) in ids:
            switches.append(str(d.get("address", "")).lower())
    return {"gpus": sorted(gpus), "nvswitches": sorted(switches)}


def _hex(text) -> str:
    return str(text).strip().lower().removeprefix("0x")


def gpu_packages(packages: Mapping[str, str]) -> dict[str, str]:
    """The GPU stack's packages (driver, libnvidia, dkms, headers, docker...) among dpkg's installed ones."""
    return {p: v for p, v in sorted(packages.items()) if _GPU_PACKAGE.match(p)}


def upstream_version(version: str) -> str:
    """'580.95.05-1' -> '580.95.05'; '1:580.95.05-0ubuntu1' -> '580.95.05'."""
    v = version.split(":", 1)[-1]
    return v.rsplit("-", 1)[0] if "-" in v else v


def installed_driver_package(packages: Mapping[str, str]) -> tuple[str, str] | None:
    """(package, version) of the installed package that installs the whole driver (the newest when several are),
    or None: a driver that is loaded then did not come from apt."""
    mains = [(p, v) for p, v in packages.items() if DRIVER_PACKAGE.match(p)]
    return max(mains, key=lambda pv: version_key(pv[1])) if mains else None


# Where the driver in use came from: its dpkg package, the .run installer (its uninstaller or log is there), or
# pre-installed by other means (a cloud image, a read-only mount such as /usr/local/nvidia, a driver container)
DRIVER_ORIGINS = ("apt", "runfile", "preinstalled", "none")
ORIGIN_WORDS = {"runfile": "installed by the .run installer", "preinstalled": "pre-installed by other means"}


def driver_origin(packages: Mapping[str, str], running_version: str | None, runfile: Mapping | None) -> str:
    """One of :data:`DRIVER_ORIGINS`: ``apt`` when a package installs the whole driver; else ``runfile`` when the
    .run installer's uninstaller is there, or its log and a driver runs (``running_version``: the loaded module's or
    nvidia-smi's); else ``preinstalled`` when a driver runs; else ``none`` (a log left by an uninstalled runfile
    driver is no driver)."""
    if installed_driver_package(packages):
        return "apt"
    runfile = runfile or {}
    if runfile.get("uninstaller") or (runfile.get("log") and running_version):
        return "runfile"
    return "preinstalled" if running_version else "none"


def non_apt_reason(origin: str, version: str | None, problem: str = "") -> str:
    """Why no packaged driver goes onto a host whose driver apt did not install (and, with ``problem``, why that
    driver does not do): one line, the same in the site plan and the rolling upgrade."""
    why = f", and does not do here: {problem};" if problem else ":"
    return (f"driver {version or '?'} was {ORIGIN_WORDS.get(origin, origin)}, not from apt{why} "
            f"gpufleet does not stack a packaged driver on it (nvidia_driver_replace: true replaces it)")
