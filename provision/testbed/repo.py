"""TEST EQUIPMENT: a stand-in for NVIDIA's apt repositories (CUDA network repo and libnvidia-container), with
packages named and versioned like NVIDIA's, built with dpkg-deb and dpkg-scanpackages, and signed with gpg keys
made for the testbed (Release, InRelease, Release.gpg). It is built once per recipe into the cache and served to a
testbed's hosts by a container on the testbed's own Docker network.

Layout under the repository root (both are flat repositories, like NVIDIA's):
  cuda/repos/debian12/<x86_64|sbsa>/           drivers, cuda-drivers-*, nvidia-open-*, nvidia-fabricmanager-*
  cuda/repos/debian12/<arch>/cuda-archive-key.asc    its armored public key
  libnvidia-container/stable/deb/<amd64|arm64>/       nvidia-container-toolkit and friends
  libnvidia-container/gpgkey                   its armored public key
"""
from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from provision.testbed.cache import cache_dir, locked, recipe_hash
from provision.testbed.gpus import MODELS

STANDIN = Path(__file__).with_name("standin")

DRIVER_VERSIONS = {
    "535": ("535.230.02", "535.261.03"),
    "550": ("550.144.03", "550.163.01"),
    "570": ("570.172.08", "570.195.03"),
    "580": ("580.82.07", "580.95.05"),
}
CUDA_FOR_BRANCH = {"535": "12.2", "550": "12.4", "570": "12.8", "580": "13.0"}
TOOLKIT_VERSIONS = ("1.17.8", "1.18.0")
REVISION = "1"


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], stdout=subprocess.PIPE, text=True,
                          check=True).stdout.strip()


def cuda_arch_dir(deb_arch: str) -> str:
    return {"amd64": "x86_64", "arm64": "sbsa"}.get(deb_arch, deb_arch)


def cuda_path() -> str:
    return f"cuda/repos/debian12/{cuda_arch_dir(arch())}"


def toolkit_path() -> str:
    return f"libnvidia-container/stable/deb/{arch()}"


CUDA_KEY = "cuda-archive-key.asc"        # under cuda_path()
TOOLKIT_KEY = "libnvidia-container/gpgkey"


def standin_driver_packages(branch: str) -> dict[str, str]:
    """Package name -> flavour, for every driver package name of a branch (each ships a complete driver)."""
    return {
        f"cuda-drivers-{branch}": "proprietary",      # CUDA repo
        f"nvidia-open-{branch}": "open",              # CUDA repo
        f"nvidia-driver-{branch}": "proprietary",     # CUDA repo pinned meta / Ubuntu style
        f"nvidia-driver-{branch}-open": "open",       # Ubuntu style
        f"nvidia-driver-{branch}-server": "proprietary",
        f"nvidia-driver-{branch}-server-open": "open",
    }


def _models_json() -> str:
    return json.dumps({f"0x{m.device_id:04x}": {"name": m.name, "memory_mib": m.memory_mib, "arch": m.arch,
                                                 "compute_cap": m.compute_cap} for m in MODELS.values()},
                      sort_keys=True, indent=1)


def _standin(name: str, version: str = "") -> str:
    return (STANDIN / name).read_text().replace("@VERSION@", version)


