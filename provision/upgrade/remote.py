"""What the upgrade runs on a host: shell snippets and the pure parsers of their output.

Nothing here opens a connection; :mod:`provision.upgrade.steps` sends these through a Connector.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

# the maintenance marker and state file: the agent reads them too
from agent.hostpaths import AGENT_PORT, MAINTENANCE_MARKER as MARKER, UPGRADE_STATE_FILE as STATE_FILE  # noqa: F401
from provision.facts.gpu import DRIVER_PACKAGE, json_document, upstream_version
from provision.versions import version_key

LOCK_DIR = "/var/lib/gpufleet/upgrade.lock"             # mkdir-atomic lock; owner JSON inside
HOST_RECORD = "/var/lib/gpufleet/upgrade-host.json"     # this host's step record (playbook mode, recovery)
EVENT_LOG = "/var/lib/gpufleet/upgrade-events.log"      # one JSON line per step event (audit; tests count drains)
MARKER_BY_PREFIX = "gpufleet-upgrade"                   # "by" of markers the upgrade itself wrote

DEFAULT_AGENT_PORT = AGENT_PORT
XID_METRIC = "gpufleet_gpu_xid_errors_total"

# Packages that move together with the driver: everything NVIDIA ships at the driver's exact version. The package
# that installs the whole driver is facts.gpu.DRIVER_PACKAGE (branch and flavour suffix as groups).
_BRANCH_IN_NAME = re.compile(r"-(\d{3})(?=(-|$))")
_NV_FAMILY = re.compile(r"^(nvidia-|libnvidia-|cuda-drivers|xserver-xorg-video-nvidia)")



def q(s: str) -> str:
    return shlex.quote(str(s))


# --------------------------------------------------------------------------------------------------- versions
upstream = upstream_version        # '580.95.05-1' -> '580.95.05' (the one definition is in facts/gpu.py)


def branch_of(version: str) -> str:
    return upstream(version).split(".", 1)[0]


def is_branch(target: str) -> bool:
    return bool(re.fullmatch(r"\d{3}", target))


def matches_target(version: str | None, target: str) -> bool:
    if not version:
        return False
    return branch_of(version) == target if is_branch(target) else upstream(version) == target


parse_json = json_document          # one JSON document or None (the one definition is in facts/gpu.py)


@dataclass(frozen=True)
class DriverInstall:
    """The installed driver: its main package, branch, flavour suffix, version and the packages at that version."""
    package: str
    branch: str
    suffix: str                   # '', '-open', '-server', '-server-open'
    version: str                  # full Debian version, e.g. 580.82.07-1
    family: tuple[str, ...]       # installed NVIDIA packages at exactly the driver's upstream version
    fabricmanager: str | None     # installed nvidia-fabricmanager package, if any


def find_driver(installed: dict[str, str]) -> DriverInstall | None:
    mains = [(p, m) for p in installed if (m := DRIVER_PACKAGE.match(p))]
    if not mains:
        return None
    pkg, m = max(mains, key=lambda pm: version_key(upstream(installed[pm[0]])))
    ver = installed[pkg]
    branch = m.group("branch") or branch_of(ver)
    up = upstream(ver)
    family = tuple(sorted(p for p, v in installed.items() if upstream(v) == up and _NV_FAMILY.match(p)))
    fm = next((p for p in sorted(installed) if p.startswith("nvidia-fabricmanager")), None)
    return DriverInstall(pkg, branch, m.group("suffix") or "", ver, family, fm)


def rename_for_branch(package: str, old_branch: str, new_branch: str) -> str:
    if old_branch == new_branch:
        return package
    return _BRANCH_IN_NAME.sub(lambda m: f"-{new_branch}" if m.group(1) == old_branch else m.group(0), package)


def parse_madison(text: str) -> list[str]:
    """`apt-cache madison PKG...` -> versions (newest first as apt prints them), deduplicated."""
    out: list[str] = []
    for ln in text.splitlines():
        parts = [p.strip() for p in ln.split("|")]
        if len(parts) >= 3 and parts[1] and parts[1] not in out:
            out.append(parts[1])
    return out


def pick_version(available: list[str], target: str) -> str | None:
    """The Debian version to install for ``target`` (a full upstream version, or a branch -> newest in it)."""
    cands = [v for v in available if matches_target(v, target)]
    if not cands:
        return None
    return max(cands, key=lambda v: version_key(upstream(v)))


# --------------------------------------------------------------------------------------------------- containers
GPU_CONTAINERS_SCRIPT = (
    "command -v docker >/dev/null 2>&1 || { echo NODOCKER; exit 0; }; "
    "ids=$(docker ps -q --no-trunc) || exit 3; [ -z \"$ids\" ] && { echo '[]'; exit 0; }; docker inspect $ids"
)


def _env_has_gpus(env: list[str] | None) -> bool:
    for item in env or []:
        k, _, v = item.partition("=")
        if k == "NVIDIA_VISIBLE_DEVICES" and v.strip().lower() not in ("", "void", "none"):
            return True
    return False


def containers_holding_gpus(inspect_output: str) -> list[dict]:
    """Running containers that hold GPUs: a DeviceRequest with the gpu capability, NVIDIA_VISIBLE_DEVICES, or the
    label gpufleet.gpus.  Returns [{'id', 'name', 'why'}] in a stable order."""
    if inspect_output.strip() == "NODOCKER":
        return []
    data = parse_json(inspect_output) or []
    out = []
    for c in data:
        hc = c.get("HostConfig") or {}
        cfg = c.get("Config") or {}
        why = None
        for req in hc.get("DeviceRequests") or []:
            caps = req.get("Capabilities") or []
            if any("gpu" in (group or []) for group in caps):
                why = "device request gpu"
                break
        if why is None and _env_has_gpus(cfg.get("Env")):
            why = "NVIDIA_VISIBLE_DEVICES"
        if why is None and "gpufleet.gpus" in (cfg.get("Labels") or {}):
            why = "label gpufleet.gpus"
        if why and (c.get("State") or {}).get("Running", True):
            out.append({"id": c.get("Id", "")[:64], "name": (c.get("Name") or "").lstrip("/"), "why": why})
    return sorted(out, key=lambda d: (d["name"], d["id"]))


COMPUTE_APPS_SCRIPT = (
    "command -v nvidia-smi >/dev/null 2>&1 || { echo rc=127; exit 0; }; "
    "nvidia-smi --query-compute-apps=pid,process_name --format=csv,noheader 2>&1; echo rc=$?"
)


def parse_compute_apps(text: str) -> tuple[list[str] | None, str]:
    """GPU processes as 'pid name', or None with the reason when nvidia-smi cannot tell."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rc = 0
    if lines and lines[-1].startswith("rc="):
        rc = int(lines.pop()[3:] or 0)
    if rc != 0:
        return None, f"nvidia-smi --query-compute-apps failed (rc {rc}): {' '.join(lines)[:120]}"
    procs = []
    for ln in lines:
        parts = [p.strip() for p in ln.split(",")]
        if parts and parts[0].isdigit():
            procs.append(f"{parts[0]} {parts[1] if len(parts) > 1 else ''}".strip())
        elif "no running" in ln.lower():
            continue
    return procs, ""


