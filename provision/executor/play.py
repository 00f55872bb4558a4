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
* The task list's flow (blocks' rescue/always, dynamic includes, run_once, modules gpufleet lacks) is
  :mod:`provision.executor.flow`; a task's delegate_to and the remote_user/connection keywords are decided here
  (``_delegate``, ``runner``).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Mapping

from provision import facts as factmod
from provision import templating
from provision.connectors import connect
from provision.errors import InputError
from provision.executor.flow import Flow
from provision.executor.options import RunOptions
from provision.executor.pool import ConnectionPool
from provision.executor.prefetch import FACT_KEY, prefetch
from provision.executor.report import Reporting
from provision.executor.rolling import Rolling
from provision.executor.runner import HostRunner
from provision.executor.state import (ANSIBLE_VERSION, HostState, batches, connecting_host, ignores_errors,
                                      render_args, render_environment)
from provision.hostio import CommandTimeout, ConnectorError, Unreachable
from provision.hostenv import env_problem
from provision.ops.core import OpContext, OpError, normalize, secret_values
from provision.results import SKIPPED_BY_WHEN, HostResult, RunStats


class _PlayAbort(Exception):
    pass


# ------------------------------------------------------------------------------------------- executor

class Executor(Reporting, Rolling, Flow):
    def __init__(self, inventory, options: RunOptions, reporter, *, connector_factory: Callable = connect):
        self.inventory = inventory
        self.options = options
        self.reporter = reporter
        self.pool = ConnectionPool(options.forks, options.connect, connector_factory)
        self.stats = RunStats()
        self.states: dict[str, HostState] = {}
        self._started = options.start_at_task is None
        self._lock = threading.Lock()
        self._dyn_handlers: list = []        # handlers of roles include_role brought in (this play)
        self._play_names: list[str] = []     # ansible_play_hosts_all
        self._play_lists: dict = {}          # ansible_play_hosts / _batch / _hosts_all as the current task sees them

    # -- entry points ---------------------------------------------------------------------------------
    def run_playbook(self, playbook, *, validated: bool = False) -> RunStats:
        from provision.playbook import unsupported_tasks, validate
        if not validated:   # raises InputError: nothing contacted
            validate(playbook, self.inventory, self.options.extra_vars, strict=self.options.strict)
        for line in unsupported_tasks(playbook):
            self.reporter.warning(line)
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

    def gather_all(self, hosts: list, sections=None) -> dict[str, dict]:
        """Facts per host, in one round trip each (provision facts); an unreachable host maps to
        {unreachable: True, msg}."""
        names = tuple(sections or factmod.PLAY_FACTS)

        def one(h, runner, ctx):
            try:
                runner.refresh(names)
                return ctx.facts
            except ConnectorError as err:
                return {"unreachable": True, "msg": str(err)}
        try:
            return self.map_hosts(hosts, one)
        finally:
            self.pool.close_all()
            self.stats.peak_connections = self.pool.peak

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
            s.skip_to, s.refail, s.rescuing = None, {}, set()
        self._dyn_handlers = []
        self._play_names = [s.name for s in states]
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
        self._note_play_hosts(batch)
        self._batch_failed_before = {s.name for s in batch if not s.active}
        if play.gather_facts:
            self._run_on(batch, workers, "Gathering Facts", lambda s: self._gather_task(s, play), play)
            self._check_failures(play, batch)
        if self.options.prefetch:
            futures = [workers.submit(prefetch, self, s, play) for s in batch if s.active]
            wait(futures)
        if self._run_tasks(play, play.tasks, batch, workers):
            return
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
        for handler in (*play.handlers, *self._dyn_handlers):
            keys = set(handler.handler_names or (handler.name,)) | set(handler.listen)
            targets = [s for s in batch if (s.active or (self.options.force_handlers and s.failed and not
                                                         s.unreachable)) and keys & set(s.notified)]
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

    def _guard(self, fn, s: HostState):
        try:
            fn(s)
        except Exception as err:  # noqa: BLE001 - a bug in one host's task must not stop the others
            r = HostResult(s.name, failed=True, msg=f"internal error: {type(err).__name__}: {err}")
            s.failed = True
            self._record(s, r, None)

    # -- tasks ----------------------------------------------------------------------------------------
    def _gather_task(self, s: HostState, play=None) -> None:
        runner = self.runner(s, play)
        try:
            runner.refresh(factmod.PLAY_FACTS)
            self._record(s, HostResult(s.name), None)
        except Unreachable as err:
            self._unreachable(s, str(err))
        except ConnectorError as err:
            s.failed = True
            self._record(s, HostResult(s.name, failed=True, msg=str(err)), None)
        finally:
            runner.release()

    def _become(self, s: HostState, task, play) -> tuple[bool, str]:
        become = task.become
        if become is None:
            become = bool(play.become) or bool(getattr(s.host, "become", None)) or bool(self.options.become)
        user = task.become_user or play.become_user or getattr(s.host, "become_user", None) \
            or self.options.become_user or "root"
        return bool(become), user

    def _check_for(self, task) -> bool:
        check = self.options.check
        if getattr(task, "check_mode", None) is not None:
            check = bool(task.check_mode)
        return check

    def _unreachable(self, s: HostState, msg: str) -> None:
        s.unreachable = True
        self.pool.drop(s.host)
        self._record(s, HostResult(s.name, unreachable=True, msg=msg), None)

    def _note_play_hosts(self, batch: list[HostState]) -> None:
        """The magic host lists for the next task (once per task, not per host): the batch's hosts still running,
        the play's hosts not failed, all the play's hosts."""
        live = [x.name for x in batch if x.active]
        self._play_lists = {"ansible_play_batch": live, "play_hosts": live,
                            "ansible_play_hosts_all": list(self._play_names),
                            "ansible_play_hosts": [n for n in self._play_names if not (
                                self.states[n].failed or self.states[n].unreachable)]}

    def _vars(self, s: HostState, play, task, extra: Mapping | None = None):
        from provision.variables import HostVars, host_variables
        # hostvars[other]: its inventory vars, facts, set_fact values and registered results so far (run_once and
        # delegate_to patterns read them: hostvars[groups['head'][0]].join_cmd.stdout)
        seen = lambda n: self.states.get(n)  # noqa: E731
        hostvars = HostVars(self.inventory, lambda n: seen(n).facts if seen(n) else None,
                            lambda n: {**seen(n).set_facts, **seen(n).registered} if seen(n) else None,
                            extra_vars=self.options.extra_vars) if self.inventory is not None else None
        v = host_variables(s.host, play if getattr(play, "source", None) is not None else None,
                           extra_vars=self.options.extra_vars, facts=s.facts, set_facts=s.set_facts,
                           registered=s.registered, task=task, inventory=self.inventory,
                           check_mode=self.options.check, diff_mode=self.options.diff, hostvars=hostvars)
        magic = {"ansible_version": ANSIBLE_VERSION, "ansible_run_tags": list(self.options.tags or ("all",)),
                 "ansible_skip_tags": list(self.options.skip_tags), **self._play_lists}
        magic.update(s.block_vars)
        for src in (magic, extra or {}):
            v.update(src)
            v.raw_keys.update(src)
        v["vars"] = templating.lazy(v)   # Ansible's `vars`: every variable by name ('x' in vars)
        v.raw_keys.add("vars")
        return v

    def _run_task(self, s: HostState, task, play) -> None:
        v = None
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
                items = self._loop_items(task, v)
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
                if r.failed and ignores_errors(task, v):
                    r.ignored = True
        except (templating.TemplateError, OpError, InputError) as err:
            r = HostResult(s.name, failed=True, msg=str(err))
            secrets = s.secrets        # an error message is masked like any output (this task's, or the last)
            if ignores_errors(task, v):
                r.ignored = True
        self._finish(s, task, r, secrets, loop_summary=task.loop is not None)

    def _finish(self, s: HostState, task, r: HostResult, secrets=None, loop_summary: bool = False) -> None:
        """A task's result on one host: registered, the host failed (or its block's rescue/always takes over) or
        unreachable, handlers notified, recorded and shown."""
        r.task = task.name
        r.no_log = task.no_log
        if task.register:
            s.registered[task.register] = r.registered()
        rescued = False
        if r.unreachable:
            s.unreachable = True
            self.pool.drop(s.host)
        elif r.failed and not r.ignored:
            rescued = self._failed(s, task, r)
        if r.changed and not r.failed and task.notify:
            for n in task.notify:
                if n not in s.notified:
                    s.notified.append(n)
        s.last_result = r
        self._record(s, r, task, secrets, loop_summary=loop_summary)
        if rescued:
            self._count_rescued(s)

    def _run_item(self, s: HostState, task, play, v) -> HostResult:
        """Run one task (or one loop item) on one host: until/retries, changed_when/failed_when, ignore_errors."""
        from provision.ops.spec import registry
        if task.unsupported:
            return self._unsupported(s, task)
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
            # as Ansible: facts a module returns become host variables (set_fact's too); delegate_facts: the
            # delegated host's
            t = self._delegate(s, task, v) if task.delegate_facts else s
            t.set_facts.update(r.extra["ansible_facts"])
            if task.module not in ("set_fact", "include_vars"):   # variables, not facts of the host
                t.facts.update(r.extra["ansible_facts"])
        if r.failed and ignores_errors(task, v):
            r.ignored = True
        return r

    def _run_op(self, s, task, play, spec, op, impl, args, v) -> HostResult:
        """The op plans from its arguments, the host's facts and its probe; the host's runner carries the plan
        out (check mode: only what is read-only). With delegate_to, the delegated host's connection and facts
        serve, the variables stay this host's."""
        become, become_user = self._become(s, task, play)
        check = self._check_for(task)
        search = tuple(p for p in (getattr(task, "role_path", None), getattr(task, "playbook_dir", None)
                                   or getattr(play, "playbook_dir", None)) if p)
        controller = spec.runs_on_controller or getattr(op, "controller", False)
        t = self._delegate(s, task, v)
        env = render_environment(task.environment, v) if task.environment else None   # values templated too
        if env and env_problem(env):
            raise OpError(env_problem(env))
        if env:   # a literal value under a secret name (HF_TOKEN: hf_...) is masked like a secret variable's
            s.secrets.extend(x for x in secret_values(env) if x not in s.secrets)
        runner = None if controller else self.runner(t, task, v)
        ctx = OpContext(host=t.name, check=check, diff=self.options.diff, become=become, become_user=become_user,
                        env=env, vars=v, facts=t.facts,
                        search_paths=search, no_log=task.no_log, probe_cache=t.probe_cache,
                        log=self._op_logger(s, task.no_log), runner=runner)
        try:
            if runner is not None:
                need = [f for f in getattr(op, "facts", ()) if f not in t.gathered]
                for f in [f for f in need if (FACT_KEY, f) in t.probe_cache]:
                    t.facts.update(t.probe_cache[(FACT_KEY, f)])   # prefetched, and nothing ran since
                    t.gathered.add(f)
                    need.remove(f)
                    self._log(s.name, "cmd", f"(prefetched) facts {f}", False)
                if need:
                    runner.refresh(tuple(need))
            start = time.monotonic()
            if op is None:                       # a plain function op: (args, facts, ctx) -> Plan
                r = runner.execute(impl(args, t.facts, ctx), ctx)
            elif controller:                     # decides on the controller alone (debug, set_fact...)
                r = op.run(args, ctx)
            else:
                probe_cmd = op.probe(args, ctx)
                probe = ctx.probe(probe_cmd) if probe_cmd else None
                r = runner.execute(op.plan(args, t.facts, probe, ctx), ctx)
            if r.changed or r.failed:
                t.probe_cache.clear()   # the host changed (or may have): prefetched probes are stale
            r.duration = r.duration or (time.monotonic() - start)
            if not r.commands:
                r.commands = list(ctx.ran)
            if t is not s:
                r.host = s.name
                r.extra["delegated_to"] = t.name
            return r
        except Unreachable as err:
            return HostResult(s.name, unreachable=True, msg=str(err))
        except CommandTimeout as err:
            return HostResult(s.name, failed=True, msg=str(err))
        except (OpError, ConnectorError) as err:
            return HostResult(s.name, failed=True, msg=str(err))
        finally:
            if runner is not None:
                runner.release()

    def _delegate(self, s: HostState, task, v) -> HostState:
        """The host a task runs on: ``s``, or its ``delegate_to`` (an inventory host, or the implicit localhost
        with the local connection)."""
        if not getattr(task, "delegate_to", None):
            return s
        name = str(templating.render(task.delegate_to, v))
        if name == s.name:
            return s
        host = self.inventory.hosts.get(name)
        if host is None and name in ("localhost", "127.0.0.1"):
            from provision.inventory.models import Host
            from provision.yamlsrc import SourcePos
            host = Host(name, {"ansible_connection": "local"}, ("all", "ungrouped"),
                        SourcePos("<implicit localhost>", 0))
        if host is None:
            raise OpError(f"delegate_to: no host {name!r} in the inventory")
        return self._state(host)

    def runner(self, s: HostState, keywords=None, v=None) -> HostRunner:
        """The host's runner for one task (or one upgrade step): its connection comes from the pool, opened as
        the task's (or play's) remote_user / connection keywords say where the inventory says nothing."""
        host = s.host
        user, conn = getattr(keywords, "remote_user", None), getattr(keywords, "connection", None)
        if user or conn:
            render = (lambda x: str(templating.render(x, v)) if x else x) if v is not None else (lambda x: x)
            host = connecting_host(host, render(user), render(conn))
        return HostRunner(host, self.pool, refresh=lambda conn, secs, _s=s: self._gather(_s, conn, secs))

    def _gather(self, s: HostState, conn, sections) -> None:
        secs = [x for x in sections if x in factmod.FACTS]
        if secs:
            s.facts.update(factmod.gather(conn, secs))
            s.gathered.update(secs)

