"""How a play's task list flows over a batch of hosts, beyond one task on one host: blocks (a failure jumps to the
block's rescue or always section), dynamic includes (include_tasks/include_role read per host when reached, hosts
that include the same file run its tasks together), run_once, and modules gpufleet lacks (they fail only the hosts
that reach them). Mixed into :class:`provision.executor.play.Executor`."""
from __future__ import annotations

import dataclasses

from provision import templating
from provision.errors import InputError
from provision.executor.state import (block_failure, leave_blocks, reaches, render_args, tag_selected,
                                      task_matches)
from provision.ops.core import OpError
from provision.results import SKIPPED_BY_WHEN, HostResult


class Flow:
    """Uses the executor's options, reporter, stats, _lock, _run_on, _run_task, _vars, _meta, _check_failures,
    _note_play_hosts."""

    def _run_tasks(self, play, tasks, batch, workers, frames: tuple = ()) -> bool:
        """Run ``tasks`` in lockstep on the hosts of ``batch`` that reach each one (``frames``: the blocks the list
        sits in, for an included file). True when the play ends (meta: end_play)."""
        for task in tasks:
            if not self._started:
                if task_matches(task, self.options.start_at_task):
                    self._started = True
                else:
                    continue
            if not tag_selected(task.tags, self.options.tags, self.options.skip_tags):
                continue
            for s in batch:
                if s.active:
                    leave_blocks(s, task.frames)
            if not any(s.active for s in batch):
                break
            active = [s for s in batch if s.active and reaches(s, task.frames)]
            if not active:
                continue
            self._note_play_hosts(batch)
            if task.module == "meta":
                if self._meta(play, task, active, workers):
                    return True
                continue
            if task.include is not None:
                if self._include(play, task, active, workers):
                    return True
            elif task.run_once:
                active[0].last_result = None   # what _share_once gives the others: this task's result only
                self._run_on(active[:1], workers, task.name, lambda s, t=task: self._run_task(s, t, play), play)
                self._share_once(active[0], active[1:], task)
            else:
                self._run_on(active, workers, task.name, lambda s, t=task: self._run_task(s, t, play), play)
            self._check_failures(play, batch)
        for s in batch:
            if s.active:
                leave_blocks(s, frames)   # blocks of this list that ended: their failures hold again
        if not frames:
            self._check_failures(play, batch)
        return False

    def _failed(self, s, task, r) -> bool:
        """``r`` failed ``task`` on ``s`` (not ignored): the enclosing block's rescue or always takes over, else the
        host fails. True when a rescue section takes over."""
        s.block_vars = {"ansible_failed_task": {"name": task.name, "action": task.module},
                        "ansible_failed_result": r.registered()}
        return block_failure(s, () if task.handler_names else task.frames) == "rescue"

    def _count_rescued(self, s) -> None:
        """A rescued failure counts as rescued in the recap, not failed (as Ansible's)."""
        with self._lock:
            rec = self.stats.host(s.name)
            rec.failed, rec.rescued = rec.failed - 1, rec.rescued + 1
            if rec.failed <= 0:
                self.stats.failed_hosts.discard(s.name)

    def _share_once(self, src, others, task) -> None:
        """run_once: the first host's result is every host's (registered variable, facts it set, notified
        handlers, a failure), as in Ansible."""
        r = getattr(src, "last_result", None)
        if r is None:
            return
        for s in others:
            if task.register:
                s.registered[task.register] = src.registered.get(task.register)
            facts = r.extra.get("ansible_facts")
            if isinstance(facts, dict) and not r.failed:
                s.set_facts.update(facts)
            if r.unreachable or (r.failed and not r.ignored):
                self._failed(s, task, r)
                continue
            if r.changed and task.notify:
                s.notified += [n for n in task.notify if n not in s.notified]

    def _unsupported(self, s, task) -> HostResult:
        when = f" (its when: {' and '.join(task.when)} is true here)" if task.when else ""
        return HostResult(s.name, failed=True, msg=f"{task.unsupported}; this host reached the task{when}")

    # -- dynamic includes ------------------------------------------------------------------------------
    def _include(self, play, task, states, workers) -> bool:
        """include_tasks / include_role: per host (when, loop) the files it includes; hosts that include the same
        file with the same loop item run its tasks together, one group after another."""
        from provision.playbook import load_included, unsupported_line
        self.reporter.task_start(task.name)
        groups: dict[str, tuple] = {}
        for s in states:
            try:
                v = self._vars(s, play, task)
                items = [None] if task.loop is None else self._loop_items(task, v)
                included = []
                for i, item in enumerate(items):
                    iv = {} if item is None else {task.loop_var: item}
                    if item is not None and task.index_var:
                        iv[task.index_var] = i
                    vv = self._vars(s, play, task, iv) if iv else v
                    if task.when and not templating.conditional(task.when, vv):
                        continue
                    args = render_args({k: a for k, a in task.args.items() if k != "apply"}, (), vv)
                    key = repr((sorted(args.items()), sorted(iv.items())))
                    groups.setdefault(key, (args, iv, []))[2].append(s)
                    included.append(args.get("file") or args.get("name"))
                r = HostResult(s.name, msg="included: " + ", ".join(map(str, included))) if included else \
                    HostResult(s.name, skipped=True, msg=SKIPPED_BY_WHEN)
            except (templating.TemplateError, OpError, InputError) as err:
                r = HostResult(s.name, failed=True, msg=str(err))
            self._finish(s, task, r)
        handlers = tuple(play.handlers) + tuple(self._dyn_handlers)
        for args, iv, group in groups.values():
            group = [s for s in group if s.active]
            if not group:
                continue
            try:
                inc = load_included(task, args, handlers, iv)
            except InputError as err:
                for s in group:
                    self._finish(s, task, HostResult(s.name, failed=True, msg=str(err)))
                continue
            for t in inc.tasks:
                if t.unsupported:
                    self.reporter.warning(unsupported_line(t))
            self._dyn_handlers += [h for h in inc.handlers if h not in self._dyn_handlers]
            sub = dataclasses.replace(play, role_defaults={**play.role_defaults, **inc.role_defaults}) \
                if inc.role_defaults else play
            if self._run_tasks(sub, inc.tasks, group, workers, task.frames):
                return True
        return False

    def _loop_items(self, task, v) -> list:
        """A task's loop for one host: rendered, and through first_found/fileglob for with_first_found and
        with_fileglob (searched in the role's and the playbook's vars/ for include_vars, templates/ for template,
        else files/)."""
        from provision.templating.lookups import file_lookup
        items = templating.render(task.loop, v)
        if task.loop_lookup:
            sub = next((k + "s" for k in ("template", "var", "file") if k in task.module), "files")
            items = file_lookup(task.loop_lookup, items if isinstance(items, list) else [items], task.role_path,
                                task.playbook_dir, sub)
        if isinstance(items, str) or not isinstance(items, (list, tuple)):
            raise OpError(f"loop must be a list, got {type(items).__name__}")
        return list(items)
