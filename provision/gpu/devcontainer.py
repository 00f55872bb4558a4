"""Long-lived dev containers (images/dev): one per host by default, GPUs all or a list, Jupyter behind a token the
controller generates, SSH with the users' keys only, volumes for data/models/checkpoints, restart unless-stopped,
labels that the agent and the upgrade flow read.

Pure: :func:`docker_run_args` and :func:`spec_hash` (what the container should be). The op (gpu_devcontainer in
provision/ops/gpu_devcontainer.py) probes the host once (:func:`probe_command`, in the sections of provision.facts) and
turns the difference into commands.

Exposure (docs/security.md): the ports are published on 127.0.0.1 by default (users reach them through an SSH
tunnel to the host; Docker-published ports bypass the host's INPUT firewall, so a wider ``bind`` is a choice the
inventory makes). Bound anywhere else, Jupyter serves HTTPS only, with a self-signed certificate made once per host
by ``openssl`` on the host and kept in the container's state folder (:attr:`DevSpec.state_dir`, mounted at
:data:`STATE_MOUNT`), where the SSH host keys are kept too (made at the container's first start): a re-created
container shows users the same host key and the same certificate.

Secrets: the Jupyter token is generated on the controller (``secrets.token_urlsafe``), travels only as the stdin of
one command into a host file readable by the container user alone (0400), is saved on the controller in a 0600
file, is shown once on the controlling terminal when there is one, and never appears in a command line, a
message, a diff or the container's config (the entrypoint reads the file).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from agent.hostpaths import MAINTENANCE_MARKER  # noqa: F401 - named in gpu_devcontainer's message
from provision.facts import FACTS, section_script, split_sections

LABEL = "gpufleet.devcontainer"
HOST_ROOT = "/etc/gpufleet/devcontainers"
DATA_ROOT = "/srv/gpufleet/devcontainers"
VOLUMES = ("data", "models", "checkpoints")
STATE_MOUNT = "/var/lib/gpufleet-dev"     # in the container: ssh/ (host keys, root 0700), tls/ (Jupyter's, the user's)
LOOPBACK_BINDS = ("127.0.0.1", "::1", "localhost")


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class DevSpec:
    name: str
    image: str
    user: str = "dev"
    uid: int = 1000
    gpus: str = "all"                      # "all" or "0,1" / "GPU-uuid,..."
    jupyter_port: int = 8888
    ssh_port: int = 2222
    bind: str = "127.0.0.1"                # loopback: reach it through an SSH tunnel
    shm_size: str = "8g"
    runtime: str = "nvidia"
    data_root: str = DATA_ROOT
    env: tuple = ()
    extra_labels: tuple = field(default_factory=tuple)

    @property
    def dir(self) -> str:
        return f"{HOST_ROOT}/{self.name}"

    @property
    def token_path(self) -> str:
        return f"{self.dir}/jupyter_token"

    @property
    def keys_path(self) -> str:
        return f"{self.dir}/authorized_keys"

    def volume_dir(self, v: str) -> str:
        return f"{self.data_root}/{self.name}/{v}"

    @property
    def state_dir(self) -> str:
        """Host folder of what must outlive the container: SSH host keys, Jupyter's TLS certificate."""
        return f"{self.data_root}/{self.name}/state"

    @property
    def jupyter_tls(self) -> bool:
        """Jupyter behind TLS wherever it is reachable from more than the host itself."""
        return self.bind not in LOOPBACK_BINDS

    def tls_path(self, what: str) -> str:
        return f"{self.state_dir}/tls/jupyter.{what}"


def bind_address(bind) -> str:
    """The address the ports are published on: an IP address (Docker's -p takes no names but 'localhost')."""
    text = str(bind or "127.0.0.1").strip()
    if text == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SpecError(f"bind: {text!r} is not an IP address (127.0.0.1, the default, is reached through an SSH "
                        "tunnel)") from None


def normalize_gpus(gpus, gpu_count: int | None = None) -> str:
    if gpus in (None, "", "all"):
        return "all"
    items = gpus if isinstance(gpus, (list, tuple)) else str(gpus).split(",")
    out = []
    for g in items:
        g = str(g).strip()
        if g.isdigit():
            if gpu_count is not None and int(g) >= gpu_count:
                raise SpecError(f"gpus: GPU {g} does not exist on this host ({gpu_count} GPU(s): 0-{gpu_count - 1})")
            out.append(str(int(g)))
        elif re.fullmatch(r"GPU-[0-9a-fA-F-]+", g):
            out.append(g)
        else:
            raise SpecError(f"gpus: {g!r} is neither 'all', a GPU index nor a GPU UUID")
    if not out:
        raise SpecError("gpus: empty list (use 'all' or indices)")
    return ",".join(out)


def spec_hash(spec: DevSpec, image_id: str) -> str:
    d = {k: v for k, v in spec.__dict__.items()}
    d["image_id"] = image_id
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def labels(spec: DevSpec, h: str) -> dict[str, str]:
    out = {LABEL: "1", "gpufleet.gpus": spec.gpus, "gpufleet.user": spec.user, "gpufleet.spec": h,
           "gpufleet.jupyter_port": str(spec.jupyter_port), "gpufleet.ssh_port": str(spec.ssh_port)}
    out.update(dict(spec.extra_labels))
    return out


