"""Gather GPU facts on THIS machine (no SSH, no engine) and print the report; --json writes the record that
tests/fixtures/gpu/ keeps (raw probe output + parsed facts + plan). Used on the real-H100 machine.

    python3 -m provision.gpu.local [--json FILE] [--var KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys

import yaml

from provision.gpu.plan import plan_host
from provision.gpu.probe import GPU_FACTS_COMMAND, parse_gpu_facts
from provision.gpu.report import host_lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m provision.gpu.local")
    ap.add_argument("--json", help="write raw output, facts, plan and verdict to this file")
    ap.add_argument("--var", action="append", default=[], help="group var KEY=VALUE (YAML value)")
    ap.add_argument("--host", default="localhost")
    args = ap.parse_args(argv)
    hv = {}
    for kv in args.var:
        k, _, v = kv.partition("=")
        hv[k] = yaml.safe_load(v)
    raw = subprocess.run(["bash", "-c", GPU_FACTS_COMMAND], capture_output=True, text=True, timeout=120).stdout
    facts = parse_gpu_facts(raw)
    plan = plan_host(facts, hv, host=args.host)
    print("\n".join(host_lines(args.host, plan)))
    if args.json:
        smi_full = subprocess.run(["bash", "-c", "nvidia-smi 2>&1 | head -n 40"], capture_output=True, text=True).stdout
        rec = {"recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "vars": hv, "probe_output": raw, "nvidia_smi_table": smi_full, "facts": facts,
               "plan": plan.as_vars(), "verdict": plan.verdict}
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
