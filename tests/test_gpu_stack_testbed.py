"""The GPU stack (playbooks/site.yaml) against real sshd hosts: the testbed's simulated GPUs, its signed stand-in
NVIDIA repository (real apt/dpkg, real reboots), real Docker inside the hosts, stand-in images (TEST EQUIPMENT).

One module-scoped testbed: hgx (8x H100 SXM + NVSwitch), ws (2x RTX 5090), cpu (no GPU), sb (A100 with Secure
Boot on). The site playbook runs twice; most tests read the hosts and the two runs' JSON reports.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provision.testbed import standin_images as standin
from provision.testbed import HostSpec
from provision.testbed import docker as tbdocker

pytestmark = pytest.mark.testbed

ROOT = Path(__file__).resolve().parent.parent
SPECS = [HostSpec("hgx", gpus=("H100-SXM",) * 8, docker=True),
         HostSpec("ws", gpus=("RTX-5090",) * 2, docker=True),
         HostSpec("cpu"),
         HostSpec("sb", gpus=("A100-PCIE-80GB",), secure_boot=True)]
USER_DAEMON_JSON = {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"},
                    "default-address-pools": [{"base": "10.213.0.0/16", "size": 24}]}
NO_REGISTRY = "127.0.0.1:1"      # a "lab mirror" where nothing listens: the hosts have no registry access


def sh(tb, host, cmd, ok=True, input=None):
    rc, out, err = tb.exec(host, cmd, input=input)
    if ok:
        assert rc == 0, f"{host}: {cmd}: rc {rc}: {(out + err).strip()[-400:]}"
    return out.strip()


def apply(inventory, playbook, tmp, *extra, timeout=1200):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUFLEET_SECRETS_DIR": str(tmp / "secrets")}
    proc = subprocess.run([sys.executable, "-m", "provision.cli", "apply", str(inventory), "-p", str(playbook),
                           "--json", "--no-retry-file", "--connect-timeout", "60", *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"apply printed no JSON (rc {proc.returncode}): {proc.stdout[-1500:]} "
                             f"{proc.stderr[-1500:]}") from None
    return proc, doc


def failures(doc) -> list[str]:
    return [f"{h}: {t['task']['name']}: {r.get('msg', '')[:300]}" for play in doc["plays"] for t in play["tasks"]
            for h, r in t["hosts"].items() if r.get("failed")]


def task(doc, name):
    for play in doc["plays"]:
        for t in play["tasks"]:
            if t["task"]["name"] == name:
                return t["hosts"]
    raise AssertionError(f"no task {name!r} in the report")


@pytest.fixture(scope="module")
def stack(module_testbed_factory, tmp_path_factory):
    base = standin.ensure_base()
    dev = standin.ensure_dev()
    tb = module_testbed_factory("gpustack", SPECS)
    tmp = tmp_path_factory.mktemp("gpustack")
    key = tmp / "dev_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # a user's own daemon.json, before Docker is even installed
    sh(tb, "ws", "mkdir -p /etc/docker && cat > /etc/docker/daemon.json", input=json.dumps(USER_DAEMON_JSON))
    inv = tb.inventory()
    inv["all"]["vars"].update({
        "gpu_image_source": "auto", "gpu_image_mirror": NO_REGISTRY,
        "devcontainer_image": dev, "devcontainer_authorized_keys": [(tmp / "dev_key.pub").read_text().strip()],
        "devcontainer_bind": "127.0.0.1", "devcontainer_shm_size": "64m",
        "gpu_agent_enabled": (ROOT / "agent/packaging/gpu-agent.service").exists(),
    })
    groups = inv["all"]["children"]
    groups["hopper"]["vars"] = {"nvidia_driver_branch": 580, "devcontainer_enabled": False}   # CI time: one is enough
    groups["blackwell"]["vars"] = {"nvidia_driver_branch": 570, "devcontainer_gpus": [0]}
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    first_proc, first = apply(path, ROOT / "playbooks/site.yaml", tmp, "--diff")
    (tmp / "first.json").write_text(json.dumps(first, indent=1))
    second_proc, second = apply(path, ROOT / "playbooks/site.yaml", tmp)
    (tmp / "second.json").write_text(json.dumps(second, indent=1))
    return {"tb": tb, "tmp": tmp, "inventory": path, "first": first, "second": second, "base": base, "dev": dev,
            "first_proc": first_proc, "key": key}


def test_first_run_fails_only_the_secure_boot_host(stack):
    stats = stack["first"]["stats"]
    assert stats["sb"]["failed"] == 1, stats
    for h in ("hgx", "ws", "cpu"):
        assert stats[h]["failed"] == 0 and stats[h]["unreachable"] == 0, (h, failures(stack["first"]))
    assert stack["first_proc"].returncode == 2          # a failed host → ansible-playbook's exit code


def test_secure_boot_host_is_refused_before_any_change(stack):
    r = task(stack["first"], "Plan the GPU stack for this host")["sb"]
    assert r["failed"] and "Secure Boot is on and no module signing is configured" in r["msg"]
    assert sh(stack["tb"], "sb", "dpkg-query -W -f='${Package}\\n' 'nvidia*' 2>/dev/null || true") == ""
    assert sh(stack["tb"], "sb", "ls /etc/apt/sources.list.d/") .find("nvidia") == -1


def test_each_host_gets_its_branch_and_flavour(stack):
    tb = stack["tb"]
    pk = "dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\\n' 'nvidia-*' 'cuda-drivers*' 2>/dev/null | grep ' installed$'"
    hgx, ws = sh(tb, "hgx", pk), sh(tb, "ws", pk)
    assert "nvidia-open-580 580.95.05-1" in hgx and "nvidia-open-570 570.195.03-1" in ws
    assert "cuda-drivers" not in hgx + ws and "nvidia-open-570" not in hgx    # open flavour, one branch each
    assert sh(tb, "hgx", "cat /usr/lib/nvidia-standin/driver.json | python3 -c "
                         "'import json,sys;print(json.load(sys.stdin)[\"flavour\"])'") == "open"
    # the driver came from the signed repository, referenced with signed-by
    src = sh(tb, "hgx", "cat /etc/apt/sources.list.d/nvidia-cuda.list")
    assert "signed-by=/usr/share/keyrings/nvidia-cuda-archive-keyring.gpg" in src


def test_no_driver_on_the_host_without_gpu(stack):
    tb = stack["tb"]
    assert sh(tb, "cpu", "dpkg-query -W -f='${Package} ${db:Status-Status}\\n' 'nvidia*' 2>/dev/null | "
                         "grep ' installed$' || true") == ""
    assert "no NVIDIA GPU" in task(stack["first"], "Plan the GPU stack for this host")["cpu"]["msg"]


def test_fabric_manager_only_on_the_nvswitch_board_at_the_driver_version(stack):
    tb = stack["tb"]
    drv = sh(tb, "hgx", "dpkg-query -W -f='${Version}' nvidia-open-580")
    fm = sh(tb, "hgx", "dpkg-query -W -f='${Version}' nvidia-fabricmanager-580")
    assert fm == drv == "580.95.05-1"
    assert sh(tb, "hgx", "systemctl is-enabled nvidia-fabricmanager; systemctl is-active nvidia-fabricmanager") \
        == "enabled\nactive"
    assert sh(tb, "ws", "dpkg-query -W -f='${db:Status-Abbrev}' 'nvidia-fabricmanager*' 2>/dev/null || true") \
        .strip() in ("", "un")


def test_driver_and_fabric_manager_are_held(stack):
    tb = stack["tb"]
    assert set(sh(tb, "hgx", "apt-mark showhold").split()) >= {"nvidia-open-580", "nvidia-fabricmanager-580"}
    assert "nvidia-open-570" in sh(tb, "ws", "apt-mark showhold").split()


def test_reboot_loaded_the_driver_and_nvidia_smi_lists_every_gpu(stack):
    tb = stack["tb"]
    assert len(sh(tb, "hgx", "nvidia-smi -L").splitlines()) == 8
    assert sh(tb, "ws", "nvidia-smi --query-gpu=driver_version --format=csv,noheader").splitlines() == ["570.195.03"] * 2
    r = task(stack["first"], "Reboot to load the new kernel module")
    assert r["hgx"]["changed"] and r["ws"]["changed"]
    v = task(stack["first"], "nvidia-smi lists every GPU on the PCI bus at the installed version")
    assert v["hgx"]["msg"] == "nvidia-smi lists all 8 GPUs at driver 580.95.05"


def test_users_daemon_json_keys_are_kept_and_diff_shows_the_merge(stack):
    tb = stack["tb"]
    cfg = json.loads(sh(tb, "ws", "cat /etc/docker/daemon.json"))
    for k, v in USER_DAEMON_JSON.items():
        assert cfg[k] == v
    assert cfg["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    r = task(stack["first"], "Merge the nvidia runtime into daemon.json (every existing key kept)")["ws"]
    assert r["changed"] and "kept 3 existing key(s)" in r["msg"]
    d = r["diff"][0]
    assert '"log-opts"' in d["before"] and '"runtimes"' in d["after"] and '"log-opts"' in d["after"]
    assert sh(tb, "ws", "docker info --format '{{json .Runtimes}}'").find("nvidia") >= 0
    assert sh(tb, "ws", "test -s /etc/cdi/nvidia.yaml && grep -c 'path: /dev/nvidia[0-9]' /etc/cdi/nvidia.yaml") == "4"


def test_second_run_reports_zero_changed(stack):
    stats = stack["second"]["stats"]
    for h in ("hgx", "ws", "cpu"):
        assert stats[h]["changed"] == 0 and stats[h]["failed"] == 0, (h, stats[h])
    assert stats["sb"]["failed"] == 1 and stats["sb"]["changed"] == 0


def test_image_streamed_to_hosts_without_registry_access(stack):
    tb = stack["tb"]
    r = task(stack["first"], "Image for the GPUs (gpu_image)")
    for h in ("hgx", "ws"):
        assert r[h]["changed"] and "streamed from the controller" in r[h]["msg"] and "sha256" in r[h]["msg"]
        assert "mirror failed" in r[h]["msg"]
        on_host = sh(tb, h, f"docker image inspect --format '{{{{.Id}}}}' {standin.BASE_TAG}")
        assert on_host == tbdocker.out(["image", "inspect", "--format", "{{.Id}}", standin.BASE_TAG])
    assert "cpu" not in r or r["cpu"]["skipped"]
    assert sh(tb, "hgx", "ls /var/tmp | grep -c gpufleet-image || true") == "0"     # the tarball was removed


def test_image_whose_cuda_is_newer_than_the_driver_is_refused_before_pulling(stack, tmp_path):
    tb = stack["tb"]
    pb = tmp_path / "newer.yaml"
    pb.write_text(yaml.safe_dump([{"hosts": "ws", "gather_facts": False, "tasks": [
        {"name": "newer image", "gpu_image": {"image": "pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime",
                                              "source": "stream"}}]}]))
    proc, doc = apply(stack["inventory"], pb, stack["tmp"])
    r = task(doc, "newer image")["ws"]
    assert r["failed"] and "needs CUDA 13.0 (driver >= 580.65.06)" in r["msg"] and "570.195.03" in r["msg"]
    assert "commands" not in r or not any("upload" in c or "docker" in c for c in r["commands"])
    assert sh(tb, "ws", "docker image inspect pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime >/dev/null 2>&1 "
                        "&& echo present || echo absent") == "absent"


def test_validation_reports_simulated_gpu_steps_as_skipped(stack):
    doc = stack["first"]
    assert task(doc, "Validate: nvidia-smi lists every GPU")["hgx"]["status"] == "ok"
    for name in ("Validate: a GPU container sees them", "Validate: torch.cuda.is_available() and a matmul in the image",
                 "Validate: NCCL all-reduce with torchrun over every GPU"):
        for h in ("hgx", "ws"):
            r = task(doc, name)[h]
            assert r["status"] == "skipped" and r["msg"].startswith("skipped (simulated GPU)"), (name, h, r)
    assert "cuda.is_available() False" in task(doc, "Validate: torch.cuda.is_available() and a matmul in the image")[
        "hgx"]["msg"]


def test_dev_container_jupyter_needs_the_token_and_ssh_refuses_passwords(stack):
    tb = stack["tb"]
    token_path = "/etc/gpufleet/devcontainers/gpufleet-dev/jupyter_token"
    mode_uid = sh(tb, "ws", f"stat -c '%a %u' {token_path}")
    assert mode_uid == "400 1000"
    token = sh(tb, "ws", f"cat {token_path}")
    assert len(token) >= 40
    ctl = stack["tmp"] / "secrets" / "ws--gpufleet-dev.jupyter_token"
    assert ctl.read_text().strip() == token and stat.S_IMODE(ctl.stat().st_mode) == 0o600
    # never in the run's output (messages, commands, diffs) nor in the container's config
    assert token not in json.dumps(stack["first"]) + stack["first_proc"].stderr
    assert token not in sh(tb, "ws", "docker inspect gpufleet-dev")
    curl = "curl -s -o /dev/null -w '%{http_code}' "
    wait = "for i in $(seq 60); do c=$(" + curl + "http://127.0.0.1:8888/api/status); [ \"$c\" != 000 ] && break; " \
           "sleep 1; done; echo $c"
    assert sh(tb, "ws", wait) == "403"
    assert sh(tb, "ws", curl + "-H 'Authorization: token wrong' http://127.0.0.1:8888/api/status") == "403"
    assert sh(tb, "ws", curl + f"-H 'Authorization: token {token}' http://127.0.0.1:8888/api/status") == "200"
    ssh = "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -p 2222 "
    out = sh(tb, "ws", ssh + "-o PreferredAuthentications=password,keyboard-interactive dev@127.0.0.1 true 2>&1",
             ok=False)
    assert "Permission denied (publickey)" in out
    sh(tb, "ws", "umask 077; cat > /root/devkey", input=stack["key"].read_bytes())
    assert sh(tb, "ws", ssh + "-i /root/devkey dev@127.0.0.1 'id -un; python -c \"import torch; print(torch.__version__)\"'"
              ) == "dev\n2.7.0+cu128.gpufleet-standin"
    assert "Permission denied" in sh(tb, "ws", ssh + "-i /root/devkey root@127.0.0.1 true 2>&1", ok=False)
    labels = json.loads(sh(tb, "ws", "docker inspect --format '{{json .Config.Labels}}' gpufleet-dev"))
    assert labels["gpufleet.devcontainer"] == "1" and labels["gpufleet.gpus"] == "0"
    assert sh(tb, "ws", "docker inspect --format '{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.Runtime}}' "
                        "gpufleet-dev") == "unless-stopped nvidia"
    mounts = sh(tb, "ws", "docker inspect --format '{{range .Mounts}}{{.Destination}} {{end}}' gpufleet-dev")
    assert {"/workspace/data", "/workspace/models", "/workspace/checkpoints"} <= set(mounts.split())


def test_maintenance_marker_stops_new_dev_containers(stack, tmp_path):
    tb = stack["tb"]
    inv = yaml.safe_load(stack["inventory"].read_text())["all"]["vars"]
    pb = tmp_path / "dev.yaml"
    pb.write_text(yaml.safe_dump([{"hosts": "ws", "gather_facts": False, "tasks": [
        {"name": "dev container", "gpu_devcontainer": {
            "name": "gpufleet-dev2", "image": stack["dev"], "jupyter_port": 8899, "ssh_port": 2299,
            "bind": "127.0.0.1", "shm_size": "64m", "authorized_keys": inv["devcontainer_authorized_keys"]}}]}]))
    sh(tb, "ws", "mkdir -p /etc/gpufleet && echo 'driver upgrade by alice' > /etc/gpufleet/maintenance")
    try:
        proc, doc = apply(stack["inventory"], pb, stack["tmp"])
        r = task(doc, "dev container")["ws"]
        assert r["skipped"] and "/etc/gpufleet/maintenance is present (driver upgrade by alice)" in r["msg"]
        assert sh(tb, "ws", "docker ps -a --filter name=gpufleet-dev2 -q") == ""
    finally:
        sh(tb, "ws", "rm -f /etc/gpufleet/maintenance")
    proc, doc = apply(stack["inventory"], pb, stack["tmp"])        # marker gone: it starts
    assert task(doc, "dev container")["ws"]["changed"]
    assert sh(tb, "ws", "docker inspect --format '{{.State.Status}}' gpufleet-dev2") == "running"
    sh(tb, "ws", "docker rm -f gpufleet-dev2 >/dev/null")
