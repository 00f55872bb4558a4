"""`provision testbed up|down|status`: bad input gives one line and a non-zero exit, touches nothing; a failed up
removes what it made; a good up/down round trip leaves nothing behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from provision.testbed import docker

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None, user=None):
    cmd = [sys.executable, "-m", "provision.cli", "testbed", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=600)


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def labelled(name: str) -> list[str]:
    label = f"gpufleet.testbed={name}"
    return (docker.names_with_label("container", label) + docker.names_with_label("network", label)
            + docker.names_with_label("volume", label))


def test_unknown_gpu_model_names_the_closest():
    line = one_line_error(cli("up", "--host", "a=8xH100-SMX"))
    assert "unknown GPU model 'H100-SMX'" in line and "did you mean 'H100-SXM'" in line


@pytest.mark.parametrize("spec", ["0xH100-SXM", "-2xL40S"])
def test_gpu_count_must_be_positive(spec):
    line = one_line_error(cli("up", "--host", f"a={spec}"))
    assert "count must be 1 or more" in line


def test_host_count_must_be_positive():
    line = one_line_error(cli("up", "--host", "cpu=none,count=0"))
    assert "count must be 1 or more" in line


def test_no_hosts():
    assert "no hosts given" in one_line_error(cli("up"))


def test_spec_file_errors_name_file_line_and_key(tmp_path):
    spec = tmp_path / "lab.yaml"
    spec.write_text("hosts:\n  h100:\n    gpus: 8xH100-SXM\n  ws:\n    gpu: 2xRTX-5090\n")
    line = one_line_error(cli("up", str(spec)))
    assert line.startswith(f"ERROR: {spec}:5: hosts.ws.gpu: unknown key") and "did you mean 'hosts.ws.gpus'" in line
    spec.write_text("hosts:\n  h100:\n    gpus: 8xH100-SXM\n  cpu:\n    count: 0\n")
    line = one_line_error(cli("up", str(spec)))
    assert f"{spec}:5: hosts.cpu.count: count must be 1 or more" in line
    spec.write_text("hosts:\n  ws:\n    gpus: 2xRTX5090\n")
    line = one_line_error(cli("up", str(spec)))
    assert f"{spec}:3: hosts.ws.gpus: unknown GPU model" in line and "'RTX-5090'" in line


def test_spec_file_parses_counts_and_shorthand(tmp_path):
    from provision.testbed.spec import load_spec_file
    spec = tmp_path / "lab.yaml"
    spec.write_text("name: demo\nhosts:\n  h100: 8xH100-SXM\n  ws: {gpus: [2xRTX-5090, A100-PCIE-80GB], "
                    "docker: true}\n  cpu: {count: 2}\n")
    name, specs = load_spec_file(str(spec))
    assert name == "demo"
    assert [(s.name, len(s.gpus), s.docker) for s in specs] == [("h100", 8, False), ("ws", 3, True),
                                                                ("cpu1", 0, False), ("cpu2", 0, False)]


def test_no_docker_engine():
    line = one_line_error(cli("up", "--host", "a=none", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}))
    assert "no Docker engine answers" in line


def test_not_root():
    if os.geteuid() != 0:
        pytest.fail("the test suite runs as root (README command 2)")
    tmp_path = Path(tempfile.mkdtemp(prefix="gpufleet-notroot-"))   # pytest's tmp dirs are private to root
    os.chmod(tmp_path, 0o755)
    shutil.copytree(ROOT / "provision", tmp_path / "provision", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "provision.cli", "testbed", "up", "--host", "a=none"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path), HOME=str(tmp_path)))
    shutil.rmtree(tmp_path)
    line = one_line_error(proc)
    assert "must run as root" in line


@pytest.mark.testbed
def test_failed_up_removes_what_it_created(testbed_image, tmp_path):
    name = f"clifail-{uuid.uuid4().hex[:6]}"
    inv = tmp_path / "inv.yaml"
    # Someone else's container already holds the name host "b" needs: up fails after it has made the network,
    # the repository container, host "a" and b's Docker volume; it must take all of that back, and only that.
    blocker = f"gpufleet-{name}-b"
    docker.run(["create", "--name", blocker, testbed_image])
    try:
        proc = cli("up", "--name", name, "--host", "a=none", "--host", "b=none,docker", "--inventory", str(inv),
                   cwd=tmp_path)
        line = one_line_error(proc)
        assert "already in use" in line
        assert labelled(name) == []
        assert not inv.exists()
        assert not (tmp_path / ".testbed" / name).exists()
        assert docker.exists("container", blocker)
    finally:
        docker.run(["rm", "-f", blocker], check=False)


@pytest.mark.testbed
def test_up_status_down_round_trip(testbed_image, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    inv = tmp_path / "testbed.yaml"
    try:
        proc = cli("up", "--name", name, "--host", "gpu=2xL40S", "--host", "cpu=none", "--docker",
                   "--inventory", str(inv), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        data = yaml.safe_load(inv.read_text())
        assert set(data["all"]["children"]) == {"ada", "nogpu"}
        assert data["all"]["children"]["ada"]["hosts"]["gpu"]["gpufleet_docker_capable"] is True
        assert (tmp_path / ".testbed" / name / "known_hosts").exists()
        status = cli("status", "--name", name)
        assert status.returncode == 0 and "gpu" in status.stdout and "running" in status.stdout
        again = cli("up", "--name", name, "--host", "x=none", "--inventory", str(tmp_path / "other.yaml"))
        assert "already up" in one_line_error(again)
    finally:
        down = cli("down", "--name", name, "--inventory", str(inv), cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert labelled(name) == []
    assert not inv.exists()
    assert not (tmp_path / ".testbed" / name).exists()
    assert cli("status", "--name", name).returncode != 0
