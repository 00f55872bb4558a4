#!/bin/bash
# Seventh device run (2026-12-01, H200): after run 6's closed loop showed a 4.4 s scrape (socketserver's listen
# backlog of 5 dropped the SYNs of 50 connections opened at once; the agent now listens with 128): the 50-scraper
# load again on the real GPU, then the longest soak the session's device time allows. Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
step "50 scrapers, real NVML: paced 45 s, closed loop 45 s"
timeout 200 python3 -m bench.agent_load --real-nvml --modes paced closed --seconds 45 --stem agent-load-h200-real \
    >>"$LOG" 2>&1 || echo "load real failed" | tee -a "$LOG"
cp bench/results/agent-load-h200-real-*.json bench/results/agent-load-h200-real-*.md "$OUT/" 2>/dev/null
step "soak, real NVML: 5 scrapes/s for ${SOAK:-440} s"
timeout 500 python3 bench/agent/bench.py soak "$OUT/soak-h200-long.csv" --seconds "${SOAK:-440}" --rate 5 --sample 10 \
    >>"$LOG" 2>&1 || echo "soak failed" | tee -a "$LOG"
step done
grep -c Traceback "$LOG"; grep -E "^\| (paced|closed)|^all " "$LOG"; head -3 "$OUT/soak-h200-long.csv"; tail -3 "$OUT/soak-h200-long.csv"
