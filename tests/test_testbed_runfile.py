"""A testbed host whose stand-in driver was put there the way NVIDIA's .run installer does (files, nvidia-uninstall,
the installer's log, the module loaded at boot, no dpkg entry; provision/testbed/runfile.py): the plan keeps it
(no repository, no package), `provision check` of the whole site playbook plans no download and fails nowhere
(no Docker on the host, as on the real H200), the rolling upgrade skips it with the plan's reason, and
nvidia_driver_replace replaces it (its uninstaller, the package, a reboot). Run one at a time (``-k``) or as a
module: the replacement comes last."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.facts.gpu import non_apt_reason
from provision.testbed import HostSpec
from provision.testbed import standin_images as standin
from provision.testbed.runfile import LOG, UNINSTALLER, install_runfile_driver

pytestmark = pytest.mark.testbed

ROOT = Path(__file__).resolve().parent.parent
VERSION = "580.95.05"
KEPT = f"ready (driver kept: runfile {VERSION})"


def cli(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "provision.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def report(proc) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (rc {proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}") from None


def host_results(doc, host="rf") -> dict:
    """Task name -> the host's result, over every play of a --json report."""
    return {t["task"]["name"]: t["hosts"][host] for p in doc["plays"] for t in p["tasks"] if host in t["hosts"]}


def failures(doc) -> list[str]:
    return [f"{n}: {r.get('msg', '')[:300]}" for n, r in host_results(doc).items() if r.get("failed")]


@pytest.fixture(scope="module")
def rf(module_testbed_factory):
    standin.ensure_dev()     # the images the site playbook streams (the dev image under the role's default name)
    tb = module_testbed_factory("runfile", [HostSpec("rf", gpus=("H100-PCIE",))])
    assert install_runfile_driver(tb, "rf", VERSION) == VERSION
    return tb


def sh(tb, cmd) -> str:
    rc, out, err = tb.exec("rf", cmd)
    assert rc == 0, f"{cmd}: rc {rc}: {(out + err)[-300:]}"
    return out.strip()


def test_facts_say_runfile_and_the_plan_keeps_it(rf):
    assert sh(rf, "dpkg-query -W -f='${Package}\\n' 'nvidia-*' 'cuda-drivers*' 2>/dev/null || true") == ""
    proc = cli("facts", rf.inventory_path, "--gpu", "--json")
    doc = report(proc)["rf"]
    assert proc.returncode == 0
    assert doc["facts"]["runfile"] == {"uninstaller": UNINSTALLER, "log": LOG, "version": VERSION}
    assert (doc["plan"]["driver_origin"], doc["plan"]["installed_driver"]) == ("runfile", VERSION)
    assert doc["verdict"] == KEPT and doc["plan"]["packages"] == []


def test_site_check_plans_no_download_and_fails_nowhere(rf):
    """As on the real H200: no Docker on the host; check mode runs only read-only commands and fetches nothing."""
    proc = cli("check", rf.inventory_path, "-p", "playbooks/site.yaml", "--json")
    doc = report(proc)
    assert proc.returncode == 0 and not failures(doc), failures(doc)
    res = host_results(doc)
    assert res["Say that the driver in use is kept"]["msg"].startswith(f"driver kept: runfile {VERSION}")
    for task in ("NVIDIA CUDA repository key (keyring, referenced by signed-by)", "NVIDIA CUDA repository",
                 "Install the planned driver package (and the distribution's signed modules)"):
        assert res[task].get("skipped"), (task, res[task])
    assert "would fetch" in res["NVIDIA container toolkit repository key"]["msg"]
    # as on the H200: images by the default source (a registry first, which check mode does not contact), and a
    # PID 1 that is not systemd (the agent is installed, no service is started: the role says so)
    auto = report(cli("check", rf.inventory_path, "-p", "playbooks/site.yaml", "--json", "-e",
                      "gpu_image_source=auto", "-e", "ansible_service_mgr=sysvinit"))
    assert not failures(auto), failures(auto)
    assert host_results(auto)["Say that no systemd runs the agent here"]["msg"].startswith(
        "PID 1 of this host is sysvinit, not systemd")


def test_driver_playbook_keeps_it_with_no_repository_and_no_change(rf):
    proc = cli("apply", rf.inventory_path, "-p", "playbooks/driver.yaml", "--json", "--no-retry-file")
    doc = report(proc)
    assert proc.returncode == 0 and not failures(doc), failures(doc)
    assert doc["stats"]["rf"]["changed"] == 0, doc["stats"]
    assert sh(rf, "ls /etc/apt/sources.list.d/ /usr/share/keyrings/ | grep -c nvidia || true") == "0"
    assert sh(rf, f"test -x {UNINSTALLER} && nvidia-smi --query-gpu=driver_version --format=csv,noheader") == VERSION


def test_rolling_upgrade_skips_it_with_the_reason(rf):
    proc = cli("upgrade-driver", rf.inventory_path, "--to", "580", "--state-file", rf.workdir / "upg.json")
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("rf "))
    assert line.split()[:2] == ["rf", "skipped"] and line.endswith(non_apt_reason("runfile", VERSION)), line
    assert sh(rf, "dpkg-query -W -f='${Package}\\n' 'nvidia-*' 2>/dev/null || true") == ""


def test_replace_uninstalls_it_then_installs_the_package_and_reboots(rf):
    boot = rf.boot_id("rf")
    proc = cli("apply", rf.inventory_path, "-p", "playbooks/driver.yaml", "--json", "--no-retry-file",
               "-e", "nvidia_driver_replace=true")
    doc = report(proc)
    assert proc.returncode == 0 and not failures(doc), failures(doc)
    res = host_results(doc)
    assert res["Remove the .run installer's driver with its own uninstaller (nvidia_driver_replace)"]["changed"]
    assert res["Reboot to load the new kernel module"]["changed"] and rf.boot_id("rf") != boot
    assert sh(rf, f"test ! -e {UNINSTALLER} && test -s /var/log/nvidia-uninstall.log && "
                  "dpkg-query -W -f='${Version}' nvidia-open-580") == f"{VERSION}-1"
    assert "nvidia-open-580" in sh(rf, "apt-mark showhold")
    again = report(cli("apply", rf.inventory_path, "-p", "playbooks/driver.yaml", "--json", "--no-retry-file",
                       "-e", "nvidia_driver_replace=true"))
    assert not failures(again) and again["stats"]["rf"]["changed"] == 0, again["stats"]
