"""`provision facts -i INVENTORY [--limit] [--gpu] [--json]`: the facts of each host as JSON (one round trip per
host), or with --gpu the GPU fact sections (provision.facts.GPU_SECTIONS) read into the plan the site playbook's
gpu_plan makes: a report per host, or with --json one object per host (facts, plan, verdict)."""
from __future__ import annotations

import argparse
import json

from provision.commands.apply import EXIT_HELP, add_connection_args, become_password, load_inventory_arg, run_options


def cmd_facts(args) -> int:
    from provision import facts as factmod
    from provision.errors import EXIT_OK, EXIT_UNREACHABLE
    from provision.executor import Executor
    from provision.output import TextReporter
    opts = run_options(args)
    inv = load_inventory_arg(args)
    hosts = inv.limit(inv.select("all"), opts.limit)
    opts.connect.become_password = become_password(args)
    ex = Executor(inv, opts, TextReporter(verbosity=args.verbose))
    by_host = ex.gather_all(hosts, factmod.GPU_SECTIONS if args.gpu else None)
    bad = [h for h, f in by_host.items() if isinstance(f, dict) and f.get("unreachable")]
    if args.gpu:
        from provision.gpu.report import gpu_report, gpu_report_json
        good = {h: f for h, f in by_host.items() if h not in bad}
        vars_by_host = {h.name: {**h.vars, **opts.extra_vars} for h in hosts}
        if args.json:
            doc = {**gpu_report_json(good, vars_by_host), **{h: by_host[h] for h in bad}}
            print(json.dumps({h: doc[h] for h in by_host}, indent=2, sort_keys=True, default=str))
        else:
            print(gpu_report(good, vars_by_host), end="")
            for h in bad:
                print(f"{h}: UNREACHABLE: {by_host[h].get('msg')}")
    else:
        print(json.dumps(by_host, indent=2, sort_keys=True, default=str))
    return EXIT_UNREACHABLE if bad else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "facts", help="print each host's facts (JSON) or a GPU readiness report (--gpu; --json for JSON)",
        description="Gather facts (OS, kernel, arch, CPUs, memory, boot_id, init system, package manager, "
                    "Secure Boot, PCI devices, dpkg packages and holds) in one round trip per host. With --gpu: "
                    "the GPU sections (PCI, nvidia-smi, the loaded nvidia module, packages and holds, Secure Boot, "
                    "module signing keys, GPU containers, maintenance marker) and the plan made from them.",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.add_argument("--gpu", action="store_true",
                   help="GPU facts, the driver in use, what the host needs and a verdict (with --json: JSON)")
    p.set_defaults(func=cmd_facts)
