"""Where the driver came from (apt, the .run installer, pre-installed by other means) and what the plan does with
it: a driver apt did not install is kept when it satisfies the host, refused otherwise, replaced only when the
inventory says nvidia_driver_replace; NVIDIA's CUDA repository per distribution and Ubuntu's own packages. Pure:
facts in, plans out."""
from __future__ import annotations

import pytest

from provision.facts import gpu as g
from provision.gpu.plan import gpu_view, plan_host, ubuntu_modules_package
from provision.gpu.report import gpu_report

H100_PCI = [{"address": "0000:18:00.0", "vendor": "10de", "device": "2330", "class": "030200"}]
RTX5090_PCI = [{"address": "0000:18:00.0", "vendor": "10de", "device": "2b85", "class": "030000"}]
UBUNTU_2404 = {"distribution_id": "ubuntu", "distribution_version": "24.04", "distribution_release": "noble",
               "kernel": "6.8.0-45-generic"}
DEBIAN_12 = {"distribution_id": "debian", "distribution_version": "12", "distribution_release": "bookworm",
             "kernel": "6.1.0-26-amd64"}
RUNFILE_TRACES = "uninstaller=/usr/bin/nvidia-uninstall\nlog=/var/log/nvidia-installer.log\n" \
                 "installer version: 570.172.08\n"


def smi(version: str, bus: str = "00000000:18:00.0", name: str = "NVIDIA H100 80GB HBM3") -> dict:
    return g.nvidia_smi_result(f"path=/usr/bin/nvidia-smi\n0, {bus}, {name}, {version}, 9.0, GPU-1, 81559\nrc=0\n")


def host(version: str | None, *, runfile: str = "", packages: dict | None = None, pci=H100_PCI, os=DEBIAN_12,
         open_module: bool = True, **more) -> dict:
    """A host's GPU facts view: the PCI bus, and a driver of ``version`` loaded (None: no driver)."""
    kind = "Open Kernel Module" if open_module else "Kernel Module"
    module = f"sys={version}\nNVRM version: NVIDIA UNIX {kind} for x86_64  {version}  Release Build\n" \
        if version else ""
    facts = {"pci_devices": pci, "nvidia_smi": smi(version) if version else g.nvidia_smi_result("rc=127"),
             "nvidia_module": g.nvidia_module(module), "nvidia_runfile": g.nvidia_runfile(runfile),
             "packages": dict(packages or {}), "secure_boot": False, **os, **more}
    return gpu_view(facts)


# ---- facts --------------------------------------------------------------------------------------------------
def test_runfile_section_reads_the_installers_traces():
    assert g.nvidia_runfile(RUNFILE_TRACES) == {"uninstaller": "/usr/bin/nvidia-uninstall",
                                                "log": "/var/log/nvidia-installer.log", "version": "570.172.08"}
    assert g.nvidia_runfile("") == {"uninstaller": None, "log": None, "version": None}
    assert "/usr/bin/nvidia-uninstall" in g.NVIDIA_RUNFILE_COMMAND and g.RUNFILE_LOG in g.NVIDIA_RUNFILE_COMMAND


@pytest.mark.parametrize("packages, running, runfile, origin", [
    ({"nvidia-open-580": "580.95.05-1"}, "580.95.05", {}, "apt"),
    ({"nvidia-open-580": "580.95.05-1"}, None, {}, "apt"),                    # installed, not yet loaded
    ({}, "570.172.08", {"uninstaller": "/usr/bin/nvidia-uninstall"}, "runfile"),
    ({}, "570.172.08", {"log": "/var/log/nvidia-installer.log"}, "runfile"),   # uninstaller gone, log left
    ({"libnccl2": "2.27"}, "580.159.04", {}, "preinstalled"),                 # the H200: a read-only mount
    ({}, None, {}, "none"),
    ({}, None, {"log": "/var/log/nvidia-installer.log"}, "none"),           # uninstalled long ago: a log only
    ({}, None, {"uninstaller": "/usr/bin/nvidia-uninstall"}, "runfile"),      # installed, module not loaded
])
def test_driver_origin(packages, running, runfile, origin):
    assert g.driver_origin(packages, running, runfile) == origin


