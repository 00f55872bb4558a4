"""Shared helpers for the benchmarks: machine facts, measured child processes, result files.

Nothing here is part of the test suite; benchmarks are run by hand (see bench/README.md).
"""
from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"   # committed: a markdown table and a summary JSON per run
RAW = BENCH / "raw"           # ignored by git (.gitignore): full records with output tails, profiles, timelines
RAW_KEYS = ("argv", "stdout_tail", "stderr_tail")   # what a summary leaves out of each measured process
PREFIX = "gpufleet-bench"


# ---------------------------------------------------------------------------------------------------- machine

def machine_info() -> dict:
    """What the numbers were measured on, including what else was running (load average at start)."""
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu_model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "mem_total_mib": mem_kb // 1024,
        "loadavg_start": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tool_versions(venv: Path | None) -> dict:
    """Versions of everything compared, from the venv the tools ran from."""
    out: dict[str, str] = {}
    py = str(venv / "bin" / "python") if venv else "python3"
    code = ("import importlib.metadata as m\n"
            "for d in ('pyinfra','ansible-core','paramiko','gevent'):\n"
            "    try: print(d, m.version(d))\n"
            "    except Exception: pass\n")
    try:
        for line in subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60).stdout.splitlines():
            name, ver = line.split()
            out[name] = ver
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import importlib.metadata as m
        out["gpufleet"] = m.version("gpufleet")
        out["gpufleet_paramiko"] = m.version("paramiko")
    except Exception:  # noqa: BLE001 - best effort
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        out["gpufleet_commit"] = rev
    except (OSError, subprocess.SubprocessError):
        pass
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    out["openssh"] = (ssh.stderr or ssh.stdout).strip()
    return out


# ---------------------------------------------------------------------------------------------------- measuring

def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree_memory_kib(root: int) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, process count) of ``root`` and all its descendants, from /proc (kB)."""
    kids = _children_of()
    todo, rss, pss, n = [root], 0, 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            n += 1
        except OSError:
            continue
    return rss, pss, n


@dataclass
class Measured:
    argv: list[str]
    rc: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mib: float          # largest single process of the tree (getrusage of the waited child)
    tree_rss_peak_mib: float   # sampled every `interval`: sum of RSS over the whole process tree
    tree_pss_peak_mib: float   # the same, proportional set size (shared pages split: fair for forking tools)
    procs_peak: int
    stdout_tail: str = ""
    stderr_tail: str = ""
    extra: dict = field(default_factory=dict)
    hosts_cpu_s: float | None = None   # CPU the Docker containers (the hosts) used meanwhile: their sshd, shells

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def as_dict(self) -> dict:
        d = asdict(self)
        d["cpu_s"] = round(self.cpu_s, 3)
        return d


def containers_cpu_seconds() -> float | None:
    """CPU seconds used so far by all Docker containers (cgroup v1 cpuacct or v2 cpu.stat); None if unreadable."""
    v1 = glob.glob("/sys/fs/cgroup/cpuacct/docker/*/cpuacct.usage")
    if v1:
        return sum(int(Path(f).read_text()) for f in v1) / 1e9
    v2 = glob.glob("/sys/fs/cgroup/system.slice/docker-*.scope/cpu.stat")
    total = 0
    for f in v2:
        for line in Path(f).read_text().splitlines():
            if line.startswith("usage_usec "):
                total += int(line.split()[1])
    return total / 1e6 if v2 else None


def measure(argv: list[str], *, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 1800,
            interval: float = 0.25, sample_tree: bool = True, keep: int = 3000) -> Measured:
    """Run ``argv``; wall time, user+sys CPU of the child and every descendant it reaped (os.wait4), peak RSS,
    and the CPU the hosts (Docker containers) used meanwhile.

    Descendants that detach (ssh ControlPersist masters) are not reaped by the child, so their CPU is not counted;
    the sampled tree memory still sees them while they are attached.
    """
    hosts0 = containers_cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    peaks = {"rss": 0, "pss": 0, "n": 0}
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            rss, pss, n = tree_memory_kib(proc.pid)
            peaks["rss"] = max(peaks["rss"], rss)
            peaks["pss"] = max(peaks["pss"], pss)
            peaks["n"] = max(peaks["n"], n)
            stop.wait(interval)

    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []

    def reader(stream, sink):
        for chunk in iter(lambda: stream.read(65536), b""):
            sink.append(chunk)

    threads = [threading.Thread(target=reader, args=(proc.stdout, out_chunks), daemon=True),
               threading.Thread(target=reader, args=(proc.stderr, err_chunks), daemon=True)]
    if sample_tree:
        threads.append(threading.Thread(target=sampler, daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    status = None
    ru = None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, 9)
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    hosts1 = containers_cpu_seconds()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    for t in threads:
        t.join(timeout=5)
    out = b"".join(out_chunks).decode(errors="replace")
    err = b"".join(err_chunks).decode(errors="replace")
    return Measured(argv=[str(a) for a in argv], rc=proc.returncode, wall_s=round(wall, 3),
                    user_s=round(ru.ru_utime, 3), sys_s=round(ru.ru_stime, 3),
                    maxrss_mib=round(ru.ru_maxrss / 1024, 1), tree_rss_peak_mib=round(peaks["rss"] / 1024, 1),
                    tree_pss_peak_mib=round(peaks["pss"] / 1024, 1), procs_peak=peaks["n"],
                    stdout_tail=out[-keep:], stderr_tail=err[-keep:],
                    hosts_cpu_s=None if hosts0 is None or hosts1 is None else round(hosts1 - hosts0, 3))


def sh(cmd: str | list[str], *, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    argv = shlex.split(cmd) if isinstance(cmd, str) else cmd
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------------------------------------------- results

def summary_of(record):
    """The record without each measured process's argv and output tails (``RAW_KEYS``): the numbers."""
    if isinstance(record, dict):
        return {k: summary_of(v) for k, v in record.items() if k not in RAW_KEYS}
    if isinstance(record, list):
        return [summary_of(v) for v in record]
    return record


