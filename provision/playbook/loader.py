"""The playbook loader: a playbook file (and the playbooks it imports) -> Playbook; plays with vars, vars_files,
serial and roles; roles (meta dependencies, defaults, vars, tasks, handlers); task files, blocks and imports. Each
task is read by :mod:`provision.playbook.tasks`."""
from __future__ import annotations

import glob
import itertools
import os
from dataclasses import dataclass, replace
from typing import Any, Mapping

from provision import yamlsrc
from provision.errors import closest
from provision.ops.spec import VAR_NAME
from provision.playbook.fields import (BLOCK_KEYS, IMPORT_KEYS, INCLUDE_KEYS, PLAY_KEYS, ROLE_KEYS, TASK_KEYS,
                                       UNSUPPORTED, _PERCENT, _bool, _check_keys, _conditions, _err, _kpos, _mapping,
                                       _number, _str, _str_list, action_name)
from provision.playbook.models import BlockFrame, Play, Playbook, Task, _freeze
from provision.playbook.tasks import _check_notify, _Ctx, _environment, _inherit, _merge_env, _task
from provision.yamlsrc import LineDict, LineList, SourcePos, describe

_BLOCK_IDS = itertools.count(1)   # block ids unique in the process (included files are read while a run goes on)
INCLUDE_ROLE_KEYS = ("name", "tasks_from", "vars_from", "defaults_from", "handlers_from", "apply", "public",
                     "allow_duplicates", "rolespec_validate")
ROLE_TASK_KEYS = ("remote_user", "connection", "ignore_errors", "no_log", "check_mode", "run_once", "delegate_to")
APPLY_KEYS = ("when", "tags", "become", "become_user", "environment", "vars", "ignore_errors", "no_log",
              "check_mode", "remote_user", "connection", "delegate_to", "run_once")


@dataclass(frozen=True)
class Included:
    """What an ``include_tasks``/``include_role`` brings in for one host: its tasks, and an included role's
    defaults and handlers."""
    tasks: tuple[Task, ...]
    role_defaults: Mapping
    handlers: tuple[Task, ...]


