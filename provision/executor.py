"""The executor: plays over batches of hosts, tasks in lockstep (linear strategy), a bounded pool of workers.

* ``forks`` bounds both the worker threads and the number of open connections (:class:`ConnectionPool`): with
  more hosts than forks, the least recently used idle connection is closed before a new one opens. With hosts <=
  forks every host keeps ONE connection for the whole run.
* ``serial`` (int, "30%", or a list of them) makes batches; ``max_fail_percentage`` (failed + unreachable hosts of
  the batch, in percent) and ``any_errors_fatal`` stop the play; a batch whose hosts all failed stops it too.
* Unreachable is distinct from failed: an unreachable host is dropped from the rest of the run.
* Handlers run once at the end of each batch (and on ``meta: flush_handlers``), in handler order, on the hosts
  that notified them.
* Everything the user gave (inventory, playbook, extra vars) is loaded and validated before the first connection.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from provision import facts as factmod
from provision import templating
from provision.connectors import ConnectOptions, connect
from provision.connectors.base import CommandTimeout, ConnectorError, Unreachable
from provision.errors import InputError, OptionError
from provision.ops.core import (MASK, SECRET_NAME, OpContext, OpError, StatProbe, execute_plan, mask_text,
                                normalize, secret_values, stat_batch, unified)
from provision.results import SKIPPED_BY_WHEN, HostResult, RunStats

CENSORED = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"


# ------------------------------------------------------------------------------------------- options

@dataclass
class RunOptions:
    forks: int = 20
    check: bool = False
    diff: bool = False
    tags: tuple = ()
    skip_tags: tuple = ()
    start_at_task: str | None = None
    extra_vars: dict = field(default_factory=dict)
    limit: str | None = None
    become: bool | None = None
    become_user: str | None = None
    connect: ConnectOptions = field(default_factory=ConnectOptions)
    retry_dir: str | None = None
    retry_files: bool = True
    verbosity: int = 0
    prefetch: bool = True        # batch the play's read-only probes into one round trip per host


def parse_extra_vars(values: list[str] | None) -> dict:
    """-e key=value [key2=value2], -e @file.yaml, -e '{"json": 1}' (later ones win). Bad input: OptionError."""
    import yaml
    out: dict = {}
    for raw in values or []:
        raw = raw.strip()
        if not raw:
            continue
        if raw.startswith("@"):
            path = os.path.expanduser(raw[1:])
            try:
                with open(path, encoding="utf-8") as fh:
                    data = yaml.safe_load(fh)
            except OSError as err:
                raise OptionError(f"cannot read extra vars file: {err.strerror}", key="--extra-vars",
                                  file=path) from None
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                raise OptionError(f"invalid YAML: {getattr(err, 'problem', err)}", file=path,
                                  line=mark.line + 1 if mark else None, key="--extra-vars") from None
            if data is None:
                continue
            if not isinstance(data, dict):
                raise OptionError("an extra vars file must hold a mapping", file=path, key="--extra-vars")
            out.update(data)
        elif raw[0] in "{[":
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as err:
                raise OptionError(f"invalid JSON in --extra-vars: {err.msg} at column {err.colno}",
                                  key="--extra-vars") from None
            if not isinstance(data, dict):
                raise OptionError("JSON extra vars must be an object", key="--extra-vars")
            out.update(data)
        else:
            import shlex
            try:
                words = shlex.split(raw)
            except ValueError as err:
                raise OptionError(f"cannot parse {raw!r}: {err}", key="--extra-vars") from None
            for w in words:
                k, sep, v = w.partition("=")
                if not sep or not k.strip():
                    raise OptionError(f"expected key=value, @file or JSON, got {w!r}", key="--extra-vars")
                out[k.strip()] = v
    return out


# ------------------------------------------------------------------------------------------- connections

def render_args(args, raw_keys, variables) -> dict:
    """A task's arguments templated for one host; an argument that renders to ``omit`` is left out, as if the
    task had not given it (Ansible's ``default(omit)``). ``raw_keys`` stay as written (the op renders them)."""
    out = {}
    for key, val in args.items():
        if key not in raw_keys:
            val = templating.render(val, variables)
            if isinstance(val, str) and val == templating.OMIT:
                continue
        out[key] = val
    return out


class ConnectionPool:
    """At most ``limit`` open connections; one per host, reused for the whole run while it fits."""

    def __init__(self, limit: int, options: ConnectOptions, factory: Callable = connect):
        self.limit = max(1, int(limit))
        self.options = options
        self.factory = factory
        self._conns: OrderedDict[str, Any] = OrderedDict()
        self._busy: dict[str, int] = {}
        self._cond = threading.Condition()
        self.peak = 0
        self.opened = 0

    def acquire(self, host) -> Any:
        name = host.name
        with self._cond:
            while True:
                if name in self._conns and self._conns[name] is not None:
                    self._conns.move_to_end(name)
                    self._busy[name] = self._busy.get(name, 0) + 1
                    return self._conns[name]
                if name in self._conns:          # another thread is connecting to it
                    self._cond.wait(0.1)
                    continue
                if len(self._conns) < self.limit:
                    break
                victim = next((n for n, c in self._conns.items() if c is not None and not self._busy.get(n)), None)
                if victim is not None:
                    old = self._conns.pop(victim)
                    self._close(old)
                    continue
                self._cond.wait(0.1)
            self._conns[name] = None   # reserve the slot
            self._busy[name] = 1
            self.peak = max(self.peak, len(self._conns))
        try:
            conn = self.factory(host, self.options)
        except BaseException:
            with self._cond:
                self._conns.pop(name, None)
                self._busy.pop(name, None)
                self._cond.notify_all()
            raise
        with self._cond:
            self._conns[name] = conn
            self.opened += 1
            self._cond.notify_all()
        return conn

    def release(self, host) -> None:
        with self._cond:
            n = self._busy.get(host.name, 0) - 1
            if n <= 0:
                self._busy.pop(host.name, None)
            else:
                self._busy[host.name] = n
            self._cond.notify_all()

    def reconnect(self, host) -> Any:
        """Drop the host's connection and open a new one in the same slot (reboot)."""
        with self._cond:
            old = self._conns.get(host.name)
            self._conns[host.name] = None
        if old is not None:
            self._close(old)
        try:
            conn = self.factory(host, self.options)
        except BaseException:
            with self._cond:
                self._conns.pop(host.name, None)
                self._cond.notify_all()
            raise
        with self._cond:
            self._conns[host.name] = conn
            self.opened += 1
            self._cond.notify_all()
        return conn

    def drop(self, host) -> None:
        with self._cond:
            old = self._conns.pop(host.name, None)
            self._busy.pop(host.name, None)
            self._cond.notify_all()
        if old is not None:
            self._close(old)

    def open_count(self) -> int:
        with self._cond:
            return len(self._conns)

    @staticmethod
    def _close(conn) -> None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass

    def close_all(self) -> None:
        with self._cond:
            conns = list(self._conns.values())
            self._conns.clear()
            self._busy.clear()
        for c in conns:
            if c is not None:
                self._close(c)


# ------------------------------------------------------------------------------------------- host state

@dataclass
class HostState:
    host: Any
    facts: dict = field(default_factory=dict)
    gathered: set = field(default_factory=set)
    set_facts: dict = field(default_factory=dict)
    registered: dict = field(default_factory=dict)
    notified: list = field(default_factory=list)
    failed: bool = False
    unreachable: bool = False
    ended: bool = False
    secrets: list = field(default_factory=list)   # values to mask in this host's output (current task)
    probe_cache: dict = field(default_factory=dict)   # prefetched read-only probes, cleared by any change

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def active(self) -> bool:
        return not (self.failed or self.unreachable or self.ended)


def batches(hosts: list, serial: tuple) -> list[list]:
    """Split hosts by ``serial`` (ints, "N%", a list whose last item repeats)."""
    if not serial:
        return [list(hosts)] if hosts else []
    out, i, k, n = [], 0, 0, len(hosts)
    while i < n:
        s = serial[min(k, len(serial) - 1)]
        if isinstance(s, str) and s.strip().endswith("%"):
            size = max(1, int(math.floor(n * float(s.strip()[:-1]) / 100.0)))
        else:
            size = max(1, int(s))
        out.append(list(hosts[i:i + size]))
        i += size
        k += 1
    return out


def tag_selected(task_tags: tuple, tags: tuple, skip_tags: tuple) -> bool:
    t = set(task_tags)
    if skip_tags:
        s = set(skip_tags)
        if t & s or ("tagged" in s and t) or ("untagged" in s and not t) or "all" in s and "always" not in t:
            return False
    if "always" in t:
        return True
    sel = set(tags) if tags else {"all"}
    if "never" in t and not (t - {"never"}) & sel:
        return False
    if "all" in sel:
        return True
    return bool(t & sel) or ("tagged" in sel and bool(t)) or ("untagged" in sel and not t)


def _task_matches(task, pattern: str) -> bool:
    names = [task.name] + ([f"{task.role} : {task.name}"] if getattr(task, "role", None) else [])
    return any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in names)


