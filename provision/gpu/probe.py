"""GPU facts: one shell command (run on the host in one round trip) and pure parsers for its output.

Works before any driver exists (PCI ids from sysfs) and after (``nvidia-smi --query-gpu``). The parsers never
touch a host, so they are tested on recorded output (tests/fixtures/gpu/).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass

from agent.hostpaths import MAINTENANCE_MARKER
from provision.gpu.table import GpuTable, load_table, norm_id

NVIDIA_VENDOR = "10de"
NVIDIA_SMI_FIELDS = ("index", "pci.bus_id", "name", "driver_version", "compute_cap", "uuid", "memory.total")
NVIDIA_SMI_QUERY = ("nvidia-smi --query-gpu=" + ",".join(NVIDIA_SMI_FIELDS) + " --format=csv,noheader,nounits")
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"

# Sections are printed between markers so that one command returns everything; every part tolerates absence.
GPU_FACTS_COMMAND = r"""
echo '### pci'
for d in /sys/bus/pci/devices/*; do [ -e "$d/vendor" ] || continue
  printf '%s %s %s %s\n' "${d##*/}" "$(cat "$d/vendor")" "$(cat "$d/device")" "$(cat "$d/class")"; done
echo '### nvidia_smi'
if command -v nvidia-smi >/dev/null 2>&1; then NVQUERY 2>&1; echo "rc=$?"; else echo 'rc=127'; fi
echo '### proc_driver'
cat /proc/driver/nvidia/version 2>/dev/null | head -n 1
echo '### secure_boot'
if command -v mokutil >/dev/null 2>&1; then mokutil --sb-state 2>&1 | head -n 1; fi
[ -r SBVAR ] && od -An -tx1 SBVAR 2>/dev/null | tr -s ' \n' ' '
echo
echo '### module_signing'
for f in /var/lib/shim-signed/mok/MOK.der /var/lib/dkms/mok.pub; do [ -e "$f" ] && echo "$f"; done
echo '### kernel'
uname -r
echo '### os'
( . /etc/os-release 2>/dev/null; echo "${ID:-unknown} ${VERSION_ID:-} ${VERSION_CODENAME:-}" )
echo '### packages'
dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' 2>/dev/null | awk '$1 ~ /^.i/ && $2 ~ /^(nvidia|cuda-drivers|libnvidia|dkms|linux-headers|docker|containerd|gpu-agent)/ {print $2, $3}'
echo '### holds'
apt-mark showhold 2>/dev/null
echo '### maintenance'
[ -e MAINT ] && { echo present; head -c 300 MAINT; }
echo '### gpu_containers'
if command -v docker >/dev/null 2>&1; then docker ps -q 2>/dev/null | xargs -r docker inspect --format \
  '{{.Name}} {{.HostConfig.Runtime}} {{json .HostConfig.DeviceRequests}} {{range .Config.Env}}{{.}} {{end}}' 2>/dev/null; fi
echo '### end'
""".replace("NVQUERY", NVIDIA_SMI_QUERY).replace("SBVAR", SECURE_BOOT_VAR).replace(
    "MAINT", MAINTENANCE_MARKER)


@dataclass(frozen=True)
class PciDevice:
    address: str
    vendor: str   # 4 hex digits, lowercase, no 0x
    device: str
    cls: str      # 6 hex digits

    @property
    def is_nvidia_gpu(self) -> bool:  # display controller class 0x03xxxx (VGA 0300, 3D 0302)
        return self.vendor == NVIDIA_VENDOR and self.cls.startswith("03")

    @property
    def is_nvidia_bridge(self) -> bool:  # NVSwitch shows as class 0x0680 (other bridge)
        return self.vendor == NVIDIA_VENDOR and self.cls.startswith("0680")


@dataclass(frozen=True)
class Gpu:
    address: str
    device_id: str
    model: str
    arch: str | None
    cc: str | None
    open_modules: str | None     # required | allowed | impossible | None (unknown part)
    min_branch: int | None
    nvswitch_board_count: int | None = None

    @property
    def known(self) -> bool:
        return self.arch is not None

    def as_dict(self) -> dict:
        return asdict(self)


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


def _hex(text: str) -> str:
    return str(text).strip().lower().removeprefix("0x")


def parse_pci(text: str) -> list[PciDevice]:
    """Lines of 'ADDRESS 0xVENDOR 0xDEVICE 0xCLASS' (the probe's pci section)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        out.append(PciDevice(parts[0].lower(), _hex(parts[1]).zfill(4), _hex(parts[2]).zfill(4),
                             _hex(parts[3]).zfill(6)))
    return out


def norm_bus_id(bus: str) -> str:
    """'00000000:17:00.0' (nvidia-smi) and '0000:17:00.0' (sysfs) → '0000:17:00.0'."""
    bus = bus.strip().lower()
    dom, _, rest = bus.partition(":")
    return f"{int(dom or '0', 16):04x}:{rest}" if rest else bus


