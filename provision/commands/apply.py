"""`provision apply [-i] INVENTORY [PLAYBOOK | -p PLAYBOOK]`: bring hosts to the state a playbook describes.

Shared CLI plumbing for apply/check/run/ping/facts lives here too (add_connection_args, inventory_sources,
load_inventory_arg, run_options...): ansible-playbook's habits (-i repeatable, INVENTORY PLAYBOOK or -i INVENTORY
PLAYBOOK, -u, --private-key, -c, --ssh-common-args, --force-handlers, --syntax-check, --list-*), with
command line > environment > ansible.cfg (provision.ansiblecfg) > defaults.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from provision.connectors import HOST_KEY_CHECKING, SSH_ARGS_HELP
from provision.errors import OptionError, closest
from provision.inventory.loader import is_host_list
from provision.inventory.models import CONNECTIONS

DEFAULT_PLAYBOOK = "playbooks/site.yaml"
LISTINGS = ("syntax_check", "list_hosts", "list_tasks", "list_tags")
EXIT_HELP = """exit codes: 0 all fine, 2 a host failed, 3 a host unreachable (none failed), 4 inventory/playbook
error, 5 bad options, 99 interrupted, 250 unexpected error"""


def add_connection_args(p: argparse.ArgumentParser, *, inventory_positional: bool = True) -> None:
    if inventory_positional:
        p.add_argument("inventory_pos", nargs="?", metavar="INVENTORY",
                       help="inventory (or -i; default: ansible.cfg's inventory)")
    p.add_argument("-i", "--inventory", action="append", metavar="INVENTORY",
                   help="inventory file (YAML or INI), directory, or host list 'h1,h2,'; repeatable (merged in "
                        "order)")
    p.add_argument("-l", "--limit", help="host pattern: host, group, glob, a:b, a:&b, a:!b, @retry-file")
    p.add_argument("-f", "--forks", type=int, default=None,
                   help="parallel hosts and the most SSH connections open at once (default: ansible.cfg, else 20)")
    p.add_argument("--host-key-checking", choices=HOST_KEY_CHECKING, default=None,
                   help="yes (default): refuse hosts missing from known_hosts; accept-new: add unknown keys "
                        "(warning); off: accept without saving (loud warning). A CHANGED key is always refused. "
                        "Default: PROVISION_HOST_KEY_CHECKING, else ansible.cfg's host_key_checking, else yes")
    p.add_argument("--connect-timeout", "-T", "--timeout", type=float, default=None, metavar="SECONDS",
                   help="SSH connect timeout (default: ansible.cfg's timeout, else 10)")
    p.add_argument("--command-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-clock deadline for each remote command (default 3600)")
    p.add_argument("-F", "--ssh-config", metavar="FILE",
                   help="ssh config file (default ~/.ssh/config): HostName, Port, User, IdentityFile, ProxyJump")
    p.add_argument("-u", "--user", dest="remote_user", metavar="USER",
                   help="connect as USER where the inventory sets no ansible_user (as ansible-playbook's -u)")
    p.add_argument("--private-key", "--key-file", dest="private_key", metavar="FILE",
                   help="SSH key where the inventory sets no ansible_ssh_private_key_file")
    p.add_argument("-c", "--connection", choices=tuple(CONNECTIONS), default=None,
                   help="connection where the inventory sets no ansible_connection (default ssh)")
    p.add_argument("--ssh-common-args", metavar="ARGS",
                   help=f"ssh options paramiko can honour: {SSH_ARGS_HELP}; anything else is refused")
    p.add_argument("-b", "--become", action="store_true", default=None, help="run operations with sudo")
    p.add_argument("--become-user", help="user to become (default root)")
    p.add_argument("--become-method", help="only sudo (anything else is refused)")
    p.add_argument("-K", "--ask-become-pass", action="store_true", default=None,
                   help="prompt for the sudo password (else PROVISION_BECOME_PASS is used when set)")
    p.add_argument("-e", "--extra-vars", action="append", metavar="VARS",
                   help="key=value, @file.yaml or JSON; repeatable; highest precedence")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v results, -vv commands, -vvv command output (no_log values stay hidden)")
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON report at the end")
    p.add_argument("--version", action=VersionAction)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--playbook", default=None, help=f"playbook file (default {DEFAULT_PLAYBOOK})")
    p.add_argument("playbook_pos", nargs="?", metavar="PLAYBOOK",
                   help="playbook file: `provision apply INVENTORY PLAYBOOK` or `provision apply -i INVENTORY "
                        "PLAYBOOK`")
    p.add_argument("-C", "--check", action="store_true", help="report what would change, change nothing")
    p.add_argument("-D", "--diff", action="store_true",
                   help="show file and package changes (secrets and no_log values masked)")
    p.add_argument("-t", "--tags", action="append", default=[], help="only tasks with these tags (comma list)")
    p.add_argument("--skip-tags", action="append", default=[], help="skip tasks with these tags (comma list)")
    p.add_argument("--start-at-task", metavar="NAME", help="start at the first task with this name (glob)")
    p.add_argument("--force-handlers", action="store_true", help="run notified handlers even on hosts that failed")
    p.add_argument("--strict", action="store_true",
                   help="a task whose module gpufleet lacks (yum, dnf...) is an error, not a warning")
    p.add_argument("--retry-dir", metavar="DIR", help="write PLAYBOOK.retry here (default: beside the playbook)")
    p.add_argument("--no-retry-file", action="store_true", help="do not write a retry file")
    only = p.add_mutually_exclusive_group()
    for flag, text in (("--syntax-check", "load and check the playbook (file:line errors), contact no host"),
                       ("--list-hosts", "list the hosts each play would run on"),
                       ("--list-tasks", "list the tasks each play would run (after --tags/--skip-tags)"),
                       ("--list-tags", "list the tags of each play's tasks")):
        only.add_argument(flag, action="store_true", help=text)


def version_line() -> str:
    from importlib import metadata
    try:
        v = metadata.version("gpufleet")
    except metadata.PackageNotFoundError:
        v = "unknown"
    return f"provision (gpufleet) {v}"


class VersionAction(argparse.Action):
    """``--version``: argparse's version action, but the version is looked up only when asked for (importing
    importlib.metadata costs ~25 ms, and every command builds every subcommand's parser)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def ansible_cfg(args):
    """The ansible.cfg Ansible would read (provision.ansiblecfg), once per command line."""
    cfg = getattr(args, "_ansible_cfg", None)
    if cfg is None:
        from provision.ansiblecfg import load
        cfg = load()
        args._ansible_cfg = cfg
    return cfg