# ---- plans ----------------------------------------------------------------------------------------------------
def test_runfile_driver_that_satisfies_is_kept_without_repository_or_package():
    plan = plan_host(host("580.82.07", runfile=RUNFILE_TRACES), {"nvidia_driver_branch": 580})
    assert plan.ok and plan.driver_kept and plan.driver_origin == "runfile"
    assert plan.verdict == "ready (driver kept: runfile 580.82.07)"
    assert (plan.packages, plan.driver_package, plan.hold, plan.fabricmanager) == ([], None, [], False)
    assert plan.as_vars()["driver_kept"] is True


def test_newer_branch_than_wanted_satisfies():
    plan = plan_host(host("580.82.07", runfile=RUNFILE_TRACES), {"nvidia_driver_branch": 570})
    assert plan.verdict == "ready (driver kept: runfile 580.82.07)"


@pytest.mark.parametrize("version, hv, why", [
    ("570.172.08", {"nvidia_driver_branch": 580}, "it is older than branch 580"),
    ("570.10.01", {"nvidia_driver_branch": 570},    # the branch, but older than the image's CUDA 12.8 needs
     "image pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime needs CUDA 12.8 (driver >= 570.26)"),
])
def test_runfile_driver_that_does_not_satisfy_refuses_in_one_line_naming_replace(version, hv, why):
    plan = plan_host(host(version, runfile=RUNFILE_TRACES), hv)
    assert not plan.ok and not plan.driver_kept and len(plan.refusals) == 1
    line = plan.refusals[0]
    assert line == (f"driver {version} was installed by the .run installer, not from apt, and does not do here: "
                    f"{why}; gpufleet does not stack a packaged driver on it (nvidia_driver_replace: true "
                    f"replaces it)")
    assert "\n" not in line and plan.verdict == f"REFUSED: {line}"


def test_proprietary_runfile_driver_on_a_gpu_that_needs_open_modules_is_not_kept():
    view = host("580.82.07", runfile=RUNFILE_TRACES, pci=RTX5090_PCI, open_module=False)
    plan = plan_host(view, {})
    assert not plan.ok and "GeForce RTX 5090 needs the open kernel modules" in plan.refusals[0]


def test_replace_runs_the_runfiles_uninstaller_then_the_package():
    plan = plan_host(host("570.172.08", runfile=RUNFILE_TRACES), {"nvidia_driver_replace": True})
    assert plan.ok and plan.driver_replace and not plan.driver_kept and not plan.driver_current
    assert plan.driver_uninstaller == "/usr/bin/nvidia-uninstall"
    assert plan.packages == ["nvidia-open-580"] and plan.cuda_repo_distro == "debian12"
    assert plan.verdict == "needs: nvidia-open-580 (branch 580, open) (replacing runfile driver 570.172.08)"
    # replace also replaces a runfile driver that would do (the inventory asked)
    assert plan_host(host("580.82.07", runfile=RUNFILE_TRACES), {"nvidia_driver_replace": "yes"}).driver_replace


def test_replace_cannot_remove_a_driver_of_unknown_origin():
    plan = plan_host(host("580.159.04"), {"nvidia_driver_replace": True})
    assert not plan.ok and plan.driver_origin == "preinstalled"
    assert "no uninstaller gpufleet knows (no nvidia-uninstall)" in plan.refusals[0]


def test_apt_driver_is_planned_as_before():
    plan = plan_host(host("580.95.05", packages={"nvidia-open-580": "580.95.05-1"}), {})
    assert plan.driver_origin == "apt" and not plan.driver_kept and plan.driver_current
    assert plan.verdict.startswith("ready: driver 580.95.05 (open)")


def test_report_says_where_the_driver_came_from():
    text = gpu_report({"r": {}}, {})   # no facts: no GPU, no driver
    assert "driver:     none" in text
    view = host("580.82.07", runfile=RUNFILE_TRACES)
    plan = plan_host(view, {})
    assert plan.driver_kept
    from provision.gpu.report import host_lines
    lines = "\n".join(host_lines("r", plan))
    assert "origin runfile (not from apt), kept" in lines and "needs:      nothing: the driver is kept" in lines