def docker_run_args(spec: DevSpec, h: str) -> list[str]:
    a = ["docker", "run", "-d", "--name", spec.name, "--hostname", spec.name, "--restart", "unless-stopped",
         "--shm-size", spec.shm_size]
    if spec.runtime:
        a += ["--runtime", spec.runtime, "-e", f"NVIDIA_VISIBLE_DEVICES={spec.gpus}",
              "-e", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    a += ["-e", f"GPUFLEET_DEV_USER={spec.user}", "-e", "GPUFLEET_JUPYTER_PORT=8888"]
    if spec.jupyter_tls:
        a += ["-e", "GPUFLEET_JUPYTER_TLS=1"]
    for k, v in spec.env:
        a += ["-e", f"{k}={v}"]
    a += ["-p", f"{spec.bind}:{spec.jupyter_port}:8888", "-p", f"{spec.bind}:{spec.ssh_port}:22"]
    for v in VOLUMES:
        a += ["-v", f"{spec.volume_dir(v)}:/workspace/{v}"]
    a += ["-v", f"{spec.state_dir}:{STATE_MOUNT}"]
    a += ["-v", f"{spec.token_path}:/run/gpufleet/jupyter_token:ro",
          "-v", f"{spec.keys_path}:/etc/ssh/authorized_keys/{spec.user}:ro"]
    for k, v in labels(spec, h).items():
        a += ["--label", f"{k}={v}"]
    a += ["--", spec.image]
    return a


def tls_command(spec: DevSpec) -> str:
    """Make Jupyter's self-signed certificate on the host, once (kept in the state folder; the key readable by the
    container's user alone). EC P-256, ten years, the host's name and the bind address in subjectAltName."""
    key, crt = shlex.quote(spec.tls_path("key")), shlex.quote(spec.tls_path("crt"))
    folder = shlex.quote(f"{spec.state_dir}/tls")
    ip = spec.bind if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", spec.bind) and spec.bind not in ("0.0.0.0", "::") \
        else ""
    san = "DNS:$(hostname -f 2>/dev/null || hostname),DNS:localhost,IP:127.0.0.1" + (f",IP:{ip}" if ip else "")
    return (f"command -v openssl >/dev/null || {{ echo 'openssl is needed on the host to make the Jupyter "
            f"certificate of the dev container' >&2; exit 127; }}; umask 077 && "
            f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 "
            f"-subj /CN={shlex.quote(spec.name)} -addext \"subjectAltName={san}\" -keyout {key} -out {crt} "
            f"2>/dev/null && chmod 0600 {key} && chmod 0644 {crt} && chown -- {spec.uid}:{spec.uid} {key} {crt} "
            f"{folder}")


def probe_command(spec: DevSpec) -> str:
    """One read-only look: the maintenance marker (the ``maintenance`` fact section), the token's mode and owner,
    the keys' digest, the image's id, the container's status and spec label."""
    n = shlex.quote(spec.name)
    token, keys = shlex.quote(spec.token_path), shlex.quote(spec.keys_path)
    return section_script([
        ("maintenance", FACTS["maintenance"].command),
        ("token", f"[ -s {token} ] && stat -c '%a %u' {token}"),
        ("keys", f"[ -e {keys} ] && sha256sum < {keys} | cut -c1-64"),
        ("tls", f"[ -s {shlex.quote(spec.tls_path('crt'))} ] && [ -s {shlex.quote(spec.tls_path('key'))} ] && "
                "echo present"),
        ("image", f"docker image inspect --format '{{{{.Id}}}}' -- {shlex.quote(spec.image)} 2>&1"),
        ("container", f"docker inspect --format '{{{{.State.Status}}}} {{{{index .Config.Labels \"gpufleet.spec\"}}}}' "
                      f"-- {n}"),
    ])


def parse_probe(text: str) -> dict:
    sec = split_sections(text)
    token = sec.get("token", "").split()
    image = sec.get("image", "").strip()
    cont = sec.get("container", "").split()
    return {
        **FACTS["maintenance"].parse(sec.get("maintenance", "")),
        "token_present": bool(token),
        "token_mode": token[0] if token else None,
        "token_uid": int(token[1]) if len(token) > 1 and token[1].isdigit() else None,
        "keys_sha": sec.get("keys", "").strip() or None,
        "tls_present": sec.get("tls", "").strip() == "present",
        "image_id": image if image.startswith("sha256:") else None,
        "image_error": None if image.startswith("sha256:") else image[-200:],
        "container_status": cont[0] if cont else None,
        "container_spec": cont[1] if len(cont) > 1 else None,
    }


def keys_text(keys) -> str:
    if isinstance(keys, str):
        keys = [k for k in keys.splitlines() if k.strip()]
    good = []
    for k in keys or []:
        k = str(k).strip()
        if not re.match(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+)\s+[A-Za-z0-9+/=]+", k):
            raise SpecError(f"authorized_keys: not an OpenSSH public key: {k[:30]!r}...")
        good.append(k)
    return "".join(k + "\n" for k in good)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def controller_token_path(host: str, name: str) -> Path:
    base = Path(os.environ.get("GPUFLEET_SECRETS_DIR") or Path.home() / ".config" / "gpufleet" / "devcontainers")
    return base / f"{host}--{name}.jupyter_token"


def save_controller_token(host: str, name: str, token: str) -> Path:
    p = controller_token_path(host, name)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(p, 0o600)
    return p


def show_once(host: str, name: str, token: str, port: int) -> bool:
    """Print the token on the controlling terminal (never stdout/stderr, so never in a log). False without a tty."""
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(f"\n[{host}] dev container {name}: Jupyter token (shown once) {token}  (port {port})\n")
        return True
    except OSError:
        return False
