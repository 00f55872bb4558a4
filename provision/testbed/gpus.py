"""Simulated GPUs: NVIDIA's real PCI ids per model, and the sysfs tree a host sees at /sys/bus/pci/devices.

Device ids come from NVIDIA's supported-GPU table (open-gpu-kernel-modules README) and the team's anchors note.
Memory sizes are what ``nvidia-smi`` reports for each model (MiB).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provision.errors import InputError, closest

NVIDIA_VENDOR = 0x10DE
CLASS_3D = 0x030200       # 3D controller: datacenter GPUs
CLASS_VGA = 0x030000      # VGA compatible controller: GeForce cards
CLASS_BRIDGE_OTHER = 0x068000  # "Bridge: NVIDIA Corporation ... NVSwitch"


@dataclass(frozen=True)
class SimulatedGpu:
    key: str             # the name used in specs and flags
    device_id: int
    name: str            # what nvidia-smi prints
    memory_mib: int
    arch: str            # hopper, ampere, ada, blackwell
    compute_cap: str
    sxm: bool = False    # sits on an HGX board with NVSwitch when 8 of them are in a host
    pci_class: int = CLASS_3D


MODELS: dict[str, SimulatedGpu] = {m.key: m for m in (
    SimulatedGpu("H100-SXM", 0x2330, "NVIDIA H100 80GB HBM3", 81559, "hopper", "9.0", sxm=True),
    SimulatedGpu("H100-PCIE", 0x2331, "NVIDIA H100 PCIe", 81559, "hopper", "9.0"),
    SimulatedGpu("H100-NVL", 0x2321, "NVIDIA H100 NVL", 95830, "hopper", "9.0"),
    SimulatedGpu("H200", 0x2335, "NVIDIA H200", 143771, "hopper", "9.0", sxm=True),
    SimulatedGpu("H200-NVL", 0x233B, "NVIDIA H200 NVL", 143771, "hopper", "9.0"),
    SimulatedGpu("A100-PCIE-80GB", 0x20B5, "NVIDIA A100 80GB PCIe", 81920, "ampere", "8.0"),
    SimulatedGpu("A100-PCIE-40GB", 0x20F1, "NVIDIA A100-PCIE-40GB", 40960, "ampere", "8.0"),
    SimulatedGpu("A100-SXM4-80GB", 0x20B2, "NVIDIA A100-SXM4-80GB", 81920, "ampere", "8.0", sxm=True),
    SimulatedGpu("A100-SXM4-40GB", 0x20B0, "NVIDIA A100-SXM4-40GB", 40960, "ampere", "8.0", sxm=True),
    SimulatedGpu("RTX-4090", 0x2684, "NVIDIA GeForce RTX 4090", 24564, "ada", "8.9", pci_class=CLASS_VGA),
    SimulatedGpu("L40S", 0x26B9, "NVIDIA L40S", 46068, "ada", "8.9"),
    SimulatedGpu("RTX-5090", 0x2B85, "NVIDIA GeForce RTX 5090", 32607, "blackwell", "12.0", pci_class=CLASS_VGA),
    SimulatedGpu("B200", 0x2901, "NVIDIA B200", 183359, "blackwell", "10.0", sxm=True),
)}

# NVSwitch bridge devices on HGX boards (class 0x068000). 0x1af1: A100-generation NVSwitch; 0x22a3: the Hopper
# generation one, also used here for B200 boards (the testbed only needs "an NVSwitch is present").
NVSWITCH_IDS = {"ampere": (0x1AF1, 6), "hopper": (0x22A3, 4), "blackwell": (0x22A3, 2)}

# Bus numbers as on an 8-GPU HGX server; more GPUs continue from 0xe0.
GPU_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
NVSWITCH_BUSES = (0x05, 0x06, 0x07, 0x08, 0x09, 0x0A)


def gpu_bus_ids(count: int) -> list[str]:
    buses = list(GPU_BUSES) + [0xE0 + i for i in range(max(0, count - len(GPU_BUSES)))]
    return [f"0000:{b:02x}:00.0" for b in buses[:count]]


_COUNT_RE = re.compile(r"^\s*(-?\d+)\s*[xX×*]\s*(\S+)\s*$")


def parse_gpus(text, *, file: str | None = None, line: int | None = None, key: str = "gpus") -> tuple[str, ...]:
    """'8xH100-SXM', 'H100-SXM', 'none', '2xRTX-5090+1xA100-PCIE-80GB', or a list of those -> model keys."""
    if text is None:
        return ()
    items = text if isinstance(text, (list, tuple)) else str(text).replace(",", "+").split("+")
    result: list[str] = []
    for item in items:
        item = str(item).strip()
        if not item or item.lower() in ("none", "0", "-"):
            continue
        m = _COUNT_RE.match(item)
        count, model = (int(m.group(1)), m.group(2)) if m else (1, item)
        if count <= 0:
            raise InputError(f"GPU count must be 1 or more, got {count} in '{item}'", file=file, line=line,
                             key=key)
        result.extend([canonical_model(model, file=file, line=line, key=key)] * count)
    return tuple(result)


def canonical_model(model: str, *, file=None, line=None, key="gpus") -> str:
    lookup = {k.lower(): k for k in MODELS}
    found = lookup.get(model.strip().lower())
    if found:
        return found
    prefixed = [k for k in MODELS if k.lower().startswith(model.strip().lower() + "-")]
    if prefixed:
        raise InputError(f"GPU model '{model}' is ambiguous: {', '.join(prefixed)}", file=file, line=line, key=key,
                         hint=prefixed[0])
    hint = closest(model.upper(), MODELS)
    known = "" if hint else f" (known: {', '.join(MODELS)})"
    raise InputError(f"unknown GPU model '{model}'{known}", file=file, line=line, key=key, hint=hint)


def arches(gpus: tuple[str, ...]) -> list[str]:
    seen: list[str] = []
    for g in gpus:
        a = MODELS[g].arch
        if a not in seen:
            seen.append(a)
    return seen


def nvswitch_board(gpus: tuple[str, ...]) -> str | None:
    """The board generation when the host is an 8x SXM HGX board (all GPUs the same SXM model), else None."""
    if len(gpus) == 8 and len(set(gpus)) == 1 and MODELS[gpus[0]].sxm:
        return MODELS[gpus[0]].arch
    return None


def write_pci_tree(root: Path, gpus: tuple[str, ...]) -> list[tuple[str, int, int, int]]:
    """Write ``root/<bdf>/{vendor,device,class,...}`` for the host's GPUs (plus an Intel host bridge and, on HGX
    boards, NVSwitch bridges). Returns (bdf, vendor, device, class) for every device written."""
    devices: list[tuple[str, int, int, int]] = [("0000:00:00.0", 0x8086, 0x09A2, 0x060000)]
    board = nvswitch_board(gpus)
    if board:
        dev, n = NVSWITCH_IDS[board]
        devices += [(f"0000:{NVSWITCH_BUSES[i]:02x}:00.0", NVIDIA_VENDOR, dev, CLASS_BRIDGE_OTHER) for i in range(n)]
    for bdf, g in zip(gpu_bus_ids(len(gpus)), gpus):
        m = MODELS[g]
        devices.append((bdf, NVIDIA_VENDOR, m.device_id, m.pci_class))
    root.mkdir(parents=True, exist_ok=True)
    for bdf, vendor, device, cls in devices:
        d = root / bdf
        d.mkdir(exist_ok=True)
        numa = "0" if int(bdf.split(":")[1], 16) < 0x80 else "1"
        for fname, value in (("vendor", f"0x{vendor:04x}"), ("device", f"0x{device:04x}"),
                             ("class", f"0x{cls:06x}"), ("subsystem_vendor", f"0x{vendor:04x}"),
                             ("numa_node", numa)):
            (d / fname).write_text(value + "\n")
    return devices
