"""The testbed's host image: Debian 12 (debootstrap minbase) + systemd + sshd, imported into Docker once and
tagged by a hash of its recipe, so that a changed recipe builds a new image and an unchanged one is reused.

The Debian packages a provisioner later installs inside hosts (docker.io and its dependencies) are downloaded at
build time into the image's apt cache together with the package lists, so that ``apt-get install docker.io``
inside a host is real apt, fast, and works without a network.
"""
from __future__ import annotations

import glob
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from provision.testbed import docker
from provision.testbed.cache import cache_dir, locked, recipe_hash

SUITE = "bookworm"
IMAGE_REPO = "gpufleet-testbed"          # gpufleet-testbed:<hash>
MINI_REPO = "gpufleet-testbed-mini"      # gpufleet-testbed-mini:<hash>: /bin/sh only, to load into hosts' Docker
PACKAGES = ("systemd", "systemd-sysv", "openssh-server", "python3", "sudo", "iproute2", "ca-certificates",
            "gnupg", "curl", "procps", "mokutil", "dbus")
BAKED = ("docker.io",)                   # .debs kept in /var/cache/apt/archives, not installed
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer", "man-db.timer",
          "getty@tty1.service", "console-getty.service", "systemd-tmpfiles-clean.timer",
          "e2scrub_reap.service", "systemd-networkd-wait-online.service")
FILES = {
    # Only an ed25519 host key: the testbed makes one per host and collects it into its known_hosts.
    "etc/ssh/sshd_config.d/gpufleet-testbed.conf": (
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n"
        "MaxStartups 100:30:200\n"
        "MaxSessions 50\n"),
    # apt-get keeps downloaded .debs by default; make `apt` (the front end) keep them too.
    "etc/apt/apt.conf.d/90gpufleet-keep-debs": 'Binary::apt::APT::Keep-Downloaded-Packages "true";\n',
    "etc/gpufleet-testbed": "This host is a gpufleet testbed container (simulated GPUs; test equipment).\n",
    # The kernel's boot_id is the machine's, shared by every container and unchanged by a container restart.
    # Each boot of a host binds a fresh one over it, so that boot_id tells a host's boots apart as on real hosts.
    "etc/systemd/system/gpufleet-boot-id.service": (
        "[Unit]\nDescription=Fresh boot id for this testbed host\nDefaultDependencies=no\n"
        "Before=sysinit.target systemd-journald.service\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/uuid > /run/gpufleet-boot-id && "
        "mount --bind /run/gpufleet-boot-id /proc/sys/kernel/random/boot_id'\n"),
}
LINKS = {"etc/systemd/system/sysinit.target.wants/gpufleet-boot-id.service": "../gpufleet-boot-id.service"}
RECIPE = {"version": 3, "suite": SUITE, "packages": PACKAGES, "baked": BAKED, "masked": MASKED, "files": FILES, "links": LINKS}


def _recipe() -> dict:
    # GPUFLEET_IMAGE_SALT makes a separate image (e.g. to measure a cold build without touching the shared one).
    salt = os.environ.get("GPUFLEET_IMAGE_SALT")
    return dict(RECIPE, salt=salt) if salt else RECIPE


def image_tag() -> str:
    return f"{IMAGE_REPO}:{recipe_hash(_recipe())}"


def mini_tag() -> str:
    return f"{MINI_REPO}:{recipe_hash(_recipe())}"


def debian_mirror() -> str:
    """The Debian mirror this machine uses (so debootstrap goes where apt already goes)."""
    if os.environ.get("GPUFLEET_DEBIAN_MIRROR"):
        return os.environ["GPUFLEET_DEBIAN_MIRROR"]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        text = Path(path).read_text(errors="replace")
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1)
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(path):
            for line in Path(path).read_text(errors="replace").splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line)
                if m and "security" not in m.group(1):
                    return m.group(1)
    return "http://deb.debian.org/debian"


def image_exists(tag: str | None = None) -> bool:
    return docker.run(["image", "inspect", tag or image_tag()], check=False, timeout=60).returncode == 0


