"""Playbooks and roles -> frozen Playbook/Play/Task models, checked against the module specs before any connection.

``load_playbook(path)`` reads Ansible's playbook format (plays with vars, vars_files, roles, pre_tasks, tasks,
post_tasks, handlers, serial...; ``block:`` without rescue/always, ``import_tasks``/``include_tasks``/
``import_role``/``include_role`` without loops, ``import_playbook``) and resolves each task's module against
:func:`provision.ops.spec.registry` (unknown module or argument, wrong type, missing required argument, a
``notify`` naming no handler: one-line :class:`InputError`). ``validate(playbook, inventory, extra_vars)`` adds
the checks that need the inventory: host patterns and undefined template variables. See docs/playbooks.md.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from provision import yamlsrc
from provision.errors import InputError, closest
from provision.truthy import NotABoolean, strict_bool
from provision.yamlsrc import LineDict, LineList, SourcePos, describe, short_repr

_EMPTY: Mapping = MappingProxyType({})


def _freeze(d: Mapping | None) -> Mapping:
    return MappingProxyType(dict(d or {}))


# ------------------------------------------------------------------------------------------------ models

@dataclass(frozen=True)
class Task:
    name: str
    module: str
    args: Mapping[str, Any]
    when: tuple[str, ...] = ()
    loop: Any | None = None
    loop_var: str = "item"
    register: str | None = None
    notify: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    become: bool | None = None
    become_user: str | None = None
    ignore_errors: bool = False
    changed_when: tuple[str, ...] | None = None
    failed_when: tuple[str, ...] | None = None
    until: str | None = None
    retries: int = 3
    delay: float = 5.0
    no_log: bool = False
    environment: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    vars: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    role: str | None = None
    source: SourcePos = SourcePos("<unknown>", 0)
    # additions beyond the shared contract
    role_path: str | None = None          # absolute path of roles/NAME for role tasks (templates/, files/ inside)
    playbook_dir: str = ""                # directory of the playbook file (search path for templates/files)
    check_mode: bool | None = None        # task-level `check_mode:` (False = run even under --check)
    index_var: str | None = None          # loop_control.index_var
    loop_label: str | None = None         # loop_control.label (template)
    loop_pause: float = 0.0               # loop_control.pause (seconds)
    handler_names: tuple[str, ...] = ()   # for handlers: every name `notify` may use (name, 'role : name')
    positions: Mapping[str, SourcePos] = field(default_factory=lambda: _EMPTY, compare=False, repr=False)

    def __hash__(self) -> int:
        return hash(("Task", self.name, self.module, self.source))


@dataclass(frozen=True)
class Play:
    name: str
    hosts: str
    vars: Mapping[str, Any]
    role_defaults: Mapping[str, Any]
    become: bool
    become_user: str | None
    gather_facts: bool
    serial: tuple
    max_fail_percentage: float | None
    any_errors_fatal: bool
    tasks: tuple[Task, ...]
    handlers: tuple[Task, ...]
    source: SourcePos
    # additions
    playbook_dir: str = ""
    roles: tuple[str, ...] = ()           # role names in load order
    positions: Mapping[str, SourcePos] = field(default_factory=lambda: _EMPTY, compare=False, repr=False)

    def __hash__(self) -> int:
        return hash(("Play", self.name, self.source))


@dataclass(frozen=True)
class Playbook:
    path: str
    plays: tuple[Play, ...]

    def __hash__(self) -> int:
        return hash(("Playbook", self.path))


def role_path(task: Task) -> str | None:
    """Directory of the role a task came from (holds templates/ and files/), or None."""
    return task.role_path


def search_paths(task: Task, kind: str) -> list[str]:
    """Where a relative ``src`` of a template (kind='templates') or copy (kind='files') is looked up, in order:
    the role's KIND dir, the role dir, the playbook's KIND dir, the playbook dir."""
    dirs = []
    if task.role_path:
        dirs += [os.path.join(task.role_path, kind), task.role_path]
    if task.playbook_dir:
        dirs += [os.path.join(task.playbook_dir, kind), task.playbook_dir]
    return dirs


def find_file(task: Task, kind: str, name: str) -> str:
    """Resolve a task's relative template/file path; raises InputError naming the places searched."""
    name = os.path.expanduser(str(name))
    if os.path.isabs(name):
        if os.path.exists(name):
            return name
        raise InputError(f"{kind[:-1]} '{name}' not found", file=task.source.file, line=task.source.line, key="src")
    tried = []
    for d in search_paths(task, kind):
        cand = os.path.join(d, name)
        tried.append(cand)
        if os.path.exists(cand):
            return cand
    raise InputError(f"{kind[:-1]} '{name}' not found (looked in {', '.join(tried)})", file=task.source.file,
                     line=task.source.line, key="src")


