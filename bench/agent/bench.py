"""gpu-agent benchmark and NVML recording (not a test). Run by bench/agent/device.sh on the GPU machine; the
replay parts also run anywhere.

  python3 bench/agent/bench.py record  OUT.json [--seconds N]   record every NVML call the agent makes
  python3 bench/agent/bench.py compare OUT.json                  agent values vs nvidia-smi --query-gpu
  python3 bench/agent/bench.py scrape  OUT.json [--replay FIX --gpus 8] [--n N] [--smi] [--timeline RAW.json]
  python3 bench/agent/bench.py soak    OUT.csv  [--replay FIX --gpus 8] --seconds S --rate R
  python3 bench/agent/bench.py calls   OUT.json [--n N]              the cost of each NVML call on GPU 0
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SMI_FIELDS = ["uuid", "name", "driver_version", "memory.total", "memory.used", "memory.free", "temperature.gpu",
              "temperature.memory", "power.draw", "power.limit", "clocks.sm", "clocks.mem", "pcie.link.gen.current",
              "pcie.link.width.current", "pstate", "utilization.gpu"]


def smi_query() -> list[dict]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=" + ",".join(SMI_FIELDS), "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    rows = []
    for line in out.strip().splitlines():
        rows.append(dict(zip(SMI_FIELDS, [v.strip() for v in line.split(",")])))
    return rows


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def versions() -> dict:
    v = {"python": platform.python_version(), "machine": platform.node(), "kernel": platform.release()}
    for pkg in ("nvidia-ml-py", "prometheus_client"):
        try:
            from importlib.metadata import version
            v[pkg] = version(pkg)
        except Exception:
            v[pkg] = ""
    try:
        v["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        v["nvidia_smi"] = "absent"
    return v


# ------------------------------------------------------------------------------------------------------ record
def cmd_record(args: argparse.Namespace) -> None:
    import pynvml
    from agent.nvml import NvmlSource
    from agent.replay import Recorder
    rec = Recorder(pynvml, max_per_key=6)
    src = NvmlSource(rec, slow_interval=1.0, pcie_throughput=True)
    snaps = []
    end = time.time() + args.seconds
    while time.time() < end:
        snaps.append(src.collect())
        time.sleep(1.0)
    src.close()
    s = snaps[-1]
    g = s.gpus[0].info if s.gpus else None
    meta = {"date": datetime.date.today().isoformat(), "recorded_at": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), "gpu": g.name if g else "", "gpus": len(s.gpus),
            "driver": s.driver_version, "cuda": s.cuda_version, "nvml": s.nvml_version,
            "note": "recorded by bench/agent/bench.py record through agent.replay.Recorder: every NVML call "
                    "agent.nvml makes, with result or error code and its duration in microseconds (us)",
            "versions": versions()}
    data = rec.dump(meta)
    # a summary of call costs for the docs
    cost: dict[str, list[float]] = {}
    for key, outs in data["calls"].items():
        fn = key.split("(")[0]
        cost.setdefault(fn, []).extend(o["us"] for o in outs if "us" in o)
    data["meta"]["call_us_median"] = {k: round(statistics.median(v), 1) for k, v in sorted(cost.items())}
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    print("recorded", len(data["calls"]), "keys;", json.dumps(data["meta"]["call_us_median"]))


# ------------------------------------------------------------------------------------------------------ compare
def cmd_compare(args: argparse.Namespace) -> None:
    import pynvml
    from agent.nvml import NvmlSource
    src = NvmlSource(pynvml, xid_events=False)
    rounds = []
    for _ in range(args.rounds):
        snap = src.collect()
        smi = smi_query()
        for g, row in zip(snap.gpus, smi):
            def f(x: str) -> float | None:
                try:
                    return float(x)
                except ValueError:
                    return None
            pairs = {
                "uuid": (g.info.uuid, row["uuid"]),
                "name": (g.info.name, row["name"]),
                "driver_version": (snap.driver_version, row["driver_version"]),
                "memory_total_mib": (g.memory_total_bytes / 2**20 if g.memory_total_bytes else None,
                                     f(row["memory.total"])),
                "memory_used_mib": (g.memory_used_bytes / 2**20 if g.memory_used_bytes is not None else None,
                                    f(row["memory.used"])),
                "memory_free_mib": (g.memory_free_bytes / 2**20 if g.memory_free_bytes is not None else None,
                                    f(row["memory.free"])),
                "temperature_c": (g.temperature_celsius, f(row["temperature.gpu"])),
                "memory_temperature_c": (g.memory_temperature_celsius, f(row["temperature.memory"])),
                "power_w": (g.power_watts, f(row["power.draw"])),
                "power_limit_w": (g.power_limit_watts, f(row["power.limit"])),
                "sm_clock_mhz": (g.sm_clock_hertz / 1e6 if g.sm_clock_hertz else None, f(row["clocks.sm"])),
                "mem_clock_mhz": (g.memory_clock_hertz / 1e6 if g.memory_clock_hertz else None, f(row["clocks.mem"])),
                "pcie_gen": (g.pcie_link_generation, f(row["pcie.link.gen.current"])),
                "pcie_width": (g.pcie_link_width, f(row["pcie.link.width.current"])),
                "pstate": (f"P{g.performance_state}" if g.performance_state is not None else None, row["pstate"]),
                "utilization_pct": (g.utilization_ratio * 100 if g.utilization_ratio is not None else None,
                                    f(row["utilization.gpu"])),
            }
            res = {}
            for k, (a, b) in pairs.items():
                if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    res[k] = {"agent": round(a, 3), "nvidia_smi": b, "diff": round(a - b, 3)}
                else:
                    res[k] = {"agent": a, "nvidia_smi": b, "equal": str(a) == str(b)}
            rounds.append({"gpu": g.info.index, "values": res})
        time.sleep(0.5)
    src.close()
    with open(args.out, "w") as f:
        json.dump({"versions": versions(), "rounds": rounds}, f, indent=1)
    print(json.dumps(rounds[-1], indent=1))


# ------------------------------------------------------------------------------------------------------ scrape
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_agent(replay: str | None, gpus: int | None, port: int, variant: str = "") -> subprocess.Popen:
    flags = ["--web.listen-address", f"127.0.0.1:{port}", "--no-collector.docker", "--log.level", "warning"]
    if replay:
        flags += ["--replay", replay, "--replay-latency"] + (["--replay-gpus", str(gpus)] if gpus else [])
    # a variant starts the same agent through bench/agent/variant.py, which applies process tweaks first
    cmd = ([sys.executable, os.path.join(ROOT, "bench", "agent", "variant.py"), variant, "--"] if variant
           else [sys.executable, "-m", "agent.server"]) + flags
    p = subprocess.Popen(cmd, cwd=ROOT)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit("agent did not start")


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / tck
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return cpu, rss


def smaps_rollup(pid: int) -> dict[str, float]:
    """MiB per line of /proc/PID/smaps_rollup (Rss, Anonymous, AnonHugePages, ...): where the RSS is."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = round(int(parts[1]) / 1024, 2)
    except OSError:
        pass
    return out


