"""What a host needs, decided from its GPU facts and its group vars. Pure: facts in, a plan out.

``gpu_view(facts)`` turns the fact sections of :data:`provision.facts.GPU_SECTIONS` into the GPU facts a plan
reads (GPUs identified through gpus.yaml, nvidia-smi, the loaded module, the GPU stack's packages...);
``plan_host(view, hostvars)`` → :class:`HostGpuPlan` (the driver in use and where it came from, driver branch and
flavour to have, packages, fabric manager, image checks, refusals, a one-line verdict). Roles read
``plan.as_vars()``; ``provision facts --gpu`` prints it.

The driver in use comes from the loaded kernel module and nvidia-smi, then from dpkg; where it came from
(``driver_origin``: apt, runfile, preinstalled, none) from dpkg and the .run installer's traces
(:func:`provision.facts.gpu.driver_origin`). A driver apt did not install is KEPT when it satisfies the branch
(its branch >= the wanted one), the GPUs and the image's CUDA: verdict "ready (driver kept: ...)", no repository,
no package. Otherwise the host is refused, unless ``nvidia_driver_replace`` is true: then the .run installer's own
uninstaller runs before the packaged install. A packaged driver is never stacked on a driver from elsewhere.

NVIDIA's CUDA repository folder comes from the OS facts through gpus.yaml's ``distributions`` (debian12,
ubuntu2204, ubuntu2404); on Ubuntu, ``nvidia_driver_source: distro`` also installs the signed prebuilt modules
``linux-modules-nvidia-<branch>[-server][-open]-<kernel flavour>`` (no DKMS, no MOK under Secure Boot).

Group vars read here (all optional):
  nvidia_driver_branch      535 | 550 | 570 | 580 ...      (default: the table's default_branch)
  nvidia_driver_flavour     auto | open | proprietary       (auto: open where the GPUs allow it)
  nvidia_driver_source      cuda-repo | distro              (NVIDIA's CUDA repository, or the distribution's packages)
  nvidia_driver_server      true | false                    (distro source: the -server packages)
  nvidia_fabricmanager      auto | true | false             (auto: only on NVSwitch boards)
  nvidia_module_signing     true | false                    (Secure Boot: DKMS signs with an enrolled MOK)
  nvidia_driver_replace     true | false                    (replace a driver apt did not install; default false)
  gpu_image                 image tag                       (default: the table's default_image)
  gpu_image_info            {cuda: "12.8", sm: [...], ptx: [...]}  (for an image the table does not know)
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from provision.errors import InputError, closest
from provision.facts.gpu import (ORIGIN_WORDS, driver_origin, gpu_packages, installed_driver_package,
                                 non_apt_reason, smi_problem, upstream_version)
from provision.gpu.table import GpuTable, ImageInfo, gpus_from_pci, load_table, nvswitches_from_pci, parse_version
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
    driver_origin: str = "none"              # apt | runfile | preinstalled | none (facts.gpu.DRIVER_ORIGINS)
    driver_kept: bool = False                # a driver apt did not install satisfies the plan: kept as it is
    driver_replace: bool = False             # nvidia_driver_replace: the runfile's uninstaller, then the package
    driver_uninstaller: str | None = None    # e.g. /usr/bin/nvidia-uninstall
    driver_package_installed: str | None = None   # "nvidia-open-580=580.95.05-1"
    smi_gpu_count: int | None = None
    branch: int | None = None
    flavour: str | None = None
    source: str = "cuda-repo"
    cuda_repo_distro: str | None = None      # NVIDIA's repository folder for this OS: debian12, ubuntu2404...
    kernel_modules_package: str | None = None    # Ubuntu's signed prebuilt modules (distro source)
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
        "runfile": dict(facts.get("nvidia_runfile") or {}),
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
    """The driver in use: the loaded module's version (else nvidia-smi's) and flavour; then the driver package;
    then where it came from (apt, runfile, preinstalled, none)."""
    smi = (gf.get("nvidia_smi") or {}).get("gpus") or []
    plan.driver_loaded = bool(gf.get("kernel_module_loaded") or gf.get("kernel_module_version") or smi)
    version = gf.get("kernel_module_version") or (smi[0]["driver_version"] if smi else None)
    flavour = gf.get("kernel_module_flavour")
    pkg = installed_driver_package(gf.get("packages") or {})
    if pkg:
        name, pkg_version = pkg
        plan.driver_package_installed = f"{name}={pkg_version}"
        version = version or upstream_version(pkg_version)
        if flavour is None:
            flavour = "open" if name.startswith("nvidia-open") or name.endswith("-open") else "proprietary"
        if plan.driver_loaded and upstream_version(pkg_version) != version:
            plan.warnings.append(f"driver {version} is loaded, package {name} is at {pkg_version}: a reboot loads "
                                 f"the package's")
    plan.driver_origin = driver_origin(gf.get("packages") or {}, version, gf.get("runfile"))
    plan.driver_uninstaller = (gf.get("runfile") or {}).get("uninstaller")
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

    # where the driver goes from here: kept, replaced, or installed (refusals first, before anything changes)
    plan.cuda_repo_distro = _cuda_repo(plan, facts, table)
    image = _image_needs(plan, hv, table)
    _driver_policy(plan, facts, hv, known, required)
    if plan.driver_kept:
        if _nvswitch_board(plan, known) and fm_req != "false":
            plan.warnings.append(f"fabric manager is not installed for a kept driver: install nvidia-fabricmanager "
                                 f"at exactly {plan.installed_driver} the way the driver came")
        _check_image(plan, image, known)
        plan.verdict = _verdict(plan)
        return plan

    # Secure Boot (the distribution's signed prebuilt modules need no MOK)
    if plan.secure_boot and not _signed_modules(plan, facts, table):
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
    if _signed_modules(plan, facts, table):
        plan.kernel_modules_package = ubuntu_modules_package(plan.driver_package, str(facts.get("kernel") or ""))
        if plan.kernel_modules_package:
            plan.packages.insert(0, plan.kernel_modules_package)
        else:
            plan.warnings.append(f"cannot tell the kernel flavour of {facts.get('kernel')!r}: no signed "
                                 f"linux-modules-nvidia package planned (DKMS builds the module)")
    plan.nvswitch_board = _nvswitch_board(plan, known)
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
    if not wanted_installed and plan.driver_origin == "apt" and _branch_of(plan.installed_driver) == branch \
            and plan.installed_flavour == flavour and smi and bus_pci <= bus_smi:
        # another package of the same branch and flavour (e.g. the distribution's): accept it
        plan.driver_current = True
        plan.warnings.append(f"driver {plan.installed_driver} ({flavour}) is present but not as package "
                             f"{plan.driver_package}")

    _check_image(plan, image, known)
    plan.verdict = _verdict(plan)
    return plan


def _nvswitch_board(plan: HostGpuPlan, known: list[dict]) -> bool:
    """NVSwitch functions on the bus, or a full SXM board of a part that comes on NVSwitch boards."""
    pairs = [g.get("nvswitch_board_count") for g in known]
    sxm_board = bool(pairs) and pairs[0] is not None and all(p == pairs[0] for p in pairs) and len(known) >= pairs[0]
    return bool(plan.nvswitches) or sxm_board


def _cuda_repo(plan: HostGpuPlan, facts: Mapping, table: GpuTable) -> str | None:
    """NVIDIA's CUDA repository folder for the host's OS (gpus.yaml ``distributions``); a warning when unknown."""
    os_facts = facts.get("os") or {}
    os_id, version = str(os_facts.get("id") or ""), str(os_facts.get("version_id") or "")
    dist = table.distribution(os_id, version)
    if dist:
        return str(dist["cuda_repo"])
    if os_id:
        plan.warnings.append(f"{os_id} {version} is not a distribution gpufleet knows NVIDIA's CUDA repository for "
                             f"({', '.join(table.distributions)}): set nvidia_cuda_repo_url")
    return None


def _signed_modules(plan: HostGpuPlan, facts: Mapping, table: GpuTable) -> bool:
    """The distribution's own packages on a distribution that signs prebuilt nvidia modules (Ubuntu)."""
    os_facts = facts.get("os") or {}
    dist = table.distribution(str(os_facts.get("id") or ""), str(os_facts.get("version_id") or ""))
    return plan.source == "distro" and bool(dist and dist.get("signed_modules"))


