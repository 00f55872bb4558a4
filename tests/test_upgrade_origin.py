"""The rolling upgrade skips a host whose driver apt did not install, with the reason the site plan gives (one
line that names nvidia_driver_replace); a host without any driver keeps its old reason. Pure: recorded output in."""
from __future__ import annotations

import json
from pathlib import Path

from provision import facts as factmod
from provision.facts.gpu import non_apt_reason
from provision.gpu.plan import gpu_view, plan_host
from provision.upgrade.plan import plan_upgrade
from provision.upgrade.steps import SECTIONS, parse_facts
from tests.test_upgrade_units import MADISON, _sections, _smi_rows

H200 = json.loads((Path(__file__).parent / "fixtures" / "gpu" / "h200-2026-12-02.json").read_text())
RUNFILE = "uninstaller=/usr/bin/nvidia-uninstall\nlog=/var/log/nvidia-installer.log\ninstaller version: 570.172.08"
MODULE = "sys=570.172.08\nNVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.172.08  Release Build"


def _facts(dpkg="", runfile=RUNFILE, module=MODULE, smi=_smi_rows(("00000000:17:00.0", "570.172.08")) + "rc=0"):
    return parse_facts(_sections(boot_id="b1", apt_cache="100 0", nvidia_smi=smi,
                                 pci="0000:17:00.0 0x10de 0x2330 0x030200", packages=dpkg, maintenance="",
                                 upgrade_state="", record="", lock="", docker_runtimes="", container_toolkit="",
                                 nvidia_devnodes="", nvidia_module=module, nvidia_runfile=runfile))


def test_the_upgrade_reads_where_the_driver_came_from():
    assert {"nvidia_module", "nvidia_runfile"} <= set(SECTIONS)
    assert _facts().origin == "runfile"
    assert _facts(runfile="").origin == "preinstalled"
    assert _facts(dpkg="nvidia-open-570\t570.172.08-1\thold ok installed\n").origin == "apt"
    assert _facts(runfile="", module="", smi="rc=127").origin == "none"


def test_runfile_host_is_skipped_with_the_site_plans_reason():
    p = plan_upgrade("rf", _facts(), MADISON, "580")
    assert p.action == "skip" and p.reason == non_apt_reason("runfile", "570.172.08")
    assert p.reason == ("driver 570.172.08 was installed by the .run installer, not from apt: gpufleet does not "
                        "stack a packaged driver on it (nvidia_driver_replace: true replaces it)")
    assert plan_upgrade("h", _facts(runfile="", module="", smi="rc=127"), MADISON, "580").reason == \
        "no NVIDIA driver package installed (nothing to upgrade)"


def test_recorded_h200_is_skipped_as_preinstalled_and_the_site_plan_keeps_it():
    text = H200["sections_output"].replace(f"{factmod.MARK} end", "")
    f = parse_facts(text + _sections(boot_id="b", apt_cache="1 0"))
    p = plan_upgrade("h200", f, "", "580")
    assert f.origin == "preinstalled" and p.action == "skip"
    assert p.reason == non_apt_reason("preinstalled", "580.159.04")
    plan = plan_host(gpu_view(factmod.parse(H200["sections_output"], factmod.GPU_SECTIONS)), {})
    assert plan.verdict == "ready (driver kept: preinstalled 580.159.04)"
