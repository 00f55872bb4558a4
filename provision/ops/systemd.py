"""systemd (alias service): unit state, enablement, masking, daemon-reload; one `systemctl show` probe."""
from __future__ import annotations

from provision.ops.core import Cmd, Op, Plan, q
from provision.ops.spec import ArgSpec, module

_ENABLED = {"enabled", "enabled-runtime", "alias", "static", "indirect", "generated", "linked", "linked-runtime"}


def parse_show(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


@module("systemd", aliases=("service", "systemd_service"), args={
    "name": ArgSpec("str", aliases=("service", "unit")),
    "state": ArgSpec("str", choices=("started", "stopped", "restarted", "reloaded")),
    "enabled": ArgSpec("bool"), "masked": ArgSpec("bool"),
    "daemon_reload": ArgSpec("bool", default=False, aliases=("daemon-reload",)),
    "daemon_reexec": ArgSpec("bool", default=False),
    "no_block": ArgSpec("bool", default=False),
    "scope": ArgSpec("str", default="system", choices=("system",)),
})
class Systemd(Op):
    def show(self, name: str) -> str:
        return (f"systemctl show --property=LoadState,ActiveState,SubState,UnitFileState,FragmentPath --no-pager "
                f"-- {q(name)}")

    def reloads_first(self, args, ctx) -> bool:
        return bool(args.get("name") and args.get("daemon_reload") and not ctx.check)

    def probe(self, args, ctx):
        # with daemon_reload the unit is looked at after the reload: the plan's own read-only command
        return self.show(args["name"]) if args.get("name") and not self.reloads_first(args, ctx) else None

    def plan(self, args, facts, probe, ctx):
        name = args.get("name")
        if not name:
            if args.get("daemon_reload"):
                return Plan([Cmd("systemctl daemon-reload", counts=False)], changed=False, msg="daemon reloaded")
            return Plan(failed=True, msg="systemd needs name (or daemon_reload)")
        if self.reloads_first(args, ctx):   # a failed reload does not stop the task: the unit's state decides
            return Plan([Cmd("systemctl daemon-reload", counts=False, ok_rc=None),
                         Cmd(self.show(name), readonly=True, counts=False, ok_rc=None)],
                        then=lambda _facts, results: self.decide(args, results[1], ctx))
        return self.decide(args, probe, ctx)

    def decide(self, args, probe, ctx) -> Plan:
        """The unit's wanted state against ``systemctl show``'s answer."""
        name = args["name"]
        cmds: list[Cmd] = []
        if probe is not None and probe.rc != 0 and "LoadState" not in probe.stdout:
            return Plan(result=lambda _: {"failed": True, "rc": probe.rc, "msg": "systemctl show failed: "
                                                                                 f"{probe.stderr.strip()[-500:]}"})
        s = parse_show(probe.stdout if probe else "")
        load, active, ufs = s.get("LoadState", ""), s.get("ActiveState", ""), s.get("UnitFileState", "")
        nb = " --no-block" if args.get("no_block") else ""
        diff_b, diff_a = [], []
        masked = args.get("masked")
        is_masked = load == "masked" or ufs in ("masked", "masked-runtime")
        if masked is not None and masked != is_masked:
            cmds.append(Cmd(f"systemctl {'mask' if masked else 'unmask'} -- {q(name)}"))
            diff_b.append(f"masked: {is_masked}")
            diff_a.append(f"masked: {masked}")
            if not masked:
                is_masked = False
        if load == "not-found" and not (ctx.check and args.get("daemon_reload")) and not cmds:
            if args.get("state") or args.get("enabled") is not None:
                return Plan(failed=True, msg=f"Could not find the requested service {name}: host")
        enabled = args.get("enabled")
        if enabled is not None:
            is_enabled = ufs in _ENABLED
            if enabled != is_enabled and not (ufs == "static" and enabled):
                cmds.append(Cmd(f"systemctl {'enable' if enabled else 'disable'} -- {q(name)}"))
                diff_b.append(f"enabled: {ufs or 'unknown'}")
                diff_a.append(f"enabled: {'enabled' if enabled else 'disabled'}")
        state = args.get("state")
        running = active in ("active", "activating", "reloading")
        if state == "started" and not running:
            cmds.append(Cmd(f"systemctl start{nb} -- {q(name)}"))
        elif state == "stopped" and running:
            cmds.append(Cmd(f"systemctl stop{nb} -- {q(name)}"))
        elif state == "restarted":
            cmds.append(Cmd(f"systemctl restart{nb} -- {q(name)}"))
        elif state == "reloaded":
            cmds.append(Cmd(f"systemctl {'reload-or-restart' if running else 'start'}{nb} -- {q(name)}"))
        if state and cmds and cmds[-1].cmd.split()[1] in ("start", "stop", "restart", "reload-or-restart"):
            diff_b.append(f"state: {active or 'unknown'}")
            diff_a.append(f"state: {state}")
        extra = {"name": name, "status": s}
        if not cmds:
            return Plan(noop=f"{name} is {active or 'as wanted'}", extra=extra)
        if args.get("daemon_reload") and ctx.check:
            cmds.insert(0, Cmd("systemctl daemon-reload", counts=False))
        diff = [{"before_header": f"unit {name}", "after_header": f"unit {name}",
                 "before": "".join(x + "\n" for x in diff_b), "after": "".join(x + "\n" for x in diff_a)}]
        return Plan(cmds, diff=diff, extra=extra)

