"""Provisioner benchmark: gpufleet vs pyinfra 3 vs ansible-core (defaults, and pipelining) on the same hosts.

    python3 -m bench.run_provisioner --hosts 10 25 [--tools gpufleet pyinfra ansible ansible-pipelining]

For each host count N: bring up N light hosts (testbed, or --hosts-source own), prepare them (untimed: stand-in apt
repository, python3-apt), then for each tool: reset the hosts to "never provisioned" (untimed), (a) first apply,
(b) idempotent re-run (--repeat-b times), (c) facts only; and the floor: one OpenSSH command per host carrying
every check of the play, all hosts in parallel (it also verifies that the tool converged every host).
Parallelism is matched: forks = parallel = N for every tool. Everything is torn down at the end.
Writes bench/results/provisioner-<stamp>.json (summary) and .md (tables); the full record (each tool's output
tails) and the --profile py-spy files under bench/raw/ (not committed).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

from bench.common import (BENCH, RAW, REPO, machine_info, loadavg, md_table, measure, raise_inotify_limits, tool_versions,
                          finish, fixed_rlimit_nofile, compile_gpufleet)
from bench.hosts import HostSet, bring_up
from bench.workload import repo

WORKLOAD = BENCH / "workload"
DEFAULT_VENV = Path(os.environ.get("GPUFLEET_BENCH_VENV", "/tmp/gpufleet-bench-venv"))
TOOLS = ("gpufleet", "pyinfra", "ansible", "ansible-pipelining")
# Close to what `provision facts` gathers (OS, kernel, arch, CPUs, memory, dpkg packages); Ansible's is its
# default `setup` (everything: heavier, as its users get it).
PYINFRA_FACTS = ("server.Hostname", "server.Arch", "server.KernelVersion", "server.LinuxDistribution",
                 "hardware.Cpus", "hardware.Memory", "deb.DebPackages")


def _gpufleet_cmd() -> list[str]:
    return [sys.executable, "-m", "provision.cli"]


def _gpufleet_help(sub: str) -> str:
    r = subprocess.run(_gpufleet_cmd() + [sub, "--help"], capture_output=True, text=True, cwd=REPO)
    return r.stdout + r.stderr


def _gpufleet_code() -> str:
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "provision"],
                           capture_output=True, text=True).stdout.strip()
    return rev + (" + uncommitted changes under provision/" if dirty else "")


def commands(tool: str, phase: str, hs: HostSet, inv: dict, n: int, venv: Path) -> tuple[list[str], dict]:
    """argv and environment for ``tool`` in ``phase`` (apply / facts)."""
    env = dict(os.environ)
    vb = venv / "bin"
    if tool == "gpufleet":
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        inventory = str(inv["yaml"])  # the same file Ansible reads (built from the testbed's host data)
        if phase == "apply":
            argv = _gpufleet_cmd() + ["apply", inventory, "-p", str(WORKLOAD / "site.yml")]
            helptext = _gpufleet_help("apply")
        else:
            argv = _gpufleet_cmd() + ["facts", "-i", inventory]
            helptext = _gpufleet_help("facts")
        if "--forks" in helptext:
            argv += ["--forks", str(n)]
        if "--no-retry-file" in helptext:
            argv += ["--no-retry-file"]
        return argv, env
    if tool == "pyinfra":
        base = [str(vb / "pyinfra"), "-y", "--parallel", str(n), str(inv["pyinfra"])]
        if phase == "apply":
            return base + [str(WORKLOAD / "deploy.py")], env
        return base + ["fact", *PYINFRA_FACTS], env
    if tool in ("ansible", "ansible-pipelining"):
        env["ANSIBLE_CONFIG"] = str(inv["ansible_cfg_pipelining" if tool.endswith("pipelining") else "ansible_cfg"])
        env["ANSIBLE_NOCOLOR"] = "1"
        if phase == "apply":
            return [str(vb / "ansible-playbook"), "-i", str(inv["yaml"]), "-f", str(n),
                    str(WORKLOAD / "site.yml")], env
        return [str(vb / "ansible"), "all", "-i", str(inv["yaml"]), "-f", str(n), "-m", "ansible.builtin.setup",
                "-o"], env
    raise ValueError(tool)


def floor_script(hs: HostSet) -> str:
    """A bash script: one OpenSSH command per host carrying every check, all at once; exits non-zero if any fails."""
    lines = ["set -u", "d=$(mktemp -d)"]
    for i, h in enumerate(hs.hosts):
        argv = hs.ssh_argv(h, repo.floor_check_command(h.name, hs.host_vars["bench_package"]))
        lines.append(" ".join(shlex.quote(a) for a in argv) + f" > $d/{i} 2>&1 &")
    lines += ["wait", 'for f in "$d"/*; do cat "$f"; echo ---; done; rm -rf "$d"']
    return "\n".join(lines) + "\n"


def run_floor(hs: HostSet) -> dict:
    m = measure(["bash", "-c", floor_script(hs)], keep=10_000_000)
    blocks = m.stdout_tail.split("---\n")
    d = m.as_dict()
    d["hosts_converged"] = sum(1 for block in blocks if repo.floor_all_ok(block))
    d["stdout_tail"] = blocks[0][-500:]  # one host's answer, as a sample
    return d


def _summary_changed(tool: str, out: str) -> str:
    """A short, tool-specific note of what the run reported (changed counts), for sanity checking."""
    tail = [line for line in out.splitlines() if line.strip()]
    recap = [line for line in tail if "changed=" in line and "ok=" in line]
    if tool.startswith("ansible") or (tool == "gpufleet" and recap):
        changed = sum(int(line.split("changed=")[1].split()[0]) for line in recap)
        failed = sum(int(line.split("failed=")[1].split()[0]) for line in recap if "failed=" in line)
        unreach = sum(int(line.split("unreachable=")[1].split()[0]) for line in recap if "unreachable=" in line)
        return f"changed={changed} failed={failed} unreachable={unreach}"
    if tool == "pyinfra":
        tot = [line for line in tail if "Grand total" in line]
        return tot[-1].strip() if tot else ""
    return tail[-1].strip() if tail else ""


def bench_n(n: int, tools: list[str], venv: Path, source: str, repeat_b: int, with_floor: bool,
            profile: bool = False, interleave: int = 0) -> dict:
    t0 = time.perf_counter()
    hs = bring_up(n, source)
    up_s = time.perf_counter() - t0
    out: dict = {"hosts": n, "host_source": hs.source, "bring_up_s": round(up_s, 1), "loadavg_before": loadavg(),
                 "tools": {}, "floor": []}
    try:
        hs.host_vars = {"bench_package": repo.package_for(hs.source)}
        out["package"] = hs.host_vars["bench_package"] + (" (testbed's stand-in NVIDIA repository, over HTTP)"
                                                         if hs.source == "testbed" else " (local file: repository)")
        inv = hs.write_inventories(forks=n)
        extra = hs.extra or {}
        key = Path(extra["testbed_repo_root"]) / extra["toolkit_key"] if extra else None
        tar = repo.repo_tarball(repo.build_repo(Path("/tmp/gpufleet-bench-repo")), key)
        script = repo.prepare_script(extra.get("toolkit_url"))
        bad = {k: r.stderr[-300:] for k, r in hs.run_everywhere(script, stdin=tar).items() if r.returncode}
        if bad:
            raise RuntimeError(f"prepare failed: {bad}")
        for tool in tools:
            bad = {k: r.stderr[-300:] for k, r in hs.run_everywhere(repo.RESET).items() if r.returncode}
            if bad:
                raise RuntimeError(f"reset failed: {bad}")
            res: dict = {"loadavg_before": loadavg()}
            if tool == "gpufleet":  # the engine changes during the day: record exactly which code ran
                res["gpufleet_code"] = _gpufleet_code()
            argv, env = commands(tool, "apply", hs, inv, n, venv)
            print(f"[{n} hosts] {tool}: first apply ...", flush=True)
            m = measure(argv, cwd=WORKLOAD, env=env)
            res["a_first_apply"] = m.as_dict() | {"summary": _summary_changed(tool, m.stdout_tail + m.stderr_tail)}
            res["b_rerun"] = []
            for _ in range(repeat_b):
                print(f"[{n} hosts] {tool}: re-run ... (a: {m.wall_s}s rc={m.rc})", flush=True)
                mb = measure(argv, cwd=WORKLOAD, env=env)
                res["b_rerun"].append(mb.as_dict() | {"summary": _summary_changed(tool, mb.stdout_tail + mb.stderr_tail)})
            if profile and tool == "gpufleet":
                # one more re-run under py-spy (not timed): collapsed stacks for reading, and a flame graph
                prof_dir = RAW / "profiles"
                prof_dir.mkdir(parents=True, exist_ok=True)
                for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
                    pargv = [str(venv / "bin" / "py-spy"), "record", "--rate", "250", "--subprocesses",
                             "--format", fmt, "-o", str(prof_dir / f"gpufleet-rerun-{n}hosts.{ext}"), "--", *argv]
                    pm = measure(pargv, cwd=WORKLOAD, env=env)
                    res.setdefault("profiled_rerun", []).append({"format": fmt, "rc": pm.rc, "wall_s": pm.wall_s,
                                                                 "stderr": pm.stderr_tail[-300:]})
            if with_floor:
                fl = run_floor(hs)
                fl["after"] = tool
                out["floor"].append(fl)
                res["converged_hosts"] = fl["hosts_converged"]
            argv, env = commands(tool, "facts", hs, inv, n, venv)
            print(f"[{n} hosts] {tool}: facts ...", flush=True)
            mc = measure(argv, cwd=WORKLOAD, env=env)
            res["c_facts"] = mc.as_dict()
            for key in ("a_first_apply", "c_facts"):
                res[key]["stdout_tail"] = res[key]["stdout_tail"][-1500:]
            out["tools"][tool] = res
            print(f"[{n} hosts] {tool}: a={m.wall_s}s b={[b['wall_s'] for b in res['b_rerun']]}s "
                  f"c={mc.wall_s}s rc={m.rc}/{[b['rc'] for b in res['b_rerun']]}/{mc.rc} "
                  f"converged={res.get('converged_hosts')}", flush=True)
        if interleave and len([t for t in tools if t in INTERLEAVED]) > 1:
            out["interleaved"] = interleaved_reruns(n, [t for t in tools if t in INTERLEAVED], hs, inv, venv,
                                                    interleave)
    finally:
        t1 = time.perf_counter()
        hs.teardown()
        out["teardown_s"] = round(time.perf_counter() - t1, 1)
    return out


INTERLEAVED = ("gpufleet", "pyinfra")


def interleaved_reruns(n: int, tools: list[str], hs: HostSet, inv: dict, venv: Path, rounds: int) -> dict:
    """The idempotent re-run again, the tools taking turns (one untimed round first, then ``rounds`` timed ones):
    a machine whose speed drifts (shared cores) then drifts for every tool alike, and each round gives a ratio."""
    res: dict = {"rounds": rounds, "order": tools, "runs": {t: [] for t in tools}, "loadavg_before": loadavg()}
    for r in range(rounds + 1):
        for tool in tools:
            argv, env = commands(tool, "apply", hs, inv, n, venv)
            m = measure(argv, cwd=WORKLOAD, env=env)
            if r:
                summary = _summary_changed(tool, m.stdout_tail + m.stderr_tail)
                res["runs"][tool].append(m.as_dict() | {"summary": summary})
        print(f"[{n} hosts] interleaved round {r}: " + " ".join(
            f"{t}={res['runs'][t][-1]['wall_s'] if r else '-'}" for t in tools), flush=True)
    for run in res["runs"].values():
        for m in run:
            m["stdout_tail"] = m["stdout_tail"][-300:]
    return res


def _best(runs: list[dict], key: str = "wall_s") -> dict:
    return min(runs, key=lambda r: r[key])


def render(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"# Provisioner benchmark — {m['date']}\n",
             f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_mib']} MiB, load average at start "
             f"{m['loadavg_start']}; shared with other work (load before each tool is in the JSON).\n",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()) + "\n",
             f"Parallelism: forks = --parallel = number of hosts for every tool. Re-run (b): best of "
             f"{payload['repeat_b']}. CPU = user+sys of the tool and every process it reaped; RSS = the largest "
             "single process (getrusage) / PSS summed over the whole process tree (sampled every 0.25 s).\n"]
    for run in payload["runs"]:
        n = run["hosts"]
        floor = min((f["wall_s"] for f in run["floor"] if f["rc"] == 0), default=None)
        lines.append(f"\n## {n} hosts ({run['host_source']} hosts; package {run.get('package')}; "
                     f"load before {run['loadavg_before']})\n")
        if "gpufleet" in run["tools"] and run["tools"]["gpufleet"].get("gpufleet_code"):
            lines.append(f"\ngpufleet code: {run['tools']['gpufleet']['gpufleet_code']}\n\n")
        rows = []
        for tool, r in run["tools"].items():
            a, c = r["a_first_apply"], r["c_facts"]
            b = _best(r["b_rerun"])
            rows.append([tool, f"{a['wall_s']:.2f}", f"{b['wall_s']:.2f}", f"{c['wall_s']:.2f}",
                         f"{a['cpu_s']:.1f} / {b['cpu_s']:.1f} / {c['cpu_s']:.1f}",
                         f"{max(a['maxrss_mib'], b['maxrss_mib'], c['maxrss_mib']):.0f} / "
                         f"{max(a['tree_pss_peak_mib'], b['tree_pss_peak_mib'], c['tree_pss_peak_mib']):.0f}",
                         f"{a['rc']}/{b['rc']}/{c['rc']}", r.get("converged_hosts", "-"), b.get("summary", "")])
        if floor is not None:
            fl = min((f for f in run["floor"] if f["rc"] == 0), key=lambda f: f["wall_s"])
            rows.append(["floor (1 ssh/host)", "-", f"{floor:.2f}", "-", f"- / {fl['cpu_s']:.1f} / -",
                         f"{fl['maxrss_mib']:.0f} / {fl['tree_pss_peak_mib']:.0f}", "0", "-", "checks only"])
        lines.append(md_table(["tool", "(a) first apply s", "(b) re-run s", "(c) facts s", "CPU s a/b/c",
                               "peak RSS MiB (1 proc / tree PSS)", "rc a/b/c", "hosts converged",
                               "re-run reported"], rows))
        if "gpufleet" in run["tools"]:
            g = run["tools"]["gpufleet"]
            gb = _best(g["b_rerun"])["wall_s"]
            ratio_rows = []
            for tool, r in run["tools"].items():
                if tool == "gpufleet":
                    continue
                ratio_rows.append([
                    f"{tool} / gpufleet",
                    f"{r['a_first_apply']['wall_s'] / g['a_first_apply']['wall_s']:.2f}x",
                    f"{_best(r['b_rerun'])['wall_s'] / gb:.2f}x",
                    f"{r['c_facts']['wall_s'] / g['c_facts']['wall_s']:.2f}x",
                    f"{_best(r['b_rerun'])['cpu_s'] / max(_best(g['b_rerun'])['cpu_s'], 1e-3):.2f}x"])
            if floor:
                ratio_rows.append(["gpufleet / floor", "-", f"{gb / floor:.2f}x", "-", "-"])
            lines.append("\nRatios (same run; > 1 means gpufleet is faster):\n\n")
            lines.append(md_table(["ratio", "(a) wall", "(b) wall", "(c) wall", "(b) CPU"], ratio_rows))
        il = run.get("interleaved")
        if il:
            walls = {t: [m["wall_s"] for m in il["runs"][t]] for t in il["order"]}
            def hosts_cpu(t: str) -> str:
                vals = [m.get("hosts_cpu_s") for m in il["runs"][t]]
                return f"{median(vals):.2f}" if all(v is not None for v in vals) else "-"
            rows = [[t, f"{median(w):.2f}", f"{min(w):.2f}", f"{max(w):.2f}",
                     f"{median([m['cpu_s'] for m in il['runs'][t]]):.2f}", hosts_cpu(t),
                     ", ".join(sorted({str(m["rc"]) for m in il["runs"][t]}))]
                    for t, w in walls.items()]
            lines.append(f"\nRe-run (b) again, the tools taking turns ({il['rounds']} rounds after an untimed one; "
                         f"load before {il['loadavg_before']}):\n\n")
            lines.append(md_table(["tool", "median s", "min s", "max s", "median CPU s", "median hosts' CPU s",
                                   "rc"], rows))
            g = walls.get("gpufleet")
            for t, w in walls.items():
                if t != "gpufleet" and g:
                    per = [a / b for a, b in zip(w, g)]
                    lines.append(f"\n{t} / gpufleet: median of the rounds' ratios {median(per):.2f}x "
                                 f"(rounds {min(per):.2f}x to {max(per):.2f}x); ratio of medians "
                                 f"{median(w) / median(g):.2f}x\n")
    return "".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[10, 25])
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv holding pyinfra and ansible-core")
    ap.add_argument("--hosts-source", choices=("auto", "testbed", "own"), default="auto")
    ap.add_argument("--repeat-b", type=int, default=2)
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also profile one gpufleet re-run with py-spy "
                    "(bench/raw/profiles/, not committed)")
    ap.add_argument("--interleave", type=int, default=0, metavar="K",
                    help="then K more re-runs per tool of gpufleet and pyinfra, taking turns (drift-fair ratios)")
    ap.add_argument("--stem", default="provisioner")
    args = ap.parse_args(argv)
    fixed_rlimit_nofile()
    bytecode = compile_gpufleet()
    payload = {"machine": machine_info(), "versions": tool_versions(args.venv), "repeat_b": args.repeat_b,
               "inotify": raise_inotify_limits(), "gpufleet_bytecode": bytecode, "runs": []}
    try:
        for n in args.hosts:
            payload["runs"].append(bench_n(n, args.tools, args.venv, args.hosts_source, args.repeat_b,
                                           not args.no_floor, args.profile, args.interleave))
    finally:
        finish(args.stem, payload, "runs", render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