class _Loader:
    def __init__(self, path: str, roles_path: tuple[str, ...] = (), *, scan: bool = True):
        self.path = path
        self.playbook_dir = os.path.dirname(os.path.abspath(path))
        self.roles_dir = os.path.join(self.playbook_dir, "roles")
        self.roles_path = tuple(roles_path)   # ansible.cfg roles_path / ANSIBLE_ROLES_PATH, after roles/
        self.role_defaults: dict = {}
        self.role_handlers: list[Task] = []
        self.roles_loaded: list[str] = []
        self.role_stack: list[str] = []
        self.role_dirs: list[str] = []       # folders of the roles being loaded (their dependencies sit beside)
        self.import_stack: list[str] = []
        self._registry = None
        # _scan_defines: what each file gives, read once per load; None: no static check follows (load_included)
        self._defines: dict | None = {} if scan else None

    @property
    def registry(self):
        if self._registry is None:
            from provision.ops.spec import registry
            self._registry = registry()
        return self._registry

    # -------------------------------------------------------------- playbook / plays
    def load(self) -> Playbook:
        return Playbook(self.path, tuple(self._plays(self.path, [])))

    def _plays(self, path: str, stack: list[str]) -> list[Play]:
        data = yamlsrc.load(path, what="playbook")
        if data is None:
            raise _err("playbook is empty (expected a list of plays)", SourcePos(path, 1))
        if not isinstance(data, list):
            raise _err(f"a playbook must be a list of plays, got {describe(data)}", yamlsrc.pos_of(data,
                       default=SourcePos(path, 1)))
        plays: list[Play] = []
        for i, item in enumerate(data):
            pos = data.pos(i)
            if not isinstance(item, dict):
                raise _err(f"each play must be a mapping, got {describe(item)}", pos)
            imp = next((k for k in ("import_playbook", "ansible.builtin.import_playbook") if k in item), None)
            if imp:
                _check_keys(item, (imp, "name", "when", "tags", "vars"), pos, "import_playbook")
                target = item[imp]
                ipos = item.pos(imp)
                if not isinstance(target, str) or "{{" in target:
                    raise _err("import_playbook takes a file name (templated names are not supported)", ipos, imp)
                full = os.path.join(os.path.dirname(os.path.abspath(path)), target)
                if full in stack:
                    raise _err(f"import_playbook loop: {' -> '.join(stack + [full])}", ipos, imp)
                if not os.path.exists(full):
                    raise _err(f"imported playbook not found: {full}", ipos, imp)
                plays.extend(self._plays(full, stack + [os.path.abspath(path)]))
                continue
            plays.append(self._play(item, pos, path))
        return plays

    def _play(self, data: LineDict, pos: SourcePos, path: str) -> Play:
        if "hosts" not in data:
            looks_like_task = any(k in self.registry for k in data) or "block" in data
            msg = ("this looks like a task, not a play: a playbook is a list of plays with 'hosts:' and 'tasks:'"
                   if looks_like_task else "play has no 'hosts'")
            raise _err(msg, pos, "hosts")
        _check_keys(data, PLAY_KEYS, pos, "play")
        kp = lambda k: _kpos(data, k, pos)  # noqa: E731
        self.role_defaults, self.role_handlers, self.roles_loaded = {}, [], []

        hosts_v = data["hosts"]
        if isinstance(hosts_v, list):
            hosts = ",".join(_str_list(hosts_v, kp("hosts"), "hosts"))
        elif hosts_v is None or hosts_v == "":
            raise _err("hosts must name a host pattern", kp("hosts"), "hosts")
        else:
            hosts = _str(hosts_v, kp("hosts"), "hosts")
        name = _str(data.get("name") or hosts, kp("name"), "name")
        # free / host_pinned run as linear: each host runs the same tasks in the same order, in lockstep
        for key, allowed in (("strategy", ("linear", "free", "host_pinned")), ("become_method", ("sudo",))):
            if key in data and data[key] not in allowed:
                raise _err(f"only {', '.join(allowed)} is supported, got {data[key]!r}", kp(key), key)

        positions: dict[str, SourcePos] = {k: kp(k) for k in data}
        play_vars: dict = {}
        pv = data.get("vars")
        if isinstance(pv, list):  # Ansible also accepts a list of mappings
            for i, item in enumerate(pv):
                play_vars.update(_mapping(item, _kpos(pv, i, kp("vars")), "vars"))
                for k in item or {}:
                    positions[f"vars.{k}"] = _kpos(item, k, kp("vars"))
        else:
            play_vars.update(_mapping(pv, kp("vars"), "vars"))
            for k in pv or {}:
                positions[f"vars.{k}"] = _kpos(pv, k, kp("vars"))
        for file, fdata in self._vars_files(data.get("vars_files"), kp("vars_files"), path):
            play_vars.update(fdata)
            for k in fdata:
                positions[f"vars.{k}"] = fdata.pos(k)

        become = _bool(data.get("become", False), kp("become"), "become")
        become_user = _str(data["become_user"], kp("become_user"), "become_user") if data.get("become_user") else None
        gather = _bool(data.get("gather_facts", True), kp("gather_facts"), "gather_facts")
        serial = self._serial(data.get("serial"), kp("serial"))
        mfp = None
        if data.get("max_fail_percentage") is not None:
            raw = data["max_fail_percentage"]
            m = _PERCENT.match(raw) if isinstance(raw, str) else None
            mfp = _number(m.group(1) if m else raw, kp("max_fail_percentage"), "max_fail_percentage")
            if mfp > 100:
                raise _err(f"must be between 0 and 100, got {raw!r}", kp("max_fail_percentage"),
                           "max_fail_percentage")
        any_fatal = _bool(data.get("any_errors_fatal", False), kp("any_errors_fatal"), "any_errors_fatal")

        ctx = _Ctx(file=path, playbook_dir=self.playbook_dir, base_dir=os.path.dirname(os.path.abspath(path)),
                   roles_path=self.roles_path)
        ctx.tags = _str_list(data.get("tags"), kp("tags"), "tags", split_commas=True)
        ctx.environment = _environment(data.get("environment"), kp("environment"))
        for k in ("remote_user", "connection", "ignore_errors", "no_log"):   # the keywords tasks inherit
            if k in data:
                ctx = _inherit({k: data[k]}, kp(k), ctx)

        tasks: list[Task] = []
        tasks += self._task_list(data.get("pre_tasks"), kp("pre_tasks"), ctx, "pre_tasks")
        roles = data.get("roles")
        if roles is not None:
            if not isinstance(roles, list):
                raise _err(f"roles must be a list, got {describe(roles)}", kp("roles"), "roles")
            for i, r in enumerate(roles):
                tasks += self._role_entry(r, roles.pos(i), ctx)
        tasks += self._task_list(data.get("tasks"), kp("tasks"), ctx, "tasks")
        tasks += self._task_list(data.get("post_tasks"), kp("post_tasks"), ctx, "post_tasks")
        hctx = replace(ctx, handler=True)
        handlers = list(self.role_handlers) + self._task_list(data.get("handlers"), kp("handlers"), hctx, "handlers")

        _check_notify(tasks + handlers, handlers)
        return Play(name=name, hosts=hosts, vars=_freeze(play_vars), role_defaults=_freeze(self.role_defaults),
                    become=become, become_user=become_user, gather_facts=gather, serial=serial,
                    max_fail_percentage=mfp, any_errors_fatal=any_fatal, tasks=tuple(tasks),
                    handlers=tuple(handlers), source=pos, playbook_dir=self.playbook_dir,
                    roles=tuple(self.roles_loaded), positions=_freeze(positions), remote_user=ctx.remote_user,
                    connection=ctx.connection)

    def _vars_files(self, v: Any, pos: SourcePos, path: str):
        if v is None:
            return
        items = v if isinstance(v, list) else [v]
        for i, item in enumerate(items):
            ipos = _kpos(v, i, pos) if isinstance(v, list) else pos
            candidates = item if isinstance(item, list) else [item]   # a nested list = first one found
            found = None
            for c in candidates:
                if not isinstance(c, str):
                    raise _err(f"vars_files entries must be file names, got {describe(c)}", ipos, "vars_files")
                if "{{" in c:
                    raise _err(f"templated vars_files are not supported: {c!r}", ipos, "vars_files")
                full = c if os.path.isabs(c) else os.path.join(os.path.dirname(os.path.abspath(path)), c)
                if os.path.isfile(full):
                    found = full
                    break
            if found is None:
                raise _err(f"vars file not found: {', '.join(map(str, candidates))}", ipos, "vars_files")
            data = yamlsrc.load(found, what="vars file")
            if data is None:
                continue
            if not isinstance(data, dict):
                raise _err(f"a vars file must be a mapping, got {describe(data)}", SourcePos(found, 1))
            yield found, data

    def _serial(self, v: Any, pos: SourcePos) -> tuple:
        if v is None:
            return ()
        items = v if isinstance(v, list) else [v]
        out = []
        for i, item in enumerate(items):
            ipos = _kpos(v, i, pos) if isinstance(v, list) else pos
            if isinstance(item, bool):
                raise _err(f"expected a number of hosts, a percentage like '30%' or a list of them, got {item!r}",
                           ipos, "serial")
            if isinstance(item, str) and item.strip().isdigit():
                item = int(item)
            if isinstance(item, int):
                if item < 1:
                    raise _err(f"serial must be at least 1, got {item} (leave serial out to run all hosts at once)",
                               ipos, "serial")
                out.append(item)
            elif isinstance(item, str) and _PERCENT.match(item):
                pct = float(_PERCENT.match(item).group(1))
                if not 0 < pct <= 100:
                    raise _err(f"serial percentage must be between 1% and 100%, got {item!r}", ipos, "serial")
                out.append(item.strip())
            else:
                raise _err(f"expected a number of hosts, a percentage like '30%' or a list of them, got {item!r}",
                           ipos, "serial")
        return tuple(out)

    # -------------------------------------------------------------- roles
    def _find_role(self, name: str, pos: SourcePos, key: str) -> str:
        """A role by name (roles/ beside the playbook, then roles_path, then the playbook's own folder) or by
        path (``../roles/x``, ``/abs/x``: relative to the playbook)."""
        if "{{" in name:
            raise _err("templated role names are not supported", pos, key)
        name = os.path.expanduser(name)
        if os.sep in name or name.startswith("."):
            d = os.path.normpath(os.path.join(self.playbook_dir, name))
            if os.path.isdir(d):
                return d
            raise _err(f"role '{name}' not found ({d} is not a folder)", pos, key)
        # a role's dependencies are also found beside it (roles/a/meta naming b finds roles/b)
        dirs = [self.roles_dir, *self.roles_path, self.playbook_dir, *(os.path.dirname(d) for d in self.role_dirs)]
        for base in dirs:
            d = os.path.join(base, name)
            if os.path.isdir(d) and (base != self.playbook_dir or os.path.isdir(os.path.join(d, "tasks"))):
                return d
        existing = sorted(os.listdir(self.roles_dir)) if os.path.isdir(self.roles_dir) else []
        where = self.roles_dir + "".join(f", {p}" for p in self.roles_path)
        raise _err(f"role '{name}' not found in {where}", pos, key, hint=closest(name, existing))

    @staticmethod
    def _main(d: str, sub: str, name: str = "main") -> str | None:
        """roles/X/SUB/NAME with .yaml, .yml or .json (or NAME as given, with its extension)."""
        for cand in (name, *(f"{name}.{ext}" for ext in ("yaml", "yml", "json"))):
            p = os.path.join(d, sub, cand)
            if os.path.isfile(p):
                return p
        return None

    def _role_entry(self, entry: Any, pos: SourcePos, ctx: _Ctx) -> list[Task]:
        if isinstance(entry, str):
            return self._load_role(entry, pos, ctx, {}, "roles")
        if not isinstance(entry, dict):
            raise _err(f"a role entry must be a name or a mapping, got {describe(entry)}", pos, "roles")
        name = entry.get("role", entry.get("name"))
        if not isinstance(name, str):
            raise _err("role entry needs 'role: NAME'", pos, "role")
        kp = lambda k: _kpos(entry, k, pos)  # noqa: E731
        sub = replace(ctx)
        params: dict = {}
        for k, v in entry.items():
            if k in ("role", "name"):
                continue
            if k == "vars":
                params.update(_mapping(v, kp(k), k))
            elif k == "tags":
                sub.tags = ctx.tags + _str_list(v, kp(k), k, split_commas=True)
            elif k == "when":
                sub.when = ctx.when + _conditions(v, kp(k), k)
            elif k == "become":
                sub.become = _bool(v, kp(k), k)
            elif k == "become_user":
                sub.become_user = _str(v, kp(k), k)
            elif k == "environment":
                sub.environment = _merge_env(ctx.environment, _environment(v, kp(k)))
            elif k in ROLE_TASK_KEYS:   # keywords the role's tasks inherit
                sub = _inherit({k: v}, kp(k), sub)
            elif k in UNSUPPORTED or k in TASK_KEYS:
                raise _err(UNSUPPORTED.get(k, f"'{k}' is not supported on a role entry"), kp(k), str(k))
            else:  # Ansible's role parameters: any other key is a variable for the role
                if not isinstance(k, str) or not VAR_NAME.match(k):
                    raise _err("unknown role entry key", kp(k), str(k), hint=closest(str(k), ROLE_KEYS))
                params[k] = v
        return self._load_role(name, kp("role") if "role" in entry else kp("name"), sub, params, "role")

    def _load_role(self, name: str, pos: SourcePos, ctx: _Ctx, params: dict, key: str,
                   files: Mapping[str, str] | None = None) -> list[Task]:
        """The role's tasks (its meta dependencies' first); its defaults and handlers join the play's. ``files``:
        include_role/import_role's tasks_from, vars_from, defaults_from, handlers_from (file names in the role)."""
        files = files or {}
        d = self._find_role(name, pos, key)
        name = os.path.basename(os.path.normpath(name)) if os.sep in name else name
        for k, f in files.items():
            if self._main(d, k[:-len("_from")], f) is None:
                raise _err(f"role '{name}' has no {k[:-len('_from')]}/{f}", pos, k)
        if name in self.role_stack:
            raise _err(f"role dependency loop: {' -> '.join(self.role_stack + [name])}", pos, key)
        self.role_stack.append(name)
        self.role_dirs.append(d)
        try:
            tasks: list[Task] = []
            meta = self._main(d, "meta")
            if meta:
                mdata = yamlsrc.load(meta, what="role meta file") or {}
                deps = mdata.get("dependencies") if isinstance(mdata, dict) else None
                for i, dep in enumerate(deps or []):
                    dpos = _kpos(deps, i, SourcePos(meta, 1))
                    if isinstance(dep, str) and dep in self.roles_loaded:
                        continue
                    tasks += self._role_entry(dep, dpos, replace(ctx, vars={}, role=None, role_path=None))
            defaults = self._main(d, "defaults", files.get("defaults_from", "main"))
            if defaults:
                ddata = yamlsrc.load(defaults, what="role defaults file")
                self.role_defaults.update(_mapping(ddata, SourcePos(defaults, 1), "defaults"))
            role_vars: dict = {}
            vfile = self._main(d, "vars", files.get("vars_from", "main"))
            if vfile:
                role_vars.update(_mapping(yamlsrc.load(vfile, what="role vars file"), SourcePos(vfile, 1), "vars"))
            role_vars.update(params)
            rctx = replace(ctx, role=name, role_path=d, base_dir=os.path.join(d, "tasks"),
                           vars={**ctx.vars, **role_vars})
            tfile = self._main(d, "tasks", files.get("tasks_from", "main"))
            if tfile:
                tasks += self._task_file(tfile, rctx)
            hfile = self._main(d, "handlers", files.get("handlers_from", "main"))
            if hfile and name not in self.roles_loaded:
                self.role_handlers += self._task_file(hfile, replace(rctx, handler=True,
                                                                     base_dir=os.path.join(d, "handlers")))
            if name not in self.roles_loaded:
                self.roles_loaded.append(name)
            return tasks
        finally:
            self.role_stack.pop()
            self.role_dirs.pop()

    # -------------------------------------------------------------- tasks
    def _task_file(self, path: str, ctx: _Ctx) -> list[Task]:
        if path in self.import_stack:
            raise _err(f"import loop: {' -> '.join(self.import_stack + [path])}", SourcePos(path, 1))
        self.import_stack.append(path)
        try:
            data = yamlsrc.load(path, what="task file")
            return self._task_list(data, SourcePos(path, 1), replace(ctx, file=path), "tasks")
        finally:
            self.import_stack.pop()

    def _task_list(self, data: Any, pos: SourcePos, ctx: _Ctx, key: str) -> list[Task]:
        if data is None:
            return []
        if not isinstance(data, list):
            raise _err(f"{key} must be a list of tasks, got {describe(data)}", pos, key)
        out: list[Task] = []
        for i, item in enumerate(data):
            ipos = data.pos(i) if isinstance(data, LineList) else pos
            if not isinstance(item, dict):
                raise _err(f"each task must be a mapping, got {describe(item)}", ipos, key)
            out += self._task_or_block(item, ipos, ctx)
        return out

    def _task_or_block(self, data: LineDict, pos: SourcePos, ctx: _Ctx) -> list[Task]:
        kp = lambda k: _kpos(data, k, pos)  # noqa: E731
        if "block" in data:
            _check_keys(data, BLOCK_KEYS, pos, "block")
            sub = _inherit(data, pos, ctx)
            bid = next(_BLOCK_IDS)
            rescue, always = bool(data.get("rescue")), bool(data.get("always"))
            out: list[Task] = []
            for sec in ("block", "rescue", "always"):
                frame = BlockFrame(bid, sec, rescue, always)
                out += self._task_list(data.get(sec), kp(sec), replace(sub, frames=ctx.frames + (frame,)), sec)
            return out
        imp = next((k for k in data if action_name(k) in IMPORT_KEYS), None)
        if imp and action_name(imp) in INCLUDE_KEYS:
            return [self._include(data, pos, ctx, imp)]
        if imp:
            return self._import(data, pos, ctx, imp)
        return [self._scanned(_task(data, pos, ctx, self.registry))]

    def _scanned(self, task: Task) -> Task:
        """include_vars: the names its files may define, for the static check (the files are read per host)."""
        if task.module != "include_vars":
            return task
        dirs = [os.path.join(task.role_path, "vars")] if task.role_path else []
        dirs.append(os.path.join(task.playbook_dir, "vars"))
        return replace(task, defines=self._defines_of([os.path.join(d, "*") for d in dirs], top_keys=True))

    def _include(self, data: LineDict, pos: SourcePos, ctx: _Ctx, imp: str) -> Task:
        """include_tasks / include_role: one task whose file is read per host when it runs (a file included only
        for RedHat is never read for a Debian host); ``apply`` gives the included tasks keywords."""
        t = _task(data, pos, ctx, self.registry)
        mpos = t.positions.get("module", pos)
        args = dict(t.args)
        if "_raw_params" in args:
            args["file" if t.module == "include_tasks" else "name"] = args.pop("_raw_params")
        valid = ("file", "apply") if t.module == "include_tasks" else INCLUDE_ROLE_KEYS
        _check_keys(args, valid, mpos, t.module)
        target = args.get("file" if t.module == "include_tasks" else "name")
        if not isinstance(target, str) or not target:
            raise _err(f"{t.module} needs a {'file' if t.module == 'include_tasks' else 'role'} name", mpos, imp)
        inc = replace(ctx, vars=dict(t.vars))
        if args.get("apply") is not None:
            apply = _mapping(args["apply"], mpos, "apply")
            _check_keys(apply, APPLY_KEYS, mpos, "apply")
            inc = _inherit(apply, mpos, inc)
        if t.module == "include_tasks":
            base = [ctx.base_dir] + ([os.path.join(ctx.role_path, "tasks")] if ctx.role_path else [])
            pats = [os.path.join(b, _glob_of(target)) for b in base] if not os.path.isabs(target) \
                else [_glob_of(target)]
            if ctx.role_path:   # a role's task files may include one another
                pats.append(os.path.join(ctx.role_path, "tasks", "*"))
        else:
            if "{{" not in target:
                d = self._find_role(target, mpos, imp)   # a role that is nowhere: an error now, not per host
            else:
                d = os.path.join(self.roles_dir, "*")
            pats = [os.path.join(d, sub, "*") for sub in ("tasks", "defaults", "vars")]
        return replace(t, args=_freeze(args), include=inc, defines=self._defines_of(pats))

    def _defines_of(self, patterns: list[str], top_keys: bool = False) -> tuple[str, ...]:
        """What files read at run time may define, for the static check; nothing where none follows (files
        load_included reads while the run goes on)."""
        if self._defines is None:
            return ()
        return _scan_defines(patterns, top_keys, self._defines)

    def _import(self, data: LineDict, pos: SourcePos, ctx: _Ctx, imp: str) -> list[Task]:
        kp = lambda k: _kpos(data, k, pos)  # noqa: E731
        _check_keys(data, (imp, "name", "when", "tags", "vars", "become", "become_user", "environment",
                           "ignore_errors", "no_log"), pos, imp)
        sub = _inherit(data, pos, ctx)
        target = data[imp]
        short = action_name(imp)
        if short.endswith("_role"):
            files: dict = {}
            if isinstance(target, dict):
                _check_keys(target, INCLUDE_ROLE_KEYS, kp(imp), short)
                rname = target.get("name")
                for k in ("tasks_from", "vars_from", "defaults_from", "handlers_from"):
                    if target.get(k) is not None:
                        files[k] = _str(target[k], _kpos(target, k, kp(imp)), k)
            else:
                rname = target
            if not isinstance(rname, str):
                raise _err(f"{short} needs a role name", kp(imp), imp)
            return self._load_role(rname, kp(imp), sub, {}, imp, files)
        if isinstance(target, dict):
            _check_keys(target, ("file",), kp(imp), short)
            target = target.get("file")
        if not isinstance(target, str) or "{{" in target:
            raise _err(f"{short} takes a file name (templated names are not supported)", kp(imp), imp)
        full = target if os.path.isabs(target) else os.path.join(ctx.base_dir, target)
        if not os.path.isfile(full) and ctx.role_path:
            full = os.path.join(ctx.role_path, "tasks", target)
        if not os.path.isfile(full):
            raise _err(f"task file not found: {full}", kp(imp), imp)
        return self._task_file(full, replace(sub, base_dir=os.path.dirname(full)))


