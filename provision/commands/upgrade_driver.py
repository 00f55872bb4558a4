"""`provision upgrade-driver INVENTORY --to VERSION|BRANCH`: rolling NVIDIA driver upgrade (see docs/upgrade.md)."""
from __future__ import annotations


def register(subparsers) -> None:
    from provision.upgrade.cli import add_arguments, main
    p = subparsers.add_parser("upgrade-driver", help="rolling NVIDIA driver upgrade: drain, upgrade, reboot, "
                                                     "validate, restore; batches, budget, resume",
                              description="Rolling NVIDIA driver upgrade over SSH (docs/upgrade.md).")
    add_arguments(p)
    p.set_defaults(func=main)
