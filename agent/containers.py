"""Docker Engine API over its unix socket -> dataclasses, and GPU processes -> containers via /proc/PID/cgroup.

Plain ``http.client`` on an AF_UNIX socket: the agent needs four GET endpoints, so the docker SDK (and its
requests/urllib3/websocket dependencies, ~10 MB of RSS) is not worth it. Every request has a timeout.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import quote

DEFAULT_SOCKET = "/var/run/docker.sock"


class DockerApiError(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class DockerClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 2.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def get(self, path: str) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise DockerApiError(f"{self.socket_path}: {e}") from e
        finally:
            conn.close()
        if resp.status != 200:
            raise DockerApiError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
        return json.loads(body)


@dataclass
class ContainerReading:
    id: str
    name: str
    image: str
    state: str
    restart_count: int = 0
    pid: int = 0
    cpu_seconds: float | None = None
    memory_usage_bytes: int | None = None
    memory_limit_bytes: int | None = None
    gpus: list[str] = field(default_factory=list)  # indexes/UUIDs as given, or "all"
    # per GPU index: (used memory bytes, process count), from NVML processes mapped through /proc/PID/cgroup
    gpu_usage: dict[int, tuple[int, int]] = field(default_factory=dict)
    # per GPU index: (SM, memory-bandwidth) utilisation ratios summed over its processes (the last interval)
    gpu_utilization: dict[int, tuple[float, float]] = field(default_factory=dict)


@dataclass
class ContainerSnapshot:
    up: bool
    error: str = ""
    containers: list[ContainerReading] = field(default_factory=list)
    errors: int = 0


def requested_gpus(inspect: dict) -> list[str]:
    """GPUs a container was given: HostConfig.DeviceRequests (``--gpus``) or NVIDIA_VISIBLE_DEVICES in its env."""
    out: list[str] = []
    host = inspect.get("HostConfig") or {}
    for req in host.get("DeviceRequests") or []:
        caps = [c for group in (req.get("Capabilities") or []) for c in group]
        if req.get("Driver") not in ("", None, "nvidia") and "gpu" not in caps:
            continue
        if req.get("DeviceIDs"):
            out.extend(str(d) for d in req["DeviceIDs"])
        elif req.get("Count", 0) == -1:
            out.append("all")
        elif req.get("Count"):
            out.append(f"count={req['Count']}")
    if not out:
        for env in (inspect.get("Config") or {}).get("Env") or []:
            if env.startswith("NVIDIA_VISIBLE_DEVICES="):
                val = env.split("=", 1)[1].strip()
                if val and val not in ("void", "none"):
                    out.extend(v.strip() for v in val.split(",") if v.strip())
    return out


# ---------------------------------------------------------------------------------------------- cgroup parsing
_ID = r"([0-9a-f]{64})"
_PATTERNS = [
    re.compile(r"(?:^|/)docker-" + _ID + r"\.scope(?:/|$)"),  # systemd cgroup driver (v1 and v2)
    re.compile(r"(?:^|/)docker/" + _ID + r"(?:/|$)"),  # cgroupfs driver (v1 and v2)
    re.compile(r"(?:^|/)cri-containerd-" + _ID + r"\.scope(?:/|$)"),
    re.compile(r"(?:^|/)crio-" + _ID + r"\.scope(?:/|$)"),
    re.compile(r"(?:^|/)libpod-" + _ID + r"\.scope(?:/|$)"),
    re.compile(r"(?:^|/)kubepods[^\n]*/" + _ID + r"$"),
]


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in the contents of /proc/PID/cgroup (v1 ``N:ctrl:/path`` lines or v2 ``0::/path``)."""
    best = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip()
        for pat in _PATTERNS:
            m = pat.search(path)
            if m:
                cid = m.group(1)
                if parts[0] == "0" and parts[1] == "":  # v2 unified line wins
                    return cid
                best = best or cid
                break
    return best


