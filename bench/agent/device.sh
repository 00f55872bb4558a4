#!/bin/bash
# gpu-agent on a GPU machine (the `device` tool's, or any): the steps to run are named on the command line, joined
# by '+', and run in that order. bench/agent/results/README.md gives the command line of every recorded run.
#
#   bash bench/agent/device.sh STEP [ARGS...] [+ STEP [ARGS...]]...      (writes under $OUT, /tmp/gpu-agent-out if unset)
#
#   system                      python, glibc, kernel, transparent huge pages, nvidia-smi, package versions, commit
#   load SECONDS [WARMUP]       a bf16 matmul loop on the GPU for SECONDS in the background (needs torch); the next
#                               steps run under it, after WARMUP seconds (12); `wait-load` waits for its end
#   wait-load
#   record NAME [ARGS]          every NVML call of the agent (bench.py record, e.g. --seconds 10) -> NAME.json, a
#                               fixture for tests/fixtures/nvml/; later steps replay it as "$OUT/res/NAME.json"
#   compare NAME [ARGS]         agent against nvidia-smi --query-gpu, field by field (e.g. --rounds 3)
#   calls NAME [ARGS]           the cost of each NVML call alone (e.g. --n 1000)
#   rss STARTS [--idle S] [--mallocstats] VARIANT...
#                               RSS over agent starts: STARTS starts of each VARIANT, 300 scrapes each; VARIANT is
#                               asis, arena2 (MALLOC_ARENA_MAX=2) or tweaks of bench/agent/variant.py joined by ','
#                               (thp-off, gc-off, no-metadata, mallopt, trim=3, switch=0.001...); --mallocstats
#                               also dumps glibc's and Python's allocator statistics of every start (raw)
#   scrape NAME [ARGS]          back-to-back scrapes (bench.py scrape: --n, --idle, --smi --smi-n N for nvidia-smi
#                               side by side, --replay FIXTURE --gpus 8, --variant); the timeline is kept raw
#   scrapers STEM [ARGS]        50 concurrent scrapers (python3 -m bench.agent_load --stem STEM ARGS: --real-nvml or
#                               --replay FIXTURE --gpus 8, --modes paced closed, --seconds 45)
#   soak NAME [ARGS]            paced scrapes over time, RSS and CPU every --sample s (bench.py soak: --seconds,
#                               --rate, --replay)
#   setenv KEY=VALUE | unsetenv KEY     the environment of the agent in the steps after it
#
# Every step runs under `timeout $STEP_TIMEOUT` (600 s). At the end (also after a failure) a one-line summary per
# scrape, start, call table and recording goes to the log, and $OUT holds three files, as the device tool brings
# back at most 8: log.txt; results.tgz (the summaries: JSON, CSV, markdown, system.txt, summary.txt: unpack into
# bench/agent/results/<date>-<gpu>-run<N>/); raw.tgz (timelines, per-start JSON, allocator dumps, full records:
# unpack under bench/raw/, which git ignores).
set -u
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-/tmp/gpu-agent-out}
RES=$OUT/res RAW=$OUT/raw LOG=$OUT/log.txt STEP_TIMEOUT=${STEP_TIMEOUT:-600}
BENCH=(python3 bench/agent/bench.py)
export PYTHONUNBUFFERED=1
LOADPID=

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }
log() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
fail() { echo "$*" | tee -a "$LOG"; }
bench() { timeout "$STEP_TIMEOUT" "${BENCH[@]}" "$@"; }

