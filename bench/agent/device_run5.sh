#!/bin/bash
# PREPARED 2026-12-01, NOT RUN YET: the device was withdrawn from that session after run 4. Run it (twice: PART=1,
# then PART=2) in the next session that has a GPU machine.
# Fifth device run (2026-12-01, H200): the current agent's numbers. Part 1: scrape latency, CPU and RSS against
# one nvidia-smi --query-gpu per scrape (real NVML), 8 simulated GPUs (replays of the H100 and H200 recordings),
# RSS over several starts. Part 2 (PART=2): 50 concurrent scrapers (bench/agent_load.py) and a soak.
# Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
H100=$PWD/tests/fixtures/nvml/h100-2026-11-23.json
H200=$PWD/tests/fixtures/nvml/h200-2026-12-01.json
if [ "${PART:-1}" = 1 ]; then
    step "versions"; { python3 --version; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; } >>"$LOG" 2>&1
    step "scrape, real NVML, with nvidia-smi side by side"
    timeout 150 python3 bench/agent/bench.py scrape "$OUT/bench-h200.json" --n 5000 --idle 12 --smi --smi-n 200 \
        --timeline >/dev/null 2>>"$LOG" || echo "failed" | tee -a "$LOG"
    step "scrape, 8 simulated GPUs (replay of the H200 recording)"
    timeout 150 python3 bench/agent/bench.py scrape "$OUT/bench-replay8-h200.json" --replay "$H200" --gpus 8 --n 5000 \
        --idle 3 --timeline >/dev/null 2>>"$LOG" || echo "failed" | tee -a "$LOG"
    step "scrape, 8 simulated GPUs (replay of the H100 recording)"
    timeout 150 python3 bench/agent/bench.py scrape "$OUT/bench-replay8-h100.json" --replay "$H100" --gpus 8 --n 5000 \
        --idle 3 --timeline >/dev/null 2>>"$LOG" || echo "failed" | tee -a "$LOG"
    step "rss: 6 starts, real NVML, 300 scrapes each"
    for i in 1 2 3 4 5 6; do
        timeout 60 python3 bench/agent/bench.py scrape "$OUT/rss-$i.json" --n 300 --idle 1 >/dev/null 2>>"$LOG"
    done
else
    step "50 scrapers, real NVML: paced 60 s, closed loop 30 s"
    timeout 200 python3 -m bench.agent_load --real-nvml --modes paced closed --seconds 60 --stem agent-load-h200-real \
        >>"$LOG" 2>&1 || echo "failed" | tee -a "$LOG"
    step "50 scrapers, 8 simulated GPUs (H200 recording): paced 60 s"
    timeout 120 python3 -m bench.agent_load --replay "$H200" --gpus 8 --modes paced --seconds 60 \
        --stem agent-load-h200-replay8 >>"$LOG" 2>&1 || echo "failed" | tee -a "$LOG"
    cp bench/results/agent-load-h200-*.json bench/results/agent-load-h200-*.md "$OUT/" 2>/dev/null
    step "soak, real NVML: 10 scrapes/s for 150 s"
    timeout 200 python3 bench/agent/bench.py soak "$OUT/soak-h200.csv" --seconds 150 --rate 10 --sample 10 \
        >>"$LOG" 2>&1 || echo "failed" | tee -a "$LOG"
fi
step summary
python3 - "$OUT" >>"$LOG" 2>&1 <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f))
    a = d.get("agent")
    if not a:
        continue
    near = a.get("near_slow_refresh", {})
    print(os.path.basename(f), "gpus", a["gpus"], "series", a["series"], "p50", a["scrape_ms_p50"], "p99", a["scrape_ms_p99"],
          "max", a["scrape_ms_max"], "cpu/scrape", a["cpu_ms_per_scrape"], "cpu%@15s", a["cpu_percent_at_15s_interval"],
          "rss", a["rss_mib_after_warmup"], a["rss_mib_after_scrapes"], "anon", a.get("smaps_rollup_mib", {}).get("Anonymous"),
          "near refresh n/p50/max", near.get("near_n"), near.get("near_ms_p50"), near.get("near_ms_max"),
          "smi", json.dumps(d.get("nvidia_smi_per_scrape")), "speedup", d.get("speedup_p50"), d.get("speedup_p99"))
PY
[ -e "$OUT/rss-1.json" ] && tar -C "$OUT" -czf "$OUT/rss.tgz" $(cd "$OUT" && ls rss-*.json) && rm -f "$OUT"/rss-*.json
step done
grep -c Traceback "$LOG"; grep -m2 -A12 Traceback "$LOG" | head -30
tail -14 "$LOG"
