"""An Ansible YAML inventory file (plus group_vars/ and host_vars/ beside it) -> Inventory: groups and children,
host ranges, variables merged by depth and ``ansible_group_priority``, checks of the connection variables."""
from __future__ import annotations

import os
from typing import Any, Mapping

from provision import yamlsrc
from provision.errors import InputError, closest
from provision.inventory.models import (CONNECTIONS, GROUP_KEYS, KNOWN_ANSIBLE_VARS, VAR_FILE_EXTS, Group, Host,
                                        Inventory, _freeze)
from provision.inventory.patterns import expand_hostname
from provision.truthy import NotABoolean, strict_bool
from provision.yamlsrc import SourcePos, describe, short_repr


class _Entity:
    """Builder state for a group or a host (possibly defined in several places)."""

    def __init__(self, name: str, pos: SourcePos):
        self.name, self.pos = name, pos
        self.vars: dict[str, Any] = {}
        self.var_src: dict[str, SourcePos] = {}
        self.file_vars: dict[str, Any] = {}
        self.file_src: dict[str, SourcePos] = {}
        self.hosts: list[str] = []
        self.children: list[str] = []
        self.child_pos: dict[str, SourcePos] = {}
        self.parents: list[str] = []


def _merge_level(ent: _Entity, values: Mapping, what: str):
    """Merge vars given for one entity in one more place; the same key with two different values is an error."""
    for k, v in values.items():
        kpos = yamlsrc.pos_of(values, k)
        if not isinstance(k, str):
            raise InputError("variable names must be strings", file=kpos.file, line=kpos.line, key=str(k))
        if k in ent.vars and ent.vars[k] != v:
            first = ent.var_src[k]
            raise InputError(f"{what} '{ent.name}' sets it to {short_repr(v)} here but to {short_repr(ent.vars[k])} at "
                             f"{first}", file=kpos.file, line=kpos.line, key=k)
        if k not in ent.vars:
            ent.vars[k] = yamlsrc.plain(v)
            ent.var_src[k] = kpos


