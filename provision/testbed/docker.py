"""A thin wrapper over the ``docker`` command line.

The testbed drives Docker through its CLI rather than the Docker SDK: the flags that work on these machines were
found and written down as CLI flags (docs/testbed.md), the CLI comes with the engine anyway (docker.io), and the
same commands can be replayed by hand when something needs debugging.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Sequence


class DockerError(RuntimeError):
    """A docker command failed; ``str()`` is one line."""


def docker_bin() -> str:
    path = shutil.which("docker")
    if not path:
        raise DockerError("the 'docker' command is not installed (apt-get install docker.io)")
    return path


def run(args: Sequence[str], *, input: bytes | None = None, check: bool = True, timeout: float | None = 600,
        capture: bool = True) -> subprocess.CompletedProcess:
    cmd = [docker_bin(), *args]
    try:
        proc = subprocess.run(cmd, input=input, stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise DockerError(f"docker {args[0]} timed out after {timeout:.0f}s") from err
    if check and proc.returncode != 0:
        msg = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise DockerError(f"docker {' '.join(args[:2])}: {msg[-1] if msg else 'exit ' + str(proc.returncode)}")
    return proc


def out(args: Sequence[str], **kw) -> str:
    return run(args, **kw).stdout.decode(errors="replace").strip()


def engine_problem() -> str | None:
    """None when an engine answers, else a one-line reason."""
    try:
        docker_bin()
    except DockerError as err:
        return str(err)
    try:
        proc = run(["version", "--format", "{{.Server.Version}}"], check=False, timeout=20)
    except DockerError as err:
        return str(err)
    if proc.returncode != 0 or not proc.stdout.strip():
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return (f"no Docker engine answers at {where} "
                f"(start it: dockerd >/tmp/dockerd.log 2>&1 &, or run scripts/install.sh)")
    return None


def exists(kind: str, name: str) -> bool:
    return run([kind, "inspect", name], check=False, timeout=60).returncode == 0


def names_with_label(kind: str, label: str) -> list[str]:
    if kind == "container":
        args = ["ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}"]
    elif kind == "network":
        args = ["network", "ls", "--filter", f"label={label}", "--format", "{{.Name}}"]
    elif kind == "volume":
        args = ["volume", "ls", "--filter", f"label={label}", "--format", "{{.Name}}"]
    else:
        raise ValueError(kind)
    return [n for n in out(args, timeout=60).splitlines() if n.strip()]
