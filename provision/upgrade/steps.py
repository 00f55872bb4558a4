"""One host's way through the state machine: the step of each state, idempotent so that --resume (or a playbook
task run twice) can re-enter it. It holds no connection: every command goes as a command object through the
executor's runner (``runner.do(ctx, ...)``): shell commands, file puts, the reboot-and-wait."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from provision import facts as factmod
from provision.facts.gpu import driver_origin, nvidia_on_bus, smi_problem
from provision.hostio import CommandResult, CommandTimeout, ConnectorError, Unreachable
from provision.ops.plan import Cmd, FilePut, RebootAndWait
from provision.errors import InputError
from provision.upgrade import remote as R
from provision.upgrade import states as S
from provision.upgrade.agentcheck import METRICS_COMMAND, AgentAccess, agent_access, metrics_program, xid_verdict
from provision.upgrade.statefile import HostRecord

APT_ENV = "DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a"


@dataclass(frozen=True)
class StepOptions:
    target: str                          # requested: full upstream version or a branch ('580')
    rollout: str = "adhoc"
    controller: str = field(default_factory=lambda: f"{socket.gethostname()}:adhoc")
    drain_timeout: float = 600.0         # 0: look once
    reboot_timeout: float = 600.0
    validate_timeout: float = 300.0
    apt_lock_timeout: int = 600
    force: bool = False
    rollback_on_failure: bool = False
    poll: float = 2.0
    stop_grace: int = 30                 # docker stop -t
    lock_ttl: int = 3600
    agent_port: int = R.DEFAULT_AGENT_PORT
    container_test_image: str = "nvidia/cuda:12.8.0-base-ubuntu22.04"
    unreachable_retry: float = 90.0      # seconds a step is retried after a lost/refused connection


class StepFailed(Exception):
    """The host failed this step; the message says why and what was left as it was."""


class LockHeld(Exception):
    def __init__(self, owner: dict, note: str = ""):
        super().__init__(note or f"locked by {owner.get('controller', '?')} (rollout {owner.get('rollout', '?')}, "
                                 f"expires {time.strftime('%H:%M:%S', time.localtime(owner.get('expires', 0)))})")
        self.owner = owner


@dataclass(frozen=True)
class Smi:
    """What the upgrade reads of the ``nvidia_smi`` section."""
    rc: int
    driver_version: str | None
    bus_ids: tuple[str, ...]
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.driver_version is not None


@dataclass(frozen=True)
class Pci:
    gpus: tuple[str, ...]
    nvswitches: tuple[str, ...]


# the fact sections the upgrade reads (provision/facts), plus its own two files, in one round trip
SECTIONS = ("boot_id", "apt_cache", "nvidia_smi", "pci", "packages", "maintenance", "upgrade_state",
            "docker_runtimes", "container_toolkit", "nvidia_devnodes", "nvidia_module", "nvidia_runfile")
OWN_FILES = (("record", f"cat {R.HOST_RECORD}"), ("lock", f"cat {R.LOCK_DIR}/owner"))
FACTS_SCRIPT = factmod.section_script([(n, factmod.FACTS[n].command) for n in SECTIONS] + list(OWN_FILES))


@dataclass
class Facts:
    boot_id: str
    now: int
    smi: Smi
    pci: Pci
    installed: dict
    holds: list
    marker_text: str
    marker: dict | None
    state: dict | None
    record: dict | None
    lock: dict | None
    docker: bool
    toolkit: bool
    devnodes: bool
    origin: str = "none"          # where the driver came from (facts.gpu.driver_origin): apt, runfile...

    @property
    def driver(self) -> R.DriverInstall | None:
        return R.find_driver(self.installed)

    def at_target(self, target: str) -> bool:
        """Running AND installed at the target: nothing to do."""
        drv = self.driver
        return bool(self.smi.ok and R.matches_target(self.smi.driver_version, target)
                    and drv and R.matches_target(drv.version, target))


def parse_facts(text: str) -> Facts:
    """The output of :data:`FACTS_SCRIPT` -> the upgrade's view of the host (pure)."""
    f = factmod.parse(text, SECTIONS)
    own = factmod.split_sections(text)
    smi = f.get("nvidia_smi") or {}
    gpus = smi.get("gpus") or []
    ok = smi.get("rc") == 0 and bool(gpus)
    bus = nvidia_on_bus(f.get("pci_devices") or [])
    marker_text = f.get("maintenance_reason", "") if f.get("maintenance") else ""
    marker = R.parse_json(marker_text) if marker_text.strip() else None
    if marker_text.strip() and not isinstance(marker, dict):
        marker = {"reason": marker_text.strip()[:200], "by": "unknown", "since": 0}
    return Facts(
        boot_id=f.get("boot_id", ""), now=int(f.get("date_epoch") or 0),
        smi=Smi(0 if ok else (smi.get("rc") or 1), gpus[0]["driver_version"] if ok else None,   # no GPU row: rc 1
                tuple(g["bus_id"] for g in gpus), "" if ok else smi_problem(smi)),
        pci=Pci(tuple(bus["gpus"]), tuple(bus["nvswitches"])), installed=dict(f.get("packages") or {}),
        holds=list(f.get("held_packages") or []), marker_text=marker_text, marker=marker,
        state=f.get("upgrade_state"), record=R.parse_json(own.get("record", "")),
        lock=R.parse_json(own.get("lock", "")), docker=f.get("docker_runtimes") is not None,
        toolkit=bool(f.get("container_toolkit")), devnodes=bool(f.get("nvidia_devnodes")),
        origin=driver_origin(f.get("packages") or {}, (f.get("nvidia_module") or {}).get("version")
                             or (gpus[0]["driver_version"] if gpus else None), f.get("nvidia_runfile")))


