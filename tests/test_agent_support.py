"""Shared helpers for the gpu-agent tests (imported by tests/test_agent_*.py; holds no tests itself).

NVML is the only stand-in: a replay of tests/fixtures/nvml/h100-*.json, recorded on a real H100 through
agent.replay.Recorder. Docker and Prometheus are the real ones on this machine.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "nvml", "h100-*.json")))
FIXTURE = FIXTURES[-1]
PREFIX = "gpufleet-agenttest"
IMAGE = f"{PREFIX}-busybox:1"


def replay(**kw):
    from agent.replay import ReplayNvml
    return ReplayNvml.from_file(FIXTURE, **kw)


def process_utilization(*samples: tuple[int, int, int]) -> list:
    """nvmlDeviceGetProcessUtilization's answer in a recording's JSON form, from (pid, SM %, memory %) samples:
    for ReplayNvml.set("nvmlDeviceGetProcessUtilization", ..., gpu=N)."""
    return [{"struct": {"pid": pid, "smUtil": sm, "memUtil": mem, "encUtil": 0, "decUtil": 0, "timeStamp": 1}}
            for pid, sm, mem in samples]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RunningAgent:
    """An agent HTTP server on 127.0.0.1 in a thread of the test process (so faults can be injected)."""

    def __init__(self, nvml=None, *, port: int | None = None, web=None, **cfg):
        from agent.server import Config, WebConfig, make_server
        self.port = port or free_port()
        conf = Config(listen_address=f"127.0.0.1:{self.port}", **cfg)
        self.srv, self.agent = make_server(conf, web or WebConfig(), nvml)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.agent.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def docker_ok() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


def _static_busybox(workdir: str) -> str:
    """A static busybox binary: Debian's busybox-static package, fetched with apt-get download (no root)."""
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(cand):
            out = subprocess.run(["file", "-L", cand], capture_output=True, text=True).stdout \
                if shutil.which("file") else ""
            if "statically linked" in out:
                return cand
    subprocess.run(["apt-get", "download", "busybox-static"], cwd=workdir, check=True, capture_output=True)
    deb = glob.glob(os.path.join(workdir, "busybox-static_*.deb"))[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(workdir, "x")], check=True)
    return os.path.join(workdir, "x", "bin", "busybox")


def ensure_image() -> str:
    """A tiny local image (static busybox, docker import): no registry is reachable here."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0:
        return IMAGE
    with tempfile.TemporaryDirectory() as tmp:
        bb = _static_busybox(tmp)
        tar = os.path.join(tmp, "rootfs.tar")
        with tarfile.open(tar, "w") as t:
            t.add(bb, arcname="bin/busybox")
            for name in ("sh", "sleep"):
                info = tarfile.TarInfo(f"bin/{name}")
                info.type = tarfile.SYMTYPE
                info.linkname = "busybox"
                t.addfile(info)
        subprocess.run(["docker", "import", "-c", 'CMD ["/bin/sleep", "3600"]', tar, IMAGE], check=True,
                       capture_output=True)
    return IMAGE


class Containers:
    """Starts containers named with this test run's prefix and removes them all at the end."""

    def __init__(self):
        self.tag = f"{PREFIX}-{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []

    def run(self, suffix: str, *args: str) -> dict:
        import json
        name = f"{self.tag}-{suffix}"
        subprocess.run(["docker", "run", "-d", "--name", name, "--network", "none", *args, IMAGE,
                        "/bin/sleep", "3600"], check=True, capture_output=True)
        self.names.append(name)
        for _ in range(50):
            info = json.loads(subprocess.run(["docker", "inspect", name], capture_output=True, text=True,
                                             check=True).stdout)[0]
            if info["State"]["Pid"]:
                return info
            time.sleep(0.1)
        raise AssertionError(f"{name} did not start")

    def cleanup(self) -> None:
        if self.names:
            subprocess.run(["docker", "rm", "-f", *self.names], capture_output=True)


@pytest.fixture
def containers():
    if not docker_ok():
        pytest.fail("the Docker engine is required (start it: dockerd >/tmp/dockerd.log 2>&1 &)")
    ensure_image()
    c = Containers()
    yield c
    c.cleanup()
