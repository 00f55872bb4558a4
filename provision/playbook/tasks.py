"""One task -> a frozen Task: what it inherits from its play, role, block or import (:class:`_Ctx`), its module
and arguments, loop and loop_control, register/notify/until/retries; and the check that every ``notify`` names a
handler of the play."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from provision import yamlsrc
from provision.errors import closest
from provision.hostenv import env_name_problem
from provision.playbook.fields import (HANDLER_KEYS, LOOP_CONTROL_KEYS, TASK_KEYS, UNSUPPORTED, _bool, _check_keys,
                                       _conditions, _err, _ident, _kpos, _mapping, _number, _str, _str_list,
                                       INCLUDE_KEYS, action_name)
from provision.inventory.models import CONNECTIONS
from provision.playbook.compat import is_ansible_module, unsupported_reason
from provision.playbook.models import Task, _freeze
from provision.templating import is_template
from provision.playbook.module_args import _parse_kv, _split_free_form, check_module_args
from provision.yamlsrc import LineDict, SourcePos, describe


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
    environment: dict | str | tuple = field(default_factory=dict)
    vars: dict = field(default_factory=dict)
    ignore_errors: bool | str | None = None   # a template string is rendered per host
    no_log: bool | None = None
    check_mode: bool | None = None
    handler: bool = False
    roles_path: tuple = ()                # where include_role looks for roles at run time
    notify: tuple = ()                    # a block's notify: its tasks' when they give none
    notify_pos: SourcePos | None = None   # where that notify is written
    frames: tuple = ()                    # BlockFrame of each enclosing block, outermost first
    run_once: bool | None = None
    delegate_to: str | None = None
    remote_user: str | None = None
    connection: str | None = None


def _environment(v: Any, pos: SourcePos) -> dict | str:
    """An ``environment:`` mapping -> {name: string}; a template string (``"{{ proxy_env | default({}) }}"``) stays
    as written, rendered to a mapping when the task runs."""
    if is_template(v):
        return v
    env = _mapping(v, pos, "environment")
    out = {}
    for k, val in env.items():
        if env_name_problem(k):
            raise _err(f"environment: {env_name_problem(k)}", _kpos(env, k, pos), str(k))
        if isinstance(val, (dict, list)):
            raise _err(f"environment values must be strings, got {describe(val)}", _kpos(env, k, pos), k)
        out[k] = "" if val is None else (str(val).lower() if isinstance(val, bool) else str(val))
    return out


def _merge_env(outer: Mapping | tuple, inner: Mapping | str | tuple) -> Mapping | tuple:
    """An inner ``environment:`` over an outer one: a merged mapping, or (where a layer is a template string) the
    tuple of layers, outermost first, that the task renders and merges when it runs."""
    if isinstance(outer, Mapping) and isinstance(inner, Mapping):
        return {**outer, **inner}
    layers = lambda e: e if isinstance(e, tuple) else ((e,) if e else ())  # noqa: E731
    return layers(outer) + layers(inner)


def _inherit(data: LineDict, pos: SourcePos, ctx: _Ctx) -> _Ctx:
    """The context a block, an import or a task gives what it holds: its keys added to ``ctx``'s."""
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
        sub.environment = _merge_env(ctx.environment, _environment(data["environment"], kp("environment")))
    if "vars" in data:
        sub.vars = {**ctx.vars, **_mapping(data["vars"], kp("vars"), "vars")}
    for k in ("ignore_errors", "no_log", "check_mode", "run_once"):
        if k == "ignore_errors" and is_template(data.get(k)):
            sub.ignore_errors = data[k]    # "{{ ansible_check_mode }}": decided per host when the task runs
        elif k == "no_log" and is_template(data.get(k)):
            sub.no_log = True              # "{{ hide_secrets | bool }}": hidden whatever it renders to
        elif k in data:
            setattr(sub, k, _bool(data[k], kp(k), k))
    if "notify" in data:
        sub.notify, sub.notify_pos = _str_list(data["notify"], kp("notify"), "notify"), kp("notify")
    for k in ("delegate_to", "remote_user", "connection"):
        if data.get(k) not in (None, ""):
            setattr(sub, k, _str(data[k], kp(k), k))
    if sub.connection is not None and "{{" not in sub.connection and sub.connection not in CONNECTIONS:
        raise _err(f"unknown connection {sub.connection!r} ({', '.join(CONNECTIONS)})", kp("connection"),
                   "connection", hint=closest(sub.connection, CONNECTIONS))
    return sub


def _action_form(data: LineDict, pos: SourcePos) -> LineDict:
    """``action: MODULE ARGS`` / ``local_action: ...`` (text, or a mapping with ``module:``) -> the task written with
    the module as its key (local_action: delegated to localhost)."""
    key = "local_action" if "local_action" in data else "action"
    val = data[key]
    if isinstance(val, dict):
        module = val.get("module")
        args = {k: v for k, v in val.items() if k != "module"}
    else:
        module, _, rest = str(val or "").strip().partition(" ")
        args = rest.strip() or None
    if not isinstance(module, str) or not module:
        raise _err(f"{key} needs a module name", _kpos(data, key, pos), key)
    out = LineDict((k, v) for k, v in data.items() if k != key)
    out.file, out.line, out.key_lines = data.file, data.line, {**data.key_lines, module: data.pos(key).line}
    out[module] = args
    if key == "local_action":
        out["delegate_to"] = "localhost"
    return out