class _Parser:
    def __init__(self, path: str):
        self.path = path
        self.groups: dict[str, _Entity] = {}
        self.hosts: dict[str, _Entity] = {}
        self.warnings: list[str] = []

    def group(self, name: str, pos: SourcePos) -> _Entity:
        if name not in self.groups:
            self.groups[name] = _Entity(name, pos)
        return self.groups[name]

    def parse(self, data: Any):
        self.group("all", SourcePos(self.path, 1))
        self.group("ungrouped", SourcePos(self.path, 1))
        if data is None:
            return
        if not isinstance(data, dict):
            pos = yamlsrc.pos_of(data, default=SourcePos(self.path, 1))
            raise InputError("an inventory must be a YAML mapping of groups (all: {hosts:, children:, vars:}); "
                             "INI inventories are not supported", file=self.path, line=pos.line or 1)
        if isinstance(data.get("plugin"), str):
            pos = yamlsrc.pos_of(data, "plugin")
            raise InputError(f"inventory plugins are not supported ({data['plugin']}); write a static YAML inventory",
                             file=pos.file, line=pos.line, key="plugin")
        for name, body in data.items():
            pos = yamlsrc.pos_of(data, name)
            name = self._group_name(name, pos)
            if name != "all":
                self._add_child("all", name, pos)
            self._parse_group(name, body, pos)

    def _group_name(self, name: Any, pos: SourcePos) -> str:
        if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name).strip() == "":
            raise InputError("a group name must be a non-empty string", file=pos.file, line=pos.line, key=str(name))
        name = str(name)
        if name in GROUP_KEYS:
            raise InputError(f"'{name}' is a group keyword, not a group name here; put groups under 'all: children:'",
                             file=pos.file, line=pos.line, key=name)
        return name

    def _add_child(self, parent: str, child: str, pos: SourcePos):
        p = self.group(parent, pos)
        c = self.group(child, pos)
        if child == "all":
            raise InputError(f"group cycle: 'all' cannot be a child of '{parent}'", file=pos.file, line=pos.line,
                             key=child)
        if child == parent:
            raise InputError(f"group cycle: '{child}' is listed as its own child", file=pos.file, line=pos.line,
                             key=child)
        if child not in p.children:
            p.children.append(child)
            p.child_pos[child] = pos
        if parent not in c.parents:
            c.parents.append(parent)

    def _parse_group(self, name: str, body: Any, pos: SourcePos):
        g = self.group(name, pos)
        if body is None:
            return
        if not isinstance(body, dict):
            raise InputError(f"group '{name}' must be a mapping with hosts/children/vars, got {describe(body)}",
                             file=pos.file, line=pos.line, key=name)
        for key in body:
            if key not in GROUP_KEYS:
                kpos = body.pos(key)
                raise InputError(f"unknown key in group '{name}' (valid: hosts, children, vars)", file=kpos.file,
                                 line=kpos.line, key=str(key), choices=GROUP_KEYS)
        if body.get("vars") is not None:
            vars_ = body["vars"]
            if not isinstance(vars_, dict):
                vpos = body.pos("vars")
                raise InputError(f"vars must be a mapping, got {describe(vars_)}", file=vpos.file, line=vpos.line,
                                 key="vars")
            _merge_level(g, vars_, "group")
        hosts = body.get("hosts")
        if hosts is not None:
            hpos = body.pos("hosts")
            if isinstance(hosts, list):
                raise InputError("hosts must be a mapping of host names (write 'host:' not '- host')",
                                 file=hpos.file, line=hpos.line, key="hosts")
            if isinstance(hosts, str):
                hosts = {hosts: None}
                hosts_pos = {hosts_key: hpos for hosts_key in hosts}
            elif isinstance(hosts, dict):
                hosts_pos = {k: hosts.pos(k) for k in hosts}
            else:
                raise InputError(f"hosts must be a mapping of host names, got {describe(hosts)}", file=hpos.file,
                                 line=hpos.line, key="hosts")
            for hname, hvars in hosts.items():
                self._parse_host(g, hname, hvars, hosts_pos[hname])
        children = body.get("children")
        if children is not None:
            cpos = body.pos("children")
            if not isinstance(children, dict):
                raise InputError(f"children must be a mapping of group names, got {describe(children)}",
                                 file=cpos.file, line=cpos.line, key="children")
            for cname, cbody in children.items():
                kpos = children.pos(cname)
                cname = self._group_name(cname, kpos)
                self._add_child(name, cname, kpos)
                self._parse_group(cname, cbody, kpos)

    def _parse_host(self, group: _Entity, pattern: Any, hvars: Any, pos: SourcePos):
        if not isinstance(pattern, (str, int)) or isinstance(pattern, bool):
            raise InputError("a host name must be a string", file=pos.file, line=pos.line, key=str(pattern))
        if hvars is not None and not isinstance(hvars, dict):
            raise InputError(f"host vars must be a mapping, got {describe(hvars)}", file=pos.file, line=pos.line,
                             key=str(pattern))
        for name in expand_hostname(str(pattern), pos):
            h = self.hosts.get(name)
            if h is None:
                h = self.hosts[name] = _Entity(name, pos)
            if name not in group.hosts:
                group.hosts.append(name)
            if hvars:
                _merge_level(h, hvars, "host")

    # -------------------------------------------------------------- checks and files
    def check_cycles(self):
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]):
            state[name] = 1
            for child in self.groups[name].children:
                if state.get(child) == 1:
                    cyc = path[path.index(child):] + [name, child] if child in path else [name, child]
                    pos = self.groups[name].child_pos[child]
                    raise InputError(f"group cycle: {' -> '.join(_dedupe_path(cyc))}", file=pos.file,
                                     line=pos.line, key=child)
                if state.get(child) is None:
                    visit(child, path + [name])
            state[name] = 2

        for name in list(self.groups):
            if state.get(name) is None:
                visit(name, [])

    def load_var_files(self):
        base = os.path.dirname(os.path.abspath(self.path))
        for kind, table, what in (("group_vars", self.groups, "group"), ("host_vars", self.hosts, "host")):
            root = os.path.join(base, kind)
            if not os.path.isdir(root):
                continue
            for entry in sorted(os.listdir(root)):
                if entry.startswith("."):
                    continue
                full = os.path.join(root, entry)
                stem, ext = os.path.splitext(entry)
                if os.path.isdir(full) or entry in table:   # host_vars/gpu01.lab (no extension) too
                    name = entry
                elif ext in VAR_FILE_EXTS[1:]:
                    name = stem
                elif ext == "":
                    name = entry
                else:
                    continue
                ent = table.get(name)
                if ent is None:
                    hint = closest(name, table)
                    self.warnings.append(f"{full}: no {what} named '{name}' in the inventory; file ignored"
                                         + (f" (did you mean '{hint}'?)" if hint else ""))
                    continue
                for file in _var_files(full):
                    data = yamlsrc.load(file, what=f"{kind} file")
                    if data is None:
                        continue
                    if not isinstance(data, dict):
                        p = yamlsrc.pos_of(data, default=SourcePos(file, 1))
                        raise InputError(f"{kind} file must be a mapping of variables, got {describe(data)}",
                                         file=file, line=p.line or 1)
                    for k, v in data.items():  # later files in a directory win, as in Ansible
                        ent.file_vars[k] = yamlsrc.plain(v)
                        ent.file_src[k] = data.pos(k)

    def effective(self, ent: _Entity) -> tuple[dict, dict]:
        vars_ = dict(ent.vars)
        vars_.update(ent.file_vars)
        src = dict(ent.var_src)
        src.update(ent.file_src)
        return vars_, src


def _dedupe_path(path: list[str]) -> list[str]:
    out = []
    for p in path:
        if not out or out[-1] != p:
            out.append(p)
    return out


def _var_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and os.path.splitext(f)[1] in VAR_FILE_EXTS:
                out.append(os.path.join(root, f))
    return sorted(out)


