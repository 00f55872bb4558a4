"""`provision apply INVENTORY [-p PLAYBOOK]`: bring hosts to the state a playbook describes.

Shared CLI plumbing for apply/check/run/ping/facts lives here too (add_connection_args, load_inventory_arg, ...).
"""
from __future__ import annotations

import argparse
import getpass
import os

from provision.connectors import HOST_KEY_CHECKING
from provision.errors import OptionError

DEFAULT_PLAYBOOK = "playbooks/site.yaml"
EXIT_HELP = """exit codes: 0 all fine, 2 a host failed, 3 a host unreachable (none failed), 4 inventory/playbook
error, 5 bad options, 99 interrupted, 250 unexpected error"""


def add_connection_args(p: argparse.ArgumentParser, *, inventory_positional: bool = True) -> None:
    if inventory_positional:
        p.add_argument("inventory_pos", nargs="?", metavar="INVENTORY", help="inventory file (Ansible YAML)")
    p.add_argument("-i", "--inventory", help="inventory file (same as the positional INVENTORY)")
    p.add_argument("-l", "--limit", help="host pattern: host, group, glob, a:b, a:&b, a:!b, @retry-file")
    p.add_argument("-f", "--forks", type=int, default=20,
                   help="parallel hosts and the most SSH connections open at once (default 20)")
    p.add_argument("--host-key-checking", choices=HOST_KEY_CHECKING,
                   default=os.environ.get("PROVISION_HOST_KEY_CHECKING", "yes"),
                   help="yes (default): refuse hosts missing from known_hosts; accept-new: add unknown keys "
                        "(warning); off: accept without saving (loud warning). A CHANGED key is always refused.")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="SSH connect timeout (default 10)")
    p.add_argument("--command-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-clock deadline for each remote command (default 3600)")
    p.add_argument("-F", "--ssh-config", metavar="FILE",
                   help="ssh config file (default ~/.ssh/config): HostName, Port, User, IdentityFile, ProxyJump")
    p.add_argument("-u", "--user", dest="remote_user", metavar="USER",
                   help="connect as USER where the inventory sets no ansible_user (as ansible-playbook's -u)")
    p.add_argument("-b", "--become", action="store_true", default=None, help="run operations with sudo")
    p.add_argument("--become-user", help="user to become (default root)")
    p.add_argument("-K", "--ask-become-pass", action="store_true",
                   help="prompt for the sudo password (else PROVISION_BECOME_PASS is used when set)")
    p.add_argument("-e", "--extra-vars", action="append", metavar="VARS",
                   help="key=value, @file.yaml or JSON; repeatable; highest precedence")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v results, -vv commands, -vvv command output (no_log values stay hidden)")
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON report at the end")


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--playbook", default=None, help=f"playbook file (default {DEFAULT_PLAYBOOK})")
    p.add_argument("playbook_pos", nargs="?", metavar="PLAYBOOK", help=argparse.SUPPRESS)
    p.add_argument("-C", "--check", action="store_true", help="report what would change, change nothing")
    p.add_argument("-D", "--diff", action="store_true",
                   help="show file and package changes (secrets and no_log values masked)")
    p.add_argument("-t", "--tags", action="append", default=[], help="only tasks with these tags (comma list)")
    p.add_argument("--skip-tags", action="append", default=[], help="skip tasks with these tags (comma list)")
    p.add_argument("--start-at-task", metavar="NAME", help="start at the first task with this name (glob)")
    p.add_argument("--retry-dir", metavar="DIR", help="write PLAYBOOK.retry here (default: beside the playbook)")
    p.add_argument("--no-retry-file", action="store_true", help="do not write a retry file")


def inventory_path(args) -> str:
    pos, opt = getattr(args, "inventory_pos", None), getattr(args, "inventory", None)
    if pos and opt and os.path.abspath(pos) != os.path.abspath(opt):
        raise OptionError(f"two inventories given ({pos} and -i {opt}); give one", key="--inventory")
    path = pos or opt
    if not path:
        raise OptionError("an inventory is required (provision CMD INVENTORY or -i INVENTORY)", key="--inventory")
    return path


def load_inventory_arg(args):
    from provision.inventory import load_inventory
    path = inventory_path(args)
    if not os.path.exists(path):
        raise OptionError("no such inventory file", file=path, key="--inventory")
    return load_inventory(path)


def _split_tags(values) -> tuple:
    out = []
    for v in values or []:
        out += [t.strip() for t in v.split(",") if t.strip()]
    return tuple(out)


def become_password(args) -> str | None:
    if getattr(args, "ask_become_pass", False):
        return getpass.getpass("BECOME password: ")
    return os.environ.get("PROVISION_BECOME_PASS") or None


def run_options(args, *, check: bool = False):
    from provision.connectors import ConnectOptions
    from provision.executor import RunOptions, parse_extra_vars
    if args.forks is None or args.forks < 1:
        raise OptionError(f"--forks must be at least 1, got {args.forks}", key="--forks")
    if args.connect_timeout <= 0 or args.command_timeout <= 0:
        raise OptionError("timeouts must be positive", key="--connect-timeout")
    return RunOptions(
        forks=args.forks, check=check or bool(getattr(args, "check", False)), diff=bool(getattr(args, "diff", False)),
        tags=_split_tags(getattr(args, "tags", [])), skip_tags=_split_tags(getattr(args, "skip_tags", [])),
        start_at_task=getattr(args, "start_at_task", None), extra_vars=parse_extra_vars(args.extra_vars),
        limit=args.limit, become=args.become, become_user=args.become_user,
        connect=ConnectOptions(host_key_checking=args.host_key_checking, connect_timeout=args.connect_timeout,
                               command_timeout=args.command_timeout, ssh_config=args.ssh_config,
                               remote_user=getattr(args, "remote_user", None)),
        retry_dir=getattr(args, "retry_dir", None), retry_files=not getattr(args, "no_retry_file", False),
        verbosity=args.verbose)


def run_playbook_command(args, *, check: bool = False) -> int:
    from provision.executor import Executor
    from provision.output import make_reporter
    from provision.playbook import load_playbook, validate
    opts = run_options(args, check=check)           # bad options: exit 5, nothing read or contacted
    inventory = load_inventory_arg(args)             # bad inventory: exit 4
    pb_pos = getattr(args, "playbook_pos", None)
    if pb_pos and args.playbook and pb_pos != args.playbook:
        raise OptionError("give the playbook once (-p PLAYBOOK)", key="--playbook")
    path = args.playbook or pb_pos or DEFAULT_PLAYBOOK
    if not os.path.exists(path):
        raise OptionError("no such playbook file", file=path, key="--playbook")
    playbook = load_playbook(path)                   # bad playbook: exit 4
    validate(playbook, inventory, opts.extra_vars)   # undefined variables, host patterns: exit 4
    for play in playbook.plays:                      # bad --limit: exit 5
        inventory.limit(inventory.select(play.hosts) if "{{" not in play.hosts else [], opts.limit)
    opts.connect.become_password = become_password(args)
    reporter = make_reporter(args, diff=opts.diff)
    stats = Executor(inventory, opts, reporter).run_playbook(playbook, validated=True)
    return stats.exit_code()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "apply", help="apply a playbook to an inventory",
        description="Apply a playbook (default playbooks/site.yaml) to the hosts of an inventory, Ansible-style: "
                    "facts in one round trip per host, one SSH connection per host, idempotent operations.",
        epilog=EXIT_HELP + "\n\nexample: provision apply inventories/testbed.yaml -p playbooks/site.yaml --diff",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    add_run_args(p)
    p.set_defaults(func=lambda a: run_playbook_command(a))