# ---- distributions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("os_facts, folder", [
    (DEBIAN_12, "debian12"),
    ({**UBUNTU_2404, "distribution_version": "22.04", "distribution_release": "jammy"}, "ubuntu2204"),
    (UBUNTU_2404, "ubuntu2404"),
])
def test_cuda_repository_folder_per_distribution(os_facts, folder):
    plan = plan_host(host(None, os=os_facts), {})
    assert plan.cuda_repo_distro == folder and plan.packages == ["nvidia-open-580"]


def test_unknown_distribution_warns_and_names_the_variable():
    plan = plan_host(host(None, os={"distribution_id": "rocky", "distribution_version": "9.4"}), {})
    assert plan.cuda_repo_distro is None
    assert any("rocky 9.4 is not a distribution" in w and "nvidia_cuda_repo_url" in w for w in plan.warnings)


@pytest.mark.parametrize("hv, packages", [
    ({"nvidia_driver_source": "distro", "nvidia_driver_branch": 570},
     ["linux-modules-nvidia-570-server-open-generic", "nvidia-driver-570-server-open"]),
    ({"nvidia_driver_source": "distro", "nvidia_driver_branch": 570, "nvidia_driver_server": False,
      "nvidia_driver_flavour": "proprietary"},
     ["linux-modules-nvidia-570-generic", "nvidia-driver-570"]),
])
def test_ubuntu_distro_source_installs_the_signed_prebuilt_modules(hv, packages):
    plan = plan_host(host(None, os=UBUNTU_2404), hv)
    assert plan.ok and plan.packages == packages and plan.kernel_modules_package == packages[0]
    assert plan.hold[0] == packages[1]


def test_ubuntu_signed_modules_need_no_mok_under_secure_boot():
    distro = plan_host(host(None, os=UBUNTU_2404, secure_boot=True),
                       {"nvidia_driver_source": "distro", "nvidia_driver_branch": 570})
    assert distro.ok, distro.refusals
    cuda = plan_host(host(None, os=UBUNTU_2404, secure_boot=True), {})
    assert not cuda.ok and "Secure Boot is on" in cuda.refusals[0]      # DKMS-built modules need a MOK


def test_debian_distro_source_has_no_signed_modules_package():
    plan = plan_host(host(None, os=DEBIAN_12), {"nvidia_driver_source": "distro", "nvidia_driver_branch": 570})
    assert plan.kernel_modules_package is None and plan.packages == ["nvidia-driver-570-server-open"]


@pytest.mark.parametrize("kernel, want", [
    ("6.8.0-45-generic", "linux-modules-nvidia-570-server-open-generic"),
    ("5.15.0-1050-aws", "linux-modules-nvidia-570-server-open-aws"),
    ("6.8.0-1015-nvidia-64k", "linux-modules-nvidia-570-server-open-nvidia-64k"),
    ("6.18.44-fc-v973-gpu", None),
])
def test_ubuntu_modules_package_follows_the_kernel_flavour(kernel, want):
    assert ubuntu_modules_package("nvidia-driver-570-server-open", kernel) == want


def test_runfile_driver_that_is_not_loaded_is_refused_not_stacked_on():
    view = host(None, runfile="uninstaller=/usr/bin/nvidia-uninstall\n")
    plan = plan_host(view, {})
    assert plan.driver_origin == "runfile" and not plan.ok
    assert "it is not loaded (no version from the module or nvidia-smi)" in plan.refusals[0]
    assert plan_host(view, {"nvidia_driver_replace": True}).driver_replace


def test_a_log_left_by_an_uninstalled_runfile_driver_does_not_block_the_install():
    plan = plan_host(host(None, runfile="log=/var/log/nvidia-installer.log\n"), {})
    assert plan.ok and plan.driver_origin == "none" and plan.packages == ["nvidia-open-580"]
