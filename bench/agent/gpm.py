"""gpu-agent's GPM profiling metrics against a direct NVML GPM reading, on a GPU machine (not a test).

  python3 bench/agent/gpm.py OUTDIR [--load-seconds 75] [--window 2] [--rounds 6]

Under a bf16 matmul loop (a separate process, so that its PID shows in the per-process utilisation):
  1. records every NVML call of the agent, GPM and process utilisation included (bench.py record) -> OUTDIR/FIXTURE,
     a fixture for tests/fixtures/nvml/;
  2. runs the agent's NvmlSource (its profiling thread, window --window s) beside this script's own GPM sampling
     (nvmlGpmSampleGet, sleep, nvmlGpmSampleGet, nvmlGpmMetricsGet: no agent code) and compares every metric, round by
     round, under load and then idle; per-process utilisation of the load's PID likewise;
  3. times nvmlGpmSampleGet / nvmlGpmMetricsGet / nvmlDeviceGetProcessUtilization on their own;
  4. with --scrape-path N: N in-process scrapes (collection + rendering, no HTTP) with the profiling thread sampling
     every 0.2 s, and N with it stopped, alternating in blocks: the profiling thread's cost to a scrape.
Writes OUTDIR/gpm-compare.json and OUTDIR/gpm-compare.md (machine, driver, date, the table).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)



def direct_window(nv, h, window: float, ids: list[int]) -> tuple[dict[int, float], dict[str, float]]:
    """GPM over one window, straight from pynvml: {metric id: value in NVML's units}, and call timings (ms)."""
    s1, s2 = nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()
    try:
        t0 = time.perf_counter()
        nv.nvmlGpmSampleGet(h, s1)
        t1 = time.perf_counter()
        time.sleep(window)
        nv.nvmlGpmSampleGet(h, s2)
        mg = nv.c_nvmlGpmMetricsGet_t()
        mg.version = nv.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = len(ids)
        mg.sample1, mg.sample2 = s1, s2
        for k, mid in enumerate(ids):
            mg.metrics[k].metricId = mid
        t2 = time.perf_counter()
        nv.nvmlGpmMetricsGet(mg)
        t3 = time.perf_counter()
        vals = {ids[k]: mg.metrics[k].value for k in range(len(ids)) if mg.metrics[k].nvmlReturn == 0}
        return vals, {"sample_get_ms": (t1 - t0) * 1e3, "metrics_get_ms": (t3 - t2) * 1e3}
    finally:
        nv.nvmlGpmSampleFree(s1)
        nv.nvmlGpmSampleFree(s2)


def compare(nv, src, h, window: float, rounds: int, phase: str, load_pid: int | None) -> list[dict]:
    from agent.profiling import GPM_METRICS
    ids = [m[0] for m in GPM_METRICS]
    out = []
    for _ in range(rounds):
        direct, timing = direct_window(nv, h, window, ids)
        g = src.collect().gpus[0]
        row: dict = {"phase": phase, "timing": timing, "metrics": {}}
        if g.gpm is not None:
            row["agent_window_s"] = round(g.gpm.window_seconds, 3)
            row["agent_age_s"] = round(time.monotonic() - g.gpm.at, 3)
            for mid, key, scale in GPM_METRICS:
                a = g.gpm.values.get(key)
                d = direct.get(mid)
                row["metrics"][key] = {"agent": None if a is None else round(a, 5),
                                       "direct": None if d is None else round(d * scale, 5),
                                       "diff": None if a is None or d is None else round(a - d * scale, 5)}
        t0 = time.perf_counter()
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(h, int((time.time() - window) * 1e6))
        except nv.NVMLError as e:
            samples = []
            row["process_utilization_error"] = str(e)
        row["process_utilization_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        row["direct_processes"] = {int(s.pid): [s.smUtil / 100, s.memUtil / 100] for s in samples}
        row["agent_processes"] = {pid: [round(v[0], 3), round(v[1], 3)]
                                  for pid, v in (g.process_utilization or {}).items()}
        row["load_pid"] = load_pid
        row["gpu_utilization_ratio"] = g.utilization_ratio
        row["power_watts"] = g.power_watts
        out.append(row)
    return out


def scrape_path(nv, n: int, blocks: int = 10) -> dict:
    """Scrape latency (collect + render in this process) with the profiling thread at work and without it."""
    from agent.collectors import Agent, registry_for, render_metrics
    from agent.nvml import NvmlSource
    out: dict = {}
    lat: dict[str, list[float]] = {"profiling_on": [], "profiling_off": []}
    srcs = {}
    for mode in lat:
        src = NvmlSource(nv, slow_interval=0.2, xid_events=False)
        if mode == "profiling_off":
            src.refresh_profiling = lambda: None  # the thread runs, does nothing
        agent = Agent(src, None, maintenance_file="/nonexistent/m", upgrade_state_file="/nonexistent/u")
        srcs[mode] = (src, agent, registry_for(agent))
        render_metrics(srcs[mode][2])
    time.sleep(1)
    for _ in range(blocks):
        for mode, (src, agent, reg) in srcs.items():
            for _ in range(n // blocks):
                t = time.perf_counter()
                render_metrics(reg)
                lat[mode].append(time.perf_counter() - t)
                time.sleep(0.002)
    for mode, (src, agent, reg) in srcs.items():
        xs = sorted(lat[mode])
        out[mode] = {"n": len(xs), "p50_ms": round(xs[len(xs) // 2] * 1e3, 3),
                     "p99_ms": round(xs[int(len(xs) * 0.99)] * 1e3, 3), "max_ms": round(xs[-1] * 1e3, 3)}
        agent.close()
    return out


def summary(rows: list[dict]) -> list[str]:
    lines = ["| phase | metric | agent (median) | direct (median) | max abs diff | rounds |", "|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        keys += [k for k in r["metrics"] if k not in keys]
    for phase in ("load", "idle"):
        pr = [r for r in rows if r["phase"] == phase]
        for k in keys:
            ms = [r["metrics"].get(k) for r in pr if r["metrics"].get(k)]
            pairs = [m for m in ms if m["agent"] is not None and m["direct"] is not None]
            if not pairs:
                continue
            lines.append(f"| {phase} | {k} | {statistics.median(m['agent'] for m in pairs):.4g} | "
                         f"{statistics.median(m['direct'] for m in pairs):.4g} | "
                         f"{max(abs(m['diff']) for m in pairs):.4g} | {len(pairs)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--load-seconds", type=float, default=75)
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--record-seconds", type=float, default=12)
    ap.add_argument("--fixture", default="h200-gpm.json")
    ap.add_argument("--scrape-path", type=int, default=0, metavar="N")
    ap.add_argument("--skip-record", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import pynvml as nv
    from agent.nvml import NvmlSource
    load = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "agent", "matmul_load.py"),
                             str(a.load_seconds)])
    time.sleep(a.warmup)
    if not a.skip_record:
        rec = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "agent", "bench.py"), "record",
                              os.path.join(a.out, a.fixture), "--seconds", str(a.record_seconds)],
                             capture_output=True, text=True)
        print("record:", rec.returncode, rec.stdout[-3000:], rec.stderr[-3000:], flush=True)
    src = NvmlSource(nv, slow_interval=a.window, xid_events=False)
    rows = []
    try:
        src.collect()  # NVML initialised: the profiling thread starts sampling
        h = nv.nvmlDeviceGetHandleByIndex(0)
        time.sleep(2 * a.window + 0.5)
        rows += compare(nv, src, h, a.window, a.rounds, "load", load.pid)
        load.wait()
        time.sleep(2 * a.window + 1)
        rows += compare(nv, src, h, a.window, max(2, a.rounds // 2), "idle", None)
        support = src.collect().gpus[0].gpm_support
        scrape = scrape_path(nv, a.scrape_path) if a.scrape_path else None
        meta = {"date": datetime.date.today().isoformat(),
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": os.uname().nodename, "gpu": nv.nvmlDeviceGetName(h),
                "driver": nv.nvmlSystemGetDriverVersion(), "nvml": nv.nvmlSystemGetNVMLVersion(),
                "gpm_support": support, "window_s": a.window, "python": sys.version.split()[0]}
        try:
            from importlib.metadata import version
            meta["nvidia-ml-py"] = version("nvidia-ml-py")
            import torch
            meta["torch"] = torch.__version__
        except Exception:
            pass
    finally:
        if load.poll() is None:
            load.kill()
        src.close()
    timing = {k: round(statistics.median(r["timing"][k] for r in rows), 3) for k in rows[0]["timing"]}
    timing["process_utilization_ms"] = round(statistics.median(r["process_utilization_ms"] for r in rows), 3)
    doc = {"meta": meta, "call_ms_median": timing, "scrape_path": scrape, "rounds": rows}
    with open(os.path.join(a.out, "gpm-compare.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    md = [f"# gpu-agent GPM vs direct NVML GPM ({meta['gpu']}, driver {meta['driver']}, {meta['at']})", "",
          f"Machine {meta['machine']}, nvidia-ml-py {meta.get('nvidia-ml-py')}, torch {meta.get('torch')}; agent "
          f"window {a.window:g} s, direct window {a.window:g} s (not aligned: the two sample at their own times); "
          f"load: bf16 8192x8192 matmul loop. GPM support: {meta['gpm_support']}.", "",
          f"Call cost (median): {json.dumps(timing)}", "",
          f"Scrape path (collect + render in process, profiling thread every 0.2 s vs stopped): {json.dumps(scrape)}",
          ""] + summary(rows) + [""]
    procs = [(r["phase"], r["load_pid"], r["agent_processes"], r["direct_processes"]) for r in rows]
    md += ["Per-process utilisation [SM, memory] (agent | direct):", ""] + [f"- {p}" for p in procs]
    with open(os.path.join(a.out, "gpm-compare.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
