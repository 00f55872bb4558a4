"""The rollout as a strategy of the executor: plan (facts from every host), then batches under the budget, each
host driven through its states by :class:`HostUpgrade`; every transition saved atomically in the state file.

The executor (:mod:`provision.executor.rolling`) owns the connections, the workers and the become handling; this
module only decides which hosts go next and records what happened."""
from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from provision.hostio import ConnectorError, Unreachable
from provision.upgrade import remote as R
from provision.upgrade import states as S
from provision.upgrade.agentcheck import agent_access
from provision.upgrade.budget import Budget, Count, next_batch
from provision.upgrade.plan import HostPlan, RolloutPlan, plan_upgrade
from provision.upgrade.report import Progress
from provision.upgrade.statefile import HostRecord, StateFile
from provision.upgrade.steps import HostUpgrade, StepFailed, StepOptions, read_facts


@dataclass
class RolloutOptions:
    target: str
    batch: Count = field(default_factory=lambda: Count(1))
    max_unavailable: Count = field(default_factory=lambda: Count(25, True))
    max_fail: Count = field(default_factory=lambda: Count(0))
    steps: StepOptions | None = None


def new_rollout_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def default_state_file(inventory: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    stem = os.path.splitext(os.path.basename(inventory))[0] or "inventory"
    return os.path.join(base, "gpufleet", f"upgrade-{stem}.json")


def default_become(host: Any, remote_user: str | None = None) -> bool:
    """Without -b and without ansible_become: a host reached as another user than root is upgraded through sudo."""
    user = getattr(host, "user", None) or (getattr(host, "vars", {}) or {}).get("ansible_user") or remote_user
    return bool(user) and str(user) != "root"


class Rollout:
    """The driver upgrade's strategy: ``executor`` runs it (``gather_plan``, then ``run``)."""

    def __init__(self, executor, hosts: list[Any], opts: RolloutOptions, progress: Progress | None = None,
                 on_transition: Callable[[HostRecord, str, str], None] | None = None):
        self.executor = executor
        self.hosts = {getattr(h, "name", str(h)): h for h in hosts}
        self.order = list(self.hosts)
        self.o = opts
        self.progress = progress or Progress(quiet=True)
        self.on_transition = on_transition or (lambda r, a, b: None)
        port = opts.steps.agent_port if opts.steps else R.DEFAULT_AGENT_PORT
        # every host's agent access (TLS, credentials) checked before any host is touched: bad values stop here
        self.agents = {n: agent_access(n, getattr(h, "vars", {}) or {}, port) for n, h in self.hosts.items()}

    def become_default(self, host) -> bool:
        return default_become(host, self.executor.options.connect.remote_user)

    # ------------------------------------------------------------------ plan
    def gather_plan(self, controller: str, records: dict[str, HostRecord] | None = None) -> RolloutPlan:
        """Facts from every selected host in parallel (read only: --check runs exactly this)."""
        records = records or {}
        budget = Budget.resolve(len(self.order), self.o.batch, self.o.max_unavailable, self.o.max_fail)

        def one(host, runner, ctx) -> HostPlan:
            name = host.name
            rec = records.get(name)
            if rec is not None and rec.state in S.TERMINAL:
                why = {S.DONE: f"done earlier in this rollout ({rec.from_version} -> {rec.target})",
                       S.FAILED: f"failed earlier in this rollout: {rec.error}",
                       S.SKIPPED: f"skipped earlier: {rec.skip_reason}"}[rec.state]
                return HostPlan(name, "skip", why, rec.from_version, rec.target,
                                in_maintenance=rec.state == S.FAILED)
            hu = HostUpgrade(name, runner, ctx, HostRecord(name), self.o.steps)
            try:
                f = read_facts(hu.sh)
                if rec is not None and rec.state != S.REQUIRED:
                    return HostPlan(name, "resume", f"resumes in {rec.state}", rec.from_version, rec.target,
                                    in_maintenance=True)
                madison = ""
                drv = f.driver
                if drv is not None:
                    tb = self.o.target if R.is_branch(self.o.target) else R.branch_of(self.o.target)
                    pkg = R.rename_for_branch(drv.package, drv.branch, tb)
                    madison = hu.sh(f"apt-cache madison {R.q(pkg)} 2>/dev/null", timeout=60).stdout
                return plan_upgrade(name, f, madison, self.o.target, controller)
            except Unreachable as err:
                if rec is not None and rec.state not in (S.REQUIRED,):
                    return HostPlan(name, "resume", f"resumes in {rec.state} (unreachable now: {err})",
                                    rec.from_version, rec.target, in_maintenance=True)
                return HostPlan(name, "skip", f"unreachable: {err}", in_maintenance=True)
            except (ConnectorError, StepFailed) as err:
                return HostPlan(name, "skip", f"cannot read facts: {err}", in_maintenance=True)

        by_name = self.executor.map_hosts([self.hosts[n] for n in self.order], one, become_default=self.become_default)
        plans = [by_name[n] for n in self.order]
        plan = RolloutPlan(self.o.target, budget, plans)
        if records:
            plan.resumed = {n: r.state for n, r in records.items() if r.state not in S.TERMINAL | {S.REQUIRED}}
        return plan.compute()

    # ------------------------------------------------------------------ run
    def run(self, sf: StateFile, plan: RolloutPlan) -> StateFile:
        doc = sf.doc
        steps = replace(self.o.steps, rollout=doc["rollout"], controller=doc["controller"])
        budget = plan.budget
        records = {r.name: r for r in sf.hosts()}
        for hp in plan.hosts:                           # plan-time skips become part of the record
            r = records[hp.name]
            if hp.action == "skip" and r.state == S.REQUIRED:
                r.state, r.skip_reason = S.SKIPPED, hp.reason
                r.from_version, r.target = hp.from_version, hp.target
                r.history.append([S.SKIPPED, round(time.time(), 3)])
                sf.put(r)
            elif hp.action == "upgrade" and r.target is None and hp.target:
                r.target = hp.target
                sf.put(r)
        self.progress.begin({r.name: r.state for r in sf.hosts()})
        plans = {h.name: h for h in plan.hosts}

        def unavailable() -> set[str]:
            """Out of service now: skipped hosts in maintenance or unreachable, pending hosts an admin put in
            maintenance, failed hosts, and upgraded hosts that stay in an admin's maintenance."""
            out = set()
            for r in sf.hosts():
                hp = plans.get(r.name)
                if r.state == S.FAILED or (r.state == S.DONE and r.admin_marker is not None):
                    out.add(r.name)
                elif r.state in (S.SKIPPED, S.REQUIRED) and hp is not None and hp.in_maintenance:
                    out.add(r.name)
            return out
        in_flight_first = [n for n in self.order if sf.host(n).state in S.IN_FLIGHT]
        pending = in_flight_first + [n for n in self.order if sf.host(n).state == S.REQUIRED]
        n_batches_est = max(1, len(plan.batches) + (1 if in_flight_first else 0))
        i = int(doc.get("batches_done", 0))

        self._sf, self._budget, self._steps, self._unavailable = sf, budget, steps, unavailable
        self._pending, self._batch_no, self._n_batches = pending, i, n_batches_est
        self.executor.run_rolling(self.hosts, self, become_default=self.become_default)
        self.progress.end()
        return sf

    # -- the strategy's three calls (provision.executor.rolling) --------------------------------------
    def next_batch(self) -> tuple[list[str], str | None]:
        sf, budget, pending = self._sf, self._budget, self._pending
        if not pending:
            return [], None
        failures = sum(1 for r in sf.hosts() if r.state == S.FAILED)
        if budget.exceeded(failures):
            why = f"{failures} failure(s) exceed max-fail {budget.max_fail}: no new host started"
            sf.set("stopped", why)
            return [], why
        resumed = [n for n in pending if sf.host(n).state in S.IN_FLIGHT]
        if resumed:                                   # hosts caught mid-way by a dead controller go first
            batch, why = resumed[:max(budget.batch, len(resumed))], None
        else:
            batch, why = next_batch(pending, self._unavailable(), budget)
        if not batch:
            sf.set("stopped", why)
            return [], why
        self._batch_no += 1
        for n in batch:
            r = sf.host(n)
            r.batch = self._batch_no
            sf.put(r)
        self.progress.set_batch(self._batch_no, max(self._batch_no, self._n_batches), batch)
        return batch, None

    def run_host(self, host, runner, ctx) -> HostRecord:
        sf = self._sf

        def commit(rec: HostRecord) -> None:
            sf.put(rec)
            self.progress.set_state(rec.name, rec.state)

        hu = HostUpgrade(host.name, runner, ctx, sf.host(host.name), self._steps, commit=commit,
                         emit=self.progress.event, on_transition=self.on_transition, agent=self.agents[host.name])
        return hu.run()

    def batch_done(self, batch: list[str]) -> None:
        # an admin-maintenance host that was upgraded stays out of service; others come back
        self._sf.set("batches_done", self._batch_no)
        self._pending = [n for n in self._pending if n not in batch]


def controller_id(rollout: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{rollout}"
