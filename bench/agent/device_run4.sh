#!/bin/bash
# Fourth device run (2026-12-01, H200): where the tail latency and the RSS come from (the agent as of 93c6c4b with
# process tweaks: bench/agent/variant.py; each scrape's start, latency and background-reading age kept), plus an
# H200 NVML recording and the comparison with nvidia-smi. Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
D=$(date -u +%Y-%m-%d)
F=tests/fixtures/nvml/h100-2026-11-23.json
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
step versions
{ python3 --version; nvidia-smi; python3 -m pip show nvidia-ml-py prometheus-client pyyaml 2>/dev/null | grep -E '^(Name|Version)';
  nproc; uname -a; for f in enabled defrag khugepaged/defrag; do echo "thp $f: $(cat /sys/kernel/mm/transparent_hugepage/$f)"; done; } >>"$LOG" 2>&1
step "load: a matmul loop for 30 s while recording"
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
timeout 60 python3 bench/agent/bench.py record "$OUT/h200-$D.json" --seconds 10 >>"$LOG" 2>&1 || echo "record failed" | tee -a "$LOG"
step "compare under load"
timeout 60 python3 bench/agent/bench.py compare "$OUT/compare-load.json" --rounds 2 >>"$LOG" 2>&1 || echo "compare failed" | tee -a "$LOG"
wait $LOADPID
sleep 2
step "compare idle"
timeout 60 python3 bench/agent/bench.py compare "$OUT/compare-idle.json" --rounds 3 >>"$LOG" 2>&1 || echo "compare failed" | tee -a "$LOG"
# scrape runs: variant x (real NVML | 8 replayed GPUs); 5000 scrapes each (over a 10 s background refresh)
run() {  # run NAME VARIANT [replay args]
    local name=$1 variant=$2; shift 2
    step "scrape $name"
    timeout 120 python3 bench/agent/bench.py scrape "$OUT/s-$name.json" --n 5000 --idle 2 --timeline \
        ${variant:+--variant $variant} "$@" >/dev/null 2>>"$LOG" || echo "scrape $name failed" | tee -a "$LOG"
}
run real ""
run real-thpoff thp-off
run real-gcoff gc-off
run real-switch1ms switch=0.001
run r8 "" --replay "$PWD/$F" --gpus 8
run r8-gcoff gc-off --replay "$PWD/$F" --gpus 8
run r8-switch1ms switch=0.001 --replay "$PWD/$F" --gpus 8
step "rss: 4 starts each, real NVML, 300 scrapes"
for i in 1 2 3 4; do
    timeout 60 python3 bench/agent/bench.py scrape "$OUT/rss-new-$i.json" --n 300 --idle 1 >/dev/null 2>>"$LOG"
    timeout 60 python3 bench/agent/bench.py scrape "$OUT/rss-thpoff-$i.json" --n 300 --idle 1 --variant thp-off >/dev/null 2>>"$LOG"
done
step summary
python3 - "$OUT" >>"$LOG" 2>&1 <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "s-*.json")) + glob.glob(os.path.join(out, "rss-*.json"))):
    d = json.load(open(f))
    a = d.get("agent", {})
    sm = a.get("smaps_rollup_mib", {})
    near = a.get("near_slow_refresh", {})
    print(os.path.basename(f), "p50", a.get("scrape_ms_p50"), "p99", a.get("scrape_ms_p99"), "max", a.get("scrape_ms_max"),
          "cpu/scrape", a.get("cpu_ms_per_scrape"), "rss", a.get("rss_mib_after_warmup"), a.get("rss_mib_after_scrapes"),
          "anonhuge", sm.get("AnonHugePages"), "anon", sm.get("Anonymous"),
          "near", near.get("near_n"), near.get("near_ms_p50"), near.get("near_ms_max"), "far p99", near.get("far_ms_p99"))
    os.path.basename(f).startswith("s-") and d.pop("timeline", None)
PY
# 8 files at most come back: bundle the many small ones
tar -C "$OUT" -czf "$OUT/runs.tgz" $(cd "$OUT" && ls s-*.json rss-*.json compare-*.json 2>/dev/null) && (cd "$OUT" && rm -f s-*.json rss-*.json compare-*.json)
step done
ls -la "$OUT" >>"$LOG"
grep -c Traceback "$LOG"; grep -m2 -A12 Traceback "$LOG" | head -30
tail -25 "$LOG"