def _looks_like_playbook(path: str) -> bool:
    """A YAML list of plays (an inventory is never a list): for `provision apply PLAYBOOK` with ansible.cfg's
    inventory."""
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            return isinstance(yaml.safe_load(fh), list)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _sorted_positionals(args) -> None:
    """`provision apply -i INV PLAYBOOK` (and `provision apply PLAYBOOK` with ansible.cfg's inventory): the one
    positional is the playbook. `provision apply INV [PLAYBOOK]` keeps its meaning."""
    pos = getattr(args, "inventory_pos", None)
    if not hasattr(args, "playbook_pos") or not pos or args.playbook_pos or args.playbook:
        return
    if args.inventory or (ansible_cfg(args).inventory and _looks_like_playbook(pos)):
        args.playbook_pos, args.inventory_pos = pos, None


def inventory_sources(args, *, must_exist: bool = True) -> list[str]:
    """Every inventory source given: -i (repeatable), else the positional INVENTORY, else ansible.cfg's inventory.
    Missing paths are bad options (exit 5) where ``must_exist``; a host list ('h1,h2,') is not a path."""
    cached = getattr(args, "inventory_sources", None)
    if cached:
        return cached
    _sorted_positionals(args)
    pos, opt = getattr(args, "inventory_pos", None), getattr(args, "inventory", None)
    opt = [opt] if isinstance(opt, str) else list(opt or [])
    if pos and opt and [os.path.abspath(pos)] != [os.path.abspath(o) for o in opt]:
        raise OptionError(f"two inventories given ({pos} and -i {' -i '.join(opt)}); give -i for each",
                          key="--inventory")
    sources = opt or ([pos] if pos else []) or list(ansible_cfg(args).inventory)
    if not sources:
        raise OptionError("an inventory is required (provision CMD INVENTORY, -i INVENTORY, or inventory= in "
                          "ansible.cfg)", key="--inventory")
    for s in sources:
        if must_exist and not os.path.exists(s) and not is_host_list(s):
            raise OptionError("no such inventory file", file=s, key="--inventory")
    args.inventory_sources = sources
    return sources


def inventory_path(args) -> str:
    """The first inventory source (names state files and messages)."""
    return inventory_sources(args)[0]


def playbook_path(args) -> str:
    _sorted_positionals(args)
    pb_pos = getattr(args, "playbook_pos", None)
    if pb_pos and args.playbook and pb_pos != args.playbook:
        raise OptionError("give the playbook once (-p PLAYBOOK)", key="--playbook")
    path = args.playbook or pb_pos or DEFAULT_PLAYBOOK
    if not os.path.exists(path):
        raise OptionError("no such playbook file", file=path, key="--playbook")
    return path


def load_inventory_arg(args, playbook: str | None = None):
    """The inventory of ``args`` (with the group_vars/ and host_vars/ beside ``playbook``, if given)."""
    from provision.inventory import load_inventory
    sources = inventory_sources(args)
    return load_inventory(sources, playbook_dir=os.path.dirname(os.path.abspath(playbook)) if playbook else None)


def _split_tags(values) -> tuple:
    out = []
    for v in values or []:
        out += [t.strip() for t in v.split(",") if t.strip()]
    return tuple(out)


