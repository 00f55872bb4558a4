"""Rolling driver upgrade as playbook tasks: upgrade_drain, upgrade_install, upgrade_reboot, upgrade_validate,
upgrade_restore. Each runs the same idempotent step code as ``provision upgrade-driver``
(:mod:`provision.upgrade.steps`); the per-host record lives on the host (/var/lib/gpufleet/upgrade-host.json), so
the tasks of one play share it and a re-run of the play continues where it stopped. Batches and the failure budget
come from the play's ``serial`` and ``max_fail_percentage`` (playbooks/driver-upgrade.yaml)."""
from __future__ import annotations

import json
import re
import socket

from provision.hostio import CommandResult, ConnectorError
from provision.ops.core import Op
from provision.ops.plan import Call, Plan
from provision.ops.spec import ArgSpec, module
from provision.upgrade import remote as R
from provision.upgrade import states as S
from provision.upgrade.statefile import HostRecord
from provision.upgrade.steps import HostUpgrade, StepFailed, StepOptions, read_facts

COMMON = {
    "to": ArgSpec("str", required=True),
    "rollout": ArgSpec("str"),              # default: playbook:<to>
    "poll": ArgSpec("float", default=2.0),
}
_TARGET = re.compile(r"\d{3}(\.\d+){1,2}")


class _StepOp(Op):
    stop_at: frozenset = frozenset()
    verb = ""

    def options(self, args) -> StepOptions:
        to = str(args["to"]).strip()
        rollout = args.get("rollout") or f"playbook:{to}"
        return StepOptions(target=to, rollout=rollout, controller=f"{socket.gethostname()}:{rollout}",
                           poll=float(args.get("poll") or 2.0), **self.extra(args))

    def extra(self, args) -> dict:
        return {}

    def plan(self, args, facts, probe, ctx) -> Plan:
        """One Call: the step code drives the host through the runner (in check mode it only reads)."""
        if not R.is_branch(str(args["to"])) and not _TARGET.fullmatch(str(args["to"])):
            return Plan(failed=True, msg=f"to: {args['to']!r} is not a driver version or branch")
        out: dict = {}

        def step(runner, c) -> CommandResult:
            out.update(self.drive(args, runner, c))
            return CommandResult(0, "", "")
        return Plan([Call(step, desc=f"{self.verb} -> {args['to']}", readonly=ctx.check)], result=lambda rs: out)

    def drive(self, args, runner, ctx) -> dict:
        """The HostResult fields of this step, for one host."""
        o = self.options(args)
        hu = HostUpgrade(ctx.host, runner, ctx, HostRecord(ctx.host), o,
                         emit=lambda h, m: ctx.log and ctx.log("v", f"{h}: {m}"))
        try:
            raw = R.parse_json(hu.sh(f"cat {R.HOST_RECORD} 2>/dev/null").stdout) or {}
        except ConnectorError as err:
            return {"unreachable": True, "changed": False, "msg": str(err)}
        rec = HostRecord.from_dict(raw) if raw.get("rollout") == o.rollout and raw.get("name") else \
            HostRecord(ctx.host)
        if rec.state in (S.DONE, S.SKIPPED):
            rec = HostRecord(ctx.host)          # finished before: decide again from what the host runs now
        if rec.state == S.FAILED:
            return {"failed": True, "changed": False,
                    "msg": f"failed earlier in {o.rollout}: {rec.error} (host stays in maintenance)"}
        first_stop = min(self.stop_at, key=S.STATES.index)
        if rec.state not in S.TERMINAL and S.STATES.index(rec.state) >= S.STATES.index(first_stop):
            return {"changed": False, "msg": f"already past {self.verb} ({rec.state})",
                    "extra": {"upgrade_state": rec.state}}
        hu.rec = rec
        hu._commit = lambda r: hu.save_record()
        if rec.state == S.REQUIRED:
            try:
                f = read_facts(hu.sh)
                tb = o.target if R.is_branch(o.target) else R.branch_of(o.target)
                drv = f.driver
                madison = hu.sh(f"apt-cache madison {R.q(R.rename_for_branch(drv.package, drv.branch, tb))}"
                                ).stdout if drv else ""
                avail = R.pick_version(R.parse_madison(madison), o.target)
                full = R.upstream(avail) if avail else (None if R.is_branch(o.target) else o.target)
                if full and f.at_target(full):
                    if ctx.check:
                        return {"changed": False, "msg": f"already at {full}"}
                    rec.state, rec.skip_reason, rec.target = S.SKIPPED, f"already at {full}", full
                    hu.save_record()
                    return {"changed": False, "msg": rec.skip_reason, "extra": {"upgrade_state": S.SKIPPED}}
                rec.target = full
            except (ConnectorError, StepFailed) as err:
                return {"failed": True, "changed": False, "msg": str(err)}
        if ctx.check:
            return {"changed": True, "msg": f"would {self.verb} (now {rec.state})",
                    "commands": [f"{self.verb} -> {o.target}"]}
        rec = hu.run(stop_at=self.stop_at)
        res = {"changed": True, "msg": f"{self.verb}: {rec.state}",
               "extra": {"upgrade_state": rec.state, "upgrade": json.loads(json.dumps(
                   {k: getattr(rec, k) for k in ("from_version", "target", "stopped_containers", "checks", "notes",
                                                 "error")}))}}
        if rec.state == S.SKIPPED:
            res["changed"], res["msg"] = False, rec.skip_reason or "skipped"
        elif rec.state == S.FAILED:
            res["failed"], res["msg"] = True, f"{rec.error} (host stays in maintenance)"
        return res


