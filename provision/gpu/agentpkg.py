"""The agent for hosts without internet: a wheelhouse built on the controller with pip (this repo's wheel + the
agent's dependencies for the host's Python and platform + pip's own wheel), cached by content, copied to the host
and installed into a venv there with ``--no-index`` (pip runs from its wheel, so the host needs no python3-venv or
python3-pip package).
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_DEPS = ("prometheus_client>=0.20", "pyyaml>=6.0", "nvidia-ml-py>=12.535", "bcrypt>=4.0")
VENV = "/opt/gpufleet/agent"
WHEELS = "/opt/gpufleet/wheels"


def source_digest() -> str:
    """What the agent runs: agent/, the provision modules it imports, pyproject and the dependency list. (The
    wheel carries all of provision/, but a change elsewhere in it does not touch the agent: no reinstall.)"""
    h = hashlib.sha256()
    files = [p for p in sorted((REPO_ROOT / "agent").rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".yml", ".service")]
    files += [REPO_ROOT / "provision" / "__init__.py", REPO_ROOT / "provision" / "errors.py",
              REPO_ROOT / "pyproject.toml"]
    for p in files:
        if p.exists():
            h.update(str(p.relative_to(REPO_ROOT)).encode())
            h.update(p.read_bytes())
    h.update(repr(AGENT_DEPS).encode())
    return h.hexdigest()[:16]


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900)
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"pip {args[0]} failed: {' | '.join(tail)}")


def build_wheelhouse(python_version: str, machine: str, cache: Path) -> tuple[Path, str]:
    """(directory of wheels, bundle id) for a host running ``python_version`` (e.g. 3.11.2) on ``machine``."""
    plat = {"x86_64": "manylinux2014_x86_64", "aarch64": "manylinux2014_aarch64"}.get(machine)
    if plat is None:
        raise RuntimeError(f"no wheels for machine {machine!r} (x86_64 and aarch64 only)")
    bundle = hashlib.sha256(f"{source_digest()} {python_version} {plat}".encode()).hexdigest()[:16]
    out = cache / f"agent-{bundle}"
    if (out / ".complete").exists():
        return out, bundle
    import fcntl
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"agent-{bundle}.lock", "a+") as lock:   # the hosts of one run build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".complete").exists():
            return out, bundle
        _build(out, bundle, python_version, plat, machine, cache)
    return out, bundle


def _build(out: Path, bundle: str, python_version: str, plat: str, machine: str, cache: Path) -> None:
    tmp = cache / f"agent-{bundle}.partial"
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    tmp.mkdir(parents=True)
    src = cache / f"agent-{bundle}.src"       # build from a copy: never write build/ into the working tree
    subprocess.run(["rm", "-rf", str(src)], check=False)
    src.mkdir(parents=True)
    for sub in ("agent", "provision"):
        shutil.copytree(REPO_ROOT / sub, src / sub, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO_ROOT / "pyproject.toml", src / "pyproject.toml")
    (src / "README.md").write_text("gpufleet\n")
    _pip("wheel", "--quiet", "--no-deps", "-w", str(tmp), str(src))
    subprocess.run(["rm", "-rf", str(src)], check=False)
    _pip("download", "--quiet", "--only-binary=:all:", "--python-version", python_version, "--platform", plat,
         "--platform", "manylinux_2_17_" + machine, "--platform", "manylinux_2_28_" + machine,
         "--implementation", "cp", "-d", str(tmp), "pip", *AGENT_DEPS)
    with zipfile.ZipFile(next(tmp.glob("gpufleet-*.whl"))) as zf:
        if not any(n.startswith("agent/server.py") for n in zf.namelist()):
            raise RuntimeError("the built gpufleet wheel has no agent package")
    (tmp / ".complete").write_text(bundle + "\n")
    subprocess.run(["rm", "-rf", str(out)], check=False)
    tmp.rename(out)


def tar_bytes(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in sorted(directory.glob("*.whl")):
            tf.add(p, arcname=p.name)
    return buf.getvalue()


def install_command(bundle: str) -> str:
    """Shell run on the host after the wheels are unpacked into WHEELS/<bundle>."""
    w = f"{WHEELS}/{bundle}"
    return (f"set -e; rm -rf {VENV}; python3 -m venv --without-pip {VENV}; "
            f"pipwhl=$(ls {w}/pip-*.whl | head -n 1); "
            f"{VENV}/bin/python \"$pipwhl/pip\" install --quiet --no-index --find-links {w} "
            f"--disable-pip-version-check --no-deps gpufleet {' '.join(repr(d) for d in AGENT_DEPS)}; "
            f"{VENV}/bin/python -c 'import agent.server, prometheus_client'; "
            f"echo {bundle} > {VENV}/.gpufleet-bundle")
