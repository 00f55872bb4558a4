"""The agent for hosts without internet: a wheelhouse built on the controller with pip (the ``gpufleet-agent``
wheel, built from agent/ and its own pyproject, + its dependencies for the host's Python and platform + pip's own
wheel), cached by content, copied to the host and installed into a venv there with ``--no-index`` (pip runs from
its wheel, so the host needs no python3-venv or python3-pip package). The agent imports nothing from provision/,
so the hosts get none of the provisioner's libraries (paramiko, jinja2, ...).
"""
from __future__ import annotations

import email.parser
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parents[2] / "agent"   # the package, and the gpufleet-agent project
DIST = "gpufleet-agent"
VENV = "/opt/gpufleet/agent"
WHEELS = "/opt/gpufleet/wheels"
_NOT_SOURCES = ("__pycache__", "build")   # what a run or an in-place build leaves in agent/


def agent_sources() -> list[Path]:
    """Every file the gpufleet-agent wheel is built from: agent/ (its pyproject included), less caches and build
    leftovers."""
    return [p for p in sorted(AGENT_DIR.rglob("*"))
            if p.is_file() and not any(part in _NOT_SOURCES or part.endswith(".egg-info")
                                       for part in p.relative_to(AGENT_DIR).parts[:-1])
            and p.suffix not in (".pyc", ".pyo")]


def source_digest() -> str:
    """What the agent wheel holds and declares: every file it is built from (a change elsewhere in the repo does
    not touch the hosts: no reinstall)."""
    h = hashlib.sha256()
    for p in agent_sources():
        h.update(str(p.relative_to(AGENT_DIR)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900)
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"pip {args[0]} failed: {' | '.join(tail)}")


def bundle_id(python_version: str, machine: str) -> tuple[str, str]:
    """(pip platform, bundle id) of the wheelhouse for ``python_version`` on ``machine``, without building it."""
    plat = {"x86_64": "manylinux2014_x86_64", "aarch64": "manylinux2014_aarch64"}.get(machine)
    if plat is None:
        raise RuntimeError(f"no wheels for machine {machine!r} (x86_64 and aarch64 only)")
    return plat, hashlib.sha256(f"{source_digest()} {python_version} {plat}".encode()).hexdigest()[:16]


def build_wheelhouse(python_version: str, machine: str, cache: Path) -> tuple[Path, str]:
    """(directory of wheels, bundle id) for a host running ``python_version`` (e.g. 3.11.2) on ``machine``."""
    plat, bundle = bundle_id(python_version, machine)
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


def build_agent_wheel(dest: Path, *, isolated: bool = True) -> Path:
    """The gpufleet-agent wheel, built into ``dest`` from a copy of :func:`agent_sources` (never writes build/
    into the working tree). ``isolated=False`` builds with this Python's setuptools and no index: offline."""
    with tempfile.TemporaryDirectory(prefix="gpufleet-agent-src-") as tmp:
        src, built = Path(tmp) / "agent", Path(tmp) / "wheel"
        for p in agent_sources():
            target = src / p.relative_to(AGENT_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        _pip("wheel", "--quiet", "--no-deps", *(() if isolated else ("--no-build-isolation", "--no-index")),
             "-w", str(built), str(src))
        wheels = list(built.glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip wheel made {len(wheels)} wheels from agent/, not one")
        dest.mkdir(parents=True, exist_ok=True)
        wheel = Path(shutil.move(str(wheels[0]), str(dest / wheels[0].name)))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    stray = [n for n in names if not n.startswith(("agent/", DIST.replace("-", "_") + "-"))]
    if stray or "agent/server.py" not in names:
        raise RuntimeError(f"the built {wheel.name} holds {stray[:3] or 'no agent/server.py'}")
    return wheel


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist (unconditional ones: the agent declares no extras)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode())
    return [r for r in msg.get_all("Requires-Dist") or [] if ";" not in r]


def _build(out: Path, bundle: str, python_version: str, plat: str, machine: str, cache: Path) -> None:
    tmp = cache / f"agent-{bundle}.partial"
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    tmp.mkdir(parents=True)
    wheel = build_agent_wheel(tmp)
    _pip("download", "--quiet", "--only-binary=:all:", "--python-version", python_version, "--platform", plat,
         "--platform", "manylinux_2_17_" + machine, "--platform", "manylinux_2_28_" + machine,
         "--implementation", "cp", "-d", str(tmp), "pip", *wheel_requirements(wheel))
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
    """Shell run on the host after the wheels are unpacked into WHEELS/<bundle>: pip resolves gpufleet-agent's
    dependencies from the wheelhouse alone."""
    w = f"{WHEELS}/{bundle}"
    return (f"set -e; rm -rf {VENV}; python3 -m venv --without-pip {VENV}; "
            f"pipwhl=$(ls {w}/pip-*.whl | head -n 1); "
            f"{VENV}/bin/python \"$pipwhl/pip\" install --quiet --no-index --find-links {w} "
            f"--disable-pip-version-check {DIST}; "
            f"{VENV}/bin/python -c 'import agent.server, prometheus_client'; "
            f"echo {bundle} > {VENV}/.gpufleet-bundle")
