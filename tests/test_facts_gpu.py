"""GPU fact sections (provision/facts/gpu.py): their shell commands run here, their parsers on recorded output,
and `provision facts --gpu [--json]` on a recording of the H200 machine: a driver loaded but not
installed through apt shows as such."""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from provision import facts as factmod
from provision.cli import main
from provision.connectors.local import LocalConnector
from provision.facts import gpu as g
from provision.gpu.plan import gpu_view, plan_host
from provision.gpu.report import gpu_report, gpu_report_json
from provision.hostio import CommandResult

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
H200 = json.loads((FIXTURES / "h200-2026-12-02.json").read_text())
SMI_ROW = "0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 570.133.20, 9.0, GPU-1, 81559"


def sh(cmd: str, env: dict | None = None) -> str:
    return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}).stdout


def fake_command(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


# ---- the sections' commands, run on this machine ------------------------------------------------------------
def test_gpu_sections_run_here_and_each_parses():
    out = sh(factmod.script(factmod.GPU_SECTIONS))
    assert set(factmod.split_sections(out)) == set(factmod.GPU_SECTIONS)
    facts = factmod.parse(out, factmod.GPU_SECTIONS)
    for key in ("pci_devices", "nvidia_smi", "nvidia_module", "packages", "held_packages", "secure_boot",
                "module_signing_keys", "kernel", "distribution", "gpu_containers", "maintenance"):
        assert key in facts, key
    assert facts["nvidia_smi"]["rc"] in (0, 127) and facts["kernel"]


def test_nvidia_smi_found_on_path_rows_parsed(tmp_path):
    fake_command(tmp_path / "bin" / "nvidia-smi", f"echo '{SMI_ROW}'\n")
    got = g.nvidia_smi_result(sh(g.NVIDIA_SMI_COMMAND, {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}))
    assert got["rc"] == 0 and got["path"] == f"{tmp_path}/bin/nvidia-smi" and got["error"] is None
    assert [(r["bus_id"], r["driver_version"], r["memory_mib"]) for r in got["gpus"]] == \
        [("0000:18:00.0", "570.133.20", 81559)]


def test_nvidia_smi_off_path_found_where_a_mounted_driver_keeps_it(tmp_path):
    """Not on PATH (an ssh session's PATH lacks /usr/local/nvidia/bin): the fixed places are tried in order."""
    smi = fake_command(tmp_path / "usr-local-nvidia-bin" / "nvidia-smi", f"echo '{SMI_ROW}'\n")
    cmd = g.NVIDIA_SMI_COMMAND.replace(g.NVIDIA_SMI_PATHS[1], str(smi)).replace(g.NVIDIA_SMI_PATHS[0],
                                                                               str(tmp_path / "absent"))
    nowhere = {"PATH": str(tmp_path / "nowhere")}
    got = g.nvidia_smi_result(sh(cmd, nowhere))
    assert got["path"] == str(smi) and got["rc"] == 0 and len(got["gpus"]) == 1
    none = g.nvidia_smi_result(sh(cmd.replace(str(smi), str(tmp_path / "absent")), nowhere))
    assert none == {"rc": 127, "path": None, "gpus": [], "error": None}


def test_nvidia_smi_failure_keeps_rc_and_message(tmp_path):
    fake_command(tmp_path / "bin" / "nvidia-smi", "echo \"NVIDIA-SMI has failed because it couldn't communicate with "
                                              "the NVIDIA driver.\"; exit 9\n")
    got = g.nvidia_smi_result(sh(g.NVIDIA_SMI_COMMAND, {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}))
    assert got["rc"] == 9 and got["gpus"] == [] and got["error"].startswith("NVIDIA-SMI has failed")


# ---- parsers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("sys=580.159.04\nNVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build\n",
     {"loaded": True, "version": "580.159.04", "flavour": "open"}),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n",
     {"loaded": True, "version": "535.183.01", "flavour": "proprietary"}),
    ("sys=570.195.03\n", {"loaded": True, "version": "570.195.03", "flavour": None}),
    ("", {"loaded": False, "version": None, "flavour": None}),
])
def test_nvidia_module(text, want):
    assert g.nvidia_module(text) == want


def test_nvidia_on_bus_finds_gpus_and_nvswitches_by_class():
    devs = [{"address": "0000:18:00.0", "vendor": "10de", "device": "2330", "class": "030200"},
            {"address": "0000:05:00.0", "vendor": "10de", "device": "22a3", "class": "068000"},
            {"address": "0000:00:00.0", "vendor": "8086", "device": "09a2", "class": "060000"}]
    assert g.nvidia_on_bus(devs) == {"gpus": ["0000:18:00.0"], "nvswitches": ["0000:05:00.0"]}


