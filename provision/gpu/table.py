"""Reads provision/gpu/gpus.yaml (GPU knowledge as data) into lookups. Pure: no host access.

Everything GPU-specific (PCI ids, compute capabilities, open-module policy, CUDA → driver, image → CUDA/SM) lives
in the YAML file; this module only validates it and answers questions about it.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from provision.errors import InputError
from provision.facts.gpu import nvidia_on_bus

TABLE_PATH = Path(__file__).with_name("gpus.yaml")
OPEN_POLICIES = ("required", "allowed", "impossible")


def parse_version(text: str | int | float) -> tuple[int, ...]:
    """'570.133.20' → (570, 133, 20); '12.8' → (12, 8). Raises ValueError on anything else."""
    s = str(text).strip()
    if not re.fullmatch(r"\d+(\.\d+)*", s):
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in s.split("."))


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


@dataclass(frozen=True)
class GpuModel:
    device_id: str          # 4 lowercase hex digits, no 0x
    model: str
    arch: str
    cc: str
    open_modules: str       # required | allowed | impossible
    min_branch: int
    nvswitch_board_count: int | None = None


@dataclass(frozen=True)
class ImageInfo:
    tag: str
    cuda: str
    sm: tuple[str, ...]
    ptx: tuple[str, ...] = ()
    known: bool = True       # False: CUDA read from the tag, architectures unknown

    def supports_cc(self, cc: str) -> bool | None:
        """A cubin for X.Y runs on X.Z (Z >= Y); PTX for X.Y JIT-compiles for any CC >= X.Y. None: unknown."""
        if not self.known:
            return None
        major, minor = cc_tuple(cc)
        for s in self.sm:
            smaj, smin = cc_tuple(s)
            if smaj == major and smin <= minor:
                return True
        return any(cc_tuple(p) <= (major, minor) for p in self.ptx)


@dataclass(frozen=True)
class GpuTable:
    gpus: Mapping[str, GpuModel]
    nvswitches: Mapping[str, str]
    branches: Mapping[int, Mapping]
    default_branch: int
    cuda_min_driver: Mapping[str, str]
    cuda_major_min_driver: Mapping[str, str]
    images: Mapping[str, ImageInfo]
    default_image: str
    sources: Mapping[str, str] = field(default_factory=dict)
    distributions: Mapping[str, Mapping] = field(default_factory=dict)

    def gpu(self, device_id: str) -> GpuModel | None:
        return self.gpus.get(norm_id(device_id))

    def min_driver_for_cuda(self, cuda: str) -> str | None:
        if cuda in self.cuda_min_driver:
            return self.cuda_min_driver[cuda]
        return None

    def distribution(self, os_id: str, version_id: str) -> Mapping | None:
        """{cuda_repo, signed_modules} of a distribution (os-release ID, VERSION_ID), None when not listed."""
        return self.distributions.get(f"{str(os_id).strip().lower()} {str(version_id).strip()}")

    def image(self, tag: str, overrides: Mapping | None = None) -> ImageInfo | None:
        """The image's CUDA and architectures: per-group overrides, then the table, then the tag itself."""
        if overrides:
            return ImageInfo(tag, str(overrides["cuda"]), tuple(str(s) for s in overrides.get("sm", ())),
                             tuple(str(s) for s in overrides.get("ptx", ())), bool(overrides.get("sm")))
        if tag in self.images:
            return self.images[tag]
        m = re.search(r"cuda[-_]?(\d+\.\d+)", tag)
        if m:
            return ImageInfo(tag, m.group(1), (), (), known=False)
        return None


def norm_id(device_id: str) -> str:
    return str(device_id).lower().removeprefix("0x").zfill(4)


def _load(path: Path) -> GpuTable:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise InputError(f"not valid YAML: {getattr(err, 'problem', err)}", file=str(path),
                         line=mark.line + 1 if mark else None) from None
    archs = raw.get("architectures") or {}
    for name, a in archs.items():
        if a.get("open_modules") not in OPEN_POLICIES:
            raise InputError(f"open_modules must be one of {', '.join(OPEN_POLICIES)}", file=str(path),
                             key=f"architectures.{name}.open_modules", hint=None)
    gpus = {}
    for dev, g in (raw.get("gpus") or {}).items():
        arch = g.get("arch")
        if arch not in archs:
            raise InputError(f"unknown architecture {arch!r}", file=str(path), key=f"gpus.{dev}.arch",
                             choices=archs)
        cc_tuple(g["cc"])
        gpus[norm_id(dev)] = GpuModel(norm_id(dev), g["model"], arch, str(g["cc"]), archs[arch]["open_modules"],
                                      int(g["min_branch"]), g.get("nvswitch_board_count"))
    images = {tag: ImageInfo(tag, str(i["cuda"]), tuple(str(s) for s in i.get("sm", ())),
                             tuple(str(s) for s in i.get("ptx", ())))
              for tag, i in (raw.get("images") or {}).items()}
    for tag, img in images.items():
        if img.cuda not in raw["cuda_min_driver"]:
            raise InputError(f"CUDA {img.cuda} has no minimum driver in cuda_min_driver", file=str(path),
                             key=f"images.{tag}.cuda", choices=raw["cuda_min_driver"])
    return GpuTable(
        gpus=gpus,
        nvswitches={norm_id(k): v["model"] for k, v in (raw.get("nvswitches") or {}).items()},
        branches={int(k): v for k, v in (raw.get("branches") or {}).items()},
        default_branch=int(raw["default_branch"]),
        cuda_min_driver={str(k): str(v) for k, v in raw["cuda_min_driver"].items()},
        cuda_major_min_driver={str(k): str(v) for k, v in raw.get("cuda_major_min_driver", {}).items()},
        images=images,
        default_image=raw["default_image"],
        sources=raw.get("sources") or {},
        distributions={str(k): dict(v) for k, v in (raw.get("distributions") or {}).items()},
    )


@lru_cache(maxsize=4)
def load_table(path: str | None = None) -> GpuTable:
    return _load(Path(path) if path else TABLE_PATH)


@dataclass(frozen=True)
class Gpu:
    """A GPU on a host's PCI bus, identified through the table (``arch`` None: a part the table does not know)."""
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


def gpus_from_pci(devices: Iterable[Mapping], table: GpuTable | None = None) -> list[Gpu]:
    """The NVIDIA GPUs among the ``pci`` fact's devices, identified through the table (unknown ids kept, marked
    unknown)."""
    table = table or load_table()
    devices = list(devices)
    on_bus = set(nvidia_on_bus(devices)["gpus"])
    out = []
    for d in devices:
        address = str(d.get("address", "")).lower()
        if address not in on_bus:
            continue
        dev = norm_id(d.get("device", ""))
        m = table.gpu(dev)
        if m:
            out.append(Gpu(address, m.device_id, m.model, m.arch, m.cc, m.open_modules, m.min_branch,
                           m.nvswitch_board_count))
        else:
            out.append(Gpu(address, dev, f"unknown NVIDIA GPU 10de:{dev}", None, None, None, None))
    return sorted(out, key=lambda g: g.address)


def nvswitches_from_pci(devices: Iterable[Mapping], table: GpuTable | None = None) -> list[str]:
    """Addresses of the NVSwitches among the ``pci`` fact's devices."""
    return nvidia_on_bus(devices, (table or load_table()).nvswitches)["nvswitches"]