def ubuntu_modules_package(driver_package: str, kernel: str) -> str | None:
    """Ubuntu's signed prebuilt modules that go with ``nvidia-driver-570-server-open`` on kernel
    ``6.8.0-45-generic``: ``linux-modules-nvidia-570-server-open-generic`` (tracks the flavour's kernels)."""
    m = re.fullmatch(r"\d+\.\d+\.\d+-\d+-([a-z][a-z0-9-]*)", kernel.strip())
    if not m or not driver_package.startswith("nvidia-driver-"):
        return None
    return f"linux-modules-nvidia-{driver_package.removeprefix('nvidia-driver-')}-{m.group(1)}"


def _kept_problem(plan: HostGpuPlan, facts: Mapping, required: list[dict]) -> str:
    """Why the driver in use does not satisfy this host ('' when it does): its branch against the wanted one, the
    image's minimum driver, the open modules some GPUs need, and nvidia-smi listing every GPU."""
    version = plan.installed_driver or ""
    have = _branch_of(version)
    if have is None:
        return "it is not loaded (no version from the module or nvidia-smi)"
    if plan.branch is None or have < plan.branch:
        return f"it is older than branch {plan.branch}"
    if plan.image_min_driver and not version_at_least(version, plan.image_min_driver):
        return f"image {plan.image} needs CUDA {plan.image_cuda} (driver >= {plan.image_min_driver})"
    if required and plan.installed_flavour == "proprietary":
        return f"{required[0]['model']} needs the open kernel modules"
    listed = {s["bus_id"] for s in (facts.get("nvidia_smi") or {}).get("gpus") or []}
    missing = {g["address"] for g in plan.gpus} - listed
    if missing:
        return f"nvidia-smi lists {len(plan.gpus) - len(missing)} of {len(plan.gpus)} GPUs"
    return ""