def container_cgroups(text: str) -> dict[str, str]:
    """controller -> the container-level cgroup path (the part up to the container id), from /proc/PID/cgroup.
    The v2 unified hierarchy is under the key ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip()
        m = re.search(_ID, path)
        if not m:
            continue
        end = path.find("/", m.end(1))
        cpath = path if end < 0 else path[:end]
        for ctrl in parts[1].split(","):
            out[ctrl] = cpath
    return out


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            v = f.read().strip()
    except OSError:
        return None
    return None if v == "max" or not v.lstrip("-").isdigit() else int(v)


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cgroup_usage(pid: int, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> tuple[
        float | None, int | None, int | None]:
    """(CPU seconds, memory usage bytes, memory limit bytes) of the container holding ``pid``, from cgroup files
    (v1 cpuacct/memory or v2 unified); None where not readable. Much cheaper than the stats endpoint."""
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8") as f:
            cg = container_cgroups(f.read())
    except OSError:
        return None, None, None
    cpu = mem = lim = None
    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")) and "" in cg:  # v2
        base = cgroup_root + cg[""]
        try:
            with open(os.path.join(base, "cpu.stat"), encoding="ascii") as f:
                for line in f:
                    if line.startswith("usage_usec "):
                        cpu = int(line.split()[1]) / 1e6
        except OSError:
            pass
        mem = _read_int(os.path.join(base, "memory.current"))
        lim = _read_int(os.path.join(base, "memory.max"))
    else:
        if "cpuacct" in cg:
            for mount in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
                v = _read_int(os.path.join(cgroup_root, mount) + cg["cpuacct"] + "/cpuacct.usage")
                if v is not None:
                    cpu = v / 1e9
                    break
        if "memory" in cg:
            base = os.path.join(cgroup_root, "memory") + cg["memory"]
            mem = _read_int(base + "/memory.usage_in_bytes")
            lim = _read_int(base + "/memory.limit_in_bytes")
    total = _mem_total()
    if mem is not None and (lim is None or (total and lim > total)):
        lim = total  # no limit: the host's memory, as docker stats reports it
    return cpu, mem, lim


def container_of_pid(pid: int, proc_root: str = "/proc") -> str | None:
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8", errors="replace") as f:
            return container_id_from_cgroup(f.read())
    except OSError:
        return None


def attribute_gpu_processes(gpus: Iterable[Any], proc_root: str = "/proc") -> tuple[
        dict[str, dict[int, tuple[int, int]]], dict[str, dict[int, tuple[float, float]]]]:
    """From the readings' NVML process lists and per-process utilisation, per container id:
    {gpu index: (used bytes, process count)} and {gpu index: (SM ratio, memory-bandwidth ratio)}, summed."""
    usage: dict[str, dict[int, tuple[int, int]]] = {}
    util: dict[str, dict[int, tuple[float, float]]] = {}
    owner: dict[int, str | None] = {}

    def container(pid: int) -> str | None:
        if pid not in owner:
            owner[pid] = container_of_pid(pid, proc_root)
        return owner[pid]
    for g in gpus:
        for p in getattr(g, "processes", []):
            cid = container(p.pid)
            if cid is not None:
                per = usage.setdefault(cid, {})
                used, n = per.get(g.info.index, (0, 0))
                per[g.info.index] = (used + (p.used_memory_bytes or 0), n + 1)
        for pid, (sm, mem) in (getattr(g, "process_utilization", None) or {}).items():
            cid = container(pid)
            if cid is not None:
                pu = util.setdefault(cid, {})
                s0, m0 = pu.get(g.info.index, (0.0, 0.0))
                pu[g.info.index] = (s0 + sm, m0 + mem)
    return usage, util


class ContainerSource:
    def __init__(self, client: DockerClient, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup"):
        self.client = client
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root

    def collect(self, gpus: Iterable[Any] = ()) -> ContainerSnapshot:
        try:
            listing = self.client.get("/containers/json")
        except (DockerApiError, ValueError) as e:
            return ContainerSnapshot(up=False, error=str(e))
        snap = ContainerSnapshot(up=True)
        usage, util = attribute_gpu_processes(gpus, self.proc_root)
        for c in listing:
            cid = c.get("Id", "")
            name = ((c.get("Names") or ["/" + cid[:12]])[0]).lstrip("/")
            rd = ContainerReading(id=cid, name=name, image=c.get("Image", ""), state=c.get("State", ""))
            try:
                ins = self.client.get(f"/containers/{quote(cid)}/json")
                rd.restart_count = int(ins.get("RestartCount") or 0)
                rd.pid = int((ins.get("State") or {}).get("Pid") or 0)
                rd.gpus = requested_gpus(ins)
                if rd.pid:
                    rd.cpu_seconds, rd.memory_usage_bytes, rd.memory_limit_bytes = cgroup_usage(
                        rd.pid, self.proc_root, self.cgroup_root)
                if rd.cpu_seconds is None or rd.memory_usage_bytes is None:
                    # cgroup files not visible (agent in a container without them): ask the engine (slower)
                    st = self.client.get(f"/containers/{quote(cid)}/stats?stream=false&one-shot=true")
                    cpu = ((st.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
                    rd.cpu_seconds = None if cpu is None else cpu / 1e9
                    mem = st.get("memory_stats") or {}
                    rd.memory_usage_bytes = mem.get("usage")
                    rd.memory_limit_bytes = mem.get("limit")
            except (DockerApiError, ValueError):
                snap.errors += 1  # the container may have gone between the listing and now
            rd.gpu_usage = usage.get(cid, {})
            rd.gpu_utilization = util.get(cid, {})
            snap.containers.append(rd)
        return snap
