"""`provision upgrade-driver INVENTORY --to VERSION|BRANCH`: rolling NVIDIA driver upgrade (docs/upgrade.md).

Options -> a checked RolloutOptions (no host contacted on bad input) -> the executor runs the rollout strategy
(provision/upgrade/rollout.py): plan, then batches. The connection flags are apply's (add_connection_args)."""
from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time

from provision.commands.apply import add_connection_args, become_password, inventory_path, load_inventory_arg, \
    run_options
from provision.errors import EXIT_FAILED, EXIT_OK, EXIT_OPTIONS, InputError, OptionError
from provision.hostio import ConnectorError
from provision.ops.plan import Cmd
from provision.upgrade import remote as R
from provision.upgrade import states as S
from provision.upgrade.budget import parse_count
from provision.upgrade.rollout import (Rollout, RolloutOptions, controller_id, default_become, default_state_file,
                                       new_rollout_id)
from provision.upgrade.report import Progress, json_report, report_lines
from provision.upgrade.statefile import HostRecord, StateFile, set_aside
from provision.upgrade.steps import StepOptions

_VERSION = re.compile(r"^\d{3}(\.\d+){1,2}$")
_BRANCH = re.compile(r"^\d{3}$")


def add_arguments(p) -> None:
    add_connection_args(p)    # INVENTORY / -i, -l, -f, host keys, timeouts, -F, -u, -b, --become-user, -K, -e, -v
    p.add_argument("--to", dest="to", metavar="VERSION|BRANCH",
                   help="target driver: a full version (580.95.05, also older: a rollback) or a branch (580: newest)")
    p.add_argument("--batch", default=None, metavar="N|P%", help="hosts upgrading at once (default 1)")
    p.add_argument("--max-unavailable", default=None, metavar="N|P%",
                   help="hosts out of service at once, counting hosts already in maintenance (default 25%%)")
    p.add_argument("--max-fail", default=None, metavar="N|P%",
                   help="failures tolerated before no new host starts (default 0)")
    p.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for GPU work to finish (default 600; 0: look once)")
    p.add_argument("--reboot-timeout", type=float, default=None, metavar="S",
                   help="seconds for a host to come back with a new boot id (default 600)")
    p.add_argument("--validate-timeout", type=float, default=None, metavar="S",
                   help="seconds for nvidia-smi to show the target on every GPU (default 300)")
    p.add_argument("--force", action="store_true", default=None,
                   help="after the drain timeout, stop GPU containers gracefully (and start them again after)")
    p.add_argument("--check", action="store_true", help="print the plan and change nothing")
    p.add_argument("--resume", action="store_true", help="continue the rollout recorded in the state file")
    p.add_argument("--state-file", metavar="PATH",
                   help="controller state file (default ~/.local/state/gpufleet/upgrade-<inventory>.json)")
    p.add_argument("--discard-state", action="store_true",
                   help="start a new rollout although the state file holds an unfinished or unreadable one (the "
                        "old file is kept beside it as PATH.discarded-<UTC time>)")
    p.add_argument("--rollback-on-failure", action="store_true", default=None,
                   help="reinstall the previous driver on a host that fails validation (it still counts as failed)")
    p.add_argument("--break-lock", action="append", metavar="HOST", default=[],
                   help="remove the upgrade lock on HOST (repeatable) and exit")
    p.add_argument("--agent-port", type=int, default=None,
                   help=f"gpufleet agent port on the hosts, for the XID check (default {R.DEFAULT_AGENT_PORT})")
    p.add_argument("--container-test-image", default=None,
                   help="image for the GPU container test (run only where Docker, the toolkit and GPUs exist)")
    p.add_argument("--lock-ttl", type=int, default=None, metavar="S",
                   help="seconds a host lock stays valid without renewal (renewed at every step; default 3600)")


def _check_target(to: str | None) -> str:
    if not to:
        raise OptionError("required: the target driver, e.g. --to 580.95.05 or --to 580", key="--to")
    to = to.strip()
    if not (_VERSION.match(to) or _BRANCH.match(to)):
        raise OptionError(f"{to!r} is not a driver version (580.95.05) or branch (580)", key="--to")
    return to


def _positive(v: float, key: str) -> None:
    if v < 0:
        raise OptionError(f"must be >= 0, got {v:g}", key=key)