def ensure_image(log=print) -> str:
    """Return the tag of the host image, building it first when this recipe has not been built yet."""
    tag = image_tag()
    if image_exists(tag) and image_exists(mini_tag()):
        return tag
    with locked("image"):
        if image_exists(tag) and image_exists(mini_tag()):
            return tag      # another process built it while we waited
        start = time.monotonic()
        log(f"testbed: building image {tag} (debootstrap {SUITE}; a few minutes, once)")
        _build(tag)
        log(f"testbed: built {tag} in {time.monotonic() - start:.0f}s")
        if not os.environ.get("GPUFLEET_IMAGE_SALT"):
            _prune_old(tag)
    return tag


def _prune_old(tag: str) -> None:
    """Remove images of older recipes (Docker refuses, harmlessly, while a container still uses one)."""
    keep = {tag, mini_tag()}
    for repo in (IMAGE_REPO, MINI_REPO):
        names = docker.out(["images", repo, "--format", "{{.Repository}}:{{.Tag}}"], check=False).splitlines()
        old = [n for n in names if n not in keep and not n.endswith(":<none>")]
        if old:
            docker.run(["image", "rm", *old], check=False)


def _sh(cmd: list[str], **kw) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}): {' | '.join(tail)}")


def _build(tag: str) -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap, or run scripts/install.sh)")
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir()))
    rootfs = work / "rootfs"
    try:
        _sh(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs),
             debian_mirror()])
        # Bake the .debs and package lists for what hosts will install later (real apt, offline-capable).
        resolv = rootfs / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copy("/etc/resolv.conf", resolv)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        _sh(["chroot", str(rootfs), "sh", "-c",
             f"apt-get update -q && apt-get install -y -q --download-only {' '.join(BAKED)}"], env=env)
        resolv.unlink()
        resolv.write_text("")
        for rel, text in FILES.items():
            path = rootfs / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for rel, target in LINKS.items():
            (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
            (rootfs / rel).symlink_to(target)
        for unit in MASKED:
            link = rootfs / "etc/systemd/system" / unit
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to("/dev/null")
        for key in glob.glob(str(rootfs / "etc/ssh/ssh_host_*")):
            os.unlink(key)
        (rootfs / "etc/machine-id").write_text("")
        dbus_id = rootfs / "var/lib/dbus/machine-id"
        if dbus_id.exists() or dbus_id.is_symlink():
            dbus_id.unlink()
        shutil.rmtree(rootfs / "var/log/journal", ignore_errors=True)
        _import_mini(rootfs, work)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            proc = subprocess.run([docker.docker_bin(), "import", "-c", 'CMD ["/lib/systemd/systemd"]',
                                   "-c", "ENV container=docker",
                                   "-c", f"LABEL gpufleet.recipe={tag.split(':')[1]}", "-", tag],
                                  stdin=tar.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
        finally:
            tar.stdout.close()
            tar.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"docker import failed: {proc.stderr.decode(errors='replace').strip()}")
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def _import_mini(rootfs: Path, work: Path) -> None:
    """A few-MB image holding only /bin/sh and the libraries it needs, for `docker load` inside hosts."""
    dash = rootfs / "usr/bin/dash"
    libs = set()
    ldd = subprocess.run(["chroot", str(rootfs), "ldd", "/usr/bin/dash"], stdout=subprocess.PIPE, text=True)
    for line in ldd.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.add(m.group(1))
    out = work / "mini.tar"
    with tarfile.open(out, "w") as tf:
        for d in ("bin", "lib", "lib64", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tf.addfile(info)
        tf.add(dash, arcname="bin/sh")
        for lib in sorted(libs):
            inside = subprocess.run(["chroot", str(rootfs), "readlink", "-f", lib], stdout=subprocess.PIPE,
                                    text=True, check=True).stdout.strip()
            real = rootfs / inside.lstrip("/")
            tf.add(real, arcname=lib.lstrip("/"))
        info = tarfile.TarInfo("etc/gpufleet-mini")
        data = b"gpufleet testbed mini image\n"
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    docker.run(["import", "-c", 'CMD ["/bin/sh"]', str(out), mini_tag()], timeout=300)
