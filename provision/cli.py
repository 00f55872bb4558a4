"""`provision`: a thin front door. Each subcommand lives in provision/commands/<name>.py and offers
``register(subparsers)`` (adds its parser, sets ``func``) — this file only wires them and maps errors to exit codes."""
from __future__ import annotations

import argparse
import importlib
import sys

from provision.errors import EXIT_INTERRUPTED, EXIT_OPTIONS, EXIT_UNEXPECTED, InputError

# Order is the order shown in --help.
SUBCOMMANDS = ("apply", "check", "run", "ping", "facts", "inventory", "upgrade_driver", "testbed")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad options: one line, exit 5 (ansible-playbook's code)
        self.exit(EXIT_OPTIONS, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from provision.commands.apply import VersionAction
    parser = _Parser(prog="provision", description="Bring NVIDIA GPU hosts to 'ready for PyTorch' over SSH.")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"provision.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_OPTIONS
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - last resort: one line, exit 250, traceback only with -vvv
        if getattr(args, "verbose", 0) >= 3:
            raise
        print(f"ERROR: unexpected {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
