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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from provision.gpu.table import load_table
from provision.progress import human_bytes
from provision.versions import version_at_least

SOURCES = ("auto", "pull", "mirror", "stream")
VIAS = ("auto", "registry", "ssh")               # how a stream from the controller reaches the host
IMAGE_CACHE = Path.home() / ".cache" / "gpufleet" / "images"
CACHE_DAYS = 3.0                                 # a saved tarball unused this long is removed at the next save
# Docker's data root on the host and its free kB (a host command; read by free_space_refusal)
DOCKER_ROOT_FREE = ("d=$(docker info --format '{{.DockerRootDir}}') && [ -n \"$d\" ] && echo \"$d\" && "
                    "df -Pk \"$d\" | awk 'NR==2 {print $4}'")


@dataclass(frozen=True)
class Blob:
    digest: str              # sha256:<hex> (a layer's is its diff id: docker save's layers are uncompressed)
    offset: int              # where its bytes start in the tarball
    size: int


@dataclass(frozen=True)
class Tarball:
    path: Path
    sha256: str                       # '' for an inventory tarball given without one (not hashed then)
    image_id: str | None
    size: int = 0
    config: Blob | None = None        # None: not servable by the registry (compressed or not docker save's)
    layers: tuple = ()

    @property
    def image_bytes(self) -> int:
        """What the image takes once loaded (its layers; the file's size when they are not known)."""
        return sum(b.size for b in self.layers) or self.size


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
    """`docker save` of the controller's copy, cached by image id (uncompressed: hosts load or pull its layers as
    they are, and the controller's registry serves them from it by offset); its sha256 computed on the way."""
    image_id = controller_image_id(tag)
    cache.mkdir(parents=True, exist_ok=True)
    base = cache / (image_id.replace("sha256:", "")[:24] + ".tar")
    sumfile = base.with_suffix(".sha256")
    with open(base.with_suffix(".lock"), "a+") as lock:      # hosts of one run save the same image once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base.exists() and sumfile.exists()):
            tmp = base.with_suffix(f".partial-{os.getpid()}")
            h = hashlib.sha256()
            save = subprocess.Popen([controller_docker(), "save", tag], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            try:
                with open(tmp, "wb") as fh:
                    for chunk in iter(lambda: save.stdout.read(1 << 20), b""):
                        h.update(chunk)
                        fh.write(chunk)
                err = save.stderr.read()
                save.wait(timeout=60)
            finally:
                save.stdout.close()
                save.stderr.close()
            if save.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"docker save {tag}: {err.decode(errors='replace').strip()[-200:]}")
            sumfile.write_text(h.hexdigest() + "\n")
            os.replace(tmp, base)
            prune_cache(cache, keep=base)
        os.utime(base)                 # in use: the prune goes by the last use
    return read_tarball(base, sumfile.read_text().strip(), image_id)


def prune_cache(cache: Path, keep: Path, days: float = CACHE_DAYS) -> list[Path]:
    """Remove the cached tarballs (and their checksum and lock files) not used for ``days``: each image version
    would otherwise stay on the controller's disk for good (5-10 GB apiece)."""
    old = time.time() - days * 86400
    gone = []
    for tar in cache.glob("*.tar*"):
        if tar == keep or not tar.name.endswith((".tar", ".tar.gz")):
            continue
        try:
            if tar.stat().st_mtime < old:
                for f in (tar, tar.with_suffix(".sha256"), tar.with_suffix(".lock")):
                    f.unlink(missing_ok=True)
                gone.append(tar)
        except OSError:
            pass
    return gone


_CHECKED: dict[tuple, Tarball] = {}
_CHECKED_LOCK = threading.Lock()


def controller_tarball(path: str, sha256: str | None) -> Tarball:
    """:func:`tarball_from_file`, once per file version and expected checksum in a run (every host plans with it)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, sha256)
    with _CHECKED_LOCK:
        if key not in _CHECKED:
            _CHECKED[key] = tarball_from_file(path, sha256)
        return _CHECKED[key]


def free_space_refusal(tag: str, look, need: int) -> str | None:
    """None when the host's Docker data root has ``need`` bytes free (``look``: DOCKER_ROOT_FREE's result), else
    the one line that refuses the transfer."""
    lines = look.stdout.split()
    if look.rc != 0 or len(lines) < 2 or not lines[-1].isdigit():
        why = (look.stderr.strip().splitlines() or [f"exit {look.rc}"])[-1]
        return f"refusing to send {tag}: cannot read the free space of Docker's data root on the host ({why})"
    free = int(lines[-1]) * 1024
    if free < need:
        return (f"refusing to send {tag}: Docker's data root {lines[0]} on the host has {human_bytes(free)} free, "
                f"the image needs {human_bytes(need)}")
    return None


def tarball_from_file(path: str, sha256: str | None) -> Tarball:
    """The inventory's tarball, checked against its ``sha256`` when one is given (a whole read of the file: only
    then; the image id the host ends with is checked either way)."""
    p = Path(path)
    actual = sha256_file(p) if sha256 else ""
    if sha256 and actual != sha256.lower().removeprefix("sha256:"):
        raise RuntimeError(f"{path}: sha256 is {actual}, not the {sha256} the inventory names")
    return read_tarball(p, actual, None)


def read_tarball(path: Path, sha256: str, image_id: str | None) -> Tarball:
    """The tarball with its image id (the config's digest, from manifest.json) and, when it is an uncompressed
    `docker save`, where its config and layers lie in it (what the controller's registry serves)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        compressed = fh.read(6)[:3] in (b"\x1f\x8b\x08", b"BZh", b"\xfd7z")
    if compressed:
        return Tarball(path, sha256, image_id or tarball_image_id(path), size)
    try:
        with tarfile.open(path, "r:") as tf:
            members = {m.name: m for m in tf.getmembers()}
            manifest = json.load(tf.extractfile(members["manifest.json"]))[0]
            cfg_member = _data_member(members, manifest["Config"])
            config = json.load(tf.extractfile(cfg_member))
    except (KeyError, IndexError, OSError, ValueError, tarfile.TarError, TypeError):
        return Tarball(path, sha256, image_id, size)
    config_digest = "sha256:" + manifest["Config"].split("/")[-1].removesuffix(".json")
    layers = tuple(Blob(diff_id, m.offset_data, m.size) for diff_id, m in
                   zip(config["rootfs"]["diff_ids"], (_data_member(members, name) for name in manifest["Layers"])))
    return Tarball(path, sha256, config_digest, size, Blob(config_digest, cfg_member.offset_data, cfg_member.size),
                   layers)


def _data_member(members: dict, name: str) -> tarfile.TarInfo:
    """The member holding ``name``'s bytes (docker save links a repeated layer to its first copy)."""
    m = members[name]
    for _ in range(8):
        if not (m.issym() or m.islnk()):
            return m
        target = m.linkname if m.islnk() else os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname))
        m = members[target]
    raise KeyError(name)


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
