#!/bin/bash
# Fifth device run (2026-12-01, H200), part 1 of 2. After bench/agent/device_rss.sh found (a) that NVML calls
# alone cost 5-10x less than the run-4 recording says (that recording timed fast reads beside the background
# thread's slow ones) and (b) that the 8 MiB RSS mode is glibc's main heap (15.4 against 5.9 MiB):
#   1. a new H200 recording, calls timed one at a time (agent.replay.Recorder), under a bf16 matmul load, and the
#      cost of each call alone under that load (bench.py calls);
#   2. RSS over starts: as is, with glibc's thresholds fixed (mallopt), with one malloc_trim(0) after 3 s; each
#      with glibc's and Python's allocator statistics and the mappings that hold RSS;
#   3. scrape latency: real NVML with one nvidia-smi --query-gpu per scrape; 1 replayed GPU of the new recording
#      (does the replay cost what the real GPU costs?); 8 replayed GPUs of the new and of the H100 recording.
# Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT/runs" "$OUT/rss"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
D=$(date -u +%Y-%m-%d)
H100=$PWD/tests/fixtures/nvml/h100-2026-11-23.json
NEW=$OUT/h200-$D.json
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
step versions
{ python3 --version; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; uname -r; } >>"$LOG" 2>&1
step "load: a matmul loop for 40 s; record at 12 s, then each call alone"
python3 - >>"$LOG" 2>&1 <<'PY' &
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + 40
while time.time() < end:
    for _ in range(20):
        b = a @ a
    torch.cuda.synchronize()
PY
LOADPID=$!
sleep 12
timeout 60 python3 bench/agent/bench.py record "$NEW" --seconds 10 >>"$LOG" 2>&1 || echo "record failed" | tee -a "$LOG"
timeout 30 python3 bench/agent/bench.py calls "$OUT/calls-load.json" --n 1000 >/dev/null 2>>"$LOG" || echo "calls failed" | tee -a "$LOG"
wait $LOADPID
step "rss: 4 starts each as is / mallopt / trim=3"
for i in 1 2 3 4; do
    for v in asis mallopt trim; do
        tw="mallocstats=$OUT/rss/mem-$v-$i.txt"
        [ $v = mallopt ] && tw="mallopt,$tw"
        [ $v = trim ] && tw="trim=3,$tw"
        timeout 60 python3 bench/agent/bench.py scrape "$OUT/rss/rss-$v-$i.json" --n 300 --idle 4 --variant "$tw" \
            >/dev/null 2>>"$LOG"
        python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['agent']; print('rss', sys.argv[2], a['rss_mib_after_scrapes'], a['smaps_rollup_mib'].get('Anonymous'))" "$OUT/rss/rss-$v-$i.json" "$v-$i" | tee -a "$LOG"
    done
done
run() {  # run NAME [args]
    local name=$1; shift
    step "scrape $name"
    timeout 150 python3 bench/agent/bench.py scrape "$OUT/runs/$name.json" --timeline "$@" >/dev/null 2>>"$LOG" \
        || echo "scrape $name failed" | tee -a "$LOG"
}
run real --n 5000 --idle 12 --smi --smi-n 200
run replay1-h200 --n 3000 --idle 2 --replay "$NEW"
run replay8-h200 --n 5000 --idle 3 --replay "$NEW" --gpus 8
run replay8-h100 --n 5000 --idle 3 --replay "$H100" --gpus 8
step summary
python3 - "$OUT/runs" >>"$LOG" 2>&1 <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f))
    a = d["agent"]
    near = a.get("near_slow_refresh", {})
    print(os.path.basename(f), "gpus", a["gpus"], "series", a["series"], "p50", a["scrape_ms_p50"], "p99", a["scrape_ms_p99"],
          "max", a["scrape_ms_max"], "nvml/gpu", a["nvml_collection_ms_per_gpu"], "cpu/scrape", a["cpu_ms_per_scrape"],
          "cpu%@15s", a["cpu_percent_at_15s_interval"], "rss", a["rss_mib_after_scrapes"],
          "far p99", near.get("far_ms_p99"), "smi", json.dumps(d.get("nvidia_smi_per_scrape")),
          "speedup", d.get("speedup_p50"), d.get("speedup_p99"))
PY
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print('calls-load', k, v) for k, v in d['us'].items()]" "$OUT/calls-load.json" >>"$LOG" 2>&1
python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['meta']['call_us_median']; print('recorded medians', json.dumps(d))" "$NEW" >>"$LOG" 2>&1
tar -C "$OUT" -czf "$OUT/rss.tgz" rss && tar -C "$OUT" -czf "$OUT/runs.tgz" runs && rm -rf "$OUT/rss" "$OUT/runs"
step done
grep -c Traceback "$LOG"; grep -m2 -A12 Traceback "$LOG" | head -30
grep -E "^(rss|[a-z0-9-]+\.json|calls-load|recorded)" "$LOG"
