"""The keywords a play, task, block, role entry and loop_control accept, and the checks of their values: each
bad value is an InputError at its own file:line:key (booleans read through :mod:`provision.truthy`)."""
from __future__ import annotations

import re
from typing import Any, Iterable

from provision import yamlsrc
from provision.errors import InputError, closest
from provision.ops.spec import VAR_NAME
from provision.truthy import NotABoolean, strict_bool
from provision.yamlsrc import LineDict, LineList, SourcePos, describe


PLAY_KEYS = (
    "name", "hosts", "vars", "vars_files", "become", "become_user", "become_method", "gather_facts", "serial",
    "max_fail_percentage", "any_errors_fatal", "tasks", "pre_tasks", "post_tasks", "handlers", "roles", "tags",
    "environment", "ignore_errors", "no_log", "strategy", "remote_user", "connection",
)
TASK_KEYS = (
    "name", "when", "loop", "with_items", "with_list", "with_dict", "loop_control", "register", "notify", "tags",
    "become", "become_user", "become_method", "ignore_errors", "changed_when", "failed_when", "until", "retries",
    "delay", "no_log", "environment", "vars", "args", "check_mode", "run_once", "delegate_to", "delegate_facts",
    "remote_user", "connection", "with_first_found", "with_fileglob",
)
HANDLER_KEYS = TASK_KEYS + ("listen",)
BLOCK_KEYS = ("block", "name", "when", "tags", "become", "become_user", "become_method", "ignore_errors", "no_log",
              "environment", "vars", "rescue", "always", "check_mode", "run_once", "delegate_to", "remote_user",
              "connection", "notify")
IMPORT_KEYS = {"import_tasks", "include_tasks", "import_role", "include_role"}   # short names: see action_name
INCLUDE_KEYS = ("include_tasks", "include_role")   # dynamic: loaded per host when the task runs
# the collections whose names resolve to gpufleet's modules and keywords (ansible.builtin.apt -> apt)
FQCN_PREFIXES = ("ansible.builtin.", "ansible.legacy.", "community.general.", "ansible.posix.")
ROLE_KEYS = ("role", "name", "vars", "tags", "when", "become", "become_user", "environment")
LOOP_CONTROL_KEYS = ("loop_var", "index_var", "label", "pause", "extended")
UNSUPPORTED = {
    "async": "async tasks are not supported",
    "poll": "async tasks are not supported",
    "throttle": "throttle is not supported",
    "any_errors_fatal": "any_errors_fatal is a play key here",
    "with_together": "with_together is not supported; use loop with the zip filter",
    "with_nested": "with_nested is not supported",
    "with_subelements": "with_subelements is not supported",
    "with_sequence": "with_sequence is not supported; use loop with range()",
    "vars_prompt": "vars_prompt is not supported; use -e/--extra-vars",
    "import_playbook": "import_playbook is only allowed at the top level of a playbook",
}

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def action_name(key: str) -> str:
    """A task key as gpufleet names it: ``ansible.builtin.X``, ``ansible.legacy.X`` (and the collections in
    FQCN_PREFIXES) -> ``X``; anything else unchanged."""
    for p in FQCN_PREFIXES:
        if isinstance(key, str) and key.startswith(p):
            return key[len(p):]
    return key


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


def _ident(v: Any, pos: SourcePos, key: str) -> str:
    if not isinstance(v, str) or not VAR_NAME.match(v):
        raise _err(f"expected a variable name (letters, digits, _), got {v!r}", pos, key)
    return v
