"""Where a first apply spends its time, task by task: gpufleet vs pyinfra on the same hosts.

    python3 -m bench.task_timing --hosts 10

Runs each tool's first apply (after the same reset as run_provisioner) and timestamps every line the tool prints
as it arrives: a task's time is from its header line to the next header (gpufleet: 'TASK [...]', a barrier per
task as in Ansible's linear strategy; pyinfra: '--> Starting operation: ...'). Writes
bench/results/task-timing-<stamp>.json (summary) and .md; the full record and the py-spy profile under bench/raw/
(not committed).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RAW, loadavg, machine_info, md_table, write_results
from bench.hosts import bring_up
from bench.run_provisioner import DEFAULT_VENV, WORKLOAD, commands
from bench.workload import repo

HEADERS = {"gpufleet": re.compile(r"^(TASK|RUNNING HANDLER) \[(?P<name>[^\]]*)\]"),
           "pyinfra": re.compile(r"^--> Starting (?:operation|facts): ?(?P<name>.*)$|^--> (?P<phase>.*)$")}


def timed_lines(argv, cwd, env) -> tuple[float, list[tuple[float, str]], int]:
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         bufsize=1)
    out = []
    for line in p.stdout:
        out.append((time.perf_counter() - t0, line.rstrip("\n")))
    rc = p.wait()
    return time.perf_counter() - t0, out, rc


def split_tasks(tool: str, lines, total: float) -> list[tuple[str, float]]:
    rx = HEADERS[tool]
    marks = [(0.0, "(start-up, inventory, connect)")]
    for t, line in lines:
        m = rx.match(line.strip())
        if m:
            marks.append((t, (m.groupdict().get("name") or m.groupdict().get("phase") or "").strip()))
    marks.append((total, "end"))
    return [(name, round(marks[i + 1][0] - t, 2)) for i, (t, name) in enumerate(marks[:-1])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--phase", choices=("first", "rerun"), default="first")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    args = ap.parse_args(argv)
    n = args.hosts
    payload = {"machine": machine_info(), "hosts": n, "tools": {}}
    hs = bring_up(n)
    try:
        hs.host_vars = {"bench_package": repo.package_for(hs.source)}
        inv = hs.write_inventories(forks=n)
        extra = hs.extra or {}
        key = Path(extra["testbed_repo_root"]) / extra["toolkit_key"] if extra else None
        tar = repo.repo_tarball(repo.build_repo(Path("/tmp/gpufleet-bench-repo")), key)
        hs.run_everywhere(repo.prepare_script(extra.get("toolkit_url")), stdin=tar)
        for tool in ("gpufleet", "pyinfra"):
            hs.run_everywhere(repo.RESET)
            a, env = commands(tool, "apply", hs, inv, n, args.venv)
            if tool == "pyinfra":
                a = a[:1] + ["-v"] + a[1:]
            env = dict(env, PYTHONUNBUFFERED="1")
            if args.phase == "rerun":
                subprocess.run(a, cwd=WORKLOAD, env=env, capture_output=True)
            la = loadavg()
            total, lines, rc = timed_lines(a, WORKLOAD, env)
            payload["tools"][tool] = {"wall_s": round(total, 2), "rc": rc, "loadavg_before": la,
                                      "tasks": split_tasks(tool, lines, total)}
            print(tool, round(total, 2), rc, payload["tools"][tool]["tasks"], flush=True)
        if args.profile:  # gpufleet's same phase again under py-spy (collapsed stacks), not timed
            hs.run_everywhere(repo.RESET)
            a, env = commands("gpufleet", "apply", hs, inv, n, args.venv)
            if args.phase == "rerun":
                subprocess.run(a, cwd=WORKLOAD, env=env, capture_output=True)
            prof = RAW / "profiles" / f"gpufleet-{args.phase}-apply-{n}hosts.txt"
            prof.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(args.venv / "bin" / "py-spy"), "record", "--rate", "250", "--format", "raw",
                            "-o", str(prof), "--", *a], cwd=WORKLOAD, env=env, capture_output=True)
            payload["profile"] = str(prof.relative_to(WORKLOAD.parent.parent))
    finally:
        hs.teardown()
    rows = []
    for tool, r in payload["tools"].items():
        for name, dt in r["tasks"]:
            rows.append([tool, name[:60], dt])
        rows.append([tool, "**total**", r["wall_s"]])
    md = (f"# {args.phase} apply, task by task — {payload['machine']['date']}, {n} hosts\n\n"
          f"Load average at start {payload['machine']['loadavg_start']} (shared 2-core machine).\n\n"
          + md_table(["tool", "task (from its header to the next)", "s"], rows))
    print(md)
    print("wrote " + ", ".join(map(str, write_results(f"task-timing-{args.phase}", payload, md))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
