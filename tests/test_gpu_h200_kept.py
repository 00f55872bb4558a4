"""The real H200 (device machine, 2026-12-02 after issue 13): driver 580.159.04 open, loaded from a read-only mount,
no dpkg package, no .run installer traces, Ubuntu 24.04, no Docker, no systemd, no internet. Recorded there through
the local connection: `record.py` (tests/fixtures/gpu/h200-2026-12-02-kept.json) and `provision check` of the site
playbook (bench/results/device-h200-20261202-driver-kept/). Planned here again from the recorded raw output."""
from __future__ import annotations

import json
from pathlib import Path

from provision import facts as factmod
from provision.gpu.plan import gpu_view, plan_host
from tests.test_ops_units import drive

ROOT = Path(__file__).resolve().parent.parent
REC = json.loads((ROOT / "tests/fixtures/gpu/h200-2026-12-02-kept.json").read_text())
RUN = ROOT / "bench/results/device-h200-20261202-driver-kept"
KEPT = "ready (driver kept: preinstalled 580.159.04)"
PACKAGE_TASKS = ("NVIDIA CUDA repository key (keyring, referenced by signed-by)", "NVIDIA CUDA repository",
                 "Kernel headers for the running kernel and DKMS",
                 "Install the planned driver package (and the distribution's signed modules)", "Hold the driver",
                 "Reboot to load the new kernel module")


def test_recorded_facts_plan_ready_driver_kept_with_no_repository_or_package():
    facts = factmod.parse(REC["sections_output"], factmod.GPU_SECTIONS)
    assert facts["nvidia_runfile"] == {"uninstaller": None, "log": None, "version": None}
    view = gpu_view(facts)
    assert view["os"]["id"] == "ubuntu" and view["os"]["version_id"] == "24.04" and view["packages"] == {}
    plan = plan_host(view, {}, host="h200")
    assert plan.verdict == REC["verdict"] == KEPT
    assert (plan.driver_origin, plan.installed_driver, plan.installed_flavour) == ("preinstalled", "580.159.04",
                                                                                  "open")
    assert plan.driver_kept and plan.ok and plan.cuda_repo_distro == "ubuntu2404"
    assert (plan.packages, plan.driver_package, plan.hold, plan.fabricmanager) == ([], None, [], False)
    # the gpu_plan op on the same sections: no command at all, the verdict as its message
    from provision.ops import gpu_stack
    none = "".join(f"{factmod.MARK} {n}\n" for n in ("gpu_containers",)) + f"{factmod.MARK} end\n"
    r, ran = drive("gpu_plan", {}, facts, lambda cmd: (0, none, ""))
    assert not r.failed and r.msg == KEPT and len(ran) == 1 and gpu_stack.GpuPlan.facts == factmod.GPU_SECTIONS


def test_recorded_check_of_the_site_playbook_finished_without_errors_and_planned_no_driver():
    doc = json.loads((RUN / "check-site.json").read_text())
    res = {t["task"]["name"]: t["hosts"]["h200"] for p in doc["plays"] for t in p["tasks"] if "h200" in t["hosts"]}
    assert doc["stats"]["h200"]["failed"] == 0 and not [n for n, r in res.items() if r.get("failed")]
    assert res["Say that the driver in use is kept"]["msg"].startswith("driver kept: preinstalled 580.159.04")
    for task in PACKAGE_TASKS:
        assert res[task].get("skipped"), (task, res[task])
    assert res["Plan the GPU stack for this host"]["msg"] == KEPT
    # nothing was downloaded: the toolkit's key is a planned fetch, the images planned fetches
    assert res["NVIDIA container toolkit repository key"]["msg"].startswith("would fetch https://")
    text = (RUN / "check-site.txt").read_text()
    assert "failed=0" in text and "check rc=0" in text and "Could not resolve host" not in text