def write_results(stem: str, payload: dict, markdown: str) -> tuple[Path, Path, Path]:
    """The full record under bench/raw/ (not committed); its summary JSON and the markdown under bench/results/."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    paths = (RAW / f"{stem}-{stamp}.json", RESULTS / f"{stem}-{stamp}.json", RESULTS / f"{stem}-{stamp}.md")
    for path, text in zip(paths, (json.dumps(payload, indent=2) + "\n",
                                  json.dumps(summary_of(payload), indent=2) + "\n", markdown)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return paths


def finish(stem: str, payload: dict, key: str, render) -> None:
    """End of a benchmark run (also after a failure): load average at the end, then, if anything was measured
    under ``payload[key]``, the results written and printed."""
    payload["machine"]["loadavg_end"] = loadavg()
    if payload[key]:
        md = render(payload)
        print(md)
        print("wrote " + ", ".join(map(str, write_results(stem, payload, md))))


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def raise_inotify_limits() -> dict:
    """Many systemd containers need more inotify instances than the default 128 (testbed-findings.md)."""
    wanted = {"fs.inotify.max_user_instances": 8192, "fs.inotify.max_user_watches": 1048576}
    done = {}
    for key, val in wanted.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            cur = int(Path(path).read_text())
            if cur < val:
                Path(path).write_text(str(val))
            done[key] = int(Path(path).read_text())
        except OSError as err:
            done[key] = f"could not raise: {err}"
    return done


def fixed_rlimit_nofile(n: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, n), hard), hard))
    except (ValueError, OSError):
        pass


def compile_gpufleet() -> str:
    """Byte-compile gpufleet's modules, as pip does for pyinfra and ansible-core when it installs them: gpufleet
    runs from this checkout (an editable install compiles nothing), and under PYTHONDONTWRITEBYTECODE every run
    would compile ~50 modules again (~80 ms of start-up the other tools do not pay)."""
    r = subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "provision"), str(REPO / "agent")],
                       capture_output=True, text=True)
    return "compiled" if r.returncode == 0 else f"compileall failed: {r.stderr[-200:]}"