def _load_hosts(args):
    inv = load_inventory_arg(args)
    return inv, inv.limit(inv.select("all"), args.limit)


def _executor(args, opts, inv):
    """The one engine, with apply's connection options (become password, ssh config, timeouts, -u, -b)."""
    from provision.executor import Executor
    from provision.output import make_reporter
    opts.connect.become_password = become_password(args)
    return Executor(inv, opts, make_reporter(args))


def _break_locks(args, opts, inv) -> int:
    names = list(inv.hosts)
    for name in args.break_lock:
        if name not in inv.hosts:
            from provision.errors import closest
            raise OptionError(f"no host {name!r} in {args.inventory}", key="--break-lock", hint=closest(name, names))

    def one(host, runner, ctx):
        try:
            res = runner.do(ctx, Cmd(R.BREAK_LOCK_SCRIPT, timeout=60))
            owner = res.stdout.replace("BROKEN", "").strip() or "nobody"
            return True, f"{host.name}: lock removed (was held by {owner})"
        except ConnectorError as err:
            return False, f"{host.name}: could not remove the lock: {err}"
    ex = _executor(args, opts, inv)
    done = ex.map_hosts([inv.hosts[n] for n in args.break_lock], one,
                        become_default=lambda h: default_become(h, ex.options.connect.remote_user))
    for name in args.break_lock:
        ok, line = done[name]
        print(line, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if all(ok for ok, _ in done.values()) else EXIT_FAILED


DEFAULTS = {"batch": "1", "max_unavailable": "25%", "max_fail": "0", "drain_timeout": 600.0,
            "reboot_timeout": 600.0, "validate_timeout": 300.0, "force": False, "rollback_on_failure": False,
            "agent_port": R.DEFAULT_AGENT_PORT, "container_test_image": StepOptions.container_test_image,
            "lock_ttl": 3600}


def _fill_options(args, saved: dict | None) -> None:
    """Options not given: from the resumed rollout's state file, else the defaults."""
    for key, default in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, (saved or {}).get(key, default))


def _read_state(path: str, what_now: str) -> StateFile:
    """The state file of an earlier rollout, or one line naming the file and what to do (exit 5): an unreadable
    record of stopped containers, old packages and admin markers is never silently replaced."""
    try:
        return StateFile.load(path)
    except OSError as err:
        why = err.strerror or str(err)
    except ValueError as err:
        why = str(err)
    raise InputError(f"cannot read the state file: {why}; it is kept: {what_now}", file=path,
                     key="--state-file", exit_code=EXIT_OPTIONS)