def load_playbook(path: str, roles_path: tuple[str, ...] = ()) -> Playbook:
    """Read a playbook (and its roles) into frozen models; every structural or module-argument error is an
    InputError naming file, line and key. ``roles_path``: more folders roles are looked up in (after roles/)."""
    return _Loader(path, roles_path).load()


def load_included(task: Task, args: Mapping, handlers: tuple = (), item_vars: Mapping | None = None) -> Included:
    """What ``task`` (include_tasks/include_role, its arguments rendered for one host) brings in: read and checked
    as the playbook was (InputError naming file:line); a ``notify`` must name a handler of the play (``handlers``)
    or of the included role. ``item_vars``: the include's loop variable, seen by every included task."""
    ctx = replace(task.include, vars={**task.include.vars, **(item_vars or {})})
    loader = _Loader(os.path.join(ctx.playbook_dir, "playbook"), ctx.roles_path, scan=False)   # no static check
    pos = task.positions.get("module", task.source)
    if task.module == "include_tasks":
        target = os.path.expanduser(str(args["file"]))
        cands = [target] if os.path.isabs(target) else [os.path.join(ctx.base_dir, target)] + (
            [os.path.join(ctx.role_path, "tasks", target)] if ctx.role_path else [])
        full = next((c for c in cands if os.path.isfile(c)), None)
        if full is None:
            raise _err(f"task file not found: {cands[0]}", pos, "include_tasks")
        tasks = loader._task_file(full, replace(ctx, base_dir=os.path.dirname(full)))
    else:
        files = {k: str(args[k]) for k in ("tasks_from", "vars_from", "defaults_from", "handlers_from")
                 if args.get(k) is not None}
        tasks = loader._load_role(str(args["name"]), pos, ctx, {}, "include_role", files)
    _check_notify(tasks, list(handlers) + loader.role_handlers)
    return Included(tuple(tasks), _freeze(loader.role_defaults), tuple(loader.role_handlers))


