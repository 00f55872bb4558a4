"""`provision check INVENTORY [-p PLAYBOOK]`: apply --check (report what would change; change nothing)."""
from __future__ import annotations

import argparse

from provision.commands.apply import EXIT_HELP, add_connection_args, add_run_args, run_playbook_command


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="dry run: what apply would change (apply --check)",
        description="Report what `provision apply` would change without changing anything. Facts and per-task "
                    "checks still run on the hosts (read-only commands); command/shell tasks are skipped.",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    add_run_args(p)
    p.set_defaults(func=lambda a: run_playbook_command(a, check=True))