# --------------------------------------------------------------------------------------------------- XIDs
_METRIC_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_xids(metrics_text: str) -> dict[tuple[str, str], float]:
    """``gpufleet_gpu_xid_errors_total{gpu,xid}`` samples -> {(gpu, xid): count}."""
    out = {}
    for ln in metrics_text.splitlines():
        if not ln.startswith(XID_METRIC):
            continue
        m = _METRIC_LINE.match(ln)
        if not m or m.group("name") != XID_METRIC:
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        try:
            out[(labels.get("gpu", "?"), labels.get("xid", "?"))] = float(m.group("value"))
        except ValueError:
            continue
    return out


# --------------------------------------------------------------------------------------------------- lock
def lock_script(owner: dict, ttl: int, *, break_stale: bool = True) -> str:
    """Take the host lock atomically (mkdir), under flock so that expiry check + break + take is one step.

    Prints ``TAKEN <json>`` (taken or refreshed by the same owner), or ``HELD <json>`` (someone else holds it)."""
    me = owner["controller"]
    return f"""
set -u
mkdir -p /var/lib/gpufleet
exec 9>/var/lib/gpufleet/.upgrade.lock.guard
flock -w 30 9 || {{ echo "GUARD"; exit 0; }}
L={LOCK_DIR}
now=$(date +%s)
write() {{ printf '{{"controller": %s, "rollout": %s, "expires": %s, "taken": %s}}' {q(json.dumps(me))} {q(json.dumps(owner.get('rollout', '')))} $((now + {int(ttl)})) "$now" > "$L/owner.tmp" && mv "$L/owner.tmp" "$L/owner"; }}
if mkdir "$L" 2>/dev/null; then write; echo "TAKEN $(cat $L/owner)"; exit 0; fi
cur=$(cat "$L/owner" 2>/dev/null || echo '{{}}')
case "$cur" in *'"controller": '{q(json.dumps(me))}*) write; echo "TAKEN $(cat $L/owner)"; exit 0;; esac
exp=$(printf '%s' "$cur" | sed -n 's/.*"expires": *\\([0-9]*\\).*/\\1/p')
if [ {1 if break_stale else 0} = 1 ] && [ -n "$exp" ] && [ "$exp" -lt "$now" ]; then
  rm -rf "$L" && mkdir "$L" && write && echo "TAKEN $(cat $L/owner) BROKE-STALE $cur" && exit 0
fi
if [ -z "$exp" ] && [ -n "$(find "$L" -maxdepth 0 -mmin +60 2>/dev/null)" ]; then
  rm -rf "$L" && mkdir "$L" && write && echo "TAKEN $(cat $L/owner) BROKE-STALE {{}}" && exit 0
fi
echo "HELD $cur"
"""


def unlock_script(controller: str) -> str:
    """Release the lock only when this controller holds it."""
    return f"""
exec 9>/var/lib/gpufleet/.upgrade.lock.guard; flock -w 30 9 || true
cur=$(cat {LOCK_DIR}/owner 2>/dev/null || true)
case "$cur" in *'"controller": '{q(json.dumps(controller))}*) rm -rf {LOCK_DIR}; echo RELEASED;; *) echo NOTMINE;; esac
"""


BREAK_LOCK_SCRIPT = f"cat {LOCK_DIR}/owner 2>/dev/null; rm -rf {LOCK_DIR} && echo; echo BROKEN"


def parse_lock_reply(text: str) -> tuple[bool, dict, str]:
    """(taken, owner, note) from lock_script's output."""
    text = text.strip()
    for ln in text.splitlines():
        if ln.startswith("TAKEN "):
            rest = ln[6:]
            body, _, stale = rest.partition(" BROKE-STALE ")
            return True, parse_json(body) or {}, (f"broke a stale lock {stale}" if stale else "")
        if ln.startswith("HELD "):
            return False, parse_json(ln[5:]) or {}, ""
        if ln.startswith("GUARD"):
            return False, {}, "could not take the lock guard within 30 s"
    return False, {}, f"unexpected lock reply: {text[:200]}"


def append_event_script(event: dict) -> str:
    return (f"mkdir -p /var/lib/gpufleet && printf '%s\\n' {q(json.dumps(event, sort_keys=True))} >> {EVENT_LOG}")