def gpus_from_pci(devices: list[PciDevice] | list[dict], table: GpuTable | None = None) -> list[Gpu]:
    """NVIDIA display controllers on the PCI bus, identified through the table (unknown ids kept, marked unknown)."""
    table = table or load_table()
    out = []
    for d in devices:
        if isinstance(d, dict):
            d = PciDevice(str(d.get("address", "")).lower(), _hex(d.get("vendor", "")).zfill(4),
                          _hex(d.get("device", "")).zfill(4), _hex(d.get("class", d.get("cls", ""))).zfill(6))
        if not d.is_nvidia_gpu:
            continue
        m = table.gpu(d.device)
        if m:
            out.append(Gpu(d.address, m.device_id, m.model, m.arch, m.cc, m.open_modules, m.min_branch,
                           m.nvswitch_board_count))
        else:
            out.append(Gpu(d.address, norm_id(d.device), f"unknown NVIDIA GPU 10de:{norm_id(d.device)}",
                           None, None, None, None))
    return sorted(out, key=lambda g: g.address)


def nvswitches_from_pci(devices, table: GpuTable | None = None) -> list[str]:
    table = table or load_table()
    out = []
    for d in devices:
        if isinstance(d, dict):
            d = PciDevice(str(d.get("address", "")), _hex(d.get("vendor", "")).zfill(4),
                          _hex(d.get("device", "")).zfill(4), _hex(d.get("class", d.get("cls", ""))).zfill(6))
        if d.vendor == NVIDIA_VENDOR and (d.device in table.nvswitches or d.is_nvidia_bridge):
            out.append(d.address)
    return sorted(out)


def parse_nvidia_smi(text: str) -> list[SmiGpu]:
    """Output of NVIDIA_SMI_QUERY (csv, noheader, nounits). Lines that are not GPU rows (errors) are skipped."""
    out = []
    for row in csv.reader(io.StringIO(text)):
        row = [c.strip() for c in row]
        if len(row) != len(NVIDIA_SMI_FIELDS) or not row[0].isdigit():
            continue
        mem = int(row[6]) if row[6].isdigit() else None
        out.append(SmiGpu(int(row[0]), norm_bus_id(row[1]), row[2], row[3], row[4], row[5], mem))
    return out


def parse_secure_boot(text: str) -> bool | None:
    """mokutil's 'SecureBoot enabled/disabled', or the EFI variable's bytes (4 attribute bytes + 1 value byte)."""
    t = text.lower()
    if "secureboot enabled" in t:
        return True
    if "secureboot disabled" in t:
        return False
    hexbytes = re.findall(r"\b[0-9a-f]{2}\b", t)
    if len(hexbytes) >= 5:
        return hexbytes[4] == "01"
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


def section_lines(output: str, marker: str = "###") -> dict[str, list[str]]:
    """Lines of a probe's output grouped under its ``<marker> name`` headings."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        m = re.fullmatch(re.escape(marker) + r" (\w+)", line.strip())
        if m:
            current = m.group(1)
            sections[current] = []
        elif current:
            sections[current].append(line)
    return sections


def split_sections(output: str) -> dict[str, str]:
    return {k: "\n".join(v).strip("\n") for k, v in section_lines(output).items()}


def parse_gpu_facts(output: str, table: GpuTable | None = None) -> dict:
    """The probe's whole output → a plain dict (JSON-able): the shape plan_host() reads."""
    table = table or load_table()
    s = split_sections(output)
    pci = parse_pci(s.get("pci", ""))
    smi_text = s.get("nvidia_smi", "")
    m = re.search(r"^rc=(\d+)\s*$", smi_text, re.M)
    smi_rc = int(m.group(1)) if m else None
    smi_body = re.sub(r"^rc=\d+\s*$", "", smi_text, flags=re.M).strip()
    smi = parse_nvidia_smi(smi_body) if smi_rc == 0 else []
    packages = {}
    for line in s.get("packages", "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            packages[parts[0]] = parts[1]
    proc = s.get("proc_driver", "")
    pm = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", proc)
    osf = (s.get("os", "").split() + ["", "", ""])[:3]
    maint = s.get("maintenance", "")
    return {
        "pci_devices": [asdict(d) for d in pci],
        "gpus": [g.as_dict() for g in gpus_from_pci(pci, table)],
        "nvswitches": nvswitches_from_pci(pci, table),
        "nvidia_smi": {"rc": smi_rc, "gpus": [g.as_dict() for g in smi],
                       "error": None if smi_rc in (0, 127, None) else smi_body[:300]},
        "kernel_module_version": pm.group(1) if pm else None,
        "kernel_module_flavour": ("open" if "open kernel module" in proc.lower() else "proprietary") if pm else None,
        "secure_boot": parse_secure_boot(s.get("secure_boot", "")),
        "module_signing_keys": [l for l in s.get("module_signing", "").splitlines() if l.strip()],
        "kernel": s.get("kernel", "").strip(),
        "os": {"id": osf[0], "version_id": osf[1], "codename": osf[2]},
        "packages": packages,
        "holds": sorted(l.strip() for l in s.get("holds", "").splitlines() if l.strip()),
        "gpu_containers": parse_gpu_containers(s.get("gpu_containers", "")),
        "maintenance": maint.splitlines()[0] == "present" if maint else False,
        "maintenance_reason": "\n".join(maint.splitlines()[1:]).strip() if maint else "",
    }
