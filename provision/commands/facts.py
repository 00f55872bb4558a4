"""`provision facts -i INVENTORY [--limit] [--gpu]`: the facts of each host as JSON (one round trip per host)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from provision.commands.apply import EXIT_HELP, add_connection_args, become_password, load_inventory_arg, run_options


def cmd_facts(args) -> int:
    from provision.errors import EXIT_OK, EXIT_UNREACHABLE
    from provision.executor import Executor
    from provision.output import TextReporter
    opts = run_options(args)
    inv = load_inventory_arg(args)
    hosts = inv.limit(inv.select("all"), opts.limit)
    opts.connect.become_password = become_password(args)
    ex = Executor(inv, opts, TextReporter(verbosity=args.verbose))
    by_host = ex.gather_all(hosts)
    bad = [h for h, f in by_host.items() if isinstance(f, dict) and f.get("unreachable")]
    if args.gpu:
        try:
            report = importlib.import_module("provision.gpu.report")
        except ModuleNotFoundError:
            print("GPU report not available (provision.gpu.report is not installed)", file=sys.stderr)
            return 5
        good = {h: f for h, f in by_host.items() if h not in bad}
        vars_by_host = {h.name: dict(h.vars) for h in hosts}
        print(report.gpu_report(good, vars_by_host), end="")
        for h in bad:
            print(f"{h}: UNREACHABLE: {by_host[h].get('msg')}")
    else:
        print(json.dumps(by_host, indent=2, sort_keys=True, default=str))
    return EXIT_UNREACHABLE if bad else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "facts", help="print each host's facts (JSON) or a GPU readiness report (--gpu)",
        description="Gather facts (OS, kernel, arch, CPUs, memory, boot_id, init system, package manager, "
                    "Secure Boot, PCI devices, dpkg packages and holds) in one round trip per host.",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.add_argument("--gpu", action="store_true", help="interpret the PCI devices: GPU models, driver needs, verdicts")
    p.set_defaults(func=cmd_facts)
