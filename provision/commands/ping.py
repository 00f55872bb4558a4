"""`provision ping INVENTORY [--limit]`: can each host be reached and run a command?"""
from __future__ import annotations

import argparse

from provision.commands.apply import EXIT_HELP, add_connection_args, become_password, load_inventory_arg, run_options
from provision.commands.run import AdhocReporter


def cmd_ping(args) -> int:
    from provision.executor import Executor
    opts = run_options(args)
    inv = load_inventory_arg(args)
    hosts = inv.limit(inv.select("all"), opts.limit)
    opts.connect.become_password = become_password(args)
    stats = Executor(inv, opts, AdhocReporter(json_out=args.json)).run_adhoc(hosts, "ping", {},
                                                                             become=opts.become)
    return stats.exit_code()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ping", help="check that hosts answer over SSH",
        description="Connect to each host (known_hosts verified) and run a trivial command.",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.set_defaults(func=cmd_ping)