# ------------------------------------------------------------------------------------------------ keys

PLAY_KEYS = (
    "name", "hosts", "vars", "vars_files", "become", "become_user", "become_method", "gather_facts", "serial",
    "max_fail_percentage", "any_errors_fatal", "tasks", "pre_tasks", "post_tasks", "handlers", "roles", "tags",
    "environment", "ignore_errors", "no_log", "strategy",
)
TASK_KEYS = (
    "name", "when", "loop", "with_items", "with_list", "with_dict", "loop_control", "register", "notify", "tags",
    "become", "become_user", "become_method", "ignore_errors", "changed_when", "failed_when", "until", "retries",
    "delay", "no_log", "environment", "vars", "args", "check_mode",
)
HANDLER_KEYS = TASK_KEYS + ("listen",)
BLOCK_KEYS = ("block", "name", "when", "tags", "become", "become_user", "become_method", "ignore_errors", "no_log",
              "environment", "vars", "rescue", "always", "check_mode")
IMPORT_KEYS = {"import_tasks", "include_tasks", "import_role", "include_role",
               "ansible.builtin.import_tasks", "ansible.builtin.include_tasks", "ansible.builtin.import_role",
               "ansible.builtin.include_role"}
ROLE_KEYS = ("role", "name", "vars", "tags", "when", "become", "become_user", "environment")
LOOP_CONTROL_KEYS = ("loop_var", "index_var", "label", "pause", "extended")
UNSUPPORTED = {
    "delegate_to": "delegation is not supported",
    "local_action": "local_action is not supported; use a 'local' connection host",
    "action": "write the module name as the key (e.g. 'apt:') instead of 'action:'",
    "run_once": "run_once is not supported",
    "async": "async tasks are not supported",
    "poll": "async tasks are not supported",
    "throttle": "throttle is not supported",
    "any_errors_fatal": "any_errors_fatal is a play key here",
    "with_fileglob": "with_fileglob is not supported; use loop with a list",
    "with_together": "with_together is not supported; use loop with the zip filter",
    "with_nested": "with_nested is not supported",
    "with_subelements": "with_subelements is not supported",
    "with_sequence": "with_sequence is not supported; use loop with range()",
    "vars_prompt": "vars_prompt is not supported; use -e/--extra-vars",
    "import_playbook": "import_playbook is only allowed at the top level of a playbook",
}
FREE_FORM_SPECIAL = ("creates", "removes", "chdir", "executable", "stdin", "warn")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


# ------------------------------------------------------------------------------------------------ small checkers

def _err(msg: str, pos: SourcePos, key: str | None = None, **kw) -> InputError:
    return InputError(msg, file=pos.file, line=pos.line or None, key=key, **kw)


def _kpos(container: Any, key: Any, default: SourcePos) -> SourcePos:
    return yamlsrc.pos_of(container, key, default) if isinstance(container, (LineDict, LineList)) else default



def _bool(v: Any, pos: SourcePos, key: str) -> bool:
    try:
        return strict_bool(v)
    except NotABoolean as err:
        extra = " (templated values are not supported here)" if isinstance(v, str) and "{{" in v else ""
        raise _err(err.message + extra, pos, key) from None


