"""setup, service_facts, package_facts: facts re-read from the host, never a change, also in check mode.

setup re-reads the play's fact sections (provision/facts: one round trip) through the runner, the one fact path;
``gather_subset`` and ``filter`` are accepted (every play fact is re-read; a filter does not hide any).
package_facts re-reads dpkg's section: ``ansible_facts.packages`` maps each installed package to its version (a
string; Ansible gives a list of dicts: ``'x' in ansible_facts.packages`` works the same, ``[0].version`` does not).
service_facts reads systemd's units into ``ansible_facts.services`` as Ansible's does (name, state, status,
source).
"""
from __future__ import annotations

from provision.facts import PLAY_FACTS
from provision.hostio import CommandResult
from provision.ops.core import Cmd, Op, Plan
from provision.ops.plan import Call
from provision.ops.spec import ArgSpec, module


def refresh_plan(sections: tuple, what: str) -> Plan:
    """A plan that re-reads ``sections`` of the host's facts (a read-only step, so check mode runs it too)."""
    def read(runner, ctx) -> CommandResult:
        runner.refresh(sections)
        return CommandResult(0, "", "", 0.0)
    return Plan([Call(read, desc=f"read {what}", counts=False, readonly=True)], changed=False)


@module("setup", aliases=("gather_facts",), args={
    "gather_subset": ArgSpec("list", default=["all"]), "filter": ArgSpec("list"),
    "gather_timeout": ArgSpec("int", default=10), "fact_path": ArgSpec("path", default="/etc/ansible/facts.d"),
})
class Setup(Op):
    def plan(self, args, facts, probe, ctx):
        if str(args.get("fact_path") or "/etc/ansible/facts.d").rstrip("/") != "/etc/ansible/facts.d":
            return Plan(failed=True, msg="setup: only the default fact_path /etc/ansible/facts.d is read")
        return refresh_plan(PLAY_FACTS, "facts")


@module("package_facts", args={"manager": ArgSpec("list", default=["auto"]),
                               "strategy": ArgSpec("str", default="first", choices=("first", "all"))})
class PackageFacts(Op):
    def plan(self, args, facts, probe, ctx):
        bad = [m for m in args.get("manager") or [] if m not in ("auto", "apt")]
        if bad:
            return Plan(failed=True, msg=f"package_facts: manager {bad[0]!r} is not supported (auto, apt)")
        return refresh_plan(("packages",), "installed packages")


SERVICES = ("systemctl list-units --type=service --all --no-legend --no-pager --plain; echo '@@unit-files@@'; "
            "systemctl list-unit-files --type=service --no-legend --no-pager")


def parse_services(text: str) -> dict:
    """`systemctl list-units` (UNIT LOAD ACTIVE SUB ...) then `list-unit-files` (UNIT STATE ...) -> Ansible's
    services dictionary: state running/stopped/failed/unknown, status the unit file's state."""
    units, _, files = text.partition("@@unit-files@@")
    out: dict = {}
    for line in units.splitlines():
        f = line.split()
        if len(f) < 4 or not f[0].endswith(".service"):
            continue
        load, active, sub = f[1], f[2], f[3]
        state = "running" if sub == "running" else "failed" if active == "failed" else \
            "unknown" if load == "not-found" else "stopped"
        out[f[0]] = {"name": f[0], "state": state, "status": "unknown", "source": "systemd"}
    for line in files.splitlines():
        f = line.split()
        if len(f) < 2 or not f[0].endswith(".service"):
            continue
        entry = out.setdefault(f[0], {"name": f[0], "state": "stopped" if "@" not in f[0] else "unknown",
                                      "status": "unknown", "source": "systemd"})
        entry["status"] = f[1]
    return out


@module("service_facts", args={})
class ServiceFacts(Op):
    def plan(self, args, facts, probe, ctx):
        def result(results) -> dict:
            res = results[0]
            if res is None or res.rc != 0 and "@@unit-files@@" not in res.stdout:
                return {"failed": True, "msg": "service_facts: systemctl failed: " + (res.stderr.strip()[-300:]
                                                                                      if res else "")}
            return {"extra": {"ansible_facts": {"services": parse_services(res.stdout)}}}
        return Plan([Cmd(SERVICES, readonly=True, counts=False, ok_rc=None, become=False)], changed=False,
                    result=result)