def _glob_of(name: str) -> str:
    """A templated file name as a glob (``setup-{{ ansible_os_family }}.yml`` -> ``setup-*.yml``)."""
    out, rest = "", name
    while "{{" in rest:
        a = rest.index("{{")
        b = rest.find("}}", a)
        if b < 0:
            break
        out, rest = out + rest[:a] + "*", rest[b + 2:]
    return out + rest


def _scan_defines(patterns: list[str], top_keys: bool = False, parsed: dict | None = None) -> tuple[str, ...]:
    """Names that files matching ``patterns`` may define when they are read at run time: what their tasks
    register or set_fact, and (vars/defaults files, or ``top_keys``) their top-level keys. Only for the static
    check of undefined variables; unreadable files give nothing. ``parsed``: the loader's cache of what each file
    gives (a role's include_tasks each match its tasks/*: every file is read once per load, not once per include)."""
    parsed = {} if parsed is None else parsed
    names: set[str] = set()
    files = {f for pat in patterns for f in glob.glob(pat)
             if os.path.isfile(f) and f.endswith((".yml", ".yaml", ".json"))}
    for f in sorted(files):
        if f not in parsed:
            parsed[f] = _file_defines(f)
        if parsed[f] is None:
            continue
        walked, keys = parsed[f]
        folder = os.path.basename(os.path.dirname(f))
        if top_keys or folder in ("vars", "defaults"):
            names.update(keys)
        names.update(walked)
    return tuple(sorted(names))


def _file_defines(path: str) -> tuple[set[str], set[str]] | None:
    """(what one file's tasks register or set_fact, its top-level keys when it is a mapping), None when it cannot
    be read."""
    import yaml
    walked: set[str] = set()

    def walk(node):
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            if isinstance(node.get("register"), str):
                walked.add(node["register"])
            for k, v in node.items():
                if action_name(str(k)) == "set_fact" and isinstance(v, dict):
                    walked.update(str(x) for x in v)
                elif k in ("block", "rescue", "always"):
                    walk(v)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None
    walk(data)
    return walked, {str(k) for k in data} if isinstance(data, dict) else set()
