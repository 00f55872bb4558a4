"""Pure parts of the GPU stack: JSON merge, dev container spec, GPU-container detection, image fit checks, and the
site playbook + example lab inventory loading and validating without contacting any host."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.gpu import devcontainer as dc
from provision.gpu.images import check_image_fits, save_on_controller
from provision.gpu.jsonmerge import JsonMergeError, merge, plan_merge
from provision.facts import MARK
from provision.facts.gpu import parse_gpu_containers

ROOT = Path(__file__).resolve().parent.parent


# ---- daemon.json merge ------------------------------------------------------------------------------------------
USER = {"log-driver": "json-file", "log-opts": {"max-size": "10m"}, "runtimes": {"crun": {"path": "/usr/bin/crun"}}}
CTK = {"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}


def test_merge_keeps_every_user_key_and_adds_the_runtime():
    out = merge(USER, CTK)
    assert out["log-opts"] == {"max-size": "10m"} and out["runtimes"]["crun"] == {"path": "/usr/bin/crun"}
    assert out["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"


@pytest.mark.parametrize("before, changes", [
    (json.dumps(USER), True),
    (json.dumps(merge(USER, CTK), indent=4), False),      # already merged: no rewrite, whatever the formatting
    ("", True),                                           # absent file
])
def test_plan_merge_changes_only_when_needed(before, changes):
    b, after = plan_merge(before, CTK, "/etc/docker/daemon.json")
    assert (after is not None) is changes
    if after:
        assert json.loads(after)["runtimes"]["nvidia"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_plan_merge_refuses_to_touch_a_broken_file(text):
    with pytest.raises(JsonMergeError, match="not touching it"):
        plan_merge(text, CTK, "/etc/docker/daemon.json")


# ---- dev containers ---------------------------------------------------------------------------------------------
SPEC = dc.DevSpec(name="gpufleet-dev", image="gpufleet/dev:x", gpus="0,1", jupyter_port=8888, ssh_port=2222)


def test_docker_run_args_have_labels_volumes_restart_and_no_secret():
    args = dc.docker_run_args(SPEC, "abc")
    text = " ".join(args)
    assert "--restart unless-stopped" in text and "NVIDIA_VISIBLE_DEVICES=0,1" in text
    assert "gpufleet.devcontainer=1" in text and "gpufleet.gpus=0,1" in text and "gpufleet.spec=abc" in text
    for v in ("data", "models", "checkpoints"):
        assert f"/srv/gpufleet/devcontainers/gpufleet-dev/{v}:/workspace/{v}" in text
    assert "/jupyter_token:/run/gpufleet/jupyter_token:ro" in text and "TOKEN=" not in text


@pytest.mark.parametrize("gpus, count, want", [("all", 8, "all"), ([0, 1], 2, "0,1"), ("1", 2, "1"),
                                               (["GPU-1a2b-3c"], 1, "GPU-1a2b-3c")])
def test_normalize_gpus(gpus, count, want):
    assert dc.normalize_gpus(gpus, count) == want


@pytest.mark.parametrize("gpus, count, err", [([2], 2, "does not exist"), (["x"], 2, "neither"), ([], 2, "empty")])
def test_normalize_gpus_refuses(gpus, count, err):
    with pytest.raises(dc.SpecError, match=err):
        dc.normalize_gpus(gpus, count)


def test_keys_must_be_public_keys():
    assert dc.keys_text(["ssh-ed25519 AAAAC3Nza alice"]) == "ssh-ed25519 AAAAC3Nza alice\n"
    with pytest.raises(dc.SpecError):
        dc.keys_text(["-----BEGIN OPENSSH PRIVATE KEY-----"])


def test_spec_hash_follows_image_and_spec():
    h = dc.spec_hash(SPEC, "sha256:1")
    assert h == dc.spec_hash(SPEC, "sha256:1") != dc.spec_hash(SPEC, "sha256:2")


def test_parse_probe():
    st = dc.parse_probe(f"{MARK} maintenance\npresent\nRMA by bob\n{MARK} token\n400 1000\n{MARK} keys\nabc\n"
                        f"{MARK} image\nsha256:9\n{MARK} container\nrunning 1234\n{MARK} end\n")
    assert st["maintenance"] and st["maintenance_reason"] == "RMA by bob" and st["token_uid"] == 1000
    assert (st["image_id"], st["container_status"], st["container_spec"]) == ("sha256:9", "running", "1234")


def test_controller_token_file_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_SECRETS_DIR", str(tmp_path))
    p = dc.save_controller_token("h1", "dev", "s3cret-token")
    assert p.read_text() == "s3cret-token\n" and oct(p.stat().st_mode & 0o777) == "0o600"


# ---- GPU containers (the daemon-reload warning) -----------------------------------------------------------------
def test_gpu_containers_are_nvidia_runtime_or_gpu_requests():
    text = ("/job nvidia null PATH=/x NVIDIA_VISIBLE_DEVICES=all\n"
            "/cuda-image-on-runc runc null NVIDIA_VISIBLE_DEVICES=all\n"
            "/void nvidia null NVIDIA_VISIBLE_DEVICES=void\n"
            '/gpus runc [{"Driver":"","Count":-1,"Capabilities":[["gpu"]]}] X=1\n')
    assert parse_gpu_containers(text) == ["gpus", "job"]


# ---- image fit ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag, driver, gpus, refusal", [
    ("pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime", "570.195.03", [("12.0", "RTX 5090")], None),
    ("pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime", "535.261.03", [("9.0", "H100")], "driver is 535.261.03"),
    ("pytorch/pytorch:2.7.0-cuda12.6-cudnn9-runtime", "570.195.03", [("12.0", "RTX 5090")], "compute capability 12.0"),
    ("pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime", "570.195.03", [("9.0", "H100")], "driver >= 580.65.06"),
])
def test_check_image_fits(tag, driver, gpus, refusal):
    got = check_image_fits(tag, driver, gpus)
    assert (got is None) if refusal is None else (refusal in got)


# ---- the controller's docker save (its own docker CLI call, not the testbed's) ----------------------------------
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$1 $2" in
  "image inspect") [ "$5" = "present:1" ] && echo sha256:0123456789abcdef0123456789abcdef && exit 0
                   echo "Error: No such image: $5" >&2; exit 1;;
  "save present:1") printf 'image-bytes';;
esac
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir / "calls"


def test_save_on_controller_saves_once_per_image_id_with_its_checksum(tmp_path, fake_docker):
    import hashlib
    first = save_on_controller("present:1", tmp_path / "cache")
    again = save_on_controller("present:1", tmp_path / "cache")
    assert first == again and first.image_id == "sha256:0123456789abcdef0123456789abcdef"
    assert first.path.name == "0123456789abcdef01234567.tar"      # uncompressed: served and loaded as it is
    assert first.path.read_bytes() == b"image-bytes"
    assert first.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert fake_docker.read_text().splitlines().count("save present:1") == 1


def test_save_on_controller_names_a_missing_image_or_docker_in_one_line(tmp_path, fake_docker, monkeypatch):
    with pytest.raises(RuntimeError, match=r"^docker image inspect absent:1: Error: No such image: absent:1$"):
        save_on_controller("absent:1", tmp_path / "cache")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="'docker' command is not installed on the controller"):
        save_on_controller("present:1", tmp_path / "cache")


# ---- the site playbook and the example lab ----------------------------------------------------------------------
def test_site_playbook_and_lab_inventory_validate_without_connecting():
    from provision.inventory import load_inventory
    from provision.playbook import load_playbook, validate
    pb = load_playbook(str(ROOT / "playbooks/site.yaml"))
    inv = load_inventory(str(ROOT / "inventories/lab.yaml"))
    validate(pb, inv, {})                                  # static checks only: no connection is opened
    assert pb.plays[0].roles == ("gpu_facts", "nvidia_driver", "container_toolkit", "gpu_agent", "gpu_image",
                                 "devcontainer", "gpu_validate")
    names = {h.name for h in inv.select("all")}
    assert names and all(n.endswith(".lab.example.com") for n in names)
    groups = {g: {h.name for h in inv.select(g)} for g in ("hopper", "blackwell", "ampere")}
    assert all(groups.values())


# ---- dev containers: exposure (issue 15, F7) ---------------------------------------------------------------------
def _dev_plan(args: dict, probe_text: str, tmp_path, monkeypatch):
    from types import SimpleNamespace
    from provision.ops.core import OpContext
    from provision.ops.spec import registry
    from provision.ops.core import normalize
    monkeypatch.setenv("GPUFLEET_SECRETS_DIR", str(tmp_path))
    spec = registry()["gpu_devcontainer"]
    full = normalize(spec, {"image": "gpufleet/dev:x", "authorized_keys": ["ssh-ed25519 AAAAC3Nza alice"], **args})
    return spec.impl().plan(full, {}, SimpleNamespace(stdout=probe_text, rc=0), OpContext("h1"))


def _probe(token="", tls=""):
    return (f"{MARK} maintenance\n\n{MARK} token\n{token}\n{MARK} keys\n\n{MARK} tls\n{tls}\n"
            f"{MARK} image\nsha256:9\n{MARK} container\n\n{MARK} end\n")


def test_dev_container_binds_loopback_by_default_and_plain_jupyter_only_there(tmp_path, monkeypatch):
    from provision.ops.spec import registry
    import yaml
    assert registry()["gpu_devcontainer"].args["bind"].default == "127.0.0.1" == dc.DevSpec("n", "i").bind
    role = yaml.safe_load(open("playbooks/roles/devcontainer/defaults/main.yaml"))
    assert role["devcontainer_bind"] == "127.0.0.1"
    text = " ".join(dc.docker_run_args(SPEC, "abc"))
    assert "-p 127.0.0.1:8888:8888 -p 127.0.0.1:2222:22" in text and "GPUFLEET_JUPYTER_TLS" not in text
    plan = _dev_plan({}, _probe(), tmp_path, monkeypatch)
    assert not any("openssl" in getattr(c, "cmd", "") for c in plan.commands)


def test_dev_container_bound_elsewhere_serves_jupyter_over_tls_made_once(tmp_path, monkeypatch):
    wide = dc.DevSpec(name="gpufleet-dev", image="gpufleet/dev:x", bind="0.0.0.0")
    args = dc.docker_run_args(wide, "abc")
    assert "GPUFLEET_JUPYTER_TLS=1" in args and f"{wide.state_dir}:{dc.STATE_MOUNT}" in args
    assert args[-2:] == ["--", "gpufleet/dev:x"]
    first = _dev_plan({"bind": "0.0.0.0"}, _probe(), tmp_path, monkeypatch)
    made = [c for c in first.commands if "openssl req" in getattr(c, "cmd", "")]
    assert len(made) == 1
    again = _dev_plan({"bind": "0.0.0.0"}, _probe(tls="present"), tmp_path, monkeypatch)
    assert not any("openssl" in getattr(c, "cmd", "") for c in again.commands)   # kept: made once per host


@pytest.mark.parametrize("bind", ["0.0.0.0 -p 1:2", "my-host", "$(id)"])
def test_dev_container_bind_is_an_address(bind, tmp_path, monkeypatch):
    plan = _dev_plan({"bind": bind}, _probe(), tmp_path, monkeypatch)
    assert plan.failed and "bind:" in plan.msg


def test_the_certificate_command_makes_a_key_only_the_user_reads(tmp_path):
    import os
    import subprocess
    spec = dc.DevSpec(name="gpufleet-dev", image="i", bind="10.1.2.3", data_root=str(tmp_path), uid=os.getuid())
    os.makedirs(f"{spec.state_dir}/tls")
    res = subprocess.run(["/bin/sh", "-c", dc.tls_command(spec)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert oct(os.stat(spec.tls_path("key")).st_mode & 0o777) == "0o600"
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", spec.tls_path("crt")], capture_output=True,
                          text=True).stdout
    assert "IP Address:10.1.2.3" in text and "IP Address:127.0.0.1" in text and "prime256v1" in text


def test_the_token_file_is_the_container_users_on_the_host(tmp_path, monkeypatch):
    from provision.ops.plan import FilePut
    plan = _dev_plan({"uid": 1234}, _probe(), tmp_path, monkeypatch)
    put = [c for c in plan.commands if isinstance(c, FilePut) and c.path.endswith("/jupyter_token")]
    assert len(put) == 1 and (put[0].mode, put[0].owner, put[0].group) == (0o400, "1234", "1234")
    fix = _dev_plan({"uid": 1234}, _probe(token="400 0"), tmp_path, monkeypatch)
    assert any("chown -- 1234:1234" in getattr(c, "cmd", "") for c in fix.commands)
