"""Table-driven tests of the GPU knowledge (provision/gpu/gpus.yaml) and the pure plan/report functions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision import facts as factmod
from provision.errors import InputError
from provision.facts import MARK
from provision.facts.gpu import nvidia_module, nvidia_smi_result, parse_nvidia_smi
from provision.facts.parsers import secure_boot
from provision.gpu.plan import driver_packages, gpu_view, plan_host
from provision.gpu.report import gpu_report
from provision.gpu.table import gpus_from_pci, load_table, nvswitches_from_pci
from provision.versions import version_at_least

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"


def pci(device: str, n: int = 1, cls: str = "0x030200", nvswitch: str | None = None, nvs_n: int = 0):
    devs = [{"address": "0000:00:00.0", "vendor": "0x8086", "device": "0x09a2", "class": "0x060000"}]
    devs += [{"address": f"0000:{0x05 + i:02x}:00.0", "vendor": "0x10de", "device": nvswitch, "class": "0x068000"}
             for i in range(nvs_n)]
    devs += [{"address": f"0000:{0x18 + i:02x}:00.0", "vendor": "0x10de", "device": device, "class": cls}
             for i in range(n)]
    return {"pci_devices": devs}


def smi_rows(facts, version: str, name="NVIDIA H100 80GB HBM3", cc="9.0", drop: int = 0):
    gpus = [d for d in facts["pci_devices"] if d["class"].startswith("0x03")]
    rows = [f"{i}, 0000{d['address']}, {name}, {version}, {cc}, GPU-{i:08x}, 81559"
            for i, d in enumerate(gpus[drop:])]
    return "\n".join(rows)


H100_BOARD = pci("0x2330", 8, nvswitch="0x22a3", nvs_n=4)
RTX5090_X2 = pci("0x2b85", 2, cls="0x030000")
A100_PCIE = pci("0x20b5", 1)
V100 = pci("0x1db1", 1)
NO_GPU = pci("0x0000", 0)


# ---- the table -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dev, model, arch, cc, open_modules", [
    ("2330", "H100 80GB HBM3", "Hopper", "9.0", "allowed"),
    ("2b85", "GeForce RTX 5090", "Blackwell", "12.0", "required"),
    ("2901", "B200", "Blackwell", "10.0", "required"),
    ("2342", "GH200 480GB", "GraceHopper", "9.0", "required"),
    ("20b5", "A100 80GB PCIe", "Ampere", "8.0", "allowed"),
    ("1db1", "Tesla V100-SXM2-16GB", "Volta", "7.0", "impossible"),
    ("0x20B2", "A100-SXM4-80GB", "Ampere", "8.0", "allowed"),
])
def test_table_pci_ids(dev, model, arch, cc, open_modules):
    g = load_table().gpu(dev)
    assert (g.model, g.arch, g.cc, g.open_modules) == (model, arch, cc, open_modules)


@pytest.mark.parametrize("cuda, driver", [("12.8", "570.26"), ("12.2", "535.54.03"), ("13.0", "580.65.06")])
def test_table_cuda_min_driver(cuda, driver):
    assert load_table().min_driver_for_cuda(cuda) == driver


@pytest.mark.parametrize("cc, ok", [("12.0", True), ("10.0", True), ("9.0", True), ("8.9", True), ("8.6", True),
                                    ("8.0", True), ("7.5", True), ("7.0", False), ("6.1", False)])
def test_pytorch_27_cu128_image_architectures(cc, ok):
    img = load_table().image("pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime")
    assert img.cuda == "12.8"
    assert img.supports_cc(cc) is ok


def test_unknown_image_cuda_read_from_tag():
    img = load_table().image("pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime")
    assert img.cuda == "13.0" and img.supports_cc("9.0") is None


def test_versions_compare_numerically():
    assert version_at_least("570.133.20", "570.26")
    assert not version_at_least("535.230.02", "570.26")
    assert version_at_least("580.159.04", "570.26")


# ---- parsers ---------------------------------------------------------------------------------------------------
def test_gpus_and_nvswitches_from_pci():
    gpus = gpus_from_pci(H100_BOARD["pci_devices"])
    assert len(gpus) == 8 and {g.model for g in gpus} == {"H100 80GB HBM3"}
    assert len(nvswitches_from_pci(H100_BOARD["pci_devices"])) == 4
    assert gpus_from_pci(NO_GPU["pci_devices"]) == []


def test_unknown_gpu_kept_and_marked():
    gpus = gpus_from_pci(pci("0x9999")["pci_devices"])
    assert len(gpus) == 1 and not gpus[0].known


def test_parse_nvidia_smi_normalises_bus_ids():
    rows = parse_nvidia_smi("0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 570.133.20, 9.0, GPU-1, 81559\n"
                            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n")
    assert len(rows) == 1 and rows[0].bus_id == "0000:18:00.0" and rows[0].driver_version == "570.133.20"


@pytest.mark.parametrize("text, state", [("SecureBoot enabled", True), ("SecureBoot disabled", False),
                                         (" 06 00 00 00 01", True), (" 06 00 00 00 00", False), ("", None)])
def test_parse_secure_boot(text, state):
    assert secure_boot(text) is state


# ---- plans -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, facts, hv, package, flavour, fm", [
    ("h100 board, cuda repo", H100_BOARD, {"nvidia_driver_branch": 570}, "nvidia-open-570", "open", True),
    ("h100 board, proprietary", H100_BOARD, {"nvidia_driver_branch": 570, "nvidia_driver_flavour": "proprietary"},
     "cuda-drivers-570", "proprietary", True),
    ("rtx 5090, distro", RTX5090_X2, {"nvidia_driver_branch": 570, "nvidia_driver_source": "distro",
                                      "nvidia_driver_server": False}, "nvidia-driver-570-open", "open", False),
    ("a100 pcie, distro server", A100_PCIE, {"nvidia_driver_branch": 535, "nvidia_driver_source": "distro",
                                             "gpu_image": "pytorch/pytorch:2.7.0-cuda11.8-cudnn9-runtime",
                                             "nvidia_driver_flavour": "proprietary"},
     "nvidia-driver-535-server", "proprietary", False),
    ("v100 auto → proprietary", V100, {"nvidia_driver_branch": 570,
                                       "gpu_image": "pytorch/pytorch:2.7.0-cuda12.6-cudnn9-runtime"},
     "cuda-drivers-570", "proprietary", False),
    ("fabric manager forced off", H100_BOARD, {"nvidia_fabricmanager": False}, "nvidia-open-580", "open", False),
])
def test_plan_packages_flavour_fabricmanager(name, facts, hv, package, flavour, fm):
    p = plan_host(gpu_view(facts), hv)
    assert p.ok, p.refusals
    assert (p.driver_package, p.flavour, p.fabricmanager) == (package, flavour, fm)
    assert p.hold[0] == package
    if fm:
        assert p.fabricmanager_package == f"nvidia-fabricmanager-{p.branch}" and p.fabricmanager_package in p.hold


@pytest.mark.parametrize("name, facts, hv, refusal", [
    ("proprietary on blackwell", RTX5090_X2, {"nvidia_driver_flavour": "proprietary"},
     "proprietary flavour requested on Blackwell"),
    ("open on volta", V100, {"nvidia_driver_flavour": "open",
                             "gpu_image": "pytorch/pytorch:2.7.0-cuda12.6-cudnn9-runtime"}, "need Turing or newer"),
    ("branch too old for rtx 5090", RTX5090_X2, {"nvidia_driver_branch": 550}, "too old for GeForce RTX 5090"),
    ("image newer than driver", H100_BOARD, {"nvidia_driver_branch": 535}, "needs CUDA 12.8 (driver >= 570.26); "
                                                                            "driver 535 is too old"),
    ("image lacks sm_70", V100, {}, "no kernels for compute capability 7.0"),
    ("secure boot", {**A100_PCIE, "secure_boot": True}, {}, "Secure Boot is on and no module signing"),
    ("secure boot, signing claimed, no key", {**A100_PCIE, "secure_boot": True}, {"nvidia_module_signing": True},
     "no DKMS/MOK signing key"),
    ("unknown image", A100_PCIE, {"gpu_image": "example/thing:latest"}, "cannot tell which CUDA"),
])
def test_plan_refusals(name, facts, hv, refusal):
    p = plan_host(gpu_view(facts), hv)
    assert any(refusal in r for r in p.refusals), p.refusals
    assert p.verdict.startswith("REFUSED:")


def test_secure_boot_with_signing_key_is_accepted():
    facts = gpu_view({**A100_PCIE, "secure_boot": True})
    facts["module_signing_keys"] = ["/var/lib/shim-signed/mok/MOK.der"]
    assert plan_host(facts, {"nvidia_module_signing": True}).ok


def test_installed_driver_too_old_for_image_after_install():
    facts = gpu_view({**A100_PCIE})
    facts["nvidia_smi"] = {"rc": 0, "gpus": [r.as_dict() for r in parse_nvidia_smi(smi_rows(A100_PCIE, "570.20"))]}
    facts["packages"] = {"nvidia-open-570": "570.20-1"}
    p = plan_host(facts, {"nvidia_driver_branch": 570})
    assert any("driver 570.20 is too old" in r for r in p.refusals)


def test_no_gpu_host_gets_no_driver():
    p = plan_host(gpu_view(NO_GPU), {"nvidia_driver_branch": 570})
    assert not p.has_gpus and p.driver_package is None and p.packages == [] and p.ok
    assert "no driver needed" in p.verdict


def test_ready_when_package_installed_and_smi_lists_every_gpu():
    facts = gpu_view(H100_BOARD)
    facts["nvidia_smi"] = {"rc": 0, "gpus": [r.as_dict() for r in parse_nvidia_smi(smi_rows(H100_BOARD,
                                                                                             "570.133.20"))]}
    facts["packages"] = {"nvidia-open-570": "570.133.20-1", "nvidia-fabricmanager-570": "570.133.20-1"}
    p = plan_host(facts, {"nvidia_driver_branch": 570})
    assert p.driver_current and p.verdict.startswith("ready:")
    facts["nvidia_smi"]["gpus"] = facts["nvidia_smi"]["gpus"][1:]   # one GPU fell off the bus
    p = plan_host(facts, {"nvidia_driver_branch": 570})
    assert not p.driver_current and any("lists 7 of 8" in w for w in p.warnings)


@pytest.mark.parametrize("key, value, hint", [("nvidia_driver_flavour", "opne", "open"),
                                              ("nvidia_driver_source", "cuda_repo", "cuda-repo"),
                                              ("nvidia_driver_branch", "five-seventy", "580")])
def test_bad_vars_are_one_line_input_errors(key, value, hint):
    with pytest.raises(InputError) as e:
        plan_host(gpu_view(H100_BOARD), {key: value})
    assert e.value.key == key and e.value.hint == hint and "\n" not in str(e.value)


def test_driver_package_names():
    assert driver_packages("cuda-repo", 580, "open") == "nvidia-open-580"
    assert driver_packages("cuda-repo", 535, "proprietary") == "cuda-drivers-535"
    assert driver_packages("distro", 570, "open", server=True) == "nvidia-driver-570-server-open"
    assert driver_packages("distro", 570, "proprietary", server=False) == "nvidia-driver-570"


def test_report_lists_each_host_with_verdict():
    text = gpu_report({"hgx": H100_BOARD, "ws": RTX5090_X2, "cpu": NO_GPU},
                      {"ws": {"nvidia_driver_flavour": "proprietary"}})
    assert "8x H100 80GB HBM3 (Hopper, CC 9.0)" in text and "NVSwitch:   4" in text
    assert "nvidia-fabricmanager-580" in text
    assert "REFUSED: proprietary flavour requested on Blackwell" in text
    assert "cpu:\n  GPUs:       none on the PCI bus" in text
    assert text.count("verdict:") == 3


# ---- the probe's output, parsed (recorded on a real H100) ------------------------------------------------------
# The H100 recordings predate the one section protocol: they hold the old probe's "### name" sections, which
# legacy_sections() rewrites into the fact sections they correspond to (same commands' output, other marker).
def legacy_sections(probe_output: str) -> str:
    old: dict[str, list[str]] = {}
    current = None
    for line in probe_output.splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            old[current] = []
        elif current:
            old[current].append(line)
    os_id, version, codename = (" ".join(old.get("os", [])).split() + ["", "", ""])[:3]
    new = {
        "pci": old.get("pci", []),
        "nvidia_smi": old.get("nvidia_smi", []),
        "nvidia_module": old.get("proc_driver", []),
        "secure_boot": old.get("secure_boot", []),
        "module_signing": old.get("module_signing", []),
        "kernel": old.get("kernel", []),
        "os": [f"ID={os_id}", f"VERSION_ID={version}", f"VERSION_CODENAME={codename}"],
        "packages": [f"{ln.split()[0]}\t{ln.split()[1]}\tinstall ok installed" for ln in old.get("packages", [])
                     if len(ln.split()) == 2]
                    + [f"{ln.strip()}\t?\thold ok installed" for ln in old.get("holds", []) if ln.strip()],
        "maintenance": old.get("maintenance", []),
        "gpu_containers": old.get("gpu_containers", []),
    }
    return "".join(f"{MARK} {name}\n" + "".join(ln + "\n" for ln in body) for name, body in new.items()) + \
        f"{MARK} end\n"


def recorded_view_shape(facts: dict) -> dict:
    """The recording's parsed facts in today's shape: PCI devices name their class 'class' (the one PCI scan's
    key, 'cls' in the old probe) and nvidia-smi says where it was found (the old probe did not: None)."""
    out = dict(facts)
    out["pci_devices"] = [{("class" if k == "cls" else k): v for k, v in d.items()} for d in facts["pci_devices"]]
    out["nvidia_smi"] = {**facts["nvidia_smi"], "path": None}
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("h100-*.json")))
def test_recorded_real_h100(name):
    rec = json.loads((FIXTURES / name).read_text())
    facts = gpu_view(factmod.parse(legacy_sections(rec["probe_output"]), factmod.GPU_SECTIONS))
    expected = recorded_view_shape(rec["facts"])
    assert {k: facts[k] for k in expected} == expected   # the parser still reads the recording the same
    assert [g["model"] for g in facts["gpus"]] == ["H100 80GB HBM3"]
    smi = facts["nvidia_smi"]["gpus"]
    assert len(smi) == 1 and smi[0]["bus_id"] == facts["gpus"][0]["address"] and smi[0]["compute_cap"] == "9.0"
    assert facts["kernel_module_flavour"] == "open"
    plan = plan_host(facts, rec["vars"], host="device-h100")
    # recorded before driver origins: the driver there came from no package, and it satisfies branch 535 and 580
    # alike (>=) and the image's CUDA 12.8: kept, where the recording's plan refused (535) or said "ready: driver"
    assert rec["verdict"].startswith(("REFUSED: image pytorch/pytorch:2.7.0-cuda12.8", "ready: driver 580.159.04"))
    assert plan.verdict == "ready (driver kept: preinstalled 580.159.04)" and plan.packages == []
    assert not plan.fabricmanager       # a single PCIe-attached H100 SXM: no NVSwitch on its bus


def test_report_reads_facts_as_the_engine_gathers_them():
    from provision.facts import parse, script  # noqa: F401 - the engine's fact parser, fed a recorded output
    from provision.facts import parsers
    pci = parsers.pci_devices("0000:18:00.0 0x10de 0x2b85 0x030000\n0000:00:00.0 0x8086 0x09a2 0x060000\n")
    pk = parsers.dpkg_packages("nvidia-open-570\t570.195.03-1\thold ok installed\n")
    facts = {"pci_devices": pci, "secure_boot": False, **pk}
    text = gpu_report({"ws": facts}, {"ws": {"nvidia_driver_branch": 570}})
    assert "1x GeForce RTX 5090 (Blackwell, CC 12.0)" in text
    assert "driver:     570.195.03 (open)" in text and "secure boot: off" in text
    assert "needs:      branch 570 open (nvidia-open-570)" in text


# ---- the GPU-stack ops: pure plans (facts and probe output in, command objects out) ----------------------------
def _ops():
    import provision.ops.gpu_stack as gs
    return gs


def _ctx(**kw):
    from provision.ops.core import OpContext
    return OpContext(host="h", **kw)


def _result(stdout: str, rc: int = 0):
    from provision.hostio import CommandResult
    return CommandResult(rc, stdout, "", 0.0)


def _sections(**parts: str) -> str:
    return "".join(f"{MARK} {k}\n{v}\n" for k, v in parts.items()) + f"{MARK} end\n"


SMI_570_WS = ("path=/usr/bin/nvidia-smi\n0, 00000000:18:00.0, NVIDIA GeForce RTX 5090, 570.195.03, 12.0, GPU-1, 32607\n"
              "rc=0")


def test_gpu_ops_hold_no_connection_and_run_nothing():
    import inspect

    from provision.ops.core import Op
    import provision.ops.gpu_devcontainer as gd
    import provision.ops.gpu_image as gi
    gs = _ops()
    ops = [gs.GpuPlan, gs.GpuJsonMerge, gi.GpuImage, gd.GpuDevcontainer, gs.GpuValidate, gs.GpuAgentInstall]
    assert not any(hasattr(op, "run") for op in ops) and not hasattr(Op, "run")
    for mod in (gs, gi, gd):
        assert "ctx.run(" not in inspect.getsource(mod) and "execute_plan" not in inspect.getsource(mod)
    assert gs.GpuPlan.facts == factmod.GPU_SECTIONS


def test_gpu_plan_op_reads_the_gpu_sections():
    gs = _ops()
    h200 = json.loads((FIXTURES / "h200-2026-12-02.json").read_text())
    facts = factmod.parse(h200["sections_output"], factmod.GPU_SECTIONS)
    op = gs.GpuPlan()
    assert op.probe({}, _ctx()) == factmod.script(("gpu_containers",))   # read with the task's become
    none = _result(_sections(gpu_containers=""))
    plan = op.plan({"fail_on_refusal": True}, facts, none, _ctx())
    assert not plan.failed and not plan.commands and plan.noop == "ready (driver kept: preinstalled 580.159.04)"
    assert plan.extra["gpu_plan"]["driver_origin"] == "preinstalled"
    assert plan.extra["ansible_facts"]["gpu_facts"]["gpus"]
    job = op.plan({}, facts, _result(_sections(gpu_containers="/job nvidia null NVIDIA_VISIBLE_DEVICES=all")), _ctx())
    assert job.extra["gpu_facts"]["gpu_containers"] == ["job"]
    denied = op.plan({}, facts, _result(_sections(gpu_containers="error: permission denied while trying to connect "
                                                                 "to the Docker daemon socket")), _ctx())
    assert "cannot tell which containers hold GPUs: permission denied" in " ".join(
        denied.extra["gpu_plan"]["warnings"])
    # Secure Boot matters where a driver is to be installed (the H200's own, loaded and kept, needs no signing)
    bare = {**facts, "secure_boot": True, "nvidia_module": nvidia_module(""), "nvidia_smi": nvidia_smi_result("rc=127")}
    refused = op.plan({"fail_on_refusal": True}, bare, none, _ctx())
    assert refused.failed and "Secure Boot is on" in refused.msg and set(refused.extra) == {"verdict"}
    kept = op.plan({"fail_on_refusal": True}, {**facts, "secure_boot": True}, none, _ctx())
    assert not kept.failed and kept.noop == "ready (driver kept: preinstalled 580.159.04)"


def test_gpu_plan_verify_reads_nvidia_smi_again():
    gs = _ops()
    h200 = json.loads((FIXTURES / "h200-2026-12-02.json").read_text())
    stale = factmod.parse(h200["sections_output"], factmod.GPU_SECTIONS)
    op, args = gs.GpuPlan(), {"verify_driver": True, "expected_version": "580.159.04"}
    probe = op.probe(args, _ctx())
    assert probe == factmod.script(("gpu_containers", "pci", "nvidia_smi", "nvidia_module"))
    now = _sections(pci="0000:00:06.0 0x10de 0x2335 0x030200", nvidia_smi="path=/usr/bin/nvidia-smi\n"
                    "Failed to initialize NVML: Driver/library version mismatch\nrc=18", nvidia_module="")
    plan = op.plan(args, stale, _result(now), _ctx())
    assert plan.failed and plan.msg.startswith("nvidia-smi does not answer after the install: Failed to initialize")
    smi = factmod.split_sections(h200["sections_output"])["nvidia_smi"]
    ok = op.plan(args, stale, _result(_sections(pci="0000:00:06.0 0x10de 0x2335 0x030200", nvidia_smi=smi,
                                                nvidia_module="sys=580.159.04")), _ctx())
    assert not ok.failed and ok.msg == "nvidia-smi lists all 1 GPUs at driver 580.159.04"


def test_gpu_json_merge_puts_the_file():
    from provision.ops.plan import Cmd, FilePut
    gs = _ops()
    op = gs.GpuJsonMerge()
    args = {"path": "/etc/docker/daemon.json", "content": {"runtimes": {"nvidia": {"path": "x"}}}, "backup": True,
            "mode": "0644"}
    plan = op.plan(args, {}, _result('{"log-driver": "json-file"}\n'), _ctx())
    assert [type(c) for c in plan.commands] == [Cmd, FilePut]
    put = plan.commands[1]
    assert (put.path, put.mode, put.make_parent) == ("/etc/docker/daemon.json", 0o644, True)
    assert json.loads(put.content) == {"log-driver": "json-file", "runtimes": {"nvidia": {"path": "x"}}}
    assert op.plan(args, {}, _result(put.content.decode()), _ctx()).noop


def test_gpu_image_refuses_before_fetching_and_streams_after_a_failed_mirror(tmp_path):
    from provision.ops.plan import Cmd
    from provision.ops.gpu_image import GpuImage
    op = GpuImage()
    newer = {"image": "pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime", "source": "auto", "check_gpus": True}
    assert op.probe(newer, _ctx()) == factmod.script(("nvidia_smi",))
    smi = _result(_sections(nvidia_smi=SMI_570_WS))
    plan = op.plan(newer, {}, smi, _ctx())
    assert plan.failed and "needs CUDA 13.0 (driver >= 580.65.06)" in plan.msg and "570.195.03" in plan.msg
    assert not plan.commands      # refused before even looking at the image
    tag = "pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime"
    look = op.plan({"image": tag, "check_gpus": True}, {}, smi, _ctx())
    assert [(c.cmd, c.readonly) for c in look.commands] == [
        (f"docker image inspect --format '{{{{.Id}}}}' -- {tag}", True)]
    assert look.then({}, [_result("sha256:0123456789abcdef0123\n")]).noop == f"{tag} present (sha256:0123456789ab)"
    tarball = tmp_path / "img.tar"
    tarball.write_bytes(b"not really an image")
    args = {"image": tag, "source": "auto", "mirror": "127.0.0.1:1", "tarball": str(tarball), "check_gpus": True}
    absent = [_result("", rc=1)]
    first = op.plan(args, {}, smi, _ctx()).then({}, absent)
    assert [c.cmd for c in first.commands] == [
        f"docker pull -- 127.0.0.1:1/{tag} && docker tag -- 127.0.0.1:1/{tag} {tag}"]
    look_host = first.then({}, [_result("", rc=1)])
    assert all(c.readonly for c in look_host.commands)        # the host's free space first, nothing sent yet
    stream = look_host.then({}, [_result(""), _result("/var/lib/docker\n99999999\n")])
    assert [type(c) for c in stream.commands] == [Cmd, Cmd] and stream.commands[0].stdin == tarball
    assert not isinstance(stream.commands[0].stdin, bytes) and stream.commands[1].readonly   # streamed from disk
    done = stream.then({}, [_result("Loaded image"), _result("sha256:1\n")])
    assert done.changed and "streamed from the controller (mirror failed" in done.msg
    assert op.plan(args, {}, smi, _ctx(check=True)).then({}, absent).msg == f"would fetch {tag} (auto)"


DEV_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHg0Yw== dev@example"


def test_gpu_devcontainer_token_is_put_and_maintenance_skips(tmp_path, monkeypatch):
    from provision.ops.plan import FilePut
    monkeypatch.setenv("GPUFLEET_SECRETS_DIR", str(tmp_path))
    from provision.ops.gpu_devcontainer import GpuDevcontainer
    op = GpuDevcontainer()
    args = {"name": "dev", "image": "img:1", "user": "dev", "uid": 1000, "gpus": "all", "jupyter_port": 8888,
            "ssh_port": 2222, "bind": "127.0.0.1", "shm_size": "8g", "runtime": "nvidia", "data_root": "/srv/d",
            "authorized_keys": [DEV_KEY], "state": "started"}
    probe = op.probe(args, _ctx())
    assert f"{MARK} maintenance" in probe and "/etc/gpufleet/maintenance" in probe
    fresh = _sections(maintenance="", token="", keys="", image="sha256:9", container="")
    plan = op.plan(args, {}, _result(fresh), _ctx())
    puts = [c for c in plan.commands if isinstance(c, FilePut)]
    assert [(p.path, p.mode, p.owner, p.group) for p in puts] == \
        [("/etc/gpufleet/devcontainers/dev/jupyter_token", 0o400, "1000", "1000")]
    token = puts[0].content.decode()
    assert (tmp_path / "h--dev.jupyter_token").read_text().strip() == token
    shown = " ".join(getattr(c, "cmd", "") + " " + c.shown for c in plan.commands) + json.dumps(plan.diff)
    assert token not in shown
    busy = _sections(maintenance="present\ndriver upgrade by alice", token="", keys="", image="sha256:9",
                     container="")
    skipped = op.plan(args, {}, _result(busy), _ctx())
    assert not skipped.commands and skipped.result([]) == {
        "skipped": True, "msg": "/etc/gpufleet/maintenance is present (driver upgrade by alice): not starting dev "
                                "container dev during maintenance"}


def test_gpu_validate_nvidia_smi_reads_the_one_section():
    gs = _ops()
    plan = gs.GpuValidate().plan({"step": "nvidia_smi", "gpu_count": 1, "simulated": False, "timeout": 60}, {},
                                 None, _ctx())
    assert plan.commands[0].cmd == factmod.FACTS["nvidia_smi"].command and plan.skip_in_check
    assert plan.result([_result(SMI_570_WS)]) == {"msg": "nvidia-smi lists 1 GPU(s): NVIDIA GeForce RTX 5090, "
                                                         "driver 570.195.03"}
    assert plan.result([_result("rc=127\n")]) == {"failed": True, "rc": 127,
                                                  "msg": "nvidia-smi lists 0 GPU(s), expected 1: no nvidia-smi on "
                                                         "PATH, in /usr/bin or /usr/local/nvidia/bin"}