def _task(data: LineDict, pos: SourcePos, ctx: _Ctx, reg: Mapping) -> Task:
    """One task (not a block or an import) -> Task, its module and arguments checked against ``reg``. A module
    gpufleet lacks (yum on a RedHat branch, say) gives a Task marked ``unsupported``: it fails only the hosts that
    reach it, and the static check lists it as a warning."""
    if isinstance(data, LineDict) and ("action" in data or "local_action" in data):
        data = _action_form(data, pos)
    kp = lambda k: _kpos(data, k, pos)  # noqa: E731
    valid = HANDLER_KEYS if ctx.handler else TASK_KEYS
    rest = [k for k in data if k not in valid]
    known = lambda k: action_name(k) in reg or action_name(k) in INCLUDE_KEYS  # noqa: E731
    mods = [k for k in rest if known(k)]
    others = [k for k in rest if not known(k)]
    for k in others:
        if k in UNSUPPORTED:
            raise _err(UNSUPPORTED[k], kp(k), str(k))
        if k == "listen":
            raise _err("'listen' is only valid on handlers", kp(k), k)
    if len(mods) > 1:
        raise _err(f"a task runs one module, found {len(mods)}: {', '.join(mods)}", kp(mods[1]), mods[1])
    unsupported = None
    if others:
        if mods:
            k = others[0]
            raise _err("unknown task key", kp(k), str(k), hint=closest(str(k), valid) or closest(str(k), reg))
        named = [k for k in others if isinstance(k, str) and is_ansible_module(k)]
        k = named[0] if named else others[0]
        for x in others:
            if x != k:
                raise _err("unknown task key", kp(x), str(x), hint=closest(str(x), valid))
        hint = closest(str(k), reg) or closest(str(k), valid)
        if not isinstance(k, str) or (hint and not is_ansible_module(k)):
            raise _err("unknown module", kp(k), str(k), hint=hint)
        unsupported = unsupported_reason(k)
        mods = [k]
    if not mods:
        raise _err("task has no module (expected one key naming a module, e.g. 'command:')", pos,
                   str(data.get("name", "")) or None)
    mkey = mods[0]
    spec = reg.get(action_name(mkey))
    module = spec.name if spec is not None else action_name(mkey)
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
        if spec is None:
            parsed = {"_raw_params": text}
        elif spec.free_form and module != "set_fact":
            parsed = _split_free_form(text, spec)
        else:
            parsed = _parse_kv(text, mpos, mkey)
        for k in parsed:
            positions[f"args.{k}"] = mpos
        args.update(parsed)
    else:
        raise _err(f"module arguments must be a mapping or a string, got {describe(raw)}", mpos, mkey)
    if spec is not None and not unsupported:
        check_module_args(module, args, positions, mpos)

    sub = _inherit(data, pos, ctx)
    name = data.get("name")
    name = _str(name, kp("name"), "name") if name not in (None, "") else module

    loop, loop_lookup = None, None
    loop_keys = [k for k in ("loop", "with_items", "with_list", "with_dict", "with_first_found", "with_fileglob")
                 if k in data]
    if len(loop_keys) > 1:
        raise _err(f"use one of loop/with_*, found {', '.join(loop_keys)}", kp(loop_keys[1]), loop_keys[1])
    if loop_keys:
        lk = loop_keys[0]
        loop = yamlsrc.plain(data[lk])
        lpos = kp(lk)
        positions["loop"] = lpos
        if lk in ("with_first_found", "with_fileglob"):   # the terms go through the lookup when the task runs
            loop_lookup = lk[len("with_"):]
            loop = loop if isinstance(loop, list) else [loop]
        elif isinstance(loop, dict) and lk != "with_dict":
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
    notify = sub.notify
    if sub.notify_pos is not None:
        positions["notify"] = sub.notify_pos   # the block's notify, when the task gives none
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
        become=sub.become, become_user=sub.become_user,
        ignore_errors=sub.ignore_errors if isinstance(sub.ignore_errors, str) else bool(sub.ignore_errors),
        changed_when=changed_when, failed_when=failed_when, until=until, retries=int(retries),
        delay=float(delay), no_log=bool(sub.no_log),
        environment=_freeze(sub.environment) if isinstance(sub.environment, Mapping) else
        tuple(sub.environment) if isinstance(sub.environment, tuple) else (sub.environment,),
        vars=_freeze(yamlsrc.plain(sub.vars)), role=ctx.role, source=pos, role_path=ctx.role_path,
        playbook_dir=ctx.playbook_dir, check_mode=sub.check_mode, index_var=index_var, loop_label=label,
        loop_pause=float(pause), handler_names=handler_names, positions=_freeze(positions),
        run_once=bool(sub.run_once), delegate_to=sub.delegate_to,
        delegate_facts=_bool(data["delegate_facts"], kp("delegate_facts"), "delegate_facts")
        if "delegate_facts" in data else False, remote_user=sub.remote_user, connection=sub.connection,
        frames=tuple(ctx.frames), loop_lookup=loop_lookup, unsupported=unsupported)


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