def _check_host_vars(name: str, vars_: Mapping, src: Mapping[str, SourcePos], warnings: list[str]):
    def bad(key, msg, hint=None):
        p = src.get(key, SourcePos("<inventory>", 0))
        return InputError(msg, file=p.file, line=p.line, key=key, hint=hint)

    from provision.templating import is_template
    for key in ("ansible_port", "ansible_ssh_port"):
        v = vars_.get(key)
        if v is None or is_template(v):
            continue
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.isdigit())) \
                or not 0 < int(v) < 65536:
            raise bad(key, f"host '{name}': expected a port number 1-65535, got {v!r}")
    for key in ("ansible_host", "ansible_ssh_host", "ansible_user", "ansible_ssh_user",
                "ansible_ssh_private_key_file", "ansible_ssh_known_hosts_file", "ansible_become_user"):
        v = vars_.get(key)
        if v is not None and (isinstance(v, (dict, list, bool)) or (key.endswith("host") and str(v).strip() == "")):
            raise bad(key, f"host '{name}': expected a non-empty string, got {v!r}")
    conn = vars_.get("ansible_connection")
    if conn is not None and not is_template(conn) and str(conn) not in CONNECTIONS:
        raise bad("ansible_connection", f"host '{name}': unsupported connection {conn!r} (supported: ssh, local, "
                                         f"docker)", hint=closest(str(conn), CONNECTIONS))
    for key in ("ansible_become",):
        v = vars_.get(key)
        if v is not None and not is_template(v):
            try:
                strict_bool(v)
            except NotABoolean as err:
                raise bad(key, f"host '{name}': {err.message}") from None
    for k in vars_:
        if isinstance(k, str) and k.startswith("ansible_") and k not in KNOWN_ANSIBLE_VARS:
            hint = closest(k, KNOWN_ANSIBLE_VARS)
            if hint:
                p = src.get(k)
                warnings.append(f"{p}: {k}: unknown connection variable for host '{name}', kept as a plain "
                                f"variable (did you mean '{hint}'?)")


def load_inventory(path: str) -> Inventory:
    """Read an Ansible YAML inventory (plus group_vars/ and host_vars/ beside it)."""
    data = yamlsrc.load(path, what="inventory")
    p = _Parser(path)
    p.parse(data)
    p.check_cycles()
    p.load_var_files()

    # depth: longest path from 'all'; priority from the group's own vars (default 1)
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            parents = p.groups[name].parents
            depth[name] = 0 if name == "all" else (1 + max((depth_of(x) for x in parents), default=0))
        return depth[name]

    gvars: dict[str, tuple[dict, dict]] = {n: p.effective(g) for n, g in p.groups.items()}
    priority: dict[str, int] = {}
    for n, (v, src) in gvars.items():
        raw = v.get("ansible_group_priority", 1)
        try:
            priority[n] = int(raw)
        except (TypeError, ValueError):
            pos = src.get("ansible_group_priority")
            raise InputError(f"expected an integer, got {raw!r}", file=pos.file if pos else path,
                             line=pos.line if pos else None, key="ansible_group_priority") from None

    # ungrouped: hosts whose only group is 'all'
    member_of: dict[str, set[str]] = {h: set() for h in p.hosts}
    for gname, g in p.groups.items():
        for h in g.hosts:
            member_of[h].add(gname)
    ung = p.groups["ungrouped"]
    for h, gs in member_of.items():
        if gs <= {"all"} and h not in ung.hosts:
            ung.hosts.append(h)
            member_of[h].add("ungrouped")
    if "ungrouped" not in p.groups["all"].children:
        p.groups["all"].children.insert(0, "ungrouped")
        p.groups["ungrouped"].parents.append("all")
    all_hosts = p.groups["all"].hosts
    for h in p.hosts:  # 'all' contains every host
        if h not in all_hosts:
            all_hosts.append(h)

    def ancestors(g: str, acc: set[str]):
        for parent in p.groups[g].parents:
            if parent not in acc:
                acc.add(parent)
                ancestors(parent, acc)

    warnings = p.warnings
    hosts: dict[str, Host] = {}
    for hname, ent in p.hosts.items():
        groups = set(member_of[hname]) | {"all"}
        for g in list(groups):
            ancestors(g, groups)
        ordered = sorted(groups, key=lambda g: (depth_of(g), priority[g], g))
        merged: dict[str, Any] = {}
        src: dict[str, SourcePos] = {}
        for g in ordered:
            merged.update(gvars[g][0])
            src.update(gvars[g][1])
        hv, hsrc = p.effective(ent)
        merged.update(hv)
        src.update(hsrc)
        merged.pop("ansible_group_priority", None)
        _check_host_vars(hname, merged, src, warnings)
        hosts[hname] = Host(hname, _freeze(merged), tuple(ordered), ent.pos, _freeze(src))

    groups_out: dict[str, Group] = {}
    for gname, g in p.groups.items():
        groups_out[gname] = Group(gname, tuple(g.hosts), tuple(g.children), _freeze(gvars[gname][0]), g.pos,
                                  tuple(g.parents), depth_of(gname), priority[gname])
    return Inventory(path, _freeze(hosts), _freeze(groups_out), tuple(dict.fromkeys(warnings)))
