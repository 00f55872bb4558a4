#!/bin/bash
# RSS diagnostic (2026-12-01, H200): the agent's RSS is ~54 or ~62 MiB from one start to the next (+8 MiB of
# anonymous memory, no huge pages). 5 starts each: as is; without the importlib.metadata lookup of the binding's
# version; with MALLOC_ARENA_MAX=2 (as the systemd unit runs it). Each start's JSON carries the mappings that hold
# RSS (smaps_top) and its thread count; the first two variants also dump Python's arena statistics. Then the cost
# of every NVML call alone (bench.py calls). Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT/d"
export PYTHONUNBUFFERED=1
{
    python3 --version; ldd --version | head -1; uname -r; ulimit -s
    cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag
    for f in /sys/kernel/mm/transparent_hugepage/hugepages-*/enabled; do echo "$f: $(cat "$f")"; done
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
} > "$OUT/system.txt" 2>&1
for i in 1 2 3 4 5; do
    for v in asis no-metadata arena2; do
        tw="mallocstats=$OUT/d/mem-$v-$i.txt"
        [ $v = no-metadata ] && tw="no-metadata,$tw"
        env=(); [ $v = arena2 ] && { env=(MALLOC_ARENA_MAX=2); tw=""; }
        env "${env[@]}" timeout 60 python3 bench/agent/bench.py scrape "$OUT/d/rss-$v-$i.json" --n 300 --idle 4 \
            ${tw:+--variant "$tw"} >/dev/null 2>>"$OUT/err.txt"
        python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['agent']; print(sys.argv[2], a['rss_mib_after_scrapes'], a['smaps_rollup_mib'].get('Anonymous'), a['threads'])" "$OUT/d/rss-$v-$i.json" "$v-$i"
    done
done | tee "$OUT/summary.txt"
python3 -c "import importlib.metadata as m, sys; print(len(list(m.distributions())), 'distributions;', sys.path)" >>"$OUT/summary.txt"
tar -C "$OUT" -czf "$OUT/rss-diag.tgz" d && rm -rf "$OUT/d"
timeout 120 python3 bench/agent/bench.py calls "$OUT/calls-h200.json" --n 2000 >/dev/null 2>>"$OUT/err.txt" || echo "calls failed" >>"$OUT/err.txt"
tail -5 "$OUT/err.txt" 2>/dev/null