step_system() {
    { python3 --version; ldd --version | head -1; uname -a; nproc; echo "stack: $(ulimit -s)"
      for f in enabled defrag khugepaged/defrag; do
          echo "thp $f: $(cat /sys/kernel/mm/transparent_hugepage/$f 2>/dev/null)"; done
      for f in /sys/kernel/mm/transparent_hugepage/hugepages-*/enabled; do
          [ -e "$f" ] && echo "$f: $(cat "$f")"; done
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvidia-smi
      python3 -m pip show nvidia-ml-py prometheus-client pyyaml 2>/dev/null | grep -E '^(Name|Version)'
      python3 -c "import importlib.metadata as m; print(len(list(m.distributions())), 'distributions')"
      echo "commit: $(git log -1 --format=%h 2>/dev/null)"
    } >"$RES/system.txt" 2>&1
    head -3 "$RES/system.txt" >>"$LOG"
}

step_load() {
    local seconds=${1:?load SECONDS [WARMUP]} warmup=${2:-12}
    python3 bench/agent/matmul_load.py "$seconds" >>"$LOG" 2>&1 &
    LOADPID=$!
    sleep "$warmup"
}

step_wait-load() {
    [ -n "$LOADPID" ] && wait "$LOADPID"
    LOADPID=
    sleep 2
}

step_record() { bench record "$RES/${1:?record NAME}.json" "${@:2}" >>"$LOG" 2>&1; }
step_compare() { bench compare "$RES/compare-${1:?compare NAME}.json" "${@:2}" >>"$LOG" 2>&1; }
step_calls() { bench calls "$RES/calls-${1:?calls NAME}.json" "${@:2}" >/dev/null 2>>"$LOG"; }
step_scrape() {
    local name=${1:?scrape NAME}
    bench scrape "$RES/scrape-$name.json" --timeline "$RAW/scrape-$name-timeline.json" "${@:2}" >/dev/null 2>>"$LOG"
}
step_soak() { bench soak "$RES/soak-${1:?soak NAME}.csv" "${@:2}" >>"$LOG" 2>&1; }

step_rss() {
    local starts=${1:?rss STARTS [--idle S] [--mallocstats] VARIANT...} idle=2 stats= i v tweaks
    shift
    while [ $# -gt 0 ]; do
        case $1 in
            --idle) idle=$2; shift 2;;
            --mallocstats) stats=1; shift;;
            *) break;;
        esac
    done
    [ $# -gt 0 ] || { fail "rss: name at least one variant (asis, arena2, or variant.py tweaks)"; return 2; }
    for i in $(seq 1 "$starts"); do
        for v in "$@"; do
            local env=() json="$RAW/rss-$v-$i.json"
            tweaks=$v
            [ "$v" = asis ] && tweaks=
            [ "$v" = arena2 ] && { tweaks=; env=(MALLOC_ARENA_MAX=2); }
            [ -n "$stats" ] && tweaks=${tweaks:+$tweaks,}mallocstats=$RAW/mem-$v-$i.txt
            env "${env[@]}" timeout "$STEP_TIMEOUT" "${BENCH[@]}" scrape "$json" --n 300 --idle "$idle" \
                ${tweaks:+--variant "$tweaks"} >/dev/null 2>>"$LOG" || fail "rss $v-$i failed"
            python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['agent']; print('rss', sys.argv[2], \
a['rss_mib_after_warmup'], a['rss_mib_after_scrapes'], a['smaps_rollup_mib'].get('Anonymous'), a['threads'])" \
                "$json" "$v-$i" 2>/dev/null | tee -a "$LOG" "$RES/summary.txt"
        done
    done
}

step_scrapers() {
    local stem=${1:?scrapers STEM [ARGS]} wrote
    timeout "$STEP_TIMEOUT" python3 -m bench.agent_load --stem "$stem" "${@:2}" >"$RAW/scrapers-$stem.txt" 2>&1
    local rc=$?
    cat "$RAW/scrapers-$stem.txt" >>"$LOG"
    # "wrote RAW, SUMMARY.json, TABLE.md": this run's files only (bench/results/ also holds the committed ones);
    # moved here, so that a run on a checkout leaves nothing in the tree
    wrote=$(sed -n 's/^wrote //p' "$RAW/scrapers-$stem.txt" | tail -1)
    [ -n "$wrote" ] || return $((rc ? rc : 1))
    IFS=, read -r raw summary table <<<"$wrote"
    mv "$raw" "$RAW/" && mv "${summary# }" "${table# }" "$RES/"
    return "$rc"
}