def _plan(deb_arch: str) -> list[dict]:
    """Every package: name, version, control fields, files {path: (text, mode)}, which repo."""
    pkgs: list[dict] = []
    unit = _standin("nvidia-standin-module.service")
    for branch, versions in DRIVER_VERSIONS.items():
        for v in versions:
            names = dict(standin_driver_packages(branch))
            names.update({"cuda-drivers": "proprietary", "nvidia-open": "open"})  # unversioned: newest wins
            for name, flavour in names.items():
                desc = json.dumps({"version": v, "branch": branch, "flavour": flavour, "package": name,
                                   "cuda": CUDA_FOR_BRANCH[branch]}, sort_keys=True)
                pkgs.append({
                    "repo": "cuda", "name": name, "version": f"{v}-{REVISION}",
                    "fields": {
                        "Provides": f"nvidia-driver-standin, nvidia-driver-version (= {v}), "
                                    f"nvidia-kernel-{flavour} (= {v})",
                        "Conflicts": "nvidia-driver-standin", "Replaces": "nvidia-driver-standin",
                        "Depends": "python3",
                        "Description": f"NVIDIA driver {v} ({flavour} kernel modules) - TEST EQUIPMENT stand-in\n"
                                       " gpufleet testbed stand-in: no kernel module, no GPU support; an nvidia-smi\n"
                                       " that reports the testbed's simulated GPUs once rebooted.",
                    },
                    "files": {
                        "usr/bin/nvidia-smi": (_standin("nvidia-smi"), 0o755),
                        "usr/lib/nvidia-standin/driver.json": (desc + "\n", 0o644),
                        "usr/lib/nvidia-standin/models.json": (_models_json() + "\n", 0o644),
                        "usr/lib/nvidia-standin/load-module": (_standin("load-module"), 0o755),
                        "lib/systemd/system/nvidia-standin-module.service": (unit, 0o644),
                        "etc/systemd/system/multi-user.target.wants/nvidia-standin-module.service":
                            ("@symlink:/lib/systemd/system/nvidia-standin-module.service", 0),
                        f"usr/share/doc/{name}/TEST-EQUIPMENT": ("gpufleet testbed stand-in, not NVIDIA software\n",
                                                                 0o644),
                    },
                })
            pkgs.append({
                "repo": "cuda", "name": f"nvidia-fabricmanager-{branch}", "version": f"{v}-{REVISION}",
                "fields": {
                    "Depends": f"python3, nvidia-driver-version (= {v})",
                    "Provides": "nvidia-fabricmanager-standin",
                    "Conflicts": "nvidia-fabricmanager-standin", "Replaces": "nvidia-fabricmanager-standin",
                    "Description": f"NVIDIA Fabric Manager {v} - TEST EQUIPMENT stand-in\n"
                                   " gpufleet testbed stand-in: needs the driver of exactly its version.",
                },
                "files": {
                    "usr/bin/nv-fabricmanager": (_standin("nv-fabricmanager", v), 0o755),
                    "lib/systemd/system/nvidia-fabricmanager.service": (_standin("nvidia-fabricmanager.service"),
                                                                        0o644),
                    "usr/share/nvidia/nvswitch/fabricmanager.cfg": ("LOG_LEVEL=4\nFABRIC_MODE=0\n", 0o644),
                },
            })
    for v in TOOLKIT_VERSIONS:
        ver = f"{v}-{REVISION}"
        common = "gpufleet testbed stand-in for NVIDIA Container Toolkit."
        pkgs += [
            {"repo": "toolkit", "name": "libnvidia-container1", "version": ver,
             "fields": {"Description": f"NVIDIA container runtime library - TEST EQUIPMENT stand-in\n {common}"},
             "files": {}},
            {"repo": "toolkit", "name": "libnvidia-container-tools", "version": ver,
             "fields": {"Depends": f"libnvidia-container1 (= {ver})",
                        "Description": f"NVIDIA container runtime library tools - TEST EQUIPMENT stand-in\n {common}"},
             "files": {}},
            {"repo": "toolkit", "name": "nvidia-container-toolkit-base", "version": ver,
             "fields": {"Depends": "python3",
                        "Description": f"NVIDIA Container Toolkit Base - TEST EQUIPMENT stand-in\n {common}"},
             "files": {"usr/bin/nvidia-ctk": (_standin("nvidia-ctk", v), 0o755)}},
            {"repo": "toolkit", "name": "nvidia-container-toolkit", "version": ver,
             "fields": {"Depends": f"nvidia-container-toolkit-base (= {ver}), libnvidia-container-tools (= {ver})",
                        "Description": f"NVIDIA Container toolkit - TEST EQUIPMENT stand-in\n {common}"},
             "files": {"usr/bin/nvidia-container-runtime": (_standin("nvidia-container-runtime"), 0o755)}},
        ]
    for p in pkgs:
        p["arch"] = deb_arch
    return pkgs


def repo_hash() -> str:
    return recipe_hash({"v": 2, "plan": _plan(arch())})