class _PlayAbort(Exception):
    pass


PROBE_MARK = "@@provision-probe@@"
FACT_KEY = "@fact"   # probe-cache key (FACT_KEY, section): a fact section prefetched with the probes


def split_probes(output: str, n: int) -> list[tuple[int | None, str]]:
    """Output of the batched probe script -> [(rc, stdout)] per probe (rc None when a section is missing)."""
    out: list[tuple[int | None, str]] = []
    for i in range(n):
        start_tag = f"{PROBE_MARK}{i}\n"
        a = output.find(start_tag)
        if a < 0:
            out.append((None, ""))
            continue
        a += len(start_tag)
        b = output.find(f"\n{PROBE_MARK}rc ", a)
        if b < 0:
            out.append((None, ""))
            continue
        rest = output[b + len(PROBE_MARK) + 4:].split("\n", 1)[0]
        out.append((int(rest) if rest.strip().lstrip("-").isdigit() else None, output[a:b]))
    return out


# ------------------------------------------------------------------------------------------- executor

class Executor:
    def __init__(self, inventory, options: RunOptions, reporter, *, connector_factory: Callable = connect):
        self.inventory = inventory
        self.options = options
        self.reporter = reporter
        self.pool = ConnectionPool(options.forks, options.connect, connector_factory)
        self.stats = RunStats()
        self.states: dict[str, HostState] = {}
        self._started = options.start_at_task is None
        self._lock = threading.Lock()

    # -- entry points ---------------------------------------------------------------------------------
    def run_playbook(self, playbook, *, validated: bool = False) -> RunStats:
        from provision.playbook import validate
        if not validated:
            validate(playbook, self.inventory, self.options.extra_vars)   # raises InputError: nothing contacted
        plays_hosts = [self._play_hosts(p) for p in playbook.plays]   # bad --limit: OptionError before connecting
        workers = ThreadPoolExecutor(max_workers=max(1, self.options.forks), thread_name_prefix="fork")
        try:
            for play, hosts in zip(playbook.plays, plays_hosts):
                self._run_play(play, hosts, workers)
        except BaseException:
            # interrupted (Ctrl-C) or a bug: do not wait for queued work; closing the connections ends what runs
            workers.shutdown(wait=False, cancel_futures=True)
            self.pool.close_all()
            raise
        workers.shutdown(wait=True)
        self.pool.close_all()
        self.stats.peak_connections = self.pool.peak
        self.stats.connections_opened = self.pool.opened
        self.reporter.recap(self.stats)
        self._write_retry(playbook.path)
        return self.stats

    def run_adhoc(self, hosts: list, module: str, args: dict, *, become: bool | None = None) -> RunStats:
        """One task on ``hosts`` (provision run / ping)."""
        from provision.playbook import Play, Task
        task = Task(name=module, module=module, args=args, become=become)
        play = Play(name=f"Ad-hoc {module}", hosts="all", vars={}, role_defaults={}, become=bool(become),
                    become_user=self.options.become_user, gather_facts=False, serial=(), max_fail_percentage=None,
                    any_errors_fatal=False, tasks=(task,), handlers=(), source=None)
        workers = ThreadPoolExecutor(max_workers=max(1, self.options.forks), thread_name_prefix="fork")
        try:
            self._run_play(play, hosts, workers, show_play=False)
        finally:
            workers.shutdown(wait=True)
            self.pool.close_all()
        self.stats.peak_connections = self.pool.peak
        self.stats.connections_opened = self.pool.opened
        return self.stats

    def gather_all(self, hosts: list, sections=None) -> dict[str, dict | str]:
        """Facts per host (provision facts); an unreachable host maps to its error text."""
        out: dict[str, Any] = {}
        workers = ThreadPoolExecutor(max_workers=max(1, self.options.forks))
        names = tuple(sections or factmod.PLAY_FACTS)

        def one(h):
            hs = self._state(h)
            try:
                conn = self.pool.acquire(h)
            except Unreachable as err:
                return h.name, {"unreachable": True, "msg": str(err)}
            try:
                return h.name, factmod.gather(conn, names)
            except ConnectorError as err:
                return h.name, {"unreachable": True, "msg": str(err)}
            finally:
                self.pool.release(h)
                if self.pool.limit < len(hosts):
                    self.pool.drop(h)
                _ = hs
        try:
            for fut in as_completed([workers.submit(one, h) for h in hosts]):
                name, f = fut.result()
                out[name] = f
        finally:
            workers.shutdown(wait=True)
            self.pool.close_all()
        self.stats.peak_connections = self.pool.peak
        return {h.name: out[h.name] for h in hosts}

    # -- plays ----------------------------------------------------------------------------------------
    def _play_hosts(self, play) -> list:
        pattern = play.hosts
        if "{{" in str(pattern):
            pattern = templating.render(pattern, {**play.vars, **self.options.extra_vars})
        hosts = self.inventory.select(str(pattern))
        return self.inventory.limit(hosts, self.options.limit)

    def _state(self, host) -> HostState:
        with self._lock:
            if host.name not in self.states:
                self.states[host.name] = HostState(host)
            return self.states[host.name]

    def _run_play(self, play, hosts: list, workers, show_play: bool = True) -> None:
        states = [self._state(h) for h in hosts]
        states = [s for s in states if not (s.failed or s.unreachable)]
        for s in states:
            s.ended = False
            s.notified = []
        if show_play:
            self.reporter.play_start(play.name or play.hosts)
        if not states:
            self.reporter.warning("no hosts matched (or all have failed), skipping the play")
            return
        for batch in batches(states, play.serial):
            try:
                self._run_batch(play, batch, workers)
            except _PlayAbort:
                break
            if not any(s.active or s.ended for s in batch):
                break   # every host of the batch failed: stop the play, as Ansible does

    def _run_batch(self, play, batch: list[HostState], workers) -> None:
        self._batch_size = len(batch)
        self._batch_failed_before = {s.name for s in batch if not s.active}
        if play.gather_facts:
            self._run_on(batch, workers, "Gathering Facts", self._gather_task, play)
            self._check_failures(play, batch)
        if self.options.prefetch:
            futures = [workers.submit(self._prefetch, s, play) for s in batch if s.active]
            wait(futures)
        for task in play.tasks:
            if not self._started:
                if _task_matches(task, self.options.start_at_task):
                    self._started = True
                else:
                    continue
            if not tag_selected(task.tags, self.options.tags, self.options.skip_tags):
                continue
            active = [s for s in batch if s.active]
            if not active:
                break
            if task.module == "meta":
                if self._meta(play, task, batch, workers):
                    return
                continue
            self._run_on(active, workers, task.name, lambda s, t=task: self._run_task(s, t, play), play)
            self._check_failures(play, batch)
        self._run_handlers(play, batch, workers)

    def _check_failures(self, play, batch: list[HostState]) -> None:
        bad = [s for s in batch if s.failed or s.unreachable]
        new_bad = [s for s in bad if s.name not in self._batch_failed_before]
        if not new_bad:
            return
        if play.any_errors_fatal:
            self.reporter.warning("any_errors_fatal: a host failed, stopping the play")
            raise _PlayAbort()
        if play.max_fail_percentage is not None:
            pct = 100.0 * len(bad) / max(1, len(batch))
            if pct > float(play.max_fail_percentage):
                self.reporter.warning(f"{pct:.0f}% of the batch failed, more than max_fail_percentage "
                                      f"{play.max_fail_percentage:g}%: stopping the play")
                raise _PlayAbort()

    def _meta(self, play, task, batch, workers) -> bool:
        action = str(task.args.get("_raw_params", "")).strip()
        if action == "flush_handlers":
            self._run_handlers(play, batch, workers)
        elif action == "end_play":
            self.reporter.task_start(task.name or "meta: end_play")
            return True
        elif action == "end_host":
            for s in batch:
                if s.active:
                    v = self._vars(s, play, task)
                    if templating.conditional(task.when, v):
                        s.ended = True
        elif action == "clear_facts":
            for s in batch:
                s.facts.clear()
                s.gathered.clear()
        return False

    def _run_handlers(self, play, batch: list[HostState], workers) -> None:
        for handler in play.handlers:
            keys = set(handler.handler_names or (handler.name,)) | set(handler.listen)
            targets = [s for s in batch if s.active and keys & set(s.notified)]
            if not targets:
                continue
            self._run_on(targets, workers, handler.name, lambda s, t=handler: self._run_task(s, t, play), play,
                         handler=True)
            self._check_failures(play, batch)
        for s in batch:
            s.notified = []

    def _run_on(self, states, workers, name, fn, play, handler=False) -> None:
        self.reporter.task_start(name, handler=handler)
        futures = {workers.submit(self._guard, fn, s): s for s in states}
        pending = set(futures)
        while pending:   # wake every second so a long task shows a live progress line
            _, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            self.reporter.progress(len(futures) - len(pending), len(futures), name)
        self.reporter.progress_done()
        _ = play

    def _guard(self, fn, s: HostState):
        try:
            fn(s)
        except Exception as err:  # noqa: BLE001 - a bug in one host's task must not stop the others
            r = HostResult(s.name, failed=True, msg=f"internal error: {type(err).__name__}: {err}")
            s.failed = True
            self._record(s, r, None)

    # -- tasks ----------------------------------------------------------------------------------------
    def _gather_task(self, s: HostState) -> None:
        try:
            conn = self.pool.acquire(s.host)
        except Unreachable as err:
            return self._unreachable(s, str(err))
        try:
            f = factmod.gather(conn, factmod.PLAY_FACTS)
            s.facts.update(f)
            s.gathered.update(factmod.PLAY_FACTS)
            self._record(s, HostResult(s.name), None)
        except Unreachable as err:
            self._unreachable(s, str(err))
        except ConnectorError as err:
            s.failed = True
            self._record(s, HostResult(s.name, failed=True, msg=str(err)), None)
        finally:
            self.pool.release(s.host)

    def _become(self, s: HostState, task, play) -> tuple[bool, str]:
        become = task.become
        if become is None:
            become = bool(play.become) or bool(getattr(s.host, "become", None)) or bool(self.options.become)
        user = task.become_user or play.become_user or getattr(s.host, "become_user", None) \
            or self.options.become_user or "root"
        return bool(become), user

    def _prefetch(self, s: HostState, play) -> None:
        """Run the read-only probes of the play's tasks, and the fact sections those tasks read, in ONE round trip
        per host (per become setting). A task later uses a probe's answer, or a prefetched fact, only if nothing
        ran on the host in between (OpContext.probe; both live in the probe cache that any change clears)."""
        from provision.ops.spec import registry
        s.probe_cache = {}
        started = self._started
        groups: dict[tuple, list[str]] = {}
        facts: list[str] = []
        reg = registry()
        for task in play.tasks:
            if not started:
                if not _task_matches(task, self.options.start_at_task):
                    continue
                started = True
            spec = reg.get(task.module)
            if (spec is None or spec.runs_on_controller or not isinstance(spec.impl, type)
                    or getattr(spec.impl, "controller", False)
                    or not tag_selected(task.tags, self.options.tags, self.options.skip_tags)):
                continue
            facts += [f for f in getattr(spec.impl, "facts", ()) if f in factmod.FACTS and f not in s.gathered
                      and f not in facts]
            if task.loop is not None:
                continue
            try:
                op = spec.impl()
                v = self._vars(s, play, task)
                raw = set(getattr(op, "raw_args", ()))
                args = normalize(spec, render_args(task.args, raw, v))
                if not op.prefetchable(args):
                    continue
                ctx = OpContext(host=s.name, check=self._check_for(task), diff=self.options.diff, vars=v,
                                facts=s.facts)
                cmd = op.probe(args, ctx)
            except Exception:  # noqa: BLE001 - args that depend on later results: probed when the task runs
                continue
            if cmd:
                b, u = self._become(s, task, play)
                group = groups.setdefault((b, u if b else ""), [])
                if cmd not in group:
                    group.append(cmd)
        # the facts travel with the probes run as the connecting user (as gathering runs them), else with the first
        # become group's
        fact_group = (False, "") if (False, "") in groups else next(iter(groups), None)
        if fact_group is None or sum(len(c) for c in groups.values()) + (1 if facts else 0) < 2:
            return   # nothing to save: one round trip either way
        try:
            conn = self.pool.acquire(s.host)
        except Unreachable:
            return   # the first task reports it
        try:
            for (b, u), cmds in groups.items():
                with_facts = facts if (b, u) == fact_group else []
                if len(cmds) + (1 if with_facts else 0) < 2:
                    continue
                script = factmod.script(with_facts) if with_facts else ""
                # the file probes are answered together: one stat and one sha256sum for all of them (a probe the
                # batch leaves unanswered, a fifo say, runs alone when its task does)
                files = [c for c in cmds if isinstance(c, StatProbe)]
                batch = stat_batch(files)
                alone = [c for c in cmds if c not in files] if batch else list(cmds)
                sections = alone + ([batch[0]] if batch else [])
                script += "".join(f"printf '%s\\n' '{PROBE_MARK}{i}'; ( {c} ) 2>/dev/null; "
                                  f"printf '\\n{PROBE_MARK}rc %s\\n' $?\n" for i, c in enumerate(sections))
                kw = {"become_user": u} if b and u != "root" else {}
                self._log(s.name, "cmd", f"prefetch {len(cmds)} read-only probes"
                          + (f" and facts {', '.join(with_facts)}" if with_facts else "") + " in one round trip",
                          False)
                res = conn.run(script, become=b, **kw)
                for name, parsed in factmod.parse_each(res.stdout, with_facts).items():
                    s.probe_cache[(FACT_KEY, name)] = parsed
                answers = split_probes(res.stdout, len(sections))
                if batch and answers[-1][0] is not None:
                    for c, text in batch[1](answers[-1][1]).items():
                        s.probe_cache[(b, u, c)] = (0, text)
                for c, (rc, out) in zip(alone, answers):
                    if rc is not None:
                        s.probe_cache[(b, u, c)] = (rc, out)
        except ConnectorError:
            s.probe_cache = {}
        finally:
            self.pool.release(s.host)

    def _check_for(self, task) -> bool:
        check = self.options.check
        if getattr(task, "check_mode", None) is not None:
            check = bool(task.check_mode)
        return check

    def _unreachable(self, s: HostState, msg: str) -> None:
        s.unreachable = True
        self.pool.drop(s.host)
        self._record(s, HostResult(s.name, unreachable=True, msg=msg), None)

    def _vars(self, s: HostState, play, task, extra: Mapping | None = None):
        from provision.variables import host_variables
        v = host_variables(s.host, play if getattr(play, "source", None) is not None else None,
                           extra_vars=self.options.extra_vars, facts=s.facts, set_facts=s.set_facts,
                           registered=s.registered, task=task, inventory=self.inventory,
                           check_mode=self.options.check, diff_mode=self.options.diff)
        if extra:
            v.update(extra)
            v.raw_keys.update(extra)
        return v

    def _run_task(self, s: HostState, task, play) -> None:
        try:
            v = self._vars(s, play, task)
            secrets = self._secrets(v)
            s.secrets = secrets
            if task.loop is None:
                if task.when and not templating.conditional(task.when, v):
                    r = HostResult(s.name, skipped=True, msg=SKIPPED_BY_WHEN)
                else:
                    r = self._run_item(s, task, play, v)
            else:
                items = templating.render(task.loop, v)
                if isinstance(items, str) or not isinstance(items, (list, tuple)):
                    raise OpError(f"loop must be a list, got {type(items).__name__}")
                r = HostResult(s.name)
                results = []
                for i, item in enumerate(items):
                    iv = {task.loop_var: item, "ansible_loop_var": task.loop_var}
                    if task.index_var:
                        iv[task.index_var] = i
                    v = self._vars(s, play, task, iv)
                    if task.when and not templating.conditional(task.when, v):
                        ir = HostResult(s.name, skipped=True, msg=SKIPPED_BY_WHEN)
                    else:
                        ir = self._run_item(s, task, play, v)
                    ir.item = item
                    results.append(ir)
                    self._report(s, task, ir, secrets, item=True)
                    if ir.unreachable:
                        break
                    if task.loop_pause:
                        time.sleep(task.loop_pause)
                r.results = results
                r.changed = any(x.changed for x in results)
                r.failed = any(x.failed for x in results)
                r.unreachable = any(x.unreachable for x in results)
                r.skipped = bool(results) and all(x.skipped for x in results)
                r.msg = "All items completed" if not r.failed else "One or more items failed"
                if not results:
                    r.skipped, r.msg = True, "No items in the list"
                if r.failed and task.ignore_errors:
                    r.ignored = True
        except (templating.TemplateError, OpError, InputError) as err:
            r = HostResult(s.name, failed=True, msg=str(err))
            secrets = []
            if task.ignore_errors:
                r.ignored = True
        r.task = task.name
        r.no_log = task.no_log
        if task.register:
            s.registered[task.register] = r.registered()
        if r.unreachable:
            s.unreachable = True
            self.pool.drop(s.host)
        elif r.failed and not r.ignored:
            s.failed = True
        if r.changed and not r.failed and task.notify:
            for n in task.notify:
                if n not in s.notified:
                    s.notified.append(n)
        self._record(s, r, task, secrets, loop_summary=task.loop is not None)

    def _run_item(self, s: HostState, task, play, v) -> HostResult:
        """Run one task (or one loop item) on one host: until/retries, changed_when/failed_when, ignore_errors."""
        from provision.ops.spec import registry
        spec = registry()[task.module]
        impl = spec.impl
        op = impl() if isinstance(impl, type) else None
        raw_keys = set(getattr(op, "raw_args", ()))
        args = normalize(spec, render_args(task.args, raw_keys, v))
        attempts = max(1, int(task.retries) + 1) if task.until else 1
        r = None
        for attempt in range(1, attempts + 1):
            r = self._run_op(s, task, play, spec, op, impl, args, v)
            if r.unreachable:
                return r
            reg = {task.register: r.registered()} if task.register else {}
            cv = dict(v)
            cv.update(reg)
            if task.changed_when is not None and not r.skipped:
                r.changed = templating.conditional(task.changed_when, cv) if task.changed_when else False
            if task.failed_when is not None and not r.skipped:
                r.failed = templating.conditional(task.failed_when, cv) if task.failed_when else False
                if r.failed and not r.msg:
                    r.msg = "failed_when condition matched"
            if task.until:
                if templating.conditional((task.until,), cv):
                    r.extra["attempts"] = attempt
                    break
                if attempt < attempts:
                    self.reporter.retry(s.name, task.name, attempts - attempt)
                    time.sleep(task.delay)
                else:
                    r.failed = True
                    r.msg = (r.msg + "; " if r.msg else "") + f"still not done after {attempts} attempts"
                    r.extra["attempts"] = attempt
        if isinstance(r.extra.get("ansible_facts"), dict) and not r.failed:
            # as Ansible: facts a module returns become host variables (set_fact's too)
            s.set_facts.update(r.extra["ansible_facts"])
            if task.module != "set_fact":
                s.facts.update(r.extra["ansible_facts"])
        if r.failed and task.ignore_errors:
            r.ignored = True
        return r

    def _run_op(self, s, task, play, spec, op, impl, args, v) -> HostResult:
        become, become_user = self._become(s, task, play)
        check = self._check_for(task)
        search = tuple(p for p in (getattr(task, "role_path", None), getattr(task, "playbook_dir", None)
                                   or getattr(play, "playbook_dir", None)) if p)
        ctx = OpContext(host=s.name, check=check, diff=self.options.diff, become=become, become_user=become_user,
                        env=dict(task.environment) if task.environment else None, vars=v, facts=s.facts,
                        search_paths=search, no_log=task.no_log, probe_cache=s.probe_cache,
                        log=self._op_logger(s, task.no_log))
        controller = spec.runs_on_controller or getattr(op, "controller", False)
        conn = None
        try:
            if not controller:
                try:
                    conn = self.pool.acquire(s.host)
                except Unreachable as err:
                    return HostResult(s.name, unreachable=True, msg=str(err))
                ctx.conn = conn
                ctx.reconnect = lambda h=s.host: self.pool.reconnect(h)
                ctx.refresh = lambda secs, _s=s, _c=ctx: self._refresh(_s, _c, secs)
                need = [f for f in getattr(op, "facts", ()) if f not in s.gathered]
                for f in [f for f in need if (FACT_KEY, f) in s.probe_cache]:
                    s.facts.update(s.probe_cache[(FACT_KEY, f)])   # prefetched, and nothing ran since
                    s.gathered.add(f)
                    need.remove(f)
                    self._log(s.name, "cmd", f"(prefetched) facts {f}", False)
                if need:
                    s.facts.update(factmod.gather(conn, need))
                    s.gathered.update(need)
            start = time.monotonic()
            if op is not None:
                r = op.run(args, ctx)
            else:   # a plain function op: (args, facts, ctx) -> Plan
                r = execute_plan(impl(args, s.facts, ctx), ctx)
            if r.changed or r.failed:
                s.probe_cache.clear()   # the host changed (or may have): prefetched probes are stale
            r.duration = r.duration or (time.monotonic() - start)
            if not r.commands:
                r.commands = list(ctx.ran)
            return r
        except Unreachable as err:
            return HostResult(s.name, unreachable=True, msg=str(err))
        except CommandTimeout as err:
            return HostResult(s.name, failed=True, msg=str(err))
        except (OpError, ConnectorError) as err:
            return HostResult(s.name, failed=True, msg=str(err))
        finally:
            if conn is not None:
                self.pool.release(s.host)

    def _refresh(self, s: HostState, ctx: OpContext, sections) -> None:
        secs = [x for x in sections if x in factmod.FACTS]
        if secs and ctx.conn is not None:
            s.facts.update(factmod.gather(ctx.conn, secs))
            s.gathered.update(secs)

    # -- output ---------------------------------------------------------------------------------------
    def _secrets(self, v) -> list[str]:
        names = {k: v[k] for k in list(v.keys()) if isinstance(k, str) and k not in v.raw_keys}
        rendered = {}
        for k, val in names.items():
            if SECRET_NAME.search(k):
                try:
                    rendered[k] = templating.render(val, v)
                except Exception:  # noqa: BLE001
                    rendered[k] = val
        return secret_values(rendered, {k: s for k, s in self.options.connect.__dict__.items()
                                        if k == "become_password" and s})

    def _op_logger(self, s, no_log: bool):
        """Command/output log for -vv/-vvv; below that, nothing to print, so nothing is masked either."""
        if self.options.verbosity < 2:
            return lambda lvl, text: None
        return lambda lvl, text: self._log(s.name, lvl, mask_text(text, s.secrets), no_log)

    def _log(self, host: str, level: str, text: str, no_log: bool) -> None:
        if no_log:
            text = "(hidden: no_log)"
        self.reporter.verbose(host, level, text)

    def _masked(self, r: HostResult, secrets: list[str]) -> HostResult:
        if r.no_log:
            return dataclasses.replace(r, msg=CENSORED if r.msg else "", stdout="", stderr="",
                                       diff=[{"before": "", "after": "", "before_header": "(no_log)",
                                              "after_header": "(no_log)"}] if r.diff else [],
                                       commands=[], extra={}, item="(censored)" if r.item is not None else None,
                                       show={"censored": CENSORED} if r.show is not None else None,
                                       results=[self._masked(dataclasses.replace(x, no_log=True), secrets)
                                                for x in r.results])
        m = lambda t: mask_text(t, secrets) if isinstance(t, str) else t  # noqa: E731

        def deep(v):
            if isinstance(v, str):
                return m(v)
            if isinstance(v, dict):
                return {k: (MASK if isinstance(k, str) and SECRET_NAME.search(k) and isinstance(x, (str, int))
                            and not isinstance(x, bool) else deep(x)) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [deep(x) for x in v]
            return v
        return dataclasses.replace(
            r, msg=m(r.msg), stdout=m(r.stdout), stderr=m(r.stderr), commands=[m(c) for c in r.commands],
            show=deep(r.show) if r.show is not None else None, item=deep(r.item), extra=deep(r.extra),
            diff=[{**{k: m(x) for k, x in d.items()}, "unified": m(unified(d))} for d in r.diff],
            results=[self._masked(x, secrets) for x in r.results])

    def _report(self, s, task, r: HostResult, secrets, item=False) -> None:
        r.no_log = bool(task.no_log) if task is not None else False
        self.reporter.host_result(self._masked(r, secrets or []), item=item)

    def _record(self, s: HostState, r: HostResult, task, secrets=None, loop_summary=False) -> None:
        with self._lock:
            self.stats.host(s.name).add(r)
            if r.unreachable:
                self.stats.unreachable_hosts.add(s.name)
            elif r.failed and not r.ignored:
                self.stats.failed_hosts.add(s.name)
        if loop_summary:
            self.reporter.loop_done(self._masked(r, secrets or []))
        else:
            self._report(s, task, r, secrets)

    def _write_retry(self, playbook_path: str) -> None:
        bad = sorted(self.stats.failed_hosts | self.stats.unreachable_hosts)
        if not bad or not self.options.retry_files:
            return
        base = os.path.splitext(os.path.basename(playbook_path))[0] + ".retry"
        d = self.options.retry_dir or os.path.dirname(os.path.abspath(playbook_path))
        path = os.path.join(os.path.expanduser(d), base)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("".join(h + "\n" for h in bad))
            self.reporter.info(f"to retry, use: --limit @{path}")
        except OSError as err:
            self.reporter.warning(f"could not write the retry file {path}: {err.strerror}")
