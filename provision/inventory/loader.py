"""Ansible inventories -> Inventory: YAML and INI files, directories of them, ``h1,h2,`` host lists, several
sources merged; group_vars/ and host_vars/ beside each source (and beside the playbook); variables merged in
Ansible's order; checks of the connection variables.

Which parser: a ``.ini`` file (or one whose YAML is not a mapping, or is no YAML at all) is INI, as Ansible tries
its YAML plugin first and then its INI plugin; a directory is every file in it (sorted, recursively) except hidden
ones, ``group_vars``/``host_vars``, and Ansible's ignored extensions (:data:`IGNORED_EXTS`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from provision import yamlsrc
from provision.errors import InputError, closest
from provision.inventory import ini
from provision.inventory.models import (CONNECTIONS, GROUP_KEYS, KNOWN_ANSIBLE_VARS, VAR_FILE_EXTS, Group, Host,
                                        Inventory, _freeze)
from provision.inventory.patterns import expand_hostname, split_port
from provision.truthy import NotABoolean, strict_bool
from provision.yamlsrc import SourcePos, describe, short_repr

# Ansible's INVENTORY_IGNORE_EXTS (REJECT_EXTS + .orig, .cfg, .retry): files skipped in an inventory directory.
IGNORED_EXTS = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry")
IGNORED_NAMES = ("group_vars", "host_vars", "vars_plugins")
YAML_EXTS = ("", ".yml", ".yaml", ".json")


def is_host_list(source: str) -> bool:
    """An inventory source that is a host list (``-i 'h1,h2,'``): a comma, and no file or directory of that name."""
    return "," in source and not os.path.exists(source)


class _Entity:
    """Builder state for a group or a host (possibly defined in several places)."""

    def __init__(self, name: str, pos: SourcePos):
        self.name, self.pos = name, pos
        self.vars: dict[str, Any] = {}
        self.var_src: dict[str, SourcePos] = {}
        self.hosts: list[str] = []
        self.children: list[str] = []
        self.child_pos: dict[str, SourcePos] = {}
        self.parents: list[str] = []
        self.priority: int | None = None


def _merge_level(ent: _Entity, values: Mapping, what: str):
    """Merge vars given for one entity in one more place. The same key with two different values in one file is an
    error (Ansible keeps the last silently); a later source overrides an earlier one, as in Ansible."""
    for k, v in values.items():
        kpos = yamlsrc.pos_of(values, k)
        if not isinstance(k, str):
            raise InputError("variable names must be strings", file=kpos.file, line=kpos.line, key=str(k))
        v = yamlsrc.plain(v)
        first = ent.var_src.get(k)
        if k in ent.vars and ent.vars[k] != v and first.file == kpos.file:
            raise InputError(f"{what} '{ent.name}' sets it to {short_repr(v)} here but to {short_repr(ent.vars[k])} at "
                             f"{first}", file=kpos.file, line=kpos.line, key=k)
        if what == "group" and k == "ansible_group_priority":   # Ansible keeps it apart, not as a variable
            ent.priority = _priority(v, kpos)
            continue
        if k not in ent.vars or first.file != kpos.file:
            ent.vars[k] = v
            ent.var_src[k] = kpos


def _priority(raw: Any, pos: SourcePos) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise InputError(f"expected an integer, got {raw!r}", file=pos.file, line=pos.line,
                         key="ansible_group_priority") from None


class _Builder:
    """The inventory as sources add to it (Ansible's InventoryData): groups, hosts, membership, inline vars."""

    def __init__(self):
        self.groups: dict[str, _Entity] = {}
        self.hosts: dict[str, _Entity] = {}
        self.warnings: list[str] = []
        self.group("all", SourcePos("<inventory>", 0))
        self.group("ungrouped", SourcePos("<inventory>", 0))
        self.add_child("all", "ungrouped", SourcePos("<inventory>", 0))

    def has_group(self, name: str) -> bool:
        return name in self.groups

    def group(self, name: str, pos: SourcePos) -> _Entity:
        if name not in self.groups:
            self.groups[name] = _Entity(name, pos)
        return self.groups[name]

    def group_vars(self, ent: _Entity, values: Mapping) -> None:
        _merge_level(ent, values, "group")

    def add_child(self, parent: str, child: str, pos: SourcePos):
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

    def add_host(self, group: _Entity, pattern: str, hvars: Mapping, pos: SourcePos):
        """Add the hosts of ``pattern`` (``name``, ``name:PORT``, ranges) to ``group`` with inline vars."""
        pattern, port = split_port(pattern, pos)
        if port is not None and "ansible_port" not in hvars:
            values = yamlsrc.LineDict({"ansible_port": port, **hvars})
            values.file, values.line = pos.file, pos.line
            values.key_lines = {**getattr(hvars, "key_lines", {}), "ansible_port": pos.line}
            hvars = values
        for name in expand_hostname(pattern, pos):
            h = self.hosts.get(name)
            if h is None:
                h = self.hosts[name] = _Entity(name, pos)
            if name not in group.hosts:
                group.hosts.append(name)
            if hvars:
                _merge_level(h, hvars, "host")

    # ------------------------------------------------------------------ YAML
    def parse_yaml(self, path: str, data: Any):
        if isinstance(data.get("plugin"), str):
            pos = yamlsrc.pos_of(data, "plugin")
            raise InputError(f"inventory plugins are not supported ({data['plugin']}); write a static YAML inventory",
                             file=pos.file, line=pos.line, key="plugin")
        for name, body in data.items():
            pos = yamlsrc.pos_of(data, name)
            self._parse_group(self._group_name(name, pos), body, pos)

    @staticmethod
    def _group_name(name: Any, pos: SourcePos) -> str:
        if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name).strip() == "":
            raise InputError("a group name must be a non-empty string", file=pos.file, line=pos.line, key=str(name))
        name = str(name)
        if name in GROUP_KEYS:
            raise InputError(f"'{name}' is a group keyword, not a group name here; put groups under 'all: children:'",
                             file=pos.file, line=pos.line, key=name)
        return name

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
            self.group_vars(g, vars_)
        hosts = body.get("hosts")
        if hosts is not None:
            hpos = body.pos("hosts")
            if isinstance(hosts, list):
                raise InputError("hosts must be a mapping of host names (write 'host:' not '- host')",
                                 file=hpos.file, line=hpos.line, key="hosts")
            if isinstance(hosts, str):
                hosts, hosts_pos = {hosts: None}, {hosts: hpos}
            elif isinstance(hosts, dict):
                hosts_pos = {k: hosts.pos(k) for k in hosts}
            else:
                raise InputError(f"hosts must be a mapping of host names, got {describe(hosts)}", file=hpos.file,
                                 line=hpos.line, key="hosts")
            for hname, hvars in hosts.items():
                hp = hosts_pos[hname]
                if not isinstance(hname, (str, int)) or isinstance(hname, bool):
                    raise InputError("a host name must be a string", file=hp.file, line=hp.line, key=str(hname))
                if hvars is not None and not isinstance(hvars, dict):
                    raise InputError(f"host vars must be a mapping, got {describe(hvars)}", file=hp.file,
                                     line=hp.line, key=str(hname))
                self.add_host(g, str(hname), hvars or {}, hp)
        children = body.get("children")
        if children is not None:
            cpos = body.pos("children")
            if not isinstance(children, dict):
                raise InputError(f"children must be a mapping of group names, got {describe(children)}",
                                 file=cpos.file, line=cpos.line, key="children")
            for cname, cbody in children.items():
                kpos = children.pos(cname)
                cname = self._group_name(cname, kpos)
                self.add_child(name, cname, kpos)
                self._parse_group(cname, cbody, kpos)

    # ------------------------------------------------------------------ host lists and files
    def parse_host_list(self, text: str):
        pos = SourcePos(f"-i {text}", 0)
        for name in text.split(","):
            if name.strip():
                self.add_host(self.groups["ungrouped"], name.strip(), {}, pos)

    def parse_file(self, path: str):
        """One inventory file: YAML where it reads as a YAML mapping, else INI (Ansible's plugin order)."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read inventory: {err}", file=path) from None
        ext = os.path.splitext(path)[1].lower()
        if text.startswith("#!") and os.access(path, os.X_OK):
            raise InputError("inventory scripts are not supported; write a static YAML or INI inventory", file=path,
                             line=1)
        yaml_error, data = None, None
        if ext in YAML_EXTS:
            try:
                data = yamlsrc.loads(text, path)
            except InputError as err:
                yaml_error = err
            if isinstance(data, dict):
                self.parse_yaml(path, data)
                return
        try:
            ini.parse_ini(path, text, self)
        except InputError:
            if ext == ".ini" or ini.looks_like_ini(text):
                raise
            if yaml_error is not None:
                raise yaml_error from None
            pos = yamlsrc.pos_of(data, default=SourcePos(path, 1))
            raise InputError("an inventory must be a YAML mapping of groups (all: {hosts:, children:, vars:}) or an "
                             "INI file ([group] lines)", file=path, line=pos.line or 1) from None

    def parse_source(self, source: str):
        if is_host_list(source):
            self.parse_host_list(source)
        elif os.path.isdir(source):
            for entry in sorted(os.listdir(source)):
                if entry.startswith(".") or entry in IGNORED_NAMES or entry.endswith(IGNORED_EXTS):
                    continue
                self.parse_source(os.path.join(source, entry))
        elif os.path.exists(source):
            self.parse_file(source)
        else:
            raise InputError("inventory not found", file=source)

    # ------------------------------------------------------------------ after every source
    def reconcile(self):
        """Ansible's reconcile_inventory: groups with no parent go under 'all'; 'ungrouped' holds the hosts in no
        other group (and loses those listed there that are also in another group)."""
        self.check_cycles()
        for name, g in self.groups.items():
            if name != "all" and not g.parents:
                self.add_child("all", name, g.pos)
        ung = self.groups["ungrouped"]
        for h, gs in self.memberships().items():
            others = gs - {"all", "ungrouped"}
            if "ungrouped" in gs and others:
                ung.hosts.remove(h)
            elif not others and h not in ung.hosts:
                ung.hosts.append(h)

    def memberships(self) -> dict[str, set[str]]:
        """host -> the groups that list it directly."""
        member_of: dict[str, set[str]] = {h: set() for h in self.hosts}
        for gname, g in self.groups.items():
            for h in g.hosts:
                member_of[h].add(gname)
        return member_of

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


def _dedupe_path(path: list[str]) -> list[str]:
    out = []
    for p in path:
        if not out or out[-1] != p:
            out.append(p)
    return out


# ---------------------------------------------------------------------- group_vars/ and host_vars/ files
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


def _load_var_dir(base: str, kind: str, names: Mapping, warnings: list[str]) -> dict[str, tuple[dict, dict]]:
    """``base/group_vars`` or ``base/host_vars`` -> {entity name: (vars, sources)}; later files win."""
    root = os.path.join(base, kind)
    out: dict[str, tuple[dict, dict]] = {}
    if not os.path.isdir(root):
        return out
    what = kind.split("_")[0]
    for entry in sorted(os.listdir(root)):
        if entry.startswith("."):
            continue
        full = os.path.join(root, entry)
        stem, ext = os.path.splitext(entry)
        if os.path.isdir(full) or entry in names or ext == "":   # host_vars/gpu01.lab (no extension) too
            name = entry
        elif ext in VAR_FILE_EXTS[1:]:
            name = stem
        else:
            continue
        if name not in names:
            hint = closest(name, names)
            warnings.append(f"{full}: no {what} named '{name}' in the inventory; file ignored"
                            + (f" (did you mean '{hint}'?)" if hint else ""))
            continue
        values, src = out.setdefault(name, ({}, {}))
        for file in _var_files(full):
            data = yamlsrc.load(file, what=f"{kind} file")
            if data is None:
                continue
            if not isinstance(data, dict):
                p = yamlsrc.pos_of(data, default=SourcePos(file, 1))
                raise InputError(f"{kind} file must be a mapping of variables, got {describe(data)}",
                                 file=file, line=p.line or 1)
            for k, v in data.items():
                values[k] = yamlsrc.plain(v)
                src[k] = data.pos(k)
    return out


def var_basedirs(sources: Sequence[str]) -> list[str]:
    """Where Ansible looks for group_vars/ and host_vars/ of each inventory source (host lists have none)."""
    out = []
    for s in sources:
        if is_host_list(s):
            continue
        d = os.path.abspath(s if os.path.isdir(s) else os.path.dirname(os.path.abspath(s)))
        if d not in out:
            out.append(d)
    return out


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
    v = vars_.get("ansible_ssh_common_args")
    if v and not is_template(v):
        from provision.connectors import parse_ssh_args
        try:
            parse_ssh_args(str(v), "ansible_ssh_common_args")
        except InputError as err:
            raise bad("ansible_ssh_common_args", f"host '{name}': {err.message}") from None
    for k in vars_:
        if isinstance(k, str) and k.startswith("ansible_") and k not in KNOWN_ANSIBLE_VARS:
            hint = closest(k, KNOWN_ANSIBLE_VARS)
            if hint:
                p = src.get(k)
                warnings.append(f"{p}: {k}: unknown connection variable for host '{name}', kept as a plain "
                                f"variable (did you mean '{hint}'?)")


def load_inventory(sources: str | Sequence[str], *, playbook_dir: str | None = None) -> Inventory:
    """Read inventory sources (files, directories, ``h1,h2,`` host lists; later ones add to and override earlier
    ones) plus the group_vars/ and host_vars/ beside each source and, given ``playbook_dir``, beside the playbook.

    A host's variables, lowest first (Ansible's order): the inventory sources' inline vars of ``all``, then of
    its groups (depth, ``ansible_group_priority``, name), then group_vars/all files (inventory, then playbook),
    group_vars/GROUP files in the same group order (inventory, then playbook), the host's inline vars, host_vars/
    files (inventory, then playbook). So a group_vars/ file beats any inline group var, whatever the depths.
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    b = _Builder()
    for source in sources:
        b.parse_source(source)
    b.reconcile()

    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            parents = b.groups[name].parents
            depth[name] = 0 if name == "all" else (1 + max((depth_of(x) for x in parents), default=0))
        return depth[name]

    priority = {n: (g.priority if g.priority is not None else 1) for n, g in b.groups.items()}
    inv_dirs = var_basedirs(sources)
    pb_dirs = [os.path.abspath(playbook_dir)] if playbook_dir else []
    warnings = b.warnings
    gfiles = [_load_var_dir(d, "group_vars", b.groups, warnings) for d in inv_dirs + pb_dirs]
    hfiles = [_load_var_dir(d, "host_vars", b.hosts, warnings) for d in inv_dirs + pb_dirs]
    empty: tuple[dict, dict] = ({}, {})

    def ancestors(g: str, acc: set[str]):
        for parent in b.groups[g].parents:
            if parent not in acc:
                acc.add(parent)
                ancestors(parent, acc)

    hosts: dict[str, Host] = {}
    member_of = b.memberships()
    for hname, ent in b.hosts.items():
        groups = member_of[hname] | {"all"}
        for g in list(groups):
            ancestors(g, groups)
        ordered = sorted(groups, key=lambda g: (depth_of(g), priority[g], g))
        inner = [g for g in ordered if g != "all"]
        layers = [(b.groups[g].vars, b.groups[g].var_src) for g in ordered]
        layers += [f.get("all", empty) for f in gfiles]
        layers += [f.get(g, empty) for f in gfiles for g in inner]
        layers.append((ent.vars, ent.var_src))
        layers += [f.get(hname, empty) for f in hfiles]
        merged: dict[str, Any] = {}
        src: dict[str, SourcePos] = {}
        for values, where in layers:
            merged.update(values)
            src.update(where)
        _check_host_vars(hname, merged, src, warnings)
        hosts[hname] = Host(hname, _freeze(merged), tuple(ordered), ent.pos, _freeze(src))

    groups_out: dict[str, Group] = {}
    for gname, g in b.groups.items():
        gv = dict(g.vars)
        for f in gfiles:
            gv.update(f.get(gname, empty)[0])
        groups_out[gname] = Group(gname, tuple(g.hosts), tuple(g.children), _freeze(gv), g.pos, tuple(g.parents),
                                  depth_of(gname), priority[gname])
    return Inventory(sources[0] if sources else "", _freeze(hosts), _freeze(groups_out),
                     tuple(dict.fromkeys(warnings)), tuple(sources))
