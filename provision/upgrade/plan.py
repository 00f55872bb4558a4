"""The plan of a rollout (pure): which hosts upgrade, which are skipped and why, the batches, what stops it."""
from __future__ import annotations

from dataclasses import dataclass, field

from provision.facts.gpu import non_apt_reason
from provision.upgrade import remote as R
from provision.upgrade.budget import Budget, plan_batches


@dataclass
class HostPlan:
    name: str
    action: str                      # upgrade | skip | resume
    reason: str = ""
    from_version: str | None = None
    target: str | None = None        # resolved full version when known
    packages: str = ""               # e.g. nvidia-driver-570-open -> nvidia-driver-580-open (+ fabric manager)
    in_maintenance: bool = False     # out of service now (marker, failed earlier, unreachable)
    maintenance_by: str = ""


def plan_upgrade(name: str, facts, madison: str, target: str, controller: str = "") -> HostPlan:
    """Decide one host from its facts (steps.Facts) and `apt-cache madison` of its target packages."""
    marker = facts.marker
    in_maint = marker is not None
    by = str((marker or {}).get("by", "")) if marker else ""
    drv = facts.driver
    running = facts.smi.driver_version if facts.smi.ok else None
    if drv is None:
        why = non_apt_reason(facts.origin, running) if facts.origin in ("runfile", "preinstalled") else \
            "no NVIDIA driver package installed (nothing to upgrade)"
        return HostPlan(name, "skip", why, running, None, in_maintenance=in_maint, maintenance_by=by)
    avail = R.parse_madison(madison)
    resolved = R.pick_version(avail, target)
    full = R.upstream(resolved) if resolved else (None if R.is_branch(target) else target)
    lock = facts.lock or {}
    if lock and lock.get("expires", 0) >= facts.now and lock.get("controller") != controller:
        return HostPlan(name, "skip", f"locked by {lock.get('controller')} (rollout {lock.get('rollout')}) until "
                                      f"host time {lock.get('expires')}", running, full, in_maintenance=in_maint,
                        maintenance_by=by)
    installed_at = R.upstream(drv.version)
    if full and running == full and installed_at == full:
        return HostPlan(name, "skip", f"already at {full}", running, full, in_maintenance=in_maint,
                        maintenance_by=by)
    if R.is_branch(target) and not full and running and R.branch_of(running) == target \
            and R.branch_of(installed_at) == target:
        return HostPlan(name, "skip", f"already on branch {target} ({running}; apt lists know no newer)", running,
                        running, in_maintenance=in_maint, maintenance_by=by)
    new_branch = (full and R.branch_of(full)) or (target if R.is_branch(target) else R.branch_of(target))
    new_pkg = R.rename_for_branch(drv.package, drv.branch, new_branch)
    pk = f"{drv.package} {installed_at} -> {new_pkg} {full or target + ' (newest; resolved after apt update)'}"
    if drv.fabricmanager or facts.pci.nvswitches:
        pk += " + nvidia-fabricmanager at the same version"
    if full and not resolved and avail:
        pk += f" (warning: apt lists on the host do not show {full} yet)"
    why = f"running {running or 'unknown (nvidia-smi: ' + facts.smi.message[:60] + ')'}"
    return HostPlan(name, "upgrade", why, running or installed_at, full, pk, in_maint, by)


@dataclass
class RolloutPlan:
    target: str
    budget: Budget
    hosts: list[HostPlan]
    batches: list[list[str]] = field(default_factory=list)
    blocked: str | None = None
    resumed: dict = field(default_factory=dict)      # host -> state it resumes in

    @property
    def pending(self) -> list[str]:
        return [h.name for h in self.hosts if h.action in ("upgrade", "resume")]

    def unavailable(self) -> set[str]:
        return {h.name for h in self.hosts if h.in_maintenance}

    def compute(self) -> "RolloutPlan":
        self.batches, self.blocked = plan_batches(self.pending, self.unavailable(), self.budget)
        return self

    def lines(self) -> list[str]:
        b = self.budget
        out = [f"PLAN driver upgrade to {self.target}: {len(self.hosts)} host(s) selected, "
               f"{len(self.pending)} to upgrade; batch {b.batch}, max-unavailable {b.max_unavailable} "
               f"(counting hosts already in maintenance), max-fail {b.max_fail}"]
        for h in self.hosts:
            maint = f" [in maintenance{': ' + h.maintenance_by if h.maintenance_by else ''}]" if h.in_maintenance \
                else ""
            if h.action == "skip":
                out.append(f"  skip     {h.name}: {h.reason}{maint}")
            elif h.action == "resume":
                out.append(f"  resume   {h.name}: {h.reason}{maint}")
            else:
                out.append(f"  upgrade  {h.name}: {h.reason}; {h.packages}{maint}")
        for i, batch in enumerate(self.batches, 1):
            out.append(f"  batch {i}: {', '.join(batch)}")
        if self.blocked:
            left = [n for n in self.pending if not any(n in bt for bt in self.batches)]
            out.append(f"  STOPS before {', '.join(left)}: {self.blocked}")
        out.append(f"  stops early when failures exceed {b.max_fail}: no new host starts, hosts in flight finish, "
                   "failed hosts stay in maintenance")
        return out