step_setenv() { export "${1:?setenv KEY=VALUE}"; }
step_unsetenv() { unset "${1:?unsetenv KEY}"; }

summarise() {
    python3 - "$RES" >>"$RES/summary.txt" 2>&1 <<'PY'
import glob, json, os, sys
res = sys.argv[1]
for f in sorted(glob.glob(os.path.join(res, "scrape-*.json"))):
    d = json.load(open(f))
    a = d.get("agent", {})
    near = a.get("near_slow_refresh", {})
    print(os.path.basename(f), "gpus", a.get("gpus"), "series", a.get("series"), "p50", a.get("scrape_ms_p50"),
          "p99", a.get("scrape_ms_p99"), "max", a.get("scrape_ms_max"), "nvml/gpu", a.get("nvml_collection_ms_per_gpu"),
          "cpu/scrape", a.get("cpu_ms_per_scrape"), "idle cpu%", a.get("idle_cpu_percent"),
          "cpu%@15s", a.get("cpu_percent_at_15s_interval"), "rss", a.get("rss_mib_after_warmup"),
          a.get("rss_mib_after_scrapes"), "anon", a.get("smaps_rollup_mib", {}).get("Anonymous"),
          "far p99", near.get("far_ms_p99"), "smi", json.dumps(d.get("nvidia_smi_per_scrape")),
          "speedup", d.get("speedup_p50"), d.get("speedup_p99"))
for f in sorted(glob.glob(os.path.join(res, "calls-*.json"))):
    for k, v in json.load(open(f)).get("us", {}).items():
        print(os.path.basename(f), k, v)
for f in sorted(glob.glob(os.path.join(res, "*.json"))):
    meta = json.load(open(f)).get("meta") if not os.path.basename(f).startswith(("scrape-", "calls-")) else None
    if isinstance(meta, dict) and "call_us_median" in meta:
        print(os.path.basename(f), "recorded medians", json.dumps(meta["call_us_median"]))
PY
    for f in "$RES"/soak-*.csv; do [ -e "$f" ] && { echo "$(basename "$f")"; head -3 "$f"; tail -3 "$f"; }; done \
        >>"$RES/summary.txt"
}

finish() {
    trap - EXIT
    [ -n "$LOADPID" ] && kill "$LOADPID" 2>/dev/null
    log "summary"
    summarise
    grep -v '^rss ' "$RES/summary.txt" 2>/dev/null | tee -a "$LOG"
    echo "tracebacks in the log: $(grep -c Traceback "$LOG")"; grep -m2 -A12 Traceback "$LOG" | head -30
    tar -C "$RES" -czf "$OUT/results.tgz" . && tar -C "$RAW" -czf "$OUT/raw.tgz" . && rm -rf "$RES" "$RAW"
    ls -la "$OUT"
}

[ $# -gt 0 ] && [ "$1" != -h ] && [ "$1" != --help ] || usage 0
# check every step's name before running any
want=1
for a in "$@"; do
    if [ "$a" = + ]; then want=1; continue; fi
    if [ $want = 1 ]; then
        declare -F "step_$a" >/dev/null || { echo "device.sh: unknown step '$a' (see bash $0 --help)" >&2; exit 2; }
        want=0
    fi
done
mkdir -p "$RES" "$RAW"
trap finish EXIT
trap 'exit 143' TERM INT
step=()
for a in "$@" +; do
    if [ "$a" != + ]; then step+=("$a"); continue; fi
    [ ${#step[@]} -gt 0 ] || continue
    log "${step[*]}"
    "step_${step[0]}" "${step[@]:1}" || fail "${step[0]} failed (exit $?)"
    step=()
done
