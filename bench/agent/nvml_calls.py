"""Where a gpu-agent collection's time goes on a real GPU (issue 16 item 4): each NVML call of the scrape tier
timed alone, a batched nvmlDeviceGetFieldValues against the same readings one call at a time, the whole
NvmlSource.collect() called on the scraping thread against through agent.collectors.Bounded (the worker-thread
hand-off), and that hand-off alone. "warm" = back to back; "cold" = after 200 ms asleep, as a scrape 200 ms
after the last one finds the process.

    python3 bench/agent/nvml_calls.py OUTDIR [--rounds 30] [--warm 200]

Writes OUTDIR/nvml-calls.json and .md (microseconds: median, p90, max).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench.common import machine_info, md_table  # noqa: E402

# field ids (nvml.h) for the readings the scrape tier takes one call at a time
FIELDS = {"power_instant": 186, "memory_temp": 82, "ecc_sbe_vol": 3, "ecc_dbe_vol": 4,
          "ecc_sbe_agg": 5, "ecc_dbe_agg": 6, "remapped_cor": 142, "remapped_unc": 143, "remapped_pending": 144,
          "remapped_failure": 145, "power_current_limit": 190}


def _stats(xs: list[float]) -> dict:
    us = sorted(x * 1e6 for x in xs)
    if not us:
        return {"n": 0}
    return {"n": len(us), "p50_us": round(us[len(us) // 2], 1), "p90_us": round(us[int(len(us) * 0.9)], 1),
            "max_us": round(us[-1], 1)}


def _calls(nv, h) -> list[tuple[str, object]]:
    ids = list(FIELDS.values())
    return [
        ("GetMemoryInfo(v2)", lambda: nv.nvmlDeviceGetMemoryInfo(h, 0x02000028)),
        ("GetUtilizationRates", lambda: nv.nvmlDeviceGetUtilizationRates(h)),
        ("GetTemperature", lambda: nv.nvmlDeviceGetTemperature(h, 0)),
        ("GetFieldValues([memtemp])", lambda: nv.nvmlDeviceGetFieldValues(h, [82])),
        ("GetPowerUsage", lambda: nv.nvmlDeviceGetPowerUsage(h)),
        ("GetEnforcedPowerLimit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h)),
        ("GetClockInfo(SM)", lambda: nv.nvmlDeviceGetClockInfo(h, 1)),
        ("GetClockInfo(MEM)", lambda: nv.nvmlDeviceGetClockInfo(h, 2)),
        ("GetCurrentClocksEventReasons", lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h)),
        ("GetTotalEccErrors(corr,vol)", lambda: nv.nvmlDeviceGetTotalEccErrors(h, 0, 0)),
        ("GetTotalEccErrors(corr,agg)", lambda: nv.nvmlDeviceGetTotalEccErrors(h, 0, 1)),
        ("GetTotalEccErrors(unc,vol)", lambda: nv.nvmlDeviceGetTotalEccErrors(h, 1, 0)),
        ("GetTotalEccErrors(unc,agg)", lambda: nv.nvmlDeviceGetTotalEccErrors(h, 1, 1)),
        ("GetRemappedRows", lambda: nv.nvmlDeviceGetRemappedRows(h)),
        ("GetPerformanceState", lambda: nv.nvmlDeviceGetPerformanceState(h)),
        ("GetFanSpeed", lambda: nv.nvmlDeviceGetFanSpeed(h)),
        (f"GetFieldValues({len(ids)} fields batched)", lambda: nv.nvmlDeviceGetFieldValues(h, ids)),
    ]


def _time(fn) -> float | None:
    t = time.perf_counter()
    try:
        fn()
    except Exception:
        return None
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--replay", help="a recorded fixture instead of the driver (a smoke test of this script)")
    args = ap.parse_args(argv)
    if args.replay:
        from agent.replay import ReplayNvml
        nv = ReplayNvml.from_file(args.replay)
        nv.init_error = None
    else:
        import pynvml as nv

    from agent.collectors import Agent, Bounded, registry_for, render_metrics
    from agent.nvml import NvmlSource
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    rows = []
    calls = _calls(nv, h)
    for name, fn in calls:   # warm: each call back to back
        ts = [t for t in (_time(fn) for _ in range(args.warm)) if t is not None]
        rows.append({"what": name, "mode": "warm", **_stats(ts)})
    cold: dict[str, list[float]] = {n: [] for n, _ in calls}
    first: list[float] = []
    for k in range(args.rounds):   # cold: asleep 200 ms, then every call once; the first one rotates
        time.sleep(0.2)
        order = calls[k % len(calls):] + calls[:k % len(calls)]
        for j, (name, fn) in enumerate(order):
            t = _time(fn)
            if t is not None:
                cold[name].append(t)
                if j == 0:
                    first.append(t)
    rows += [{"what": n, "mode": "cold", **_stats(ts)} for n, ts in cold.items()]
    rows.append({"what": "first NVML call after 200 ms asleep (any)", "mode": "cold", **_stats(first)})
    nv.nvmlShutdown()

    src = NvmlSource(nv, xid_events=False)
    src.collect()
    b = Bounded("nvml", src.collect)
    noop = Bounded("noop", lambda: None)
    b.get(1.0)
    noop.get(1.0)
    agent = Agent(src, None, maintenance_file="/nonexistent/m", upgrade_state_file="/nonexistent/u")
    reg = registry_for(agent)
    for label, fn in (("NvmlSource.collect() on the calling thread", src.collect),
                      ("NvmlSource.collect() through Bounded.get", lambda: b.get(1.0)),
                      ("Bounded.get hand-off alone (fn returns None)", lambda: noop.get(1.0)),
                      ("render_metrics: a whole /metrics body (collect included)", lambda: render_metrics(reg))):
        rows.append({"what": label, "mode": "warm", **_stats([_time(fn) for _ in range(args.warm)])})
        ts = []
        for _ in range(args.rounds):
            time.sleep(0.2)
            ts.append(_time(fn))
        rows.append({"what": label, "mode": "cold", **_stats(ts)})
    src.close()
    payload = {"machine": machine_info(), "rows": rows}
    os.makedirs(args.outdir, exist_ok=True)
    with open(os.path.join(args.outdir, "nvml-calls.json"), "w") as f:
        json.dump(payload, f, indent=1)
    cols = ["what", "mode", "n", "p50_us", "p90_us", "max_us"]
    md = f"# NVML calls, one GPU — {payload['machine']['date']}\n\n" + \
        md_table(cols, [[r.get(c) for c in cols] for r in rows])
    with open(os.path.join(args.outdir, "nvml-calls.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