def ensure_repo(log=print) -> Path:
    """The built repository root (cached by recipe hash); built under a lock when missing."""
    root = cache_dir() / f"repo-{repo_hash()}"
    if (root / ".complete").exists():
        return root
    with locked("repo"):
        if (root / ".complete").exists():
            return root
        for tool in ("dpkg-deb", "dpkg-scanpackages", "gpg"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed (apt-get install dpkg-dev gnupg, or run "
                                   f"scripts/install.sh)")
        log("testbed: building the stand-in NVIDIA repository (TEST EQUIPMENT)")
        tmp = Path(tempfile.mkdtemp(prefix="repo-build-", dir=cache_dir()))
        try:
            _build(tmp)
            if root.exists():
                shutil.rmtree(root)
            os.rename(tmp, root)
            (root / ".complete").write_text("ok\n")
            _prune_old(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def _prune_old(current: Path, max_age_s: float = 24 * 3600) -> None:
    """Remove repositories of older recipes once nothing has been built from them for a day (a running testbed
    may still serve one)."""
    for old in cache_dir().glob("repo-*"):
        if old != current and old.is_dir() and time.time() - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--yes", *args], input=input,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"gpg {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _build(root: Path) -> None:
    deb_arch = arch()
    work = root / ".work"
    work.mkdir()
    repos = {"cuda": root / cuda_path(), "toolkit": root / toolkit_path()}
    for d in repos.values():
        d.mkdir(parents=True)
    for p in _plan(deb_arch):
        pdir = work / f"{p['name']}_{p['version']}"
        (pdir / "DEBIAN").mkdir(parents=True)
        size = 0
        for rel, (text, mode) in p["files"].items():
            path = pdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if text.startswith("@symlink:"):
                path.symlink_to(text.split(":", 1)[1])
                continue
            path.write_text(text)
            path.chmod(mode)
            size += len(text)
        control = {"Package": p["name"], "Version": p["version"], "Architecture": p["arch"],
                   "Maintainer": "gpufleet testbed <testbed@gpufleet.invalid>", "Section": "non-free/libs",
                   "Priority": "optional", "Installed-Size": str(max(1, size // 1024))}
        control.update(p["fields"])
        desc = control.pop("Description")
        text = "".join(f"{k}: {v}\n" for k, v in control.items()) + f"Description: {desc}\n"
        (pdir / "DEBIAN/control").write_text(text)
        out = repos[p["repo"]] / f"{p['name']}_{p['version']}_{p['arch']}.deb"
        proc = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(pdir), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"dpkg-deb failed for {p['name']}: {proc.stdout.decode(errors='replace')}")
    shutil.rmtree(work)
    gnupg = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))
    try:
        gnupg.chmod(0o700)
        keys = {"cuda": ("gpufleet testbed CUDA repository (TEST EQUIPMENT) <cuda@testbed.gpufleet.invalid>",
                         repos["cuda"] / CUDA_KEY),
                "toolkit": ("gpufleet testbed container toolkit repository (TEST EQUIPMENT) "
                            "<toolkit@testbed.gpufleet.invalid>", root / TOOLKIT_KEY)}
        for name, (uid, keyfile) in keys.items():
            _gpg(gnupg, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
            keyfile.write_bytes(_gpg(gnupg, "--armor", "--export", uid))
            _index(repos[name], gnupg, uid, "NVIDIA CUDA stand-in" if name == "cuda" else "libnvidia-container "
                                                                                          "stand-in")
    finally:
        shutil.rmtree(gnupg, ignore_errors=True)


def _index(repo: Path, gnupg: Path, uid: str, label: str) -> None:
    proc = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=True)
    packages = proc.stdout
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = ["Origin: gpufleet-testbed", f"Label: {label} (TEST EQUIPMENT)", f"Architecture: {arch()}",
             f"Date: {email.utils.formatdate(usegmt=True)}"]
    for title, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{title}:")
        for fname in ("Packages", "Packages.gz"):
            data = (repo / fname).read_bytes()
            lines.append(f" {algo(data).hexdigest()} {len(data):>10} {fname}")
    (repo / "Release").write_text("\n".join(lines) + "\n")
    _gpg(gnupg, "--local-user", uid, "--clearsign", "--output", str(repo / "InRelease"), str(repo / "Release"))
    _gpg(gnupg, "--local-user", uid, "--armor", "--detach-sign", "--output", str(repo / "Release.gpg"),
         str(repo / "Release"))