def become_password(args) -> str | None:
    ask = getattr(args, "ask_become_pass", None)
    if ask or (ask is None and ansible_cfg(args).become_ask_pass):
        return getpass.getpass("BECOME password: ")
    return os.environ.get("PROVISION_BECOME_PASS") or None


def _host_key_checking(args, cfg, ssh: dict) -> str:
    if args.host_key_checking:
        return args.host_key_checking
    if os.environ.get("PROVISION_HOST_KEY_CHECKING"):
        v = os.environ["PROVISION_HOST_KEY_CHECKING"]
        if v not in HOST_KEY_CHECKING:
            raise OptionError(f"PROVISION_HOST_KEY_CHECKING must be one of {', '.join(HOST_KEY_CHECKING)}, got "
                              f"{v!r}", key="PROVISION_HOST_KEY_CHECKING", hint=closest(v, HOST_KEY_CHECKING))
        return v
    if ssh.get("host_key_checking"):
        return ssh["host_key_checking"]
    if cfg.host_key_checking is not None:
        return "yes" if cfg.host_key_checking else "off"
    return "yes"


def run_options(args, *, check: bool = False):
    """Command line > environment > ansible.cfg > defaults, checked before anything is read or contacted."""
    from provision.connectors import ConnectOptions, parse_ssh_args
    from provision.executor import RunOptions, parse_extra_vars
    cfg = ansible_cfg(args)
    forks = args.forks if args.forks is not None else (cfg.forks or 20)
    if forks < 1:
        raise OptionError(f"--forks must be at least 1, got {forks}", key="--forks")
    connect_timeout = args.connect_timeout if args.connect_timeout is not None else (cfg.timeout or 10.0)
    if connect_timeout <= 0 or args.command_timeout <= 0:
        raise OptionError("timeouts must be positive", key="--connect-timeout")
    method = getattr(args, "become_method", None)
    if method is not None and method != "sudo":
        raise OptionError(f"only sudo is supported, got {method!r}", key="--become-method")
    ssh = parse_ssh_args(args.ssh_common_args, "--ssh-common-args") if getattr(args, "ssh_common_args", None) \
        else {}
    key = getattr(args, "private_key", None) or cfg.private_key_file
    if key and not os.path.isfile(os.path.expanduser(key)):
        raise OptionError("no such key file", file=key, key="--private-key")
    return RunOptions(
        forks=forks, check=check or bool(getattr(args, "check", False)), diff=bool(getattr(args, "diff", False)),
        tags=_split_tags(getattr(args, "tags", [])), skip_tags=_split_tags(getattr(args, "skip_tags", [])),
        start_at_task=getattr(args, "start_at_task", None), extra_vars=parse_extra_vars(args.extra_vars),
        limit=args.limit, become=args.become if args.become is not None else cfg.become,
        become_user=args.become_user or cfg.become_user,
        force_handlers=bool(getattr(args, "force_handlers", False)),
        strict=bool(getattr(args, "strict", False)),
        connect=ConnectOptions(host_key_checking=_host_key_checking(args, cfg, ssh), connect_timeout=connect_timeout,
                               command_timeout=args.command_timeout, ssh_config=args.ssh_config,
                               remote_user=getattr(args, "remote_user", None) or cfg.remote_user,
                               private_key=os.path.expanduser(key) if key else None,
                               connection=getattr(args, "connection", None), proxy_jump=ssh.get("proxy_jump"),
                               known_hosts_file=ssh.get("known_hosts_file"), port=ssh.get("port")),
        retry_dir=getattr(args, "retry_dir", None), retry_files=not getattr(args, "no_retry_file", False),
        verbosity=args.verbose)


def run_playbook_command(args, *, check: bool = False) -> int:
    from provision.executor import Executor
    from provision.output import make_reporter
    from provision.playbook import load_playbook, unsupported_tasks, validate
    opts = run_options(args, check=check)           # bad options: exit 5, nothing read or contacted
    path = playbook_path(args)
    listing = next((m for m in LISTINGS if getattr(args, m, False)), None)
    if listing == "syntax_check" and not (args.inventory or args.inventory_pos or ansible_cfg(args).inventory):
        inventory = None                             # ansible-playbook --syntax-check needs no inventory either
    else:
        inventory = load_inventory_arg(args, path)   # bad inventory: exit 4
    playbook = load_playbook(path, ansible_cfg(args).roles_path)   # bad playbook: exit 4
    if inventory is not None:   # undefined variables, host patterns: exit 4 (a bare --syntax-check only parses)
        validate(playbook, inventory, opts.extra_vars, strict=opts.strict)
    if listing:
        for line in unsupported_tasks(playbook, strict=opts.strict):   # modules gpufleet lacks: warnings
            print(f"[WARNING]: {line}", file=sys.stderr)
        from provision.commands.listing import print_listing
        return print_listing(listing, playbook, inventory, opts)
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