def smaps_top(pid: int, min_kb: int = 512) -> list[str]:
    """The mappings of a process holding at least ``min_kb`` of RSS, one line each: which mapping a few MiB of
    RSS more or less sit in."""
    rows, cur = [], None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                parts = line.split()
                if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                    cur = {"map": parts[0], "perms": parts[1], "path": parts[5] if len(parts) > 5 else ""}
                    rows.append(cur)
                elif cur is not None and len(parts) == 3 and parts[2] == "kB":
                    cur[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return []
    return [f"{r['map']} {r['perms']} {r['path'] or '[anon]'} size={r.get('Size')} rss={r.get('Rss')} "
            f"anon={r.get('Anonymous')} thp={r.get('AnonHugePages')}"
            for r in rows if r.get("Rss", 0) >= min_kb]


def scrape(conn: http.client.HTTPConnection) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    body = r.read()
    return time.perf_counter() - t0, body


def cmd_scrape(args: argparse.Namespace) -> None:
    port = free_port()
    p = start_agent(args.replay, args.gpus, port, args.variant)
    res: dict = {"versions": versions(), "mode": "replay" if args.replay else "real NVML",
                 "replay_gpus": args.gpus, "scrapes": args.n, "variant": args.variant or "none"}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(20):  # warm-up (first scrape initialises NVML)
            scrape(conn)
        time.sleep(2)
        cpu0, rss0 = proc_stats(p.pid)
        time.sleep(args.idle)
        cpu1, _ = proc_stats(p.pid)
        idle_cpu_per_s = (cpu1 - cpu0) / args.idle
        lat, server_dur, starts, slow_ages, nvml_ms = [], [], [], [], []
        c0, _ = proc_stats(p.pid)
        t0 = time.perf_counter()
        for _ in range(args.n):
            ts = time.perf_counter()
            dt, body = scrape(conn)
            lat.append(dt)
            if args.timeline:
                starts.append(ts - t0)
                slow_ages.append(slow_age(body))
                nvml_ms.append(body_value(body, b'gpufleet_agent_collection_duration_seconds{source="nvml"}', 1e3))
        wall = time.perf_counter() - t0
        c1, rss1 = proc_stats(p.pid)
        text = body.decode()
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        for line in text.splitlines():
            if line.startswith('gpufleet_agent_collection_duration_seconds{source="nvml"}'):
                server_dur.append(float(line.split()[-1]))
        gpus = text.count("gpufleet_gpu_up{")
        # CPU of one scrape = process CPU during the loop minus what it burns idle in that time
        cpu_per_scrape = max(0.0, (c1 - c0) - idle_cpu_per_s * wall) / args.n
        res["agent"] = {
            "gpus": gpus, "series": series, "bytes": len(body),
            "scrape_ms_p50": round(pct(lat, 50) * 1e3, 3), "scrape_ms_p99": round(pct(lat, 99) * 1e3, 3),
            "scrape_ms_max": round(max(lat) * 1e3, 3), "scrape_ms_mean": round(statistics.mean(lat) * 1e3, 3),
            "nvml_collection_ms_last": round(server_dur[-1] * 1e3, 3) if server_dur else None,
            "nvml_collection_ms_per_gpu": round(server_dur[-1] * 1e3 / max(gpus, 1), 3) if server_dur else None,
            "cpu_ms_per_scrape": round(cpu_per_scrape * 1e3, 3),
            "idle_cpu_percent": round(idle_cpu_per_s * 100, 4),
            "cpu_percent_at_15s_interval": round((cpu_per_scrape / 15 + idle_cpu_per_s) * 100, 4),
            "rss_mib_after_warmup": round(rss0 / 2**20, 1), "rss_mib_after_scrapes": round(rss1 / 2**20, 1),
            "smaps_rollup_mib": smaps_rollup(p.pid),
            "smaps_top": smaps_top(p.pid),
            "threads": len(os.listdir(f"/proc/{p.pid}/task")),
        }
        if args.timeline:
            res["agent"]["near_slow_refresh"] = near_refresh(starts, lat, slow_ages)
            res["timeline_file"] = os.path.basename(args.timeline)
            with open(args.timeline, "w") as f:      # raw, one row per scrape: never beside the summary
                json.dump({"columns": ["start_s", "latency_ms", "slow_reading_age_s", "nvml_collection_ms"],
                           "rows": [[round(a, 5), round(b * 1e3, 3), c, d]
                                    for a, b, c, d in zip(starts, lat, slow_ages, nvml_ms)]}, f)
        if args.smi and shutil.which("nvidia-smi"):
            lat_s = []
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            for _ in range(args.smi_n):
                t = time.perf_counter()
                smi_query()
                lat_s.append(time.perf_counter() - t)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)) / args.smi_n
            res["nvidia_smi_per_scrape"] = {
                "n": args.smi_n, "ms_p50": round(pct(lat_s, 50) * 1e3, 3), "ms_p99": round(pct(lat_s, 99) * 1e3, 3),
                "cpu_ms_per_call": round(cpu_s * 1e3, 3),
                "cpu_percent_at_15s_interval": round(cpu_s / 15 * 100, 4)}
            res["speedup_p50"] = round(pct(lat_s, 50) / pct(lat, 50), 1)
            res["speedup_p99"] = round(pct(lat_s, 99) / pct(lat, 99), 1)
    finally:
        p.terminate()
        p.wait(10)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


