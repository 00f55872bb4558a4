"""What a host needs, decided from its GPU facts and its group vars. Pure: facts in, a plan out.

``gpu_view(facts)`` turns the fact sections of :data:`provision.facts.GPU_SECTIONS` into the GPU facts a plan
reads (GPUs identified through gpus.yaml, nvidia-smi, the loaded module, the GPU stack's packages...);
``plan_host(view, hostvars)`` → :class:`HostGpuPlan` (the driver in use and where it came from, driver branch and
flavour to have, packages, fabric manager, image checks, refusals, a one-line verdict). Roles read
``plan.as_vars()``; ``provision facts --gpu`` prints it.

The driver in use comes from the loaded kernel module and nvidia-smi, then from dpkg: a loaded driver without a
driver package is pre-installed, not from apt (a cloud image's, a runfile's).

Group vars read here (all optional):
  nvidia_driver_branch      535 | 550 | 570 | 580 ...      (default: the table's default_branch)
  nvidia_driver_flavour     auto | open | proprietary       (auto: open where the GPUs allow it)
  nvidia_driver_source      cuda-repo | distro              (NVIDIA's CUDA repository, or the distribution's packages)
  nvidia_driver_server      true | false                    (distro source: the -server packages)
  nvidia_fabricmanager      auto | true | false             (auto: only on NVSwitch boards)
  nvidia_module_signing     true | false                    (Secure Boot: DKMS signs with an enrolled MOK)
  gpu_image                 image tag                       (default: the table's default_image)
  gpu_image_info            {cuda: "12.8", sm: [...], ptx: [...]}  (for an image the table does not know)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from provision.errors import InputError, closest
from provision.facts.gpu import gpu_packages, installed_driver_package, smi_problem, upstream_version
from provision.gpu.table import GpuTable, gpus_from_pci, load_table, nvswitches_from_pci, parse_version
from provision.truthy import lenient_bool
from provision.versions import version_at_least

FLAVOURS = ("auto", "open", "proprietary")
SOURCES = ("cuda-repo", "distro")
FM_CHOICES = ("auto", "true", "false")
OPEN_FROM_BRANCH = 515      # first branch shipping the open modules (sources.kernel_modules)


@dataclass
class HostGpuPlan:
    host: str
    gpus: list[dict] = field(default_factory=list)
    nvswitches: list[str] = field(default_factory=list)
    installed_driver: str | None = None     # the driver in use: loaded module, nvidia-smi, then packages
    installed_flavour: str | None = None
    driver_loaded: bool = False              # the nvidia kernel module is loaded
    driver_source: str | None = None         # "apt" (driver_package_installed), "not apt" (pre-installed), None
    driver_package_installed: str | None = None   # "nvidia-open-580=580.95.05-1"
    smi_gpu_count: int | None = None
    branch: int | None = None
    flavour: str | None = None
    source: str = "cuda-repo"
    driver_package: str | None = None
    packages: list[str] = field(default_factory=list)
    hold: list[str] = field(default_factory=list)
    fabricmanager: bool = False
    fabricmanager_package: str | None = None
    nvswitch_board: bool = False
    driver_current: bool = False       # the wanted package is installed and nvidia-smi shows every GPU
    image: str | None = None
    image_cuda: str | None = None
    image_min_driver: str | None = None
    secure_boot: bool | None = None
    simulated: bool = False
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdict: str = ""

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpus)

    @property
    def ok(self) -> bool:
        return not self.refusals

    def as_vars(self) -> dict[str, Any]:
        d = asdict(self)
        d["has_gpus"] = self.has_gpus
        d["gpu_count"] = len(self.gpus)
        d["ok"] = self.ok
        d["gpu_bus_ids"] = [g["address"] for g in self.gpus]
        return d


def _choice(hostvars: Mapping, key: str, choices: tuple, default: str) -> str:
    v = hostvars.get(key, default)
    if isinstance(v, bool):
        v = "true" if v else "false"
    v = str(v).strip().lower()
    if v not in choices:
        raise InputError(f"{v!r} is not one of {', '.join(choices)}", key=key, hint=closest(v, choices))
    return v


def gpu_view(facts: Mapping, table: GpuTable | None = None) -> dict:
    """The GPU facts :func:`plan_host` reads, from a host's fact sections (:data:`provision.facts.GPU_SECTIONS`,
    merged as the executor gathers them; a missing section reads as empty). JSON-able."""
    table = table or load_table()
    pci = list(facts.get("pci_devices") or [])
    module = facts.get("nvidia_module") or {}
    smi = facts.get("nvidia_smi") or {"rc": None, "path": None, "gpus": [], "error": None}
    return {
        "pci_devices": pci,
        "gpus": [g.as_dict() for g in gpus_from_pci(pci, table)],
        "nvswitches": nvswitches_from_pci(pci, table),
        "nvidia_smi": dict(smi),
        "kernel_module_loaded": bool(module.get("loaded")),
        "kernel_module_version": module.get("version"),
        "kernel_module_flavour": module.get("flavour"),
        "secure_boot": facts.get("secure_boot"),
        "module_signing_keys": list(facts.get("module_signing_keys") or []),
        "kernel": facts.get("kernel", ""),
        "os": {"id": facts.get("distribution_id", ""), "version_id": facts.get("distribution_version", ""),
               "codename": facts.get("distribution_release", "")},
        "packages": gpu_packages(facts.get("packages") or {}),
        "holds": sorted(facts.get("held_packages") or []),
        "gpu_containers": list(facts.get("gpu_containers") or []),
        "gpu_containers_error": facts.get("gpu_containers_error"),
        "maintenance": bool(facts.get("maintenance")),
        "maintenance_reason": facts.get("maintenance_reason", ""),
    }


def driver_packages(source: str, branch: int, flavour: str, server: bool = True) -> str:
    """The meta package that installs the whole driver (kernel modules via DKMS, userspace, nvidia-smi,
    nvidia-persistenced). CUDA repo names follow NVIDIA's R570+ packaging table; distro names follow Ubuntu's."""
    if source == "cuda-repo":
        return f"nvidia-open-{branch}" if flavour == "open" else f"cuda-drivers-{branch}"
    name = f"nvidia-driver-{branch}"
    if server:
        name += "-server"
    return name + ("-open" if flavour == "open" else "")


def _driver_in_use(plan: HostGpuPlan, gf: Mapping) -> None:
    """The driver in use: the loaded module's version (else nvidia-smi's) and flavour; then the driver package.
    A loaded driver without a driver package did not come from apt."""
    smi = (gf.get("nvidia_smi") or {}).get("gpus") or []
    plan.driver_loaded = bool(gf.get("kernel_module_loaded") or gf.get("kernel_module_version") or smi)
    version = gf.get("kernel_module_version") or (smi[0]["driver_version"] if smi else None)
    flavour = gf.get("kernel_module_flavour")
    pkg = installed_driver_package(gf.get("packages") or {})
    if pkg:
        name, pkg_version = pkg
        plan.driver_source = "apt"
        plan.driver_package_installed = f"{name}={pkg_version}"
        version = version or upstream_version(pkg_version)
        if flavour is None:
            flavour = "open" if name.startswith("nvidia-open") or name.endswith("-open") else "proprietary"
        if plan.driver_loaded and upstream_version(pkg_version) != version:
            plan.warnings.append(f"driver {version} is loaded, package {name} is at {pkg_version}: a reboot loads "
                                 f"the package's")
    elif version:
        plan.driver_source = "not apt"
    plan.installed_driver, plan.installed_flavour = version, flavour


def _branch_of(version: str | None) -> int | None:
    try:
        return parse_version(version)[0] if version else None
    except ValueError:
        return None


def plan_host(facts: Mapping, hostvars: Mapping | None = None, *, host: str = "",
              table: GpuTable | None = None) -> HostGpuPlan:
    """The plan for one host from its GPU facts (:func:`gpu_view`) and its variables."""
    table = table or load_table()
    hv = dict(hostvars or {})
    plan = HostGpuPlan(host=host or str(hv.get("inventory_hostname", "")))
    plan.gpus = list(facts.get("gpus") or [])
    plan.nvswitches = list(facts.get("nvswitches") or [])
    plan.secure_boot = facts.get("secure_boot")
    plan.simulated = lenient_bool(hv.get("gpufleet_simulated_gpus", False))
    _driver_in_use(plan, facts)
    if facts.get("gpu_containers_error"):
        plan.warnings.append(f"cannot tell which containers hold GPUs: {facts['gpu_containers_error']}")
    smi = (facts.get("nvidia_smi") or {}).get("gpus") or []
    plan.smi_gpu_count = len(smi) if (facts.get("nvidia_smi") or {}).get("rc") == 0 else None

    flavour_req = _choice(hv, "nvidia_driver_flavour", FLAVOURS, "auto")
    plan.source = _choice(hv, "nvidia_driver_source", SOURCES, "cuda-repo")
    fm_req = _choice(hv, "nvidia_fabricmanager", FM_CHOICES, "auto")
    raw_branch = hv.get("nvidia_driver_branch", table.default_branch)
    try:
        branch = int(str(raw_branch).strip())
    except ValueError:
        raise InputError(f"{raw_branch!r} is not a driver branch number", key="nvidia_driver_branch",
                         hint=str(table.default_branch)) from None

    if not plan.gpus:
        if plan.installed_driver:
            plan.warnings.append(f"no NVIDIA GPU on the PCI bus, yet driver {plan.installed_driver} is installed")
        plan.verdict = "ok: no NVIDIA GPU on the PCI bus; no driver needed"
        return plan

    plan.branch = branch
    if branch not in table.branches:
        plan.warnings.append(f"driver branch {branch} is not one the table knows "
                             f"({', '.join(map(str, table.branches))})")
    elif table.branches[branch].get("designation") == "EOL":
        plan.warnings.append(f"driver branch {branch} is end of life")

    unknown = [g for g in plan.gpus if not g.get("arch")]
    for g in unknown:
        plan.refusals.append(f"unknown GPU 10de:{g['device_id']} at {g['address']}: add it to provision/gpu/gpus.yaml")
    known = [g for g in plan.gpus if g.get("arch")]
    required = [g for g in known if g["open_modules"] == "required"]
    impossible = [g for g in known if g["open_modules"] == "impossible"]

    # flavour
    if required and impossible:
        plan.refusals.append(f"{required[0]['model']} needs the open kernel modules and {impossible[0]['model']} "
                             f"cannot use them: no single driver flavour drives both")
        flavour = "open"
    elif flavour_req == "proprietary" and required:
        g = required[0]
        plan.refusals.append(f"proprietary flavour requested on {g['arch']} ({g['model']}): only the open kernel "
                             f"modules support it; set nvidia_driver_flavour: open (or auto)")
        flavour = "proprietary"
    elif flavour_req == "open" and impossible:
        g = impossible[0]
        plan.refusals.append(f"open flavour requested on {g['arch']} ({g['model']}): the open kernel modules need "
                             f"Turing or newer; set nvidia_driver_flavour: proprietary (or auto)")
        flavour = "open"
    elif flavour_req == "auto":
        flavour = "proprietary" if impossible else "open"
    else:
        flavour = flavour_req
    if flavour == "open" and branch < OPEN_FROM_BRANCH:
        plan.refusals.append(f"driver branch {branch} has no open kernel modules (first in {OPEN_FROM_BRANCH})")
    plan.flavour = flavour

    # branch against the GPUs
    for g in known:
        if g.get("min_branch") and branch < int(g["min_branch"]):
            plan.refusals.append(f"driver branch {branch} is too old for {g['model']} (needs {g['min_branch']} "
                                 f"or newer)")
            break

    # Secure Boot
    if plan.secure_boot:
        signing = lenient_bool(hv.get("nvidia_module_signing", False))
        if not signing:
            plan.refusals.append("Secure Boot is on and no module signing is configured: the kernel would refuse "
                                 "the unsigned nvidia module; enroll a MOK for DKMS and set nvidia_module_signing: "
                                 "true, or turn Secure Boot off")
        elif not facts.get("module_signing_keys"):
            plan.refusals.append("Secure Boot is on and nvidia_module_signing is true, but no DKMS/MOK signing key "
                                 "was found (/var/lib/shim-signed/mok/MOK.der or /var/lib/dkms/mok.pub)")

    # packages
    server = lenient_bool(hv.get("nvidia_driver_server", True))
    plan.driver_package = driver_packages(plan.source, branch, flavour, server)
    plan.packages = [plan.driver_package]
    pairs = [g.get("nvswitch_board_count") for g in known]
    sxm_board = bool(pairs) and pairs[0] is not None and all(p == pairs[0] for p in pairs) and len(known) >= pairs[0]
    plan.nvswitch_board = bool(plan.nvswitches) or sxm_board
    plan.fabricmanager = plan.nvswitch_board if fm_req == "auto" else fm_req == "true"
    if plan.fabricmanager:
        plan.fabricmanager_package = f"nvidia-fabricmanager-{branch}"
    plan.hold = [plan.driver_package] + ([plan.fabricmanager_package] if plan.fabricmanager else [])

    # installed state
    installed_pkgs = facts.get("packages") or {}
    wanted_installed = plan.driver_package in installed_pkgs
    if plan.installed_driver and _branch_of(plan.installed_driver) != branch:
        plan.warnings.append(f"driver {plan.installed_driver} is installed; the plan moves it to branch {branch}")
    bus_pci = {g["address"] for g in plan.gpus}
    bus_smi = {s["bus_id"] for s in smi}
    if smi and bus_pci != bus_smi:
        missing = sorted(bus_pci - bus_smi)
        plan.warnings.append(f"nvidia-smi lists {len(bus_smi & bus_pci)} of {len(bus_pci)} GPUs"
                             + (f" (missing {', '.join(missing[:4])})" if missing else ""))
    plan.driver_current = bool(wanted_installed and smi and bus_pci <= bus_smi
                               and _branch_of(plan.installed_driver) == branch)
    if not wanted_installed and plan.installed_driver and _branch_of(plan.installed_driver) == branch \
            and plan.installed_flavour == flavour and smi and bus_pci <= bus_smi:
        # installed by other means (e.g. the distribution's packages or a real host's runfile): accept it
        plan.driver_current = True
        plan.warnings.append(f"driver {plan.installed_driver} ({flavour}) is present but not as package "
                             f"{plan.driver_package}")

    # image
    _plan_image(plan, hv, table, known)

    plan.verdict = _verdict(plan)
    return plan


def _plan_image(plan: HostGpuPlan, hv: Mapping, table: GpuTable, known: list[dict]) -> None:
    tag = str(hv.get("gpu_image") or table.default_image)
    plan.image = tag
    info = table.image(tag, hv.get("gpu_image_info"))
    if info is None:
        plan.refusals.append(f"cannot tell which CUDA image {tag} needs: set gpu_image_info: {{cuda: '12.8', "
                             f"sm: [...]}} for it")
        return
    plan.image_cuda = info.cuda
    need = table.min_driver_for_cuda(info.cuda)
    if need is None:
        plan.refusals.append(f"image {tag} needs CUDA {info.cuda}, which the table has no minimum driver for; "
                             f"add it to cuda_min_driver in provision/gpu/gpus.yaml")
        return
    plan.image_min_driver = need
    need_branch = parse_version(need)[0]
    installed_same_branch = plan.installed_driver and _branch_of(plan.installed_driver) == plan.branch
    if installed_same_branch and plan.driver_current:
        if not version_at_least(plan.installed_driver, need):
            plan.refusals.append(f"image {tag} needs CUDA {info.cuda} (driver >= {need}); driver "
                                 f"{plan.installed_driver} is too old")
    elif plan.branch is not None and plan.branch < need_branch:
        plan.refusals.append(f"image {tag} needs CUDA {info.cuda} (driver >= {need}); driver {plan.branch} is too "
                             f"old")
    for g in known:
        ok = info.supports_cc(g["cc"])
        if ok is False:
            plan.refusals.append(f"image {tag} has no kernels for compute capability {g['cc']} ({g['model']}); "
                                 f"it is built for {', '.join(info.sm)}")
            break
        if ok is None:
            plan.warnings.append(f"image {tag}: its compute capabilities are unknown; {g['model']} "
                                 f"(sm_{g['cc'].replace('.', '')}) not checked")
            break


def _verdict(plan: HostGpuPlan) -> str:
    if plan.refusals:
        more = f" (+{len(plan.refusals) - 1} more)" if len(plan.refusals) > 1 else ""
        return f"REFUSED: {plan.refusals[0]}{more}"
    fm = f" + {plan.fabricmanager_package}" if plan.fabricmanager else ""
    if plan.driver_current:
        return (f"ready: driver {plan.installed_driver} ({plan.flavour}), {len(plan.gpus)} GPU(s) listed by "
                f"nvidia-smi, image CUDA {plan.image_cuda} ok")
    return f"needs: {plan.driver_package} (branch {plan.branch}, {plan.flavour}){fm}"


def driver_check(plan: HostGpuPlan, view: Mapping, expected_version: str = "") -> tuple[bool, str]:
    """After an install: (ok, message): nvidia-smi answers and lists every GPU on the PCI bus (at
    ``expected_version`` when given)."""
    smi = view.get("nvidia_smi") or {}
    pci = {g["address"] for g in plan.gpus}
    listed = {g["bus_id"]: g["driver_version"] for g in smi.get("gpus") or []}
    if smi.get("rc") != 0:
        return False, f"nvidia-smi does not answer after the install: {smi_problem(smi)}"
    if not pci <= set(listed):
        return False, (f"nvidia-smi lists {len(pci & set(listed))} of {len(pci)} GPUs on the PCI bus; missing "
                       f"{', '.join(sorted(pci - set(listed)))}")
    if expected_version and any(v != expected_version for v in listed.values()):
        return False, (f"nvidia-smi reports driver {sorted(set(listed.values()))}, expected {expected_version} "
                       f"(a reboot is still pending?)")
    return True, f"nvidia-smi lists all {len(pci)} GPUs at driver {next(iter(listed.values()))}"
