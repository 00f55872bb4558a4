#!/bin/bash
# PREPARED 2026-12-01, NOT RUN YET: the device was withdrawn from that session after run 4.
# RSS diagnostic (2026-12-01, H200): the agent's RSS is ~54 or ~62 MiB from one start to the next (+8 MiB of
# anonymous memory, no huge pages). 5 starts as is and 5 without the importlib.metadata lookup of the binding's
# version; Python's arena statistics and smaps of every start. Writes under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-agent-out}; mkdir -p "$OUT/d"
export PYTHONUNBUFFERED=1
for i in 1 2 3 4 5; do
    for v in asis no-metadata; do
        tw="mallocstats=$OUT/d/mem-$v-$i.txt"; [ $v = no-metadata ] && tw="no-metadata,$tw"
        timeout 60 python3 bench/agent/bench.py scrape "$OUT/d/rss-$v-$i.json" --n 300 --idle 4 --variant "$tw" \
            >/dev/null 2>>"$OUT/err.txt"
        python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['agent']; print(sys.argv[2], a['rss_mib_after_scrapes'], a['smaps_rollup_mib'].get('Anonymous'))" "$OUT/d/rss-$v-$i.json" "$v-$i"
    done
done | tee "$OUT/summary.txt"
python3 -c "import importlib.metadata as m, sys; print(len(list(m.distributions())), 'distributions;', sys.path)" >>"$OUT/summary.txt"
tar -C "$OUT" -czf "$OUT/rss-diag.tgz" d && rm -rf "$OUT/d"
