#!/bin/bash
# One batched run on the GPU machine (device tool): record the NVML fixture, compare with nvidia-smi, benchmark.
# Usage (from the repo root, there): bash bench/agent/device_run.sh   -- writes everything under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
D=$(date -u +%Y-%m-%d)
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
step versions
{ python3 --version; nvidia-smi; python3 -m pip show nvidia-ml-py prometheus-client pyyaml 2>/dev/null | grep -E '^(Name|Version)'; nproc; uname -a; } >>"$LOG" 2>&1

step "load: a matmul loop for 30 s, so utilisation, power, clocks and a GPU process are live while recording"
python3 - >>"$LOG" 2>&1 <<'PY' &
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + 30
while time.time() < end:
    for _ in range(20):
        b = a @ a
    torch.cuda.synchronize()
PY
LOADPID=$!
sleep 12
step record
timeout 60 python3 bench/agent/bench.py record "$OUT/h100-$D.json" --seconds 10 >>"$LOG" 2>&1 || echo "record failed rc=$?" | tee -a "$LOG"
step "compare under load"
timeout 60 python3 bench/agent/bench.py compare "$OUT/compare-load.json" --rounds 2 >>"$LOG" 2>&1 || echo "compare failed" | tee -a "$LOG"
wait $LOADPID
sleep 3
step "compare idle"
timeout 60 python3 bench/agent/bench.py compare "$OUT/compare-idle.json" --rounds 5 >>"$LOG" 2>&1 || echo "compare failed" | tee -a "$LOG"
step "scrape bench, real NVML, with nvidia-smi side by side"
timeout 150 python3 bench/agent/bench.py scrape "$OUT/bench-h100.json" --n 2000 --idle 10 --smi --smi-n 150 >>"$LOG" 2>&1 || echo "bench failed" | tee -a "$LOG"
step "scrape bench, 8 simulated GPUs (replay of the recording, recorded call latencies)"
timeout 120 python3 bench/agent/bench.py scrape "$OUT/bench-replay8.json" --replay "$OUT/h100-$D.json" --gpus 8 --n 2000 --idle 10 >>"$LOG" 2>&1 || echo "bench8 failed" | tee -a "$LOG"
step "soak, real NVML: 10 scrapes/s for 90 s (900 scrapes = 3.75 h of 15 s scrapes)"
timeout 200 python3 bench/agent/bench.py soak "$OUT/soak-h100.csv" --seconds 90 --rate 10 --sample 10 >>"$LOG" 2>&1 || echo "soak failed" | tee -a "$LOG"
step done
ls -la "$OUT" >>"$LOG"
grep -c "Traceback" "$LOG"; grep -m3 -B2 -A8 Traceback "$LOG" | head -40