@pytest.mark.parametrize("packages, want", [
    ({"nvidia-open-580": "580.95.05-1", "nvidia-fabricmanager-580": "580.95.05-1"}, ("nvidia-open-580", "580.95.05-1")),
    ({"nvidia-driver-570-server-open": "570.195.03-0ubuntu1"}, ("nvidia-driver-570-server-open", "570.195.03-0ubuntu1")),
    ({"nvidia-open-570": "570.195.03-1", "nvidia-open-580": "580.95.05-1"}, ("nvidia-open-580", "580.95.05-1")),
    ({"libnccl2": "2.28.7-1+cuda13.0", "nvidia-container-toolkit": "1.17.8-1"}, None),
])
def test_installed_driver_package(packages, want):
    assert g.installed_driver_package(packages) == want


def test_gpu_containers_says_when_docker_cannot_list_them(tmp_path):
    fake_command(tmp_path / "bin" / "docker", "echo 'permission denied while trying to connect to the Docker daemon "
                                          "socket' >&2; exit 1\n")
    got = g.gpu_containers(sh(g.GPU_CONTAINERS_COMMAND, {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}))
    assert got == {"gpu_containers": [], "gpu_containers_error": "permission denied while trying to connect to "
                                                                 "the Docker daemon socket"}
    fake_command(tmp_path / "bin" / "docker", "[ \"$1\" = ps ] && echo c1 && exit 0\n"
                                          "echo '/job nvidia null NVIDIA_VISIBLE_DEVICES=all'\n")
    assert g.gpu_containers(sh(g.GPU_CONTAINERS_COMMAND, {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"})) == \
        {"gpu_containers": ["job"], "gpu_containers_error": None}


def test_upgrade_sections_run_here_and_parse(tmp_path):
    names = ("upgrade_state", "nvidia_devnodes", "docker_runtimes", "container_toolkit")
    facts = factmod.parse(sh(factmod.script(names)), names)
    assert set(facts) == set(names) and all(p.startswith("/dev/nvidia") for p in facts["nvidia_devnodes"])
    assert g.json_document('{"state": "drained", "target": "580"}\n') == {"state": "drained", "target": "580"}
    assert g.json_document("") is None and g.json_document("{half") is None
    toolkit = factmod.script(["container_toolkit"])
    assert factmod.parse(sh(toolkit, {"PATH": str(tmp_path)}), ["container_toolkit"]) == {"container_toolkit": []}
    fake_command(tmp_path / "nvidia-ctk", "true\n")
    assert factmod.parse(sh(toolkit, {"PATH": str(tmp_path)}), ["container_toolkit"]) == \
        {"container_toolkit": [str(tmp_path / "nvidia-ctk")]}


def test_maintenance_marker():
    assert g.maintenance_marker("present\n{\"reason\": \"RMA\"}\n") == {"maintenance": True,
                                                                         "maintenance_reason": '{"reason": "RMA"}'}
    assert g.maintenance_marker("") == {"maintenance": False, "maintenance_reason": ""}


# ---- the H200 machine (recorded there) ----------------------------------------------------------------------
def h200_facts() -> dict:
    return factmod.parse(H200["sections_output"], factmod.GPU_SECTIONS)


def test_h200_recording_comes_from_the_gpu_machine():
    """Recorded there with tests/fixtures/gpu/record.py (2026-12-02): its own nvidia-smi table is in it."""
    assert H200["recorded_at"].startswith("2026-12-02") and "NVIDIA H200" in H200["nvidia_smi_table"]
    assert "580.159.04" in H200["nvidia_smi_table"] and H200["verdict"].startswith("ready: driver 580.159.04")


def test_h200_driver_loaded_open_and_not_from_apt():
    facts = h200_facts()
    assert facts["nvidia_module"] == {"loaded": True, "version": "580.159.04", "flavour": "open"}
    assert facts["nvidia_smi"]["path"] == "/usr/local/nvidia/bin/nvidia-smi"   # the driver's read-only mount
    view = gpu_view(facts)
    assert view["packages"] == {} and "libnccl2" in view["holds"]
    assert [(x["model"], x["address"]) for x in view["gpus"]] == [("H200", "0000:00:06.0")]
    assert [(s["memory_mib"], s["bus_id"]) for s in view["nvidia_smi"]["gpus"]] == [(143771, "0000:00:06.0")]
    plan = plan_host(view, {}, host="h200")
    assert (plan.installed_driver, plan.installed_flavour, plan.driver_loaded) == ("580.159.04", "open", True)
    assert plan.driver_origin == "preinstalled" and plan.driver_package_installed is None
    assert plan.verdict == "ready (driver kept: preinstalled 580.159.04)" and plan.driver_kept
    assert plan.packages == [] and plan.driver_package is None and plan.hold == []


def test_h200_report_tells_the_driver_in_use():
    text = gpu_report({"h200": h200_facts()})
    assert "driver:     none" not in text and "nvidia-open-580" not in text
    assert ("  driver:     580.159.04 (open), loaded, origin preinstalled (not from apt), kept, nvidia-smi lists 1 "
            "GPU(s)") in text
    assert "1x H200 (Hopper, CC 9.0)" in text


def test_apt_driver_not_yet_loaded_says_so():
    facts = {**h200_facts(), "nvidia_module": g.nvidia_module(""),
             "nvidia_smi": g.nvidia_smi_result("rc=127\n"), "packages": {"nvidia-open-580": "580.95.05-1"}}
    plan = plan_host(gpu_view(facts), {})
    assert (plan.installed_driver, plan.driver_origin, plan.driver_loaded) == ("580.95.05", "apt", False)
    assert "580.95.05 (open), package nvidia-open-580=580.95.05-1, not loaded" in gpu_report({"h": facts})


def test_loaded_driver_older_than_its_package_warns_of_the_reboot():
    facts = {**h200_facts(), "packages": {"nvidia-open-580": "580.95.05-1"}}
    plan = plan_host(gpu_view(facts), {})
    assert plan.installed_driver == "580.159.04" and plan.driver_origin == "apt"
    assert any("package nvidia-open-580 is at 580.95.05-1" in w for w in plan.warnings)


def test_json_report_one_object_per_host():
    doc = gpu_report_json({"h200": h200_facts()})
    assert set(doc) == {"h200"} and set(doc["h200"]) == {"facts", "plan", "verdict"}
    assert doc["h200"]["plan"]["driver_origin"] == "preinstalled" and doc["h200"]["plan"]["driver_kept"]
    json.dumps(doc)   # JSON-able


@pytest.fixture
def recorded_h200(monkeypatch):
    """A local-connection host whose commands answer with the H200 recording (and record what was asked)."""
    asked: list[str] = []

    def run(self, command, **kw):
        asked.append(command)
        return CommandResult(0, H200["sections_output"], "", 0.01)
    monkeypatch.setattr(LocalConnector, "run", run)
    return asked


def write_inventory(tmp_path) -> str:
    p = tmp_path / "inv.yaml"
    p.write_text(textwrap.dedent("""
        all:
          hosts:
            h200: {ansible_connection: local}
        """))
    return str(p)


def test_cli_facts_gpu_json_gathers_the_gpu_sections_in_one_round_trip(tmp_path, capsys, recorded_h200):
    capsys.readouterr()
    rc = main(["facts", "-i", write_inventory(tmp_path), "--gpu", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and recorded_h200 == [factmod.script(factmod.GPU_SECTIONS)]
    h = doc["h200"]
    assert h["facts"]["kernel_module_version"] == "580.159.04" and h["facts"]["kernel_module_flavour"] == "open"
    assert (h["plan"]["installed_driver"], h["plan"]["driver_origin"]) == ("580.159.04", "preinstalled")
    assert h["verdict"] == h["plan"]["verdict"] == "ready (driver kept: preinstalled 580.159.04)"


def test_cli_facts_gpu_text(tmp_path, capsys, recorded_h200):
    capsys.readouterr()
    assert main(["facts", "-i", write_inventory(tmp_path), "--gpu", "-e", "nvidia_driver_branch=570"]) == 0
    out = capsys.readouterr().out
    assert "driver:     580.159.04 (open), loaded, origin preinstalled (not from apt), kept" in out
    assert "needs:      nothing: the driver is kept (branch 570 or newer wanted)" in out


def test_cli_facts_gpu_json_on_this_machine(tmp_path, capsys):
    """No stand-in: the sections really run here (no NVIDIA GPU on this machine's bus, or one: either way JSON)."""
    capsys.readouterr()
    rc = main(["facts", "-i", write_inventory(tmp_path), "--gpu", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and set(doc["h200"]) == {"facts", "plan", "verdict"}
    assert doc["h200"]["facts"]["nvidia_smi"]["rc"] is not None