def main(args) -> int:
    # ---- every option checked before any host is contacted
    args.inventory = inventory_path(args)
    if args.resume and args.discard_state:
        raise OptionError("--discard-state starts a new rollout: it cannot go with --resume", key="--discard-state")
    saved = None
    if args.resume:
        path = args.state_file or default_state_file(args.inventory)
        try:
            with open(path, encoding="utf-8") as fh:
                saved = (json.load(fh) or {}).get("options")
        except (OSError, ValueError, AttributeError):
            saved = None
    _fill_options(args, saved)
    for key, val in (("--drain-timeout", args.drain_timeout), ("--reboot-timeout", args.reboot_timeout),
                     ("--validate-timeout", args.validate_timeout)):
        _positive(val, key)
    opts = run_options(args)                      # apply's connection flags: --forks, timeouts, -e
    batch = parse_count(args.batch, "--batch", allow_zero=False)
    max_unavail = parse_count(args.max_unavailable, "--max-unavailable", allow_zero=False)
    max_fail = parse_count(args.max_fail, "--max-fail")
    if not args.resume and not args.break_lock:
        _check_target(args.to)
    inv, hosts = _load_hosts(args)
    if args.break_lock:
        return _break_locks(args, opts, inv)
    state_path = args.state_file or default_state_file(args.inventory)

    sf = None
    if args.resume:
        if not os.path.exists(state_path):
            raise OptionError(f"no state file {state_path} to resume (give --state-file)", key="--resume")
        sf = _read_state(state_path, "repair it or restore it from a backup, then --resume again")
        target = sf.doc["target"]
        if args.to and _check_target(args.to) != target:
            raise OptionError(f"the rollout in {state_path} goes to {target}, not {args.to}", key="--to")
        missing = [n for n in sf.doc["order"] if n not in inv.hosts]
        if missing:
            raise OptionError(f"hosts of the rollout are no longer in {args.inventory}: {', '.join(missing)}",
                              key="--resume")
        hosts = [inv.hosts[n] for n in sf.doc["order"]]
        rollout, ctrl = sf.doc["rollout"], sf.doc["controller"]
    else:
        target = _check_target(args.to)
        if not hosts:
            raise OptionError(f"no host selected in {args.inventory}", key="--limit")
        if os.path.exists(state_path) and not args.check and not args.discard_state:
            old = _read_state(state_path, "repair it and --resume, or start over with --discard-state (the file is "
                                          "then kept beside the new one)")
            if old.unfinished() and old.doc.get("target"):
                raise OptionError(
                    f"rollout {old.doc['rollout']} in {state_path} is unfinished "
                    f"({', '.join(old.unfinished()[:5])}): continue it with --resume, start over with "
                    "--discard-state, or give another --state-file", key="--state-file")
        rollout = new_rollout_id()
        ctrl = controller_id(rollout)

    steps = StepOptions(target=target, rollout=rollout, controller=ctrl, drain_timeout=args.drain_timeout,
                        reboot_timeout=args.reboot_timeout, validate_timeout=args.validate_timeout,
                        force=args.force, rollback_on_failure=args.rollback_on_failure, lock_ttl=args.lock_ttl,
                        agent_port=args.agent_port, container_test_image=args.container_test_image)
    ropts = RolloutOptions(target=target, batch=batch, max_unavailable=max_unavail, max_fail=max_fail, steps=steps)
    executor = _executor(args, opts, inv)
    progress = Progress(quiet=args.check)
    ro = Rollout(executor, hosts, ropts, progress)
    records = {r.name: r for r in sf.hosts()} if sf else None
    started = time.monotonic()
    plan = ro.gather_plan(ctrl, records)

    if args.check:
        if args.json:
            print(json.dumps({"plan": [vars(h) for h in plan.hosts], "batches": plan.batches,
                              "blocked": plan.blocked, "budget": vars(plan.budget), "target": target}, indent=1))
        else:
            print("\n".join(plan.lines()))
            print("check mode: nothing was changed")
        return EXIT_OK

    for line in plan.lines():
        progress.note(line)
    os.makedirs(os.path.dirname(os.path.abspath(state_path)), exist_ok=True)
    guard = open(state_path + ".lock", "w")
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise OptionError(f"another controller is running this rollout ({state_path}.lock is held)",
                          key="--state-file") from None
    try:
        if sf is None and args.discard_state and os.path.exists(state_path):
            progress.note(f"the earlier state file is kept as {set_aside(state_path)}")
        if sf is None:
            sf = StateFile.new(state_path, rollout_id=rollout, controller=ctrl, inventory=os.path.abspath(
                args.inventory), target=target, options={k: getattr(args, k) for k in DEFAULTS},
                hosts=[HostRecord(h.name) for h in hosts])
        else:
            sf.set("stopped", None)
        progress.note(f"rollout {rollout}: state file {state_path}")
        ro.run(sf, plan)
    finally:
        fcntl.flock(guard, fcntl.LOCK_UN)
        guard.close()
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps(json_report(sf.doc, elapsed), indent=1, sort_keys=True))
    else:
        print("\n".join(report_lines(sf.doc, elapsed)))
    bad = [r for r in sf.hosts() if r.state not in (S.DONE, S.SKIPPED)]
    unreachable = [r for r in sf.hosts() if r.state == S.SKIPPED and (r.skip_reason or "").startswith(
        ("unreachable", "cannot read facts", "locked by"))]
    return EXIT_FAILED if bad or unreachable else EXIT_OK


def register(subparsers) -> None:
    import argparse
    p = subparsers.add_parser("upgrade-driver", help="rolling NVIDIA driver upgrade: drain, upgrade, reboot, "
                                                     "validate, restore; batches, budget, resume",
                              description="Rolling NVIDIA driver upgrade over SSH (docs/upgrade.md), run by the same "
                                          "engine and with the same connection flags as apply.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=main)
