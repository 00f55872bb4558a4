"""TEST EQUIPMENT: stand-in container images for the testbed (no registry is reachable from it).

``ensure_base()``  builds a small Debian 12 image tagged exactly like the official PyTorch image
                   (pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime): python3 in a venv at /opt/conda (the official
                   layout) and a stub ``torch`` (images/standin/torch) whose cuda.is_available() is False.
``ensure_dev()``   builds images/dev/Dockerfile on top of it (jupyter-server instead of the whole JupyterLab, wheels
                   downloaded on the controller with pip; openssh-server from Debian's mirror through Docker's NAT),
                   also tagged as the devcontainer role's default name (DEV_DEFAULT_TAG), so that the testbed's
                   inventory needs no devcontainer_image (a second `provision apply` finds the same image).

Both are cached by a hash of their recipe (files, arguments, base image id). Every stand-in carries the label
``gpufleet.standin=1``; a same-named image without it (a real one) is never overwritten.

    python3 -m provision.testbed.standin_images     # builds both, prints their tags (scripts/demo.sh)
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provision.testbed import docker
from provision.testbed.cache import cache_dir, locked, recipe_hash
from provision.testbed.image import debian_mirror

IMAGES_DIR = Path(__file__).resolve().parents[2] / "images"
STANDIN_DIR = IMAGES_DIR / "standin"
DEV_DIR = IMAGES_DIR / "dev"
BASE_TAG = "pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime"
DEV_REPO = "gpufleet-dev-standin"
# the devcontainer role's default image: "gpufleet/dev:" + the tag of gpu_image (roles/devcontainer/defaults)
DEV_DEFAULT_TAG = "gpufleet/dev:" + BASE_TAG.rsplit(":", 1)[1]
LABEL = "gpufleet.standin"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "util-linux")
DEV_PIP = ("jupyter-server",)
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt/archives",
        "var/lib/apt/lists")


def _files_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and "wheels" not in p.relative_to(root).parts[:1]:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def base_recipe() -> dict:
    return {"v": 1, "tag": BASE_TAG, "packages": BASE_PACKAGES, "torch": _files_digest(STANDIN_DIR / "torch")}


def _label(tag: str, key: str) -> str | None:
    proc = docker.run(["image", "inspect", "--format", "{{ index .Config.Labels \"" + key + "\" }}", tag],
                      check=False, timeout=60)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode().strip()


def _sh(cmd: list[str], **kw) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-6:]
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}): {' | '.join(tail)}")


def ensure_base(log=print) -> str:
    """The stand-in for the official image, built once per recipe. Returns its tag (the official name)."""
    want = recipe_hash(base_recipe())
    have = _label(BASE_TAG, "gpufleet.recipe")
    if have == want:
        return BASE_TAG
    if have is not None and _label(BASE_TAG, LABEL) != "1":
        raise RuntimeError(f"{BASE_TAG} exists here and is not a gpufleet stand-in: refusing to overwrite it")
    with locked("gpu-standin-base"):
        if _label(BASE_TAG, "gpufleet.recipe") == want:
            return BASE_TAG
        start = time.monotonic()
        log(f"gpu stand-in: building {BASE_TAG} (TEST EQUIPMENT; debootstrap, once)")
        work = Path(tempfile.mkdtemp(prefix="gpu-standin-", dir=cache_dir()))
        rootfs = work / "rootfs"
        try:
            _sh(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
                 str(rootfs), debian_mirror()])
            _sh(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/conda"])
            site = next((rootfs / "opt/conda/lib").glob("python3*/site-packages"))
            shutil.copytree(STANDIN_DIR / "torch", site / "torch",
                            ignore=shutil.ignore_patterns("__pycache__"))
            (rootfs / "etc/gpufleet-standin").write_text(
                "TEST EQUIPMENT: gpufleet stand-in for the official PyTorch image; not NVIDIA or PyTorch software.\n")
            for rel in TRIM:
                shutil.rmtree(rootfs / rel, ignore_errors=True)
                (rootfs / rel).mkdir(parents=True, exist_ok=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
            changes = ["ENV PATH=/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "ENV NVIDIA_VISIBLE_DEVICES=all", "ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility",
                       "WORKDIR /workspace", 'CMD ["/bin/bash"]',
                       f"LABEL {LABEL}=1", f"LABEL gpufleet.recipe={want}",
                       'LABEL org.opencontainers.image.description="TEST EQUIPMENT: gpufleet stand-in"']
            args = [docker.docker_bin(), "import"]
            for c in changes:
                args += ["-c", c]
            proc = subprocess.run(args + ["-", BASE_TAG], stdin=tar.stdout, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=600)
            tar.wait()
            if proc.returncode != 0:
                raise RuntimeError(f"docker import failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        log(f"gpu stand-in: built {BASE_TAG} in {time.monotonic() - start:.0f}s")
    return BASE_TAG


def _image_id(tag: str) -> str:
    return docker.out(["image", "inspect", "--format", "{{.Id}}", tag], timeout=60)


def _container_python(tag: str) -> str:
    """The exact Python version inside the image (pip must pick wheels for it, not for the controller's)."""
    return docker.out(["run", "--rm", "--entrypoint", "python3", tag, "-c",
                       "import platform; print(platform.python_version())"], timeout=120)


def dev_recipe(base: str) -> dict:
    return {"v": 1, "base": _image_id(base), "dockerfile": _files_digest(DEV_DIR), "pip": DEV_PIP}


def ensure_dev(log=print) -> str:
    """images/dev/Dockerfile built on the stand-in base; tag gpufleet-dev-standin:<recipe hash>."""
    base = ensure_base(log)
    tag = f"{DEV_REPO}:{recipe_hash(dev_recipe(base))}"
    if docker.exists("image", tag):
        return _default_name(tag, log)
    with locked("gpu-standin-dev"):
        if docker.exists("image", tag):
            return _default_name(tag, log)
        start = time.monotonic()
        log(f"gpu stand-in: building {tag} from images/dev/Dockerfile (TEST EQUIPMENT, once)")
        work = Path(tempfile.mkdtemp(prefix="gpu-dev-", dir=cache_dir()))
        try:
            ctx = work / "ctx"
            shutil.copytree(DEV_DIR, ctx, ignore=shutil.ignore_patterns("__pycache__"))
            _sh([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                 "--python-version", _container_python(base), "-d",
                 str(ctx / "wheels"), *DEV_PIP])
            _sh([docker.docker_bin(), "build", "--quiet", "--build-arg", f"BASE={base}",
                 "--build-arg", f"JUPYTER_PACKAGES={' '.join(DEV_PIP)}", "--label", f"{LABEL}=1",
                 "-t", tag, str(ctx)], timeout=900)
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        log(f"gpu stand-in: built {tag} in {time.monotonic() - start:.0f}s")
    return _default_name(tag, log)


def _default_name(tag: str, log) -> str:
    """Tag the stand-in dev image also as DEV_DEFAULT_TAG, unless that name is a real (non stand-in) image."""
    if _label(DEV_DEFAULT_TAG, LABEL) not in (None, "1"):
        log(f"gpu stand-in: {DEV_DEFAULT_TAG} exists here and is not a gpufleet stand-in: left as it is")
    elif _image_id(tag) != (_image_id(DEV_DEFAULT_TAG) if docker.exists("image", DEV_DEFAULT_TAG) else None):
        _sh([docker.docker_bin(), "tag", tag, DEV_DEFAULT_TAG])
    return tag


if __name__ == "__main__":
    print(ensure_base())
    print(ensure_dev())
