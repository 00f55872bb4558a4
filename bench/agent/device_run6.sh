#!/bin/bash
# Sixth device run (2026-12-01, H200), part 2 of run 5: the final agent (one malloc_trim after the first scrape).
# RSS over 6 starts; scrape latency with nvidia-smi side by side; 8 replayed GPUs of the run-5 H200 recording;
# 50 concurrent scrapers (real NVML: paced and closed loop; 8 replayed GPUs: paced); a soak on the real GPU.
# Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT/runs" "$OUT/rss" "$OUT/load"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
H200=$PWD/tests/fixtures/nvml/h200-2026-12-01.json
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
step versions
{ python3 --version; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; git log -1 --format=%h 2>/dev/null; } >>"$LOG" 2>&1
step "rss: 6 starts, real NVML, 300 scrapes each"
for i in 1 2 3 4 5 6; do
    timeout 60 python3 bench/agent/bench.py scrape "$OUT/rss/rss-$i.json" --n 300 --idle 2 >/dev/null 2>>"$LOG"
    python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['agent']; print('rss', sys.argv[2], a['rss_mib_after_warmup'], a['rss_mib_after_scrapes'], a['smaps_rollup_mib'].get('Anonymous'))" "$OUT/rss/rss-$i.json" "$i" | tee -a "$LOG"
done
run() {  # run NAME [args]
    local name=$1; shift
    step "scrape $name"
    timeout 150 python3 bench/agent/bench.py scrape "$OUT/runs/$name.json" --timeline "$@" >/dev/null 2>>"$LOG" \
        || echo "scrape $name failed" | tee -a "$LOG"
}
run real --n 5000 --idle 12 --smi --smi-n 200
run replay8-h200 --n 5000 --idle 3 --replay "$H200" --gpus 8
step "50 scrapers, real NVML: paced 45 s, closed loop 45 s"
timeout 200 python3 -m bench.agent_load --real-nvml --modes paced closed --seconds 45 --stem agent-load-h200-real \
    >>"$LOG" 2>&1 || echo "load real failed" | tee -a "$LOG"
step "50 scrapers, 8 replayed GPUs (H200 recording): paced 45 s"
timeout 120 python3 -m bench.agent_load --replay "$H200" --gpus 8 --modes paced --seconds 45 \
    --stem agent-load-h200-replay8 >>"$LOG" 2>&1 || echo "load replay failed" | tee -a "$LOG"
cp bench/results/agent-load-h200-*.json bench/results/agent-load-h200-*.md "$OUT/load/" 2>/dev/null
step "soak, real NVML: 5 scrapes/s for 180 s"
timeout 220 python3 bench/agent/bench.py soak "$OUT/soak-h200.csv" --seconds 180 --rate 5 --sample 10 \
    >>"$LOG" 2>&1 || echo "soak failed" | tee -a "$LOG"
step summary
python3 - "$OUT/runs" >>"$LOG" 2>&1 <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f))
    a = d["agent"]
    print(os.path.basename(f), "gpus", a["gpus"], "series", a["series"], "p50", a["scrape_ms_p50"], "p99", a["scrape_ms_p99"],
          "max", a["scrape_ms_max"], "nvml/gpu", a["nvml_collection_ms_per_gpu"], "cpu/scrape", a["cpu_ms_per_scrape"],
          "cpu%@15s", a["cpu_percent_at_15s_interval"], "idle cpu%", a["idle_cpu_percent"], "rss", a["rss_mib_after_scrapes"],
          "smi", json.dumps(d.get("nvidia_smi_per_scrape")), "speedup", d.get("speedup_p50"), d.get("speedup_p99"))
PY
for f in "$OUT"/load/*.md; do echo "--- $f"; cat "$f"; done >>"$LOG" 2>&1
tar -C "$OUT" -czf "$OUT/rss.tgz" rss && tar -C "$OUT" -czf "$OUT/runs.tgz" runs && tar -C "$OUT" -czf "$OUT/load.tgz" load \
    && rm -rf "$OUT/rss" "$OUT/runs" "$OUT/load"
step done
grep -c Traceback "$LOG"; grep -m2 -A12 Traceback "$LOG" | head -30
grep -E "^(rss|[a-z0-9-]+\.json)" "$LOG"; head -3 "$OUT/soak-h200.csv"; tail -3 "$OUT/soak-h200.csv"