_TIMEOUTS = {"drain_timeout": ArgSpec("float", default=600.0), "force": ArgSpec("bool", default=False)}


@module("upgrade_drain", args={**COMMON, **_TIMEOUTS})
class UpgradeDrain(_StepOp):
    """Lock, maintenance marker, wait for GPU work (stop GPU containers with force)."""
    stop_at = frozenset({S.UPGRADING})
    verb = "drain"

    def extra(self, args):
        return {"drain_timeout": float(args.get("drain_timeout") or 0), "force": bool(args.get("force"))}


@module("upgrade_install", args=dict(COMMON))
class UpgradeInstall(_StepOp):
    """Unhold, install the target driver (+ fabric manager at the same version), hold."""
    stop_at = frozenset({S.REBOOTING})
    verb = "install"


@module("upgrade_reboot", args={**COMMON, "reboot_timeout": ArgSpec("float", default=600.0)})
class UpgradeReboot(_StepOp):
    """Reboot; the boot id must change and SSH come back within reboot_timeout."""
    stop_at = frozenset({S.VALIDATING})
    verb = "reboot"

    def extra(self, args):
        return {"reboot_timeout": float(args.get("reboot_timeout") or 600)}


@module("upgrade_validate", args={**COMMON, "validate_timeout": ArgSpec("float", default=300.0),
                                  "agent_port": ArgSpec("int", default=R.DEFAULT_AGENT_PORT),
                                  "rollback_on_failure": ArgSpec("bool", default=False)})
class UpgradeValidate(_StepOp):
    """nvidia-smi at the target on every PCI GPU, no XID since the reboot, GPU container test where possible."""
    stop_at = frozenset({S.RESTORING})
    verb = "validate"

    def extra(self, args):
        return {"validate_timeout": float(args.get("validate_timeout") or 300),
                "agent_port": int(args.get("agent_port") or R.DEFAULT_AGENT_PORT),
                "rollback_on_failure": bool(args.get("rollback_on_failure"))}


@module("upgrade_restore", args=dict(COMMON))
class UpgradeRestore(_StepOp):
    """Start exactly the containers the drain stopped; remove the marker unless an admin had put it there."""
    stop_at = frozenset({S.DONE})
    verb = "restore"