def body_value(body: bytes, series: bytes, scale: float = 1.0) -> float | None:
    """One series' value from a scrape's body (None when absent)."""
    i = body.find(series + b" ")
    if i < 0:
        return None
    return round(float(body[i:body.index(b"\n", i)].split()[-1]) * scale, 4)


def slow_age(body: bytes) -> float | None:
    """The agent's age of its background (slow) reading of GPU 0, from a scrape's body."""
    return body_value(body, b'gpufleet_gpu_slow_reading_age_seconds{gpu="0"}')


def near_refresh(starts: list[float], lat: list[float], ages: list[float | None], window: float = 0.1) -> dict:
    """Latency of the scrapes that began within ``window`` s after a background refresh finished (the slow
    reading's age dropped) against all others: does the refresh, or what runs with it, make the tail?"""
    refreshes = [s - a for s, a, prev in zip(starts[1:], ages[1:], ages[:-1])
                 if a is not None and prev is not None and a < prev]
    near, far = [], []
    for s, dt in zip(starts, lat):
        (near if any(-window <= s - r <= window for r in refreshes) else far).append(dt)
    return {"refreshes": len(refreshes), "window_s": window, "near_n": len(near),
            "near_ms_p50": round(pct(near, 50) * 1e3, 3) if near else None,
            "near_ms_max": round(max(near) * 1e3, 3) if near else None,
            "far_ms_p50": round(pct(far, 50) * 1e3, 3), "far_ms_p99": round(pct(far, 99) * 1e3, 3),
            "far_ms_max": round(max(far) * 1e3, 3) if far else None,
            "slowest_10": sorted(((round(dt * 1e3, 3), round(s, 4)) for s, dt in zip(starts, lat)), reverse=True)[:10],
            "refresh_at_s": [round(r, 4) for r in refreshes]}


