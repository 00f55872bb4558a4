"""`provision run [-i] INVENTORY HOSTS -m MODULE -a ARGS`: one module on some hosts (ad hoc, as `ansible HOSTS -i
INVENTORY -m`)."""
from __future__ import annotations

import argparse
import json
import sys
import threading

from provision.commands.apply import EXIT_HELP, add_connection_args, become_password, load_inventory_arg, run_options
from provision.errors import InputError, OptionError
from provision.output import SilentHooks
from provision.results import HostResult


class AdhocReporter(SilentHooks):
    """`host | SUCCESS => {...}` lines, as Ansible's ad hoc commands print them."""

    def __init__(self, out=None, json_out: bool = False, diff: bool = False):
        self.out = out or sys.stdout
        self.json_out = json_out
        self.diff = diff
        self.results: dict = {}
        self._lock = threading.Lock()

    def host_result(self, r: HostResult, item: bool = False) -> None:
        d = r.show if r.show is not None else {}
        d = dict(d)
        d["changed"] = r.changed
        for k in ("msg", "stdout", "stderr"):
            v = getattr(r, k)
            if v:
                d[k] = v
        if r.rc is not None:
            d["rc"] = r.rc
        status = ("UNREACHABLE!" if r.unreachable else "FAILED!" if r.failed else "SKIPPED" if r.skipped else
                  "CHANGED" if r.changed else "SUCCESS")
        with self._lock:
            self.results[r.host] = {"status": status, **d}
            if self.json_out:
                return
            if self.diff:
                from provision.ops.core import unified
                for df in r.diff:
                    print(df.get("unified") or unified(df), end="", file=self.out)
            if "stdout" in d and not r.failed and not r.unreachable:
                print(f"{r.host} | {status} | rc={r.rc} >>\n{r.stdout}", file=self.out, flush=True)
            else:
                print(f"{r.host} | {status} => {json.dumps(d, indent=4, default=str)}", file=self.out, flush=True)

    def loop_done(self, r):
        self.host_result(r)

    def recap(self, stats):
        pass

    def dump(self):
        if self.json_out:
            print(json.dumps(self.results, indent=2, default=str), file=self.out)


def parse_module_args(module: str, text: str | None) -> dict:
    """-a text -> args, checked against the module's spec (exit 5 naming the argument)."""
    from provision.ops.spec import registry
    from provision.playbook import _parse_kv, _split_free_form, check_module_args
    from provision.yamlsrc import SourcePos
    reg = registry()
    if module not in reg:
        from provision.errors import closest
        raise OptionError(f"unknown module '{module}'", key="-m", hint=closest(module, [k for k in reg if "." not in k]))
    spec = reg[module]
    pos = SourcePos("<command line>", 0)
    text = (text or "").strip()
    try:
        if not text:
            args = {}
        elif text.startswith("{"):
            args = json.loads(text)
        elif spec.free_form:
            args = _split_free_form(text, spec)
        else:
            args = _parse_kv(text, pos, module)
        check_module_args(spec.name, args, {}, pos)
    except json.JSONDecodeError as err:
        raise OptionError(f"invalid JSON: {err.msg}", key="-a") from None
    except InputError as err:
        raise OptionError(err.message, key=f"-a {err.key}" if err.key else "-a", hint=err.hint) from None
    return args


def cmd_run(args) -> int:
    from provision.executor import Executor
    opts = run_options(args, check=args.check)
    opts.diff = args.diff
    module_args = parse_module_args(args.module, args.args)
    if args.pattern is None:            # `provision run -i INV HOSTS` (or ansible.cfg's inventory)
        args.pattern, args.inventory_pos = args.inventory_pos, None
    if args.pattern is None:
        raise OptionError("a host pattern is required (provision run [INVENTORY] HOSTS -m MODULE)", key="HOSTS")
    inv = load_inventory_arg(args)
    try:
        hosts = inv.select(args.pattern, exit_code=5, key="HOSTS")
    except InputError as err:
        raise OptionError(err.message, key="HOSTS", hint=err.hint) from None
    hosts = inv.limit(hosts, opts.limit)
    opts.connect.become_password = become_password(args)
    rep = AdhocReporter(json_out=args.json, diff=args.diff)
    stats = Executor(inv, opts, rep).run_adhoc(hosts, args.module, module_args, become=opts.become)
    rep.dump()
    return stats.exit_code()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run one module on some hosts (ad hoc)",
        description="Run one module on the hosts matching HOSTS, e.g.\n"
                    "  provision run inv.yaml gpu -m shell -a 'nvidia-smi -L'\n"
                    "  provision run inv.yaml all -m apt -a 'name=htop state=present' -b --check --diff",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inventory_pos", nargs="?", metavar="INVENTORY",
                   help="inventory (or -i INVENTORY, or ansible.cfg's inventory)")
    p.add_argument("pattern", nargs="?", metavar="HOSTS", help="host pattern (all, a group, a host, globs, a:&b ...)")
    p.add_argument("-m", "--module", default="command", help="module name (default command)")
    p.add_argument("-a", "--args", help="module arguments: key=value ..., free-form text, or JSON")
    p.add_argument("-C", "--check", action="store_true", help="report what would change, change nothing")
    p.add_argument("-D", "--diff", action="store_true", help="show changes (secrets masked)")
    add_connection_args(p, inventory_positional=False)
    p.set_defaults(func=cmd_run)
