"""Put a container image on a host: check first that it can run there, then pull it, pull it through a lab
registry mirror, or stream it from the controller (a `docker save` tarball, checksum-verified on the host; the
controller's own `docker` command line, called here directly).

The check comes before any transfer: the host's driver (nvidia-smi) against the image's CUDA, and every GPU's
compute capability against the architectures the image was built for (provision/gpu/gpus.yaml).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from provision.gpu.table import load_table
from provision.versions import version_at_least

SOURCES = ("auto", "pull", "mirror", "stream")


@dataclass(frozen=True)
class Tarball:
    path: Path
    sha256: str
    image_id: str | None


def check_image_fits(tag: str, driver: str | None, gpus: list[tuple[str, str]], overrides=None) -> str | None:
    """None when the image can run with this driver and these (cc, name) GPUs, else the refusal message."""
    table = load_table()
    info = table.image(tag, overrides)
    if info is None:
        return f"cannot tell which CUDA image {tag} needs: set gpu_image_info for it"
    need = table.min_driver_for_cuda(info.cuda)
    if need is None:
        return f"image {tag} needs CUDA {info.cuda}, which provision/gpu/gpus.yaml has no minimum driver for"
    if driver is not None and not version_at_least(driver, need):
        return (f"refusing to fetch {tag}: it needs CUDA {info.cuda} (driver >= {need}) and this host's driver is "
                f"{driver}")
    for cc, name in gpus:
        if info.supports_cc(cc) is False:
            return (f"refusing to fetch {tag}: it has no kernels for compute capability {cc} ({name}); built for "
                    f"{', '.join(info.sm)}")
    return None


def controller_docker() -> str:
    """The path of the controller's `docker` command."""
    path = shutil.which("docker")
    if not path:
        raise RuntimeError("the 'docker' command is not installed on the controller")
    return path


def controller_image_id(tag: str) -> str:
    """The id of the controller's copy of ``tag`` (`docker image inspect`); a RuntimeError of one line if none."""
    proc = subprocess.run([controller_docker(), "image", "inspect", "--format", "{{.Id}}", tag],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"docker image inspect {tag}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout.decode(errors="replace").strip()


def save_on_controller(tag: str, cache: Path) -> Tarball:
    """`docker save` of the controller's copy, cached by image id; sha256 computed once."""
    image_id = controller_image_id(tag)
    cache.mkdir(parents=True, exist_ok=True)
    base = cache / (image_id.replace("sha256:", "")[:24] + ".tar.gz")   # gzip -1: a third of the bytes to send
    sumfile = base.with_suffix(".sha256")
    with open(base.with_suffix(".lock"), "a+") as lock:      # hosts of one run save the same image once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base.exists() and sumfile.exists()):
            tmp = base.with_suffix(f".partial-{os.getpid()}")
            with open(tmp, "wb") as fh:
                save = subprocess.Popen([controller_docker(), "save", tag], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
                gz = subprocess.run(["gzip", "-1", "-c"], stdin=save.stdout, stdout=fh, timeout=1800)
                save.stdout.close()
                err = save.stderr.read()
                save.wait(timeout=60)
            proc = subprocess.CompletedProcess(save.args, save.returncode or gz.returncode, b"", err)
            if proc.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"docker save {tag}: {proc.stderr.decode(errors='replace').strip()[-200:]}")
            sumfile.write_text(sha256_file(tmp) + "\n")
            os.replace(tmp, base)
    return Tarball(base, sumfile.read_text().strip(), image_id)


def tarball_from_file(path: str, sha256: str | None) -> Tarball:
    p = Path(path)
    actual = sha256_file(p)
    if sha256 and actual != sha256.lower().removeprefix("sha256:"):
        raise RuntimeError(f"{path}: sha256 is {actual}, not the {sha256} the inventory names")
    return Tarball(p, actual, tarball_image_id(p))


def tarball_image_id(path: Path) -> str | None:
    try:
        with tarfile.open(path, "r:*") as tf:
            manifest = json.load(tf.extractfile("manifest.json"))
        cfg = manifest[0]["Config"]
        return "sha256:" + cfg.split("/")[-1].removesuffix(".json")
    except (KeyError, OSError, ValueError, tarfile.TarError, TypeError):
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