def cmd_soak(args: argparse.Namespace) -> None:
    port = free_port()
    p = start_agent(args.replay, args.gpus, port)
    rows = ["elapsed_s,scrapes,rss_mib,cpu_s,scrape_ms_p99_window"]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        t0 = time.time()
        n = 0
        window: list[float] = []
        every: list[float] = []
        next_sample = t0
        while time.time() - t0 < args.seconds:
            dt, _ = scrape(conn)
            window.append(dt)
            every.append(dt)
            n += 1
            if time.time() >= next_sample:
                cpu, rss = proc_stats(p.pid)
                rows.append(f"{time.time() - t0:.0f},{n},{rss / 2**20:.2f},{cpu:.2f},{pct(window, 99) * 1e3:.3f}")
                window = []
                next_sample += args.sample
            time.sleep(1.0 / args.rate)
    finally:
        p.terminate()
        p.wait(10)
    with open(args.out, "w") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows[:3] + rows[-3:]))
    print(f"all {len(every)} scrapes: p50 {pct(every, 50) * 1e3:.3f} ms, p99 {pct(every, 99) * 1e3:.3f} ms, "
          f"max {max(every) * 1e3:.3f} ms")


# ------------------------------------------------------------------------------------------------------ calls
def cmd_calls(args: argparse.Namespace) -> None:
    """Each NVML call the agent makes (and a few it could make instead), timed alone on GPU 0: which reads are
    worth moving, batching or replacing. Values of the alternatives are kept, to compare with the calls they would
    replace."""
    import pynvml as nv
    from agent.nvml import _s
    from agent.replay import Recorder
    plain = Recorder(nv)._ser  # values in a recording's JSON form
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    fi_batch = [nv.NVML_FI_DEV_MEMORY_TEMP, nv.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, nv.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
                nv.NVML_FI_DEV_ECC_SBE_AGG_TOTAL, nv.NVML_FI_DEV_ECC_DBE_AGG_TOTAL, nv.NVML_FI_DEV_REMAPPED_COR,
                nv.NVML_FI_DEV_REMAPPED_UNC, nv.NVML_FI_DEV_REMAPPED_PENDING, nv.NVML_FI_DEV_REMAPPED_FAILURE,
                nv.NVML_FI_DEV_POWER_INSTANT, nv.NVML_FI_DEV_POWER_AVERAGE, nv.NVML_FI_DEV_POWER_CURRENT_LIMIT,
                nv.NVML_FI_DEV_PCIE_REPLAY_COUNTER, nv.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION]
    calls = {
        "memory_v1": (lambda: nv.nvmlDeviceGetMemoryInfo(h), args.n),
        "memory_v2": (lambda: nv.nvmlDeviceGetMemoryInfo(h, nv.nvmlMemory_v2), args.n),
        "utilization": (lambda: nv.nvmlDeviceGetUtilizationRates(h), args.n),
        "temperature": (lambda: nv.nvmlDeviceGetTemperature(h, 0), args.n),
        "fields_memtemp": (lambda: nv.nvmlDeviceGetFieldValues(h, fi_batch[:1]), args.n),
        "fields_batch14": (lambda: nv.nvmlDeviceGetFieldValues(h, fi_batch), args.n),
        "fields_batch12_no_energy_replay": (lambda: nv.nvmlDeviceGetFieldValues(h, fi_batch[:12]), args.n),
        "power": (lambda: nv.nvmlDeviceGetPowerUsage(h), args.n),
        "power_limit": (lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h), args.n),
        "sm_clock": (lambda: nv.nvmlDeviceGetClockInfo(h, 1), args.n),
        "mem_clock": (lambda: nv.nvmlDeviceGetClockInfo(h, 2), args.n),
        "clock_events": (lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h), args.n),
        "ecc_corrected_volatile": (lambda: nv.nvmlDeviceGetTotalEccErrors(h, 0, 0), args.n),
        "ecc_uncorrected_aggregate": (lambda: nv.nvmlDeviceGetTotalEccErrors(h, 1, 1), args.n),
        "remapped_rows": (lambda: nv.nvmlDeviceGetRemappedRows(h), args.n),
        "pstate": (lambda: nv.nvmlDeviceGetPerformanceState(h), args.n),
        "pcie_replay": (lambda: nv.nvmlDeviceGetPcieReplayCounter(h), args.n // 10),
        "pcie_link_gen": (lambda: nv.nvmlDeviceGetCurrPcieLinkGeneration(h), args.n // 10),
        "pcie_link_width": (lambda: nv.nvmlDeviceGetCurrPcieLinkWidth(h), args.n // 10),
        "compute_processes": (lambda: nv.nvmlDeviceGetComputeRunningProcesses(h), args.n // 10),
        "total_energy": (lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h), 50),
    }
    out: dict = {"versions": versions(), "gpu": _s(nv.nvmlDeviceGetName(h)), "n": args.n, "us": {}, "values": {}}
    for name, (fn, n) in calls.items():
        try:
            v = fn()
        except nv.NVMLError as e:
            out["us"][name] = {"error": str(e)}
            continue
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out["us"][name] = {"n": n, "p50": round(pct(ts, 50) * 1e6, 1), "p99": round(pct(ts, 99) * 1e6, 1),
                           "mean": round(statistics.mean(ts) * 1e6, 1)}
        out["values"][name] = plain(v)
    nv.nvmlShutdown()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out["us"], indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    r.add_argument("--seconds", type=float, default=8)
    c = sub.add_parser("compare")
    c.add_argument("out")
    c.add_argument("--rounds", type=int, default=5)
    s = sub.add_parser("scrape")
    s.add_argument("out")
    s.add_argument("--replay")
    s.add_argument("--gpus", type=int)
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--idle", type=float, default=10)
    s.add_argument("--smi", action="store_true")
    s.add_argument("--smi-n", type=int, default=100)
    s.add_argument("--variant", default="", help="process tweaks for bench/agent/variant.py (diagnostics)")
    s.add_argument("--timeline", metavar="RAW.json",
                   help="write each scrape's start, latency and slow-reading age to this file (raw: keep it under "
                        "bench/raw/, which git ignores); OUT.json keeps the summary")
    k = sub.add_parser("soak")
    k.add_argument("out")
    k.add_argument("--replay")
    k.add_argument("--gpus", type=int)
    k.add_argument("--seconds", type=float, default=180)
    k.add_argument("--rate", type=float, default=10)
    k.add_argument("--sample", type=float, default=10)
    n = sub.add_parser("calls")
    n.add_argument("out")
    n.add_argument("--n", type=int, default=2000)
    a = ap.parse_args()
    {"record": cmd_record, "compare": cmd_compare, "scrape": cmd_scrape, "soak": cmd_soak, "calls": cmd_calls}[a.cmd](a)


if __name__ == "__main__":
    main()
