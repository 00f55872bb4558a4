"""systemd (alias service): unit state, enablement, masking, daemon-reload; one `systemctl show` probe."""
from __future__ import annotations

from provision.ops.core import Cmd, Op, Plan, execute_plan, q
from provision.ops.spec import ArgSpec, module
from provision.results import HostResult

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
    def probe(self, args, ctx):
        if not args.get("name"):
            return None
        pre = "systemctl daemon-reload >/dev/null 2>&1; " if args.get("daemon_reload") and not ctx.check else ""
        return (pre + f"systemctl show {q(args['name'])} --property=LoadState,ActiveState,SubState,UnitFileState,"
                "FragmentPath --no-pager")

    def prefetchable(self, args) -> bool:
        return not args.get("daemon_reload")   # its probe reloads first: not read-only

    def plan(self, args, facts, probe, ctx):
        name = args.get("name")
        cmds: list[Cmd] = []
        if not name:
            if args.get("daemon_reload"):
                return Plan([Cmd("systemctl daemon-reload", counts=False)], changed=False, msg="daemon reloaded")
            return Plan(failed=True, msg="systemd needs name (or daemon_reload)")
        s = parse_show(probe.stdout if probe else "")
        load, active, ufs = s.get("LoadState", ""), s.get("ActiveState", ""), s.get("UnitFileState", "")
        nb = " --no-block" if args.get("no_block") else ""
        diff_b, diff_a = [], []
        masked = args.get("masked")
        is_masked = load == "masked" or ufs in ("masked", "masked-runtime")
        if masked is not None and masked != is_masked:
            cmds.append(Cmd(f"systemctl {'mask' if masked else 'unmask'} {q(name)}"))
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
                cmds.append(Cmd(f"systemctl {'enable' if enabled else 'disable'} {q(name)}"))
                diff_b.append(f"enabled: {ufs or 'unknown'}")
                diff_a.append(f"enabled: {'enabled' if enabled else 'disabled'}")
        state = args.get("state")
        running = active in ("active", "activating", "reloading")
        if state == "started" and not running:
            cmds.append(Cmd(f"systemctl start{nb} {q(name)}"))
        elif state == "stopped" and running:
            cmds.append(Cmd(f"systemctl stop{nb} {q(name)}"))
        elif state == "restarted":
            cmds.append(Cmd(f"systemctl restart{nb} {q(name)}"))
        elif state == "reloaded":
            cmds.append(Cmd(f"systemctl {'reload-or-restart' if running else 'start'}{nb} {q(name)}"))
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

    def run(self, args, ctx) -> HostResult:
        probe_cmd = self.probe(args, ctx)
        probe = ctx.probe(probe_cmd) if probe_cmd else None
        if probe is not None and probe.rc != 0 and "LoadState" not in probe.stdout:
            return HostResult(ctx.host, failed=True, rc=probe.rc, msg=f"systemctl show failed: "
                                                                         f"{probe.stderr.strip()[-500:]}")
        return execute_plan(self.plan(args, ctx.facts, probe, ctx), ctx)