def read_facts(sh: Callable[..., CommandResult]) -> Facts:
    """The upgrade's facts in one round trip; ``sh(cmd, timeout=)`` runs a command (HostUpgrade.sh)."""
    res = sh(FACTS_SCRIPT, timeout=60)
    if f"{factmod.MARK} end" not in res.stdout:
        raise StepFailed(f"cannot read host facts (rc {res.rc}): {res.stderr.strip()[:200]}")
    return parse_facts(res.stdout)


def marker_is_ours(marker: dict | None) -> bool:
    return bool(marker) and str(marker.get("by", "")).startswith(R.MARKER_BY_PREFIX)


class HostUpgrade:
    """Drives one host from its record's state to done or failed.

    ``commit(rec)`` persists the record (controller state file) and is called at every transition and before
    any action whose effect must be remembered (admin marker seen, containers about to be stopped, boot id before
    the reboot).  ``emit(host, message)`` reports progress.
    """

    def __init__(self, name: str, runner: Any, ctx: Any, rec: HostRecord, opts: StepOptions,
                 commit: Callable[[HostRecord], None] = lambda r: None,
                 emit: Callable[[str, str], None] = lambda h, m: None,
                 on_transition: Callable[[HostRecord, str, str], None] = lambda r, a, b: None,
                 agent: AgentAccess | None = None):
        self.name, self.runner, self.ctx, self.rec, self.o = name, runner, ctx, rec, opts
        self.agent = agent          # the agent's TLS and credentials (None: from the task's variables)
        self._commit, self._emit, self._on_transition = commit, emit, on_transition

    # ------------------------------------------------------------------ plumbing
    def drop(self) -> None:
        """Forget the connection (lost or refused): the runner reopens it for the next command."""
        self.runner.drop()

    def sh(self, cmd: str, timeout: float = 120, check: bool = False, what: str = "",
           dpkg_lock: bool = False) -> CommandResult:
        res = self.runner.do(self.ctx, Cmd(cmd, timeout=timeout, dpkg_lock=dpkg_lock))
        if check and res.rc != 0:
            tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
            raise StepFailed(f"{what or cmd.split()[0]} failed (rc {res.rc}): {' | '.join(tail)[:400]}")
        return res

    def commit(self) -> None:
        self._commit(self.rec)

    def advance(self, event: str) -> None:
        old = self.rec.state
        new = S.transition(old, event)
        self.rec.state = new
        self.rec.history.append([new, round(time.time(), 3)])
        self.commit()
        self._emit(self.name, f"{old} -> {new}" + (f": {self.rec.error}" if new == S.FAILED and self.rec.error
                                                    else ""))
        self._on_transition(self.rec, old, new)

    def target(self) -> str:
        if self.rec.phase == "rollback":
            return self.rec.from_version or ""
        return self.rec.target or self.o.target

    def event_doc(self, what: str, **extra) -> dict:
        return {"ts": round(time.time(), 3), "rollout": self.o.rollout, "host": self.name, "event": what, **extra}

    def event(self, what: str, **extra) -> None:
        """Append an event to the host's log (its audit trail; the reboot's goes with the reboot itself)."""
        self.sh(R.append_event_script(self.event_doc(what, **extra)), timeout=30)

    def write(self, path: str, doc: dict, what: str) -> None:
        """A small JSON file on the host, on disk before it replaces the old one (a reboot may follow)."""
        res = self.runner.do(self.ctx, FilePut(path, json.dumps(doc, sort_keys=True).encode(), mode=0o644,
                                               make_parent=True, fsync=True))
        if res.rc != 0:
            raise StepFailed(f"{what} failed (rc {res.rc}): {(res.stderr.strip() or res.stdout.strip())[-400:]}")

    def save_record(self, state: str | None = None) -> None:
        """The step record on the host itself (playbook mode keeps its state there; also a recovery aid)."""
        rec = dict(asdict(self.rec), rollout=self.o.rollout, controller=self.o.controller,
                   host_state=state or self.rec.state, requested=self.o.target)
        self.write(R.HOST_RECORD, rec, "write host record")

    def mark_state(self, state: str) -> None:
        self.write(R.STATE_FILE, {"state": state, "target": self.target(), "since": int(time.time())},
                   "write state")
        self.save_record(state)

    # ------------------------------------------------------------------ the loop
    def run(self, stop_at: frozenset = frozenset()) -> HostRecord:
        """Drive the host until a terminal state (or, for a playbook task, until one of ``stop_at``)."""
        steps = {S.REQUIRED: self.step_required, S.DRAINING: self.step_drain, S.UPGRADING: self.step_upgrade,
                 S.REBOOTING: self.step_reboot, S.VALIDATING: self.step_validate, S.RESTORING: self.step_restore}
        retry_until: dict[str, float] = {}
        while self.rec.state in steps and self.rec.state not in stop_at:
            try:
                event = steps[self.rec.state]()
            except Unreachable as err:
                # a dropped or refused connection outside the reboot: every step is idempotent, so
                # re-enter it after reconnecting, for up to unreachable_retry seconds per state
                st = self.rec.state
                until = retry_until.setdefault(st, time.monotonic() + self.o.unreachable_retry)
                self.drop()
                if time.monotonic() < until:
                    self._emit(self.name, f"connection problem in {st} ({err}); retrying the step")
                    time.sleep(min(5.0, max(0.5, self.o.poll)))
                    continue
                self.rec.error = f"{st}: unreachable: {err}"
                event = S.FAIL
            except LockHeld as err:
                self.rec.state, self.rec.skip_reason = S.SKIPPED, str(err)
                self.rec.history.append([S.SKIPPED, round(time.time(), 3)])
                self.commit()
                self._emit(self.name, f"skipped: {err}")
                break
            except (StepFailed, ConnectorError) as err:
                kind = "unreachable: " if isinstance(err, Unreachable) else \
                    "timed out: " if isinstance(err, CommandTimeout) else ""
                self.rec.error = f"{self.rec.state}: {kind}{err}"
                self.drop()
                event = S.FAIL
            if event is None:
                break
            self.advance(event)
        if self.rec.state == S.FAILED:
            self._finish_failed()
        return self.rec

    def _finish_failed(self) -> None:
        """A failed host stays in maintenance; its state is exported and its lock released (best effort)."""
        try:
            self.mark_state(S.FAILED)
            self.event("failed", error=self.rec.error)
            self.sh(R.unlock_script(self.o.controller), timeout=60)
        except (ConnectorError, StepFailed) as err:
            self.rec.notes.append(f"could not record the failure on the host: {err}")
            self.commit()

    # ------------------------------------------------------------------ required: lock, remember what was
    def take_lock(self) -> None:
        owner = {"controller": self.o.controller, "rollout": self.o.rollout}
        res = self.sh(R.lock_script(owner, self.o.lock_ttl), timeout=60)
        taken, cur, note = R.parse_lock_reply(res.stdout)
        if not taken:
            raise LockHeld(cur, note)
        if note:
            self.rec.notes.append(note)

    def step_required(self) -> str:
        self.take_lock()
        f = read_facts(self.sh)
        if not self.rec.from_packages:
            drv = f.driver
            if drv is None:
                raise StepFailed("no NVIDIA driver package installed (nvidia-driver-<branch>[-open]); install "
                                 "one with the nvidia_driver role first")
            self.rec.from_version = (f.smi.driver_version if f.smi.ok else None) or R.upstream(drv.version)
            self.rec.from_packages = {p: f.installed[p] for p in drv.family}
            if drv.fabricmanager:
                self.rec.from_packages[drv.fabricmanager] = f.installed[drv.fabricmanager]
        self.commit()
        return S.START

    # ------------------------------------------------------------------ draining
    def gpu_work(self) -> tuple[list[dict], list[str], str]:
        res = self.sh(R.GPU_CONTAINERS_SCRIPT, timeout=60)
        if res.rc != 0:
            raise StepFailed(f"cannot list containers (rc {res.rc}): {res.stderr.strip()[:200]}")
        containers = R.containers_holding_gpus(res.stdout)
        procs, why = R.parse_compute_apps(self.sh(R.COMPUTE_APPS_SCRIPT, timeout=60).stdout)
        return containers, procs or [], why

    def step_drain(self) -> str:
        if not self.rec.marker_checked:
            f = read_facts(self.sh)
            if f.marker is not None and not marker_is_ours(f.marker):
                self.rec.admin_marker = f.marker
            elif f.marker is not None and f.record and f.record.get("admin_marker"):
                self.rec.admin_marker = f.record["admin_marker"]   # our marker, over an admin's from a past run
            self.rec.marker_checked = True
            self.commit()                       # remember BEFORE our marker hides the admin's absence
            self.event("drain-start", admin_marker=self.rec.admin_marker is not None)
        else:
            self.event("drain-resume")
        if self.rec.admin_marker is None:
            marker = {"reason": f"gpufleet driver upgrade to {self.target()} (rollout {self.o.rollout})",
                      "since": int(time.time()), "by": f"{R.MARKER_BY_PREFIX}@{self.o.controller}"}
            cur = self.sh(f"cat {R.MARKER} 2>/dev/null", timeout=30).stdout
            if not marker_is_ours(R.parse_json(cur)):
                self.write(R.MARKER, marker, "write maintenance marker")
        self.mark_state(S.DRAINING)

        deadline = time.monotonic() + max(0.0, self.o.drain_timeout)
        while True:
            containers, procs, why = self.gpu_work()
            if why:
                self.rec.checks["drain_processes"] = f"skipped: {why}"
            if not containers and not procs:
                return S.DRAINED
            if time.monotonic() >= deadline:
                break
            self._emit(self.name, f"waiting for GPU work: {len(containers)} container(s), {len(procs)} process(es)")
            time.sleep(min(self.o.poll, max(0.1, deadline - time.monotonic())))
        names = ", ".join(c["name"] or c["id"][:12] for c in containers)
        busy = "; ".join(x for x in (f"containers {names}" if containers else "",
                                     f"processes {', '.join(procs)}" if procs and not containers else "") if x)
        if not self.o.force:
            raise StepFailed(f"drain timeout after {self.o.drain_timeout:g}s: GPU work still running ({busy}); "
                             "left running, host stays in maintenance (use --force to stop GPU containers)")
        known = {c["id"] for c in self.rec.stopped_containers}
        self.rec.stopped_containers += [{"id": c["id"], "name": c["name"]} for c in containers if c["id"] not in known]
        self.commit()                           # remember BEFORE stopping: restore starts exactly these
        ids = " ".join(R.q(c["id"]) for c in containers)
        self.sh(f"docker stop -t {int(self.o.stop_grace)} -- {ids}", timeout=self.o.stop_grace + 120, check=True,
                what="docker stop")
        self.event("stop-containers", containers=[c["name"] or c["id"] for c in containers])
        end = time.monotonic() + 30
        while True:
            containers, procs, _ = self.gpu_work()
            if not containers and not procs:
                return S.DRAINED
            if time.monotonic() >= end:
                raise StepFailed(f"GPU work left after stopping containers: containers "
                                 f"{[c['name'] for c in containers]}, processes {procs} (processes outside "
                                 "containers are never killed)")
            time.sleep(self.o.poll)

    # ------------------------------------------------------------------ upgrading
    def wanted_packages(self, f: Facts) -> tuple[dict[str, str], list[str], str]:
        """(package -> Debian version to install, packages to remove, upstream version) for the current phase."""
        if self.rec.phase == "rollback":
            want = dict(self.rec.from_packages)
            went_to = R.upstream(self.rec.target or "")
            remove = sorted(p for p, v in f.installed.items()
                            if p not in want and R._NV_FAMILY.match(p) and R.upstream(v) == went_to)
            return want, remove, self.rec.from_version or ""
        old = R.find_driver(self.rec.from_packages)
        if old is None:
            raise StepFailed("the state holds no previous driver packages")
        target = self.rec.target or self.o.target
        new_branch = R.branch_of(target) if not R.is_branch(target) else target
        names = {p: R.rename_for_branch(p, old.branch, new_branch) for p in self.rec.from_packages}
        if f.pci.nvswitches and not any(n.startswith("nvidia-fabricmanager") for n in names.values()):
            names["(nvswitch)"] = f"nvidia-fabricmanager-{new_branch}"
        res = self.sh(f"apt-cache madison {' '.join(R.q(n) for n in sorted(set(names.values())))}", timeout=120)
        avail: dict[str, list[str]] = {}
        for ln in res.stdout.splitlines():
            parts = [p.strip() for p in ln.split("|")]
            if len(parts) >= 3:
                avail.setdefault(parts[0], []).append(parts[1])
        main_new = names[old.package]
        version = R.pick_version(avail.get(main_new, []), target)
        if version is None:
            have = ", ".join(R.upstream(v) for v in avail.get(main_new, [])[:6]) or "none"
            raise StepFailed(f"{main_new} {target} is not in the host's apt sources (available: {have})")
        up = R.upstream(version)
        want = {}
        for src, new in names.items():
            v = R.pick_version(avail.get(new, []), up)
            if v is not None:
                want[new] = v
            elif new.startswith("nvidia-fabricmanager"):
                raise StepFailed(f"{new} {up} is not in the host's apt sources: the fabric manager must match "
                                 "the driver on NVSwitch boards")
        remove = sorted(p for p in self.rec.from_packages if p not in want and p in f.installed)
        return want, remove, up

    def step_upgrade(self) -> str:
        self.mark_state(S.UPGRADING)
        lockopt = f"-o DPkg::Lock::Timeout={int(self.o.apt_lock_timeout)}"
        self.sh(f"{APT_ENV} apt-get {lockopt} -q update", timeout=self.o.apt_lock_timeout + 600, check=True,
                what="apt-get update")
        f = read_facts(self.sh)
        want, remove, up = self.wanted_packages(f)
        if self.rec.phase == "forward":
            self.rec.target = up
            self.commit()
        pending = {p: v for p, v in want.items() if f.installed.get(p) != v}
        remove = [p for p in remove if p in f.installed]
        if pending or remove:
            unhold = sorted(set(f.holds) & (set(want) | set(remove) | set(self.rec.from_packages)))
            if unhold:
                self.sh(f"apt-mark unhold -- {' '.join(R.q(p) for p in unhold)}", timeout=60, check=True,
                        what="apt-mark unhold", dpkg_lock=True)
            args = " ".join([R.q(f"{p}={v}") for p, v in sorted(want.items())] + [R.q(f"{p}-") for p in remove])
            self.event("install", packages=sorted(f"{p}={v}" for p, v in want.items()), remove=remove)
            self._emit(self.name, f"installing {args}")
            self.sh(f"{APT_ENV} apt-get {lockopt} -q -y --allow-downgrades --allow-change-held-packages "
                    f"-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install -- {args}",
                    timeout=self.o.apt_lock_timeout + 1800, check=True, what="apt-get install")
        self.sh(f"apt-mark hold -- {' '.join(R.q(p) for p in sorted(want))}", timeout=60, check=True,
                what="apt-mark hold", dpkg_lock=True)
        if any(p.startswith("nvidia-fabricmanager") for p in want):
            # NVSwitch boards need the fabric manager running after the reboot, at the driver's version
            self.sh("systemctl enable nvidia-fabricmanager >/dev/null 2>&1 || true", timeout=60)
        f = read_facts(self.sh)
        wrong = {p: f.installed.get(p) for p, v in want.items() if f.installed.get(p) != v}
        if wrong:
            raise StepFailed(f"after install, packages are not at the wanted versions: {wrong}")
        notheld = sorted(set(want) - set(f.holds))
        if notheld:
            raise StepFailed(f"packages not held after apt-mark hold: {notheld}")
        return S.INSTALLED

    # ------------------------------------------------------------------ rebooting
    def read_boot_id(self) -> str:
        return self.sh("cat /proc/sys/kernel/random/boot_id", timeout=30, check=True, what="read boot_id") \
            .stdout.strip()

    def reboot_asked(self, boot: str) -> bool:
        """This rollout already asked the host for a reboot during its current boot (the event log says so)."""
        patterns = [f'"boot_id": {json.dumps(boot)}', '"event": "reboot"', f'"rollout": {json.dumps(self.o.rollout)}']
        cmd = f"grep -F {R.q(patterns[0])} {R.EVENT_LOG} 2>/dev/null | grep -F {R.q(patterns[1])} | " \
              f"grep -cF {R.q(patterns[2])} || true"
        out = self.sh(cmd, timeout=30).stdout.strip()
        return out.isdigit() and int(out) > 0

    def step_reboot(self) -> str:
        try:
            boot = self.read_boot_id()
        except ConnectorError:
            boot = None
            self.drop()
        ask, announce = False, ""
        if boot is not None:
            if self.rec.boot_id_before and boot != self.rec.boot_id_before:
                return S.BOOTED                  # resumed after the reboot happened
            if not self.rec.boot_id_before:
                self.rec.boot_id_before = boot
            if self.reboot_asked(boot):
                # resumed after a killed controller had asked for this reboot (it starts 2 s after the asking):
                # wait for it rather than ask again
                self._emit(self.name, "the reboot asked before the resume is on its way: waiting for it")
            else:
                self.rec.reboot_started = time.time()
                self.commit()                    # remember the old boot id BEFORE rebooting
                self.mark_state(S.REBOOTING)
                ask = True                       # the event and the reboot in one command: both or neither
                announce = R.append_event_script(self.event_doc("reboot", boot_id=boot))
        elif not self.rec.boot_id_before:
            raise StepFailed("unreachable before the reboot")
        res = self.runner.do(self.ctx, RebootAndWait(command="systemctl reboot", pre_delay=1.0, ask=ask,
                                                     announce=announce, boot_id_before=self.rec.boot_id_before,
                                                     timeout=self.o.reboot_timeout, test_command="",
                                                     wait_system=True, poll=self.o.poll))
        if res.rc != 0:
            raise StepFailed(res.stderr)
        self._emit(self.name, "back after reboot")
        return S.BOOTED

    # ------------------------------------------------------------------ validating
    def check_xids(self) -> str:
        """The agent's XID counters (provision/upgrade/agentcheck.py): read with the inventory's TLS and credentials;
        refused credentials or TLS fail the check, only an absent agent skips it."""
        access = self.agent
        if access is None:
            try:
                access = agent_access(self.name, getattr(self.ctx, "vars", None) or {}, int(self.o.agent_port))
            except InputError as err:
                return f"failed: {err}"
        res = self.runner.do(self.ctx, Cmd(METRICS_COMMAND, stdin=metrics_program(access), timeout=60,
                                           readonly=True, desc=f"read {access.where} (XID counters)"))
        return xid_verdict(res.rc, res.stdout, access)

    def check_container(self, f: Facts) -> str:
        if not f.docker:
            return "skipped: no Docker"
        if not f.toolkit:
            return "skipped: no NVIDIA container toolkit"
        if not f.devnodes:
            return "skipped (simulated GPU): no /dev/nvidia* device nodes"
        img = R.q(self.o.container_test_image)
        res = self.sh(f"docker run --rm --gpus all -- {img} nvidia-smi -L", timeout=600)
        if res.rc != 0:
            return f"failed: GPU container test ({self.o.container_test_image}) rc {res.rc}: " \
                   f"{(res.stderr.strip() or res.stdout.strip())[-200:]}"
        return "ok"

    def step_validate(self) -> str:
        self.mark_state(S.VALIDATING)
        target = self.target()
        deadline = time.monotonic() + self.o.validate_timeout
        problem = ""
        fm_restarted = False
        checks: dict[str, str] = {}
        while True:
            f = read_facts(self.sh)
            missing = sorted(set(f.pci.gpus) - set(f.smi.bus_ids))
            if not f.smi.ok:
                problem = f"nvidia-smi failed (rc {f.smi.rc}): {f.smi.message[:200]}"
            elif not R.matches_target(f.smi.driver_version, target):
                problem = f"nvidia-smi reports driver {f.smi.driver_version}, expected {target}"
            elif missing:
                problem = f"GPUs on the PCI bus but not visible to nvidia-smi: {', '.join(missing)}"
            else:
                problem = ""
            if f.pci.nvswitches and not problem:
                fm = self.sh("systemctl is-active nvidia-fabricmanager 2>/dev/null", timeout=30).stdout.strip()
                if fm != "active" and not fm_restarted:
                    # it may have started before the driver was ready at boot: one restart, noted in the report
                    fm_restarted = True
                    self.rec.notes.append(f"nvidia-fabricmanager was {fm or 'not running'} after the reboot: "
                                          "restarted it")
                    self.sh("systemctl restart nvidia-fabricmanager >/dev/null 2>&1 || true", timeout=120)
                    fm = self.sh("systemctl is-active nvidia-fabricmanager 2>/dev/null", timeout=30).stdout.strip()
                problem = "" if fm == "active" else f"nvidia-fabricmanager is {fm or 'not running'} on an " \
                                                    "NVSwitch board"
            if not problem or time.monotonic() >= deadline:
                break
            time.sleep(self.o.poll)
        checks["driver"] = f"failed: {problem}" if problem else f"ok: {target} on {len(f.smi.bus_ids)} GPU(s)"
        if not problem:
            checks["xid"] = self.check_xids()
            checks["container"] = self.check_container(f)
        self.rec.checks.update({f"{self.rec.phase}:{k}" if self.rec.phase == "rollback" else k: v
                                for k, v in checks.items()})
        failed = [f"{k}: {v[8:]}" for k, v in checks.items() if v.startswith("failed")]
        if not failed:
            if self.rec.phase == "rollback":
                self.rec.error = (self.rec.error or "validation failed") + \
                    f"; rolled back to {self.rec.from_version} (validated); host left in maintenance"
                self.event("rolled-back", version=self.rec.from_version)
                return S.ROLLED_BACK
            self.event("validated", version=target, checks=checks)
            return S.VALIDATED
        why = "; ".join(failed)
        if self.rec.phase == "forward" and self.o.rollback_on_failure and self.rec.from_packages:
            self.rec.error = f"validation failed at {target}: {why}"
            self.rec.phase = "rollback"
            self.rec.boot_id_before = None
            self.event("rollback", to=self.rec.from_version, why=why)
            return S.ROLLBACK
        raise StepFailed(f"validation failed at {target}: {why}" if self.rec.phase == "forward"
                         else f"{self.rec.error}; rollback to {target} failed validation too: {why}")

    # ------------------------------------------------------------------ restoring
    def step_restore(self) -> str:
        self.mark_state(S.RESTORING)
        if self.rec.stopped_containers:
            ids = [c["id"] for c in self.rec.stopped_containers]
            res = self.sh("for c in " + " ".join(R.q(i) for i in ids) +
                          "; do if docker inspect -f '{{.Id}}' -- \"$c\" >/dev/null 2>&1; then "
                          "docker start -- \"$c\" >/dev/null && echo \"started $c\" || echo \"failed $c\"; "
                          "else echo \"gone $c\"; fi; done", timeout=300)
            gone = [ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("gone ")]
            bad = [ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("failed ")]
            if bad:
                raise StepFailed(f"could not start again the containers it stopped: {bad}")
            if gone:
                self.rec.notes.append(f"containers removed meanwhile, not restarted: {gone}")
            self.event("start-containers", containers=[c["name"] or c["id"] for c in self.rec.stopped_containers])
        if self.rec.admin_marker is None:
            cur = R.parse_json(self.sh(f"cat {R.MARKER} 2>/dev/null", timeout=30).stdout)
            if cur is None or marker_is_ours(cur):
                self.sh(f"rm -f {R.MARKER}", timeout=30, check=True, what="remove maintenance marker")
            else:
                self.rec.notes.append("an admin put the host in maintenance during the upgrade: marker left")
        else:
            self.rec.notes.append("left in maintenance: an admin had put it there before the rollout")
        self.mark_state(S.DONE)
        self.event("restored")
        self.sh(R.unlock_script(self.o.controller), timeout=60)
        return S.RESTORED