def _str(v: Any, pos: SourcePos, key: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise _err(f"expected a string, got {describe(v)}", pos, key)
    return str(v)


def _str_list(v: Any, pos: SourcePos, key: str, *, split_commas: bool = False) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        items = [str(v)]
    elif isinstance(v, list):
        items = []
        for i, x in enumerate(v):
            if isinstance(x, bool) or not isinstance(x, (str, int, float)):
                raise _err(f"expected a list of strings, item {i + 1} is {describe(x)}", _kpos(v, i, pos), key)
            items.append(str(x))
    else:
        raise _err(f"expected a string or a list of strings, got {describe(v)}", pos, key)
    if split_commas:
        items = [p.strip() for x in items for p in x.split(",") if p.strip()]
    return tuple(items)


def _conditions(v: Any, pos: SourcePos, key: str) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [v]
    out = []
    for i, x in enumerate(items):
        if isinstance(x, bool):
            out.append("True" if x else "False")
        elif isinstance(x, (str, int, float)):
            s = str(x).strip()
            if not s:
                raise _err("empty condition", _kpos(v, i, pos), key)
            out.append(s)
        else:
            raise _err(f"expected a condition (a string or a list of strings), got {describe(x)}", _kpos(v, i, pos), key)
    return tuple(out)


def _mapping(v: Any, pos: SourcePos, key: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _err(f"expected a mapping, got {describe(v)}", pos, key)
    for k in v:
        if not isinstance(k, str):
            raise _err(f"variable names must be strings, got {k!r}", _kpos(v, k, pos), key)
    return v


def _number(v: Any, pos: SourcePos, key: str, *, integer: bool = False, minimum: float = 0) -> float:
    ok = not isinstance(v, bool) and isinstance(v, (int, float))
    if not ok and isinstance(v, str):
        try:
            v = int(v) if integer else float(v)
            ok = True
        except ValueError:
            ok = False
    if not ok or (integer and int(v) != v):
        raise _err(f"expected {'an integer' if integer else 'a number'}, got {v!r}", pos, key)
    if v < minimum:
        raise _err(f"must be at least {minimum:g}, got {v!r}", pos, key)
    return int(v) if integer else float(v)


def _check_keys(data: LineDict, valid: Iterable[str], pos: SourcePos, what: str, extra_choices: Iterable[str] = ()):
    valid = tuple(valid)
    for k in data:
        if k not in valid:
            kpos = _kpos(data, k, pos)
            if k in UNSUPPORTED:
                raise _err(UNSUPPORTED[k], kpos, str(k))
            raise _err(f"unknown {what} key", kpos, str(k), hint=closest(str(k), (*valid, *extra_choices)))


# ------------------------------------------------------------------------------------------------ module args

_BLOCK_OPEN = ("if", "for", "macro", "block", "filter", "call", "raw", "with")


def split_args(text: str) -> list[str]:
    """Split ``k=v`` module arguments on spaces outside quotes and outside Jinja2 ``{{ }}``, ``{% %}`` and
    ``{% if %}...{% endif %}`` blocks."""
    tokens, cur, quote, depth, blocks, i = [], "", None, 0, 0, 0
    while i < len(text):
        ch, two = text[i], text[i:i + 2]
        if quote:
            if ch == "\\" and i + 1 < len(text):
                cur += text[i + 1]
                i += 2
                continue
            if ch == quote:
                quote = None
            else:
                cur += ch
        elif two == "{%":
            end = text.find("%}", i + 2)
            if end < 0:
                raise ValueError("unbalanced {% %}")
            words = text[i + 2:end].strip("-+ \t").split()
            word = words[0] if words else ""
            if word.startswith("end"):
                blocks -= 1
            elif word in _BLOCK_OPEN or (word == "set" and "=" not in text[i + 2:end]):
                blocks += 1
            cur += text[i:end + 2]
            i = end + 2
            continue
        elif two == "{{":
            depth += 1
            cur += two
            i += 2
            continue
        elif two == "}}" and depth:
            depth -= 1
            cur += two
            i += 2
            continue
        elif ch in "\"'" and not depth and not blocks:
            quote = ch
        elif ch.isspace() and not depth and not blocks:
            if cur:
                tokens.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if quote or depth or blocks:
        raise ValueError("unbalanced quotes or braces")
    if cur:
        tokens.append(cur)
    return tokens


def _parse_kv(text: str, pos: SourcePos, module: str) -> dict:
    try:
        tokens = split_args(text)
    except ValueError as err:
        raise _err(f"cannot parse arguments: {err}", pos, module) from None
    out = {}
    for tok in tokens:
        if "=" not in tok:
            raise _err(f"module '{module}' takes key=value arguments or a mapping, not free-form text ({tok!r})",
                       pos, module)
        k, v = tok.split("=", 1)
        out[k] = v
    return out


def _split_free_form(text: str, spec) -> dict:
    """Free-form text of a ``free_form`` module -> {'_raw_params': rest, creates/removes/chdir...: value}."""
    special = [a for a in FREE_FORM_SPECIAL if a in spec.args]
    out = {}
    if special:
        rx = re.compile(r"(?:^|\s)(" + "|".join(map(re.escape, special)) + r")=(\"[^\"]*\"|'[^']*'|\S+)")
        for m in rx.finditer(text):
            val = m.group(2)
            if val[:1] in "\"'" and val[-1:] == val[:1]:
                val = val[1:-1]
            out[m.group(1)] = val
        text = rx.sub("", text).strip()
    out = {"_raw_params": text, **out}
    return out


def check_module_args(module: str, args: Mapping, positions: Mapping[str, SourcePos], default: SourcePos):
    """The module's arguments against its ArgSpec (:func:`provision.ops.spec.check_args`, the executor's validator
    too): the first problem as an InputError at the argument's line. Templated values are checked once rendered."""
    from provision.ops.spec import check_args, registry
    errors = check_args(registry()[module], args, templated=True)[1]
    if errors:
        e = errors[0]
        pos = positions.get(f"args.{e.arg}", default) if e.arg is not None else default
        raise _err(e.message, pos, e.key, hint=e.hint)


# ------------------------------------------------------------------------------------------------ loader

@dataclass
class _Ctx:
    """What a task inherits from its play/role/block/import."""
    file: str
    playbook_dir: str
    base_dir: str                         # relative import_tasks are resolved here
    role: str | None = None
    role_path: str | None = None
    tags: tuple = ()
    when: tuple = ()
    become: bool | None = None
    become_user: str | None = None
    environment: dict = field(default_factory=dict)
    vars: dict = field(default_factory=dict)
    ignore_errors: bool | None = None
    no_log: bool | None = None
    check_mode: bool | None = None
    handler: bool = False


class _Loader:
    def __init__(self, path: str):
        self.path = path
        self.playbook_dir = os.path.dirname(os.path.abspath(path))
        self.roles_dir = os.path.join(self.playbook_dir, "roles")
        self.role_defaults: dict = {}
        self.role_handlers: list[Task] = []
        self.roles_loaded: list[str] = []
        self.role_stack: list[str] = []
        self.import_stack: list[str] = []
        self._registry = None

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
        for key, allowed in (("strategy", ("linear",)), ("become_method", ("sudo",))):
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

        ctx = _Ctx(file=path, playbook_dir=self.playbook_dir, base_dir=os.path.dirname(os.path.abspath(path)))
        ctx.tags = _str_list(data.get("tags"), kp("tags"), "tags", split_commas=True)
        ctx.environment = self._environment(data.get("environment"), kp("environment"))
        if "ignore_errors" in data:
            ctx.ignore_errors = _bool(data["ignore_errors"], kp("ignore_errors"), "ignore_errors")
        if "no_log" in data:
            ctx.no_log = _bool(data["no_log"], kp("no_log"), "no_log")

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
                    roles=tuple(self.roles_loaded), positions=_freeze(positions))

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

    def _environment(self, v: Any, pos: SourcePos) -> dict:
        env = _mapping(v, pos, "environment")
        out = {}
        for k, val in env.items():
            if isinstance(val, (dict, list)):
                raise _err(f"environment values must be strings, got {describe(val)}", _kpos(env, k, pos), k)
            out[k] = "" if val is None else (str(val).lower() if isinstance(val, bool) else str(val))
        return out

    # -------------------------------------------------------------- roles
    def _find_role(self, name: str, pos: SourcePos, key: str) -> str:
        if "{{" in name:
            raise _err("templated role names are not supported", pos, key)
        d = os.path.join(self.roles_dir, name)
        if not os.path.isdir(d):
            existing = sorted(os.listdir(self.roles_dir)) if os.path.isdir(self.roles_dir) else []
            raise _err(f"role '{name}' not found in {self.roles_dir}", pos, key, hint=closest(name, existing))
        return d

    @staticmethod
    def _main(d: str, sub: str) -> str | None:
        for ext in ("yaml", "yml", "json"):
            p = os.path.join(d, sub, f"main.{ext}")
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
                sub.environment = {**ctx.environment, **self._environment(v, kp(k))}
            elif k in UNSUPPORTED or k in TASK_KEYS:
                raise _err(UNSUPPORTED.get(k, f"'{k}' is not supported on a role entry"), kp(k), str(k))
            else:  # Ansible's role parameters: any other key is a variable for the role
                if not isinstance(k, str) or not _IDENT.match(k):
                    raise _err("unknown role entry key", kp(k), str(k), hint=closest(str(k), ROLE_KEYS))
                params[k] = v
        return self._load_role(name, kp("role") if "role" in entry else kp("name"), sub, params, "role")

    def _load_role(self, name: str, pos: SourcePos, ctx: _Ctx, params: dict, key: str) -> list[Task]:
        d = self._find_role(name, pos, key)
        if name in self.role_stack:
            raise _err(f"role dependency loop: {' -> '.join(self.role_stack + [name])}", pos, key)
        self.role_stack.append(name)
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
            defaults = self._main(d, "defaults")
            if defaults:
                ddata = yamlsrc.load(defaults, what="role defaults file")
                self.role_defaults.update(_mapping(ddata, SourcePos(defaults, 1), "defaults"))
            role_vars: dict = {}
            vfile = self._main(d, "vars")
            if vfile:
                role_vars.update(_mapping(yamlsrc.load(vfile, what="role vars file"), SourcePos(vfile, 1), "vars"))
            role_vars.update(params)
            rctx = replace(ctx, role=name, role_path=d, base_dir=os.path.join(d, "tasks"),
                           vars={**ctx.vars, **role_vars})
            tfile = self._main(d, "tasks")
            if tfile:
                tasks += self._task_file(tfile, rctx)
            hfile = self._main(d, "handlers")
            if hfile and name not in self.roles_loaded:
                self.role_handlers += self._task_file(hfile, replace(rctx, handler=True,
                                                                     base_dir=os.path.join(d, "handlers")))
            if name not in self.roles_loaded:
                self.roles_loaded.append(name)
            return tasks
        finally:
            self.role_stack.pop()

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

    def _inherit(self, data: LineDict, pos: SourcePos, ctx: _Ctx) -> _Ctx:
        kp = lambda k: _kpos(data, k, pos)  # noqa: E731
        sub = replace(ctx)
        if "when" in data:
            sub.when = ctx.when + _conditions(data["when"], kp("when"), "when")
        if "tags" in data:
            sub.tags = ctx.tags + _str_list(data["tags"], kp("tags"), "tags", split_commas=True)
        if "become" in data:
            sub.become = _bool(data["become"], kp("become"), "become")
        if data.get("become_user") is not None:
            sub.become_user = _str(data["become_user"], kp("become_user"), "become_user")
        if "become_method" in data and data["become_method"] != "sudo":
            raise _err(f"only sudo is supported, got {data['become_method']!r}", kp("become_method"),
                       "become_method")
        if "environment" in data:
            sub.environment = {**ctx.environment, **self._environment(data["environment"], kp("environment"))}
        if "vars" in data:
            sub.vars = {**ctx.vars, **_mapping(data["vars"], kp("vars"), "vars")}
        for k in ("ignore_errors", "no_log", "check_mode"):
            if k in data:
                setattr(sub, k, _bool(data[k], kp(k), k))
        return sub

    def _task_or_block(self, data: LineDict, pos: SourcePos, ctx: _Ctx) -> list[Task]:
        kp = lambda k: _kpos(data, k, pos)  # noqa: E731
        if "block" in data:
            _check_keys(data, BLOCK_KEYS, pos, "block")
            for k in ("rescue", "always"):
                if k in data:
                    raise _err(f"'{k}' sections are not supported yet; use ignore_errors/failed_when", kp(k), k)
            sub = self._inherit(data, pos, ctx)
            return self._task_list(data["block"], kp("block"), sub, "block")
        imp = next((k for k in data if k in IMPORT_KEYS), None)
        if imp:
            return self._import(data, pos, ctx, imp)
        return [self._task(data, pos, ctx)]

    def _import(self, data: LineDict, pos: SourcePos, ctx: _Ctx, imp: str) -> list[Task]:
        kp = lambda k: _kpos(data, k, pos)  # noqa: E731
        _check_keys(data, (imp, "name", "when", "tags", "vars", "become", "become_user", "environment",
                           "ignore_errors", "no_log"), pos, imp)
        sub = self._inherit(data, pos, ctx)
        target = data[imp]
        short = imp.rsplit(".", 1)[-1]
        if short.endswith("_role"):
            if isinstance(target, dict):
                _check_keys(target, ("name", "tasks_from"), kp(imp), short)
                rname = target.get("name")
                if target.get("tasks_from"):
                    raise _err("tasks_from is not supported", _kpos(target, "tasks_from", kp(imp)), "tasks_from")
            else:
                rname = target
            if not isinstance(rname, str):
                raise _err(f"{short} needs a role name", kp(imp), imp)
            return self._load_role(rname, kp(imp), sub, {}, imp)
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

    def _task(self, data: LineDict, pos: SourcePos, ctx: _Ctx) -> Task:
        kp = lambda k: _kpos(data, k, pos)  # noqa: E731
        valid = HANDLER_KEYS if ctx.handler else TASK_KEYS
        reg = self.registry
        rest = [k for k in data if k not in valid]
        mods = [k for k in rest if k in reg]
        others = [k for k in rest if k not in reg]
        for k in others:
            if k in UNSUPPORTED:
                raise _err(UNSUPPORTED[k], kp(k), str(k))
            if k == "listen":
                raise _err("'listen' is only valid on handlers", kp(k), k)
        if len(mods) > 1:
            raise _err(f"a task runs one module, found {len(mods)}: {', '.join(mods)}", kp(mods[1]), mods[1])
        if others:
            k = others[0]
            if mods or len(others) > 1:
                key_hint = closest(str(k), valid)
                if key_hint or mods:
                    raise _err("unknown task key", kp(k), str(k), hint=key_hint or closest(str(k), reg))
            raise _err("unknown module", kp(k), str(k), hint=closest(str(k), reg) or closest(str(k), valid))
        if not mods:
            raise _err("task has no module (expected one key naming a module, e.g. 'command:')", pos,
                       str(data.get("name", "")) or None)
        mkey = mods[0]
        spec = reg[mkey]
        module = spec.name
        mpos = kp(mkey)
        positions: dict[str, SourcePos] = {k: kp(k) for k in data}
        positions["module"] = mpos

        raw = data[mkey]
        args: dict = {}
        if "args" in data:
            a = _mapping(data["args"], kp("args"), "args")
            args.update(yamlsrc.plain(a))
            for k in a:
                positions[f"args.{k}"] = _kpos(a, k, kp("args"))
        if raw is None:
            pass
        elif isinstance(raw, dict):
            for k in raw:
                if not isinstance(k, str):
                    raise _err(f"argument names must be strings, got {k!r}", _kpos(raw, k, mpos), mkey)
                positions[f"args.{k}"] = _kpos(raw, k, mpos)
            args.update(yamlsrc.plain(raw))
        elif isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            text = str(raw)
            if spec.free_form and module != "set_fact":
                parsed = _split_free_form(text, spec)
            else:
                parsed = _parse_kv(text, mpos, mkey)
            for k in parsed:
                positions[f"args.{k}"] = mpos
            args.update(parsed)
        else:
            raise _err(f"module arguments must be a mapping or a string, got {describe(raw)}", mpos, mkey)
        check_module_args(module, args, positions, mpos)

        sub = self._inherit(data, pos, ctx)
        name = data.get("name")
        name = _str(name, kp("name"), "name") if name not in (None, "") else module

        loop = None
        loop_keys = [k for k in ("loop", "with_items", "with_list", "with_dict") if k in data]
        if len(loop_keys) > 1:
            raise _err(f"use one of loop/with_*, found {', '.join(loop_keys)}", kp(loop_keys[1]), loop_keys[1])
        if loop_keys:
            lk = loop_keys[0]
            loop = yamlsrc.plain(data[lk])
            lpos = kp(lk)
            positions["loop"] = lpos
            if isinstance(loop, dict) and lk != "with_dict":
                raise _err("loop expects a list, got a mapping (use '| dict2items')", lpos, lk)
            if lk == "with_items":
                loop = _flatten_items(loop)
            elif lk == "with_dict":
                loop = _dict_items(loop, lpos)
            if loop is not None and not isinstance(loop, (list, str)):
                raise _err(f"loop expects a list or a template, got {describe(loop)}", lpos, lk)
        loop_var, index_var, label, pause = "item", None, None, 0.0
        if data.get("loop_control") is not None:
            lc = _mapping(data["loop_control"], kp("loop_control"), "loop_control")
            _check_keys(lc, LOOP_CONTROL_KEYS, kp("loop_control"), "loop_control")
            lcp = lambda k: _kpos(lc, k, kp("loop_control"))  # noqa: E731
            if "loop_var" in lc:
                loop_var = _ident(lc["loop_var"], lcp("loop_var"), "loop_var")
            if "index_var" in lc:
                index_var = _ident(lc["index_var"], lcp("index_var"), "index_var")
            if "label" in lc:
                label = _str(lc["label"], lcp("label"), "label")
            if "pause" in lc:
                pause = _number(lc["pause"], lcp("pause"), "pause")

        register = _ident(data["register"], kp("register"), "register") if data.get("register") else None
        notify = _str_list(data.get("notify"), kp("notify"), "notify")
        listen = _str_list(data.get("listen"), kp("listen"), "listen") if ctx.handler else ()
        changed_when = _conditions(data["changed_when"], kp("changed_when"), "changed_when") \
            if "changed_when" in data else None
        failed_when = _conditions(data["failed_when"], kp("failed_when"), "failed_when") \
            if "failed_when" in data else None
        until = None
        if "until" in data:
            conds = _conditions(data["until"], kp("until"), "until")
            until = conds[0] if len(conds) == 1 else " and ".join(f"({c})" for c in conds)
        retries = _number(data["retries"], kp("retries"), "retries", integer=True) if "retries" in data else 3
        delay = _number(data["delay"], kp("delay"), "delay") if "delay" in data else 5.0
        handler_names: tuple = ()
        if ctx.handler:
            handler_names = (name,) + ((f"{ctx.role} : {name}",) if ctx.role else ())
        return Task(
            name=name, module=module, args=_freeze(args), when=tuple(sub.when), loop=loop, loop_var=loop_var,
            register=register, notify=notify, listen=listen, tags=tuple(dict.fromkeys(sub.tags)),
            become=sub.become, become_user=sub.become_user, ignore_errors=bool(sub.ignore_errors),
            changed_when=changed_when, failed_when=failed_when, until=until, retries=int(retries),
            delay=float(delay), no_log=bool(sub.no_log), environment=_freeze(sub.environment),
            vars=_freeze(yamlsrc.plain(sub.vars)), role=ctx.role, source=pos, role_path=ctx.role_path,
            playbook_dir=ctx.playbook_dir, check_mode=sub.check_mode, index_var=index_var, loop_label=label,
            loop_pause=float(pause), handler_names=handler_names, positions=_freeze(positions))


def _ident(v: Any, pos: SourcePos, key: str) -> str:
    if not isinstance(v, str) or not _IDENT.match(v):
        raise _err(f"expected a variable name (letters, digits, _), got {v!r}", pos, key)
    return v


def _flatten_items(v: Any) -> Any:
    if isinstance(v, list):
        out = []
        for x in v:
            out.extend(x if isinstance(x, list) else [x])
        return out
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("{{") and s.endswith("}}") and s.count("{{") == 1:
            return "{{ (" + s[2:-2].strip() + ") | flatten(levels=1) }}"
    return v


def _dict_items(v: Any, pos: SourcePos) -> Any:
    if isinstance(v, dict):
        return [{"key": k, "value": val} for k, val in v.items()]
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("{{") and s.endswith("}}") and s.count("{{") == 1:
            return "{{ (" + s[2:-2].strip() + ") | dict2items }}"
    raise _err("with_dict expects a mapping or a template", pos, "with_dict")


def _check_notify(tasks: list[Task], handlers: list[Task]):
    names: set[str] = set()
    for h in handlers:
        names.update(h.handler_names)
        names.update(h.listen)
    for t in tasks:
        for i, n in enumerate(t.notify):
            if "{{" in n:
                continue
            if n not in names:
                pos = t.positions.get("notify", t.source)
                raise _err(f"no handler named '{n}' in this play", pos, "notify",
                           hint=closest(n, names))


# Public names for other parts (ad hoc `provision run -a`): stable.
parse_kv = _parse_kv
split_free_form = _split_free_form


def load_playbook(path: str) -> Playbook:
    """Read a playbook (and its roles) into frozen models; every structural or module-argument error is an
    InputError naming file, line and key."""
    return _Loader(path).load()


# ------------------------------------------------------------------------------------------------ validate

MAGIC_VARS = frozenset({
    "inventory_hostname", "inventory_hostname_short", "group_names", "groups", "hostvars", "play_hosts",
    "ansible_play_hosts", "ansible_play_batch", "ansible_play_hosts_all", "ansible_check_mode", "ansible_diff_mode",
    "omit", "item", "ansible_facts", "playbook_dir", "inventory_dir", "inventory_file", "role_name", "role_path",
    "ansible_loop", "ansible_loop_var", "ansible_index_var", "ansible_version", "ansible_run_tags",
    "ansible_skip_tags", "ansible_limit", "ansible_forks", "ansible_verbosity",
})


def _template_strings(value: Any, path: str):
    """(path, string) for every templated string inside value."""
    from provision.templating import is_template
    if isinstance(value, str):
        if is_template(value):
            yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _template_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _template_strings(v, f"{path}[{i}]")


def _undefined_check(source: str, *, expression: bool, defined: set[str], guarded: set[str], pos: SourcePos,
                     key: str):
    from provision.templating import ENV, TemplateError, UnknownName, analyse
    try:
        names, guards = analyse(source, expression=expression)
    except UnknownName as err:
        raise _err(f"unknown {err.kind} '{err.name}'", pos, key, hint=closest(err.name, err.choices)) from None
    except TemplateError as err:
        raise _err(err.message, pos, key) from None
    for n in sorted(names - guards - guarded):
        if n in defined or n.startswith("ansible_") or n in ENV.globals:
            continue
        raise _err(f"undefined variable '{n}'", pos, key, hint=closest(n, defined))


def _expression_args(module: str) -> frozenset:
    from provision.ops.spec import registry
    spec = registry().get(module)
    return frozenset(getattr(spec.impl, "raw_args", ()) or ()) if spec is not None else frozenset()


def validate(playbook: Playbook, inventory, extra_vars: Mapping | None = None) -> None:
    """Static checks before any connection: host patterns resolve in the inventory, every template variable is
    defined somewhere (inventory vars of the targeted hosts, play vars, role defaults, extra vars, registered
    names, set_fact keys, loop vars, facts, magic vars), template syntax and filter/test names."""
    from provision.ops.spec import registry
    from provision.templating import TemplateError, analyse, render
    extra_vars = dict(extra_vars or {})
    for play in playbook.plays:
        ppos = play.positions.get("hosts", play.source)
        pattern = play.hosts
        try:
            if "{{" in pattern:
                pattern = render(pattern, {**play.vars, **extra_vars})
            hosts = inventory.select(str(pattern)) if inventory is not None else []
        except TemplateError as err:
            raise _err(err.message, ppos, "hosts") from None
        except InputError as err:
            if err.file:
                raise
            raise _err(err.message, ppos, "hosts", hint=err.hint) from None

        defined: set[str] = set(MAGIC_VARS) | set(extra_vars) | set(play.vars) | set(play.role_defaults)
        for h in hosts:
            defined.update(h.vars)
        for t in (*play.tasks, *play.handlers):
            if t.register:
                defined.add(t.register)
            if t.module == "set_fact":
                defined.update(k for k in t.args if k != "cacheable")
            defined.update(t.vars)   # role vars are visible play-wide in Ansible

        for k, v in list(play.vars.items()) + list(play.role_defaults.items()):
            for path, s in _template_strings(v, k):
                pos = play.positions.get(f"vars.{k}", play.source)
                _undefined_check(s, expression=False, defined=defined, guarded=set(), pos=pos, key=path)

        reg = registry()
        for t in (*play.tasks, *play.handlers):
            mpos = t.positions.get("module", t.source)
            if t.module not in reg:   # the registry may have changed since load_playbook
                raise _err("unknown module", mpos, t.module, hint=closest(t.module, reg))
            check_module_args(t.module, t.args, t.positions, mpos)

        for t in (*play.tasks, *play.handlers):
            tdefined = defined | {t.loop_var} | ({t.index_var} if t.index_var else set())
            guarded: set[str] = set()
            for cond in t.when:
                if "{{" not in cond:
                    try:
                        guarded |= analyse(cond, expression=True)[1]
                    except TemplateError:
                        pass
            checks: list[tuple[str, Any, bool, SourcePos]] = []
            expr_args = _expression_args(t.module)
            for k, v in t.args.items():
                apos = t.positions.get(f"args.{k}", t.source)
                if t.module == "debug" and k == "var":
                    continue     # debug prints "VARIABLE IS NOT DEFINED!" itself, as Ansible does
                if k in expr_args:   # e.g. assert's `that`: bare expressions
                    for i, c in enumerate(v if isinstance(v, list) else [v]):
                        if isinstance(c, str) and c.strip():
                            checks.append((k if not isinstance(v, list) else f"{k}[{i}]", c, "{{" not in c, apos))
                    continue
                checks.append((k, v, False, apos))
            for key, conds in (("when", t.when), ("changed_when", t.changed_when), ("failed_when", t.failed_when),
                               ("until", (t.until,) if t.until else ())):
                for c in conds or ():
                    checks.append((key, c, "{{" not in c, t.positions.get(key, t.source)))
            if t.loop is not None:
                checks.append(("loop", t.loop, False, t.positions.get("loop", t.source)))
            for k, v in t.vars.items():
                checks.append((f"vars.{k}", v, False, t.positions.get("vars", t.source)))
            for k, v in t.environment.items():
                checks.append((f"environment.{k}", v, False, t.positions.get("environment", t.source)))
            if t.loop_label:
                checks.append(("loop_control.label", t.loop_label, False, t.positions.get("loop_control", t.source)))
            for key, value, is_expr, pos in checks:
                if is_expr:
                    _undefined_check(value, expression=True, defined=tdefined, guarded=guarded, pos=pos, key=key)
                    continue
                for path, s in _template_strings(value, key):
                    _undefined_check(s, expression=False, defined=tdefined, guarded=guarded, pos=pos, key=path)