def _driver_policy(plan: HostGpuPlan, facts: Mapping, hv: Mapping, known: list[dict], required: list[dict]) -> None:
    """A driver apt did not install: kept when it satisfies the host, replaced when nvidia_driver_replace says so
    (the runfile's own uninstaller first), else refused with one line that names nvidia_driver_replace."""
    if plan.driver_origin not in ("runfile", "preinstalled"):
        return
    replace = lenient_bool(hv.get("nvidia_driver_replace", False))
    if replace and plan.driver_origin == "runfile":
        plan.driver_replace = True
        plan.driver_uninstaller = plan.driver_uninstaller or "nvidia-uninstall"
        plan.warnings.append(f"driver {plan.installed_driver} from the .run installer is replaced "
                             f"(nvidia_driver_replace): {plan.driver_uninstaller} --silent, then the package")
        return
    if replace:
        plan.refusals.append(f"driver {plan.installed_driver} was {ORIGIN_WORDS[plan.driver_origin]} and has no "
                             f"uninstaller gpufleet knows (no nvidia-uninstall): nvidia_driver_replace cannot remove "
                             f"it; "
                             f"remove it the way it came, or set nvidia_driver_replace: false to keep it")
        return
    problem = _kept_problem(plan, facts, required)
    if problem:
        plan.refusals.append(non_apt_reason(plan.driver_origin, plan.installed_driver, problem))
        return
    plan.driver_kept = plan.driver_current = True
    if any(g.get("min_branch") and _branch_of(plan.installed_driver) < int(g["min_branch"]) for g in known):
        plan.warnings.append(f"driver {plan.installed_driver} is older than some GPUs' minimum branch")


def _image_needs(plan: HostGpuPlan, hv: Mapping, table: GpuTable) -> ImageInfo | None:
    """The image's CUDA and the minimum driver for it (refused when neither the table nor the tag tells)."""
    tag = str(hv.get("gpu_image") or table.default_image)
    plan.image = tag
    info = table.image(tag, hv.get("gpu_image_info"))
    if info is None:
        plan.refusals.append(f"cannot tell which CUDA image {tag} needs: set gpu_image_info: {{cuda: '12.8', "
                             f"sm: [...]}} for it")
        return None
    plan.image_cuda = info.cuda
    plan.image_min_driver = table.min_driver_for_cuda(info.cuda)
    if plan.image_min_driver is None:
        plan.refusals.append(f"image {tag} needs CUDA {info.cuda}, which the table has no minimum driver for; "
                             f"add it to cuda_min_driver in provision/gpu/gpus.yaml")
        return None
    return info


def _check_image(plan: HostGpuPlan, info: ImageInfo | None, known: list[dict]) -> None:
    """The driver (kept or planned) against the image's minimum, and the GPUs against the image's kernels."""
    need, tag = plan.image_min_driver, plan.image
    if info is None or need is None:
        return
    installed_same_branch = plan.installed_driver and _branch_of(plan.installed_driver) == plan.branch
    if plan.driver_kept or (installed_same_branch and plan.driver_current):
        if not version_at_least(plan.installed_driver, need):
            plan.refusals.append(f"image {tag} needs CUDA {plan.image_cuda} (driver >= {need}); driver "
                                 f"{plan.installed_driver} is too old")
    elif plan.branch is not None and plan.branch < parse_version(need)[0]:
        plan.refusals.append(f"image {tag} needs CUDA {plan.image_cuda} (driver >= {need}); driver {plan.branch} "
                             f"is too old")
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
    if plan.driver_kept:
        return f"ready (driver kept: {plan.driver_origin} {plan.installed_driver})"
    if plan.driver_current:
        return (f"ready: driver {plan.installed_driver} ({plan.flavour}), {len(plan.gpus)} GPU(s) listed by "
                f"nvidia-smi, image CUDA {plan.image_cuda} ok")
    replace = f" (replacing {plan.driver_origin} driver {plan.installed_driver})" if plan.driver_replace else ""
    return f"needs: {plan.driver_package} (branch {plan.branch}, {plan.flavour}){fm}{replace}"


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
