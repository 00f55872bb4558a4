"""Ansible's INI inventory grammar -> calls on the inventory builder (:mod:`provision.inventory.loader`).

The grammar, as Ansible's ``ini`` inventory plugin reads it:

- Lines are stripped; blank lines and lines starting with ``#`` or ``;`` are skipped.
- ``[NAME]`` starts a hosts section, ``[NAME:children]`` a list of child groups, ``[NAME:vars]`` ``key=value``
  lines. Lines before the first section are hosts of ``ungrouped``. A name holds no ``:``, ``]`` or blank; any
  other ``:tag`` is an error. A ``[NAME:vars]`` section for a group declared nowhere is an error, and so is a
  child group that is never declared (``[NAME]`` or ``[NAME:children]``), even later in the file.
- A host line is split like a shell line (quotes, ``#`` comments): the host name or range
  (``web[01:20].example.com``, ``db-[a:f]``), with an optional ``:PORT`` (-> ``ansible_port``), then
  ``key=value`` words.
- Values, inline or in ``:vars``, are read by :func:`ast.literal_eval` where they are a Python literal (``22`` an
  int, ``True`` a bool, ``"[1, 2]"`` a list, ``'03'`` quoted stays a string), and stay strings where not
  (``yes``, ``FALSE``, ``hello world``). A ``:vars`` line is ``key = rest of the line`` (no shell splitting).
  Ansible's documentation says ``:vars`` values stay strings; its code (and ``ansible-inventory``) types them as
  above, and gpufleet does what the code does.

Errors name the file and line, as Ansible's do, and exit 4.
"""
from __future__ import annotations

import ast
import re
import shlex
import warnings
from typing import Any

from provision.errors import InputError
from provision.yamlsrc import LineDict, SourcePos

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
_KINDS = ("hosts", "children", "vars")


def ini_value(text: str) -> Any:
    """An INI value as Ansible types it: a Python literal where it is one, else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def looks_like_ini(text: str) -> bool:
    """True where the first significant line is an INI section header (for choosing which error to report)."""
    for line in text.splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            return bool(_SECTION.match(line))
    return False


def parse_ini(path: str, text: str, builder) -> None:
    """Read INI inventory ``text`` (from ``path``) into ``builder`` (groups, children, hosts, vars)."""
    pending: dict[str, dict] = {}        # groups named before being declared: {'kind', 'line', 'parents'}
    group, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        pos = SourcePos(path, lineno)

        def bad(message: str, key: str | None = None):
            return InputError(message, file=path, line=lineno, key=key)

        m = _SECTION.match(line)
        if m:
            group, kind = m.group(1), m.group(2) or "hosts"
            if kind not in _KINDS:
                raise bad(f"section [{group}:{kind}] has an unknown type (valid: children, vars)", key=kind)
            if not builder.has_group(group):
                if kind == "vars" and group not in pending:
                    pending[group] = {"kind": "vars", "line": lineno, "parents": []}
                builder.group(group, pos)
            decl = pending.get(group)
            if decl and kind != "vars":
                if decl["kind"] == "children":
                    _resolve_children(group, pending, builder)
                else:
                    del pending[group]
            continue
        if line.startswith("[") and line.endswith("]"):
            raise bad(f"invalid section header {line!r}: write [group], [group:vars] or [group:children], "
                      "with no blanks")
        if kind == "hosts":
            _host_line(path, pos, line, builder.group(group, pos), builder, bad)
        elif kind == "vars":
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise bad(f"expected key=value in [{group}:vars], got {line!r}")
            values = LineDict({key.strip(): ini_value(value.strip())})
            values.file, values.line, values.key_lines = path, lineno, {key.strip(): lineno}
            builder.group_vars(builder.group(group, pos), values)
        else:
            m = _GROUP_NAME.match(line)
            if not m:
                raise bad(f"expected a group name in [{group}:children], got {line!r}")
            child = m.group(1)
            if builder.has_group(child):
                builder.add_child(group, child, pos)
            elif child in pending:
                pending[child]["parents"].append((group, pos))
            else:
                pending[child] = {"kind": "children", "line": lineno, "parents": [(group, pos)]}
    for name, decl in pending.items():
        if decl["kind"] == "vars":
            raise InputError(f"section [{name}:vars] is for a group declared nowhere (add [{name}] or "
                             f"[{name}:children])", file=path, line=decl["line"], key=name)
        parent = decl["parents"][-1][0]
        raise InputError(f"section [{parent}:children] names group '{name}', which is declared nowhere (add "
                         f"[{name}])", file=path, line=decl["line"], key=name)


def _resolve_children(group: str, pending: dict, builder) -> None:
    for parent, pos in pending[group]["parents"]:
        builder.add_child(parent, group, pos)
        if pending.get(parent, {}).get("kind") == "children":
            _resolve_children(parent, pending, builder)
    pending.pop(group, None)


def _host_line(path: str, pos: SourcePos, line: str, group, builder, bad) -> None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as err:
        raise bad(f"cannot split the host line: {err}") from None
    if not words:
        return
    pattern = words[0]
    if pattern.strip() == "---":
        raise bad("'---' is not a host name: is this a YAML file with an INI extension?", key=pattern)
    values = LineDict()
    values.file, values.line = path, pos.line
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise bad(f"expected key=value after the host name, got {word!r}", key=pattern)
        values[key] = ini_value(value)
        values.key_lines[key] = pos.line
    builder.add_host(group, pattern, values, pos)
