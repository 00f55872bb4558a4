#!/bin/bash
# Third, short device run: the final code's numbers (real H100 and 8 simulated GPUs), and RSS with and without
# MALLOC_ARENA_MAX=2 (the systemd unit sets it). Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
F=$(ls tests/fixtures/nvml/h100-*.json | tail -1)
echo "=== $(date -u +%T) real, default malloc"; timeout 40 python3 bench/agent/bench.py scrape "$OUT/bench-h100-default-malloc.json" --n 1000 --idle 3 >/dev/null 2>"$OUT/err1.txt"
export MALLOC_ARENA_MAX=2
echo "=== $(date -u +%T) real, MALLOC_ARENA_MAX=2, with nvidia-smi"; timeout 60 python3 bench/agent/bench.py scrape "$OUT/bench-h100.json" --n 2000 --idle 5 --smi --smi-n 60 >/dev/null 2>"$OUT/err2.txt"
echo "=== $(date -u +%T) replay 8 GPUs"; timeout 60 python3 bench/agent/bench.py scrape "$OUT/bench-replay8.json" --replay "$F" --gpus 8 --n 2000 --idle 5 >/dev/null 2>"$OUT/err3.txt"
echo "=== $(date -u +%T) done"
for f in "$OUT"/bench-*.json; do echo "$f"; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['agent']), json.dumps(d.get('nvidia_smi_per_scrape')), d.get('speedup_p99'))" "$f"; done
tail -3 "$OUT"/err*.txt
