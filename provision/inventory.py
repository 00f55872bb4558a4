"""Ansible's YAML inventory -> frozen Inventory/Host/Group models, and host patterns (``--limit``).

Read as Ansible reads it: ``all``/``children``/``hosts``/``vars``, host ranges (``gpu[01:16].lab``, ``node[a:c]``,
``[1:9:2]``), ``group_vars/`` and ``host_vars/`` beside the inventory (``NAME``, ``NAME.yml|.yaml|.json`` or a
``NAME/`` directory of such files). Host.vars is the merged inventory view for a host:
``all`` < parent groups < child groups (same depth: ``ansible_group_priority``, then name) < host; a
group_vars/host_vars file overrides inline vars of the same group/host. See docs/inventory.md.
"""
from __future__ import annotations

import fnmatch
import itertools
import os
import re
import string
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from provision import yamlsrc
from provision.errors import EXIT_OPTIONS, EXIT_PARSE, InputError, closest
from provision.truthy import NotABoolean, strict_bool
from provision.yamlsrc import SourcePos, describe, short_repr

GROUP_KEYS = ("hosts", "children", "vars")
VAR_FILE_EXTS = ("", ".yml", ".yaml", ".json")
CONNECTIONS = {"ssh": "ssh", "paramiko": "ssh", "smart": "ssh", "local": "local", "docker": "docker"}

# Behavioural inventory variables we understand (others are kept as plain vars). Used for "did you mean" warnings.
KNOWN_ANSIBLE_VARS = (
    "ansible_host", "ansible_port", "ansible_user", "ansible_connection", "ansible_ssh_private_key_file",
    "ansible_private_key_file", "ansible_ssh_known_hosts_file", "ansible_ssh_common_args", "ansible_ssh_extra_args",
    "ansible_become", "ansible_become_user", "ansible_become_method", "ansible_become_password",
    "ansible_become_pass", "ansible_become_exe", "ansible_become_flags", "ansible_password", "ansible_ssh_pass",
    "ansible_ssh_host", "ansible_ssh_port", "ansible_ssh_user", "ansible_python_interpreter",
    "ansible_group_priority", "ansible_shell_type", "ansible_timeout", "ansible_ssh_timeout",
    "ansible_docker_extra_args", "ansible_host_key_checking", "ansible_ssh_host_key_checking",
)


def _freeze(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Host:
    name: str
    vars: Mapping[str, Any]
    groups: tuple[str, ...]
    source: SourcePos
    var_sources: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False)

    def __hash__(self) -> int:
        return hash(("Host", self.name, self.source))

    def _var(self, *names: str, default: Any = None) -> Any:
        for n in names:
            v = self.vars.get(n)
            if v is not None:
                return v
        return default

    @property
    def address(self) -> str:
        return str(self._var("ansible_host", "ansible_ssh_host", default=self.name))

    @property
    def port(self) -> int:
        return int(self._var("ansible_port", "ansible_ssh_port", default=22))

    @property
    def user(self) -> str | None:
        v = self._var("ansible_user", "ansible_ssh_user")
        return None if v is None else str(v)

    @property
    def key_file(self) -> str | None:
        v = self._var("ansible_ssh_private_key_file", "ansible_private_key_file")
        return None if v is None else os.path.expanduser(str(v))

    @property
    def connection(self) -> str:
        return CONNECTIONS.get(str(self._var("ansible_connection", default="ssh")), "ssh")

    @property
    def known_hosts_file(self) -> str | None:
        v = self._var("ansible_ssh_known_hosts_file")
        return None if v is None else os.path.expanduser(str(v))

    @property
    def become(self) -> bool | None:
        v = self._var("ansible_become")
        return None if v is None else strict_bool(v, "ansible_become")

    @property
    def become_user(self) -> str | None:
        v = self._var("ansible_become_user")
        return None if v is None else str(v)

    @property
    def become_password(self) -> str | None:
        v = self._var("ansible_become_password", "ansible_become_pass")
        return None if v is None else str(v)

    @property
    def password(self) -> str | None:
        v = self._var("ansible_password", "ansible_ssh_pass")
        return None if v is None else str(v)


@dataclass(frozen=True)
class Group:
    name: str
    hosts: tuple[str, ...]
    children: tuple[str, ...]
    vars: Mapping[str, Any]
    source: SourcePos
    parents: tuple[str, ...] = ()
    depth: int = 0
    priority: int = 1

    def __hash__(self) -> int:
        return hash(("Group", self.name, self.source))


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: Mapping[str, Host]
    groups: Mapping[str, Group]
    warnings: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash(("Inventory", self.path))

    # -------------------------------------------------------------- patterns
    def group_hosts(self, name: str) -> list[str]:
        """Names of every host in group ``name`` or its descendants, in inventory order."""
        if name == "all":
            return list(self.hosts)
        members: set[str] = set()
        stack, seen = [name], set()
        while stack:
            g = stack.pop()
            if g in seen or g not in self.groups:
                continue
            seen.add(g)
            members.update(self.groups[g].hosts)
            stack.extend(self.groups[g].children)
        return [h for h in self.hosts if h in members]

    def select(self, pattern: str, *, exit_code: int = EXIT_PARSE, key: str = "hosts") -> list[Host]:
        """Hosts matching an Ansible host pattern, in inventory order. A term matching nothing is an InputError."""
        if pattern is None or str(pattern).strip() == "":
            raise InputError("empty host pattern", key=key, exit_code=exit_code)
        terms = split_pattern(str(pattern))
        plain = [t for t in terms if t[0] not in "&!"]
        inter = [t[1:] for t in terms if t[0] == "&"]
        excl = [t[1:] for t in terms if t[0] == "!"]
        selected: set[str] = set()
        if plain:
            for t in plain:
                selected.update(self._term(t, exit_code, key))
        else:
            selected = set(self.hosts)
        for t in inter:
            selected &= set(self._term(t, exit_code, key))
        for t in excl:
            selected -= set(self._term(t, exit_code, key))
        return [h for name, h in self.hosts.items() if name in selected]

    def limit(self, hosts: list[Host], pattern: str | None) -> list[Host]:
        """Restrict ``hosts`` to those matching ``pattern`` (``--limit``); bad patterns exit 5."""
        if pattern is None:
            return list(hosts)
        keep = {h.name for h in self.select(pattern, exit_code=EXIT_OPTIONS, key="--limit")}
        return [h for h in hosts if h.name in keep]

    def _term(self, term: str, exit_code: int, key: str) -> list[str]:
        term = term.strip()
        if not term:
            raise InputError("empty term in host pattern", key=key, exit_code=exit_code)
        if term.startswith("@"):
            return self._retry_file(term[1:], exit_code, key)
        if term in ("all", "*"):
            return list(self.hosts)
        if term in self.groups:
            return self.group_hosts(term)
        if term in self.hosts:
            return [term]
        m = re.match(r"^(.+?)\[(-?\d+)(?::(-?\d*))?\]$", term)
        if m and (m.group(1) in self.groups or m.group(1) in self.hosts or _is_wild(m.group(1))):
            base = self._term(m.group(1), exit_code, key)
            start = int(m.group(2))
            if m.group(3) is None:
                if not -len(base) <= start < len(base):
                    raise InputError(f"subscript [{start}] out of range: '{m.group(1)}' has {len(base)} hosts",
                                     key=key, exit_code=exit_code)
                return [base[start]]
            end = int(m.group(3)) if m.group(3) not in ("", None) else len(base) - 1
            return base[start:end + 1]
        matched: list[str] = []
        if term.startswith("~"):
            try:
                rx = re.compile(term[1:])
            except re.error as err:
                raise InputError(f"invalid regular expression '{term[1:]}': {err}", key=key,
                                 exit_code=exit_code) from None
            match = rx.search
        elif _is_wild(term):
            match = lambda name: fnmatch.fnmatchcase(name, term)  # noqa: E731
        else:
            match = None
        if match is not None:
            for g in self.groups:
                if match(g):
                    matched.extend(self.group_hosts(g))
            matched.extend(h for h in self.hosts if match(h))
            if matched:
                return matched
            raise InputError(f"pattern '{term}' matches no host or group", key=key, exit_code=exit_code)
        raise InputError(f"no host or group named '{term}' in {self.path}", key=key, exit_code=exit_code,
                         hint=closest(term, [*self.hosts, *self.groups]))

    def _retry_file(self, path: str, exit_code: int, key: str) -> list[str]:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as err:
            raise InputError(f"cannot read retry file '{path}': {err.strerror}", key=key,
                             exit_code=exit_code) from None
        out = []
        for n, line in enumerate(lines, 1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if name not in self.hosts:
                raise InputError(f"host '{name}' is not in {self.path}", file=path, line=n, key=key,
                                 exit_code=exit_code, hint=closest(name, self.hosts))
            out.append(name)
        return out


def _is_wild(term: str) -> bool:
    return any(c in term for c in "*?[")


def split_pattern(pattern: str) -> list[str]:
    """Split an Ansible host pattern into terms: on commas if there are any, else on colons outside brackets."""
    if "," in pattern:
        return [t.strip() for t in pattern.split(",") if t.strip()]
    terms, cur, depth = [], "", 0
    for ch in pattern:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == ":" and depth == 0 and not cur.startswith("~"):
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


# ------------------------------------------------------------------------------------------------ parsing

_RANGE = re.compile(r"\[([^\]]*)\]")


def expand_hostname(pattern: str, pos: SourcePos) -> list[str]:
    """Expand ``gpu[01:16].lab`` / ``node[a:c]`` / ``x[1:9:2]`` (several ranges multiply)."""
    parts = _RANGE.split(pattern)
    if len(parts) == 1:
        return [pattern]
    pieces: list[list[str]] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            pieces.append([part])
            continue
        pieces.append(_expand_range(part, pattern, pos))
    return ["".join(p) for p in itertools.product(*pieces)]


def _expand_range(spec: str, pattern: str, pos: SourcePos) -> list[str]:
    def bad(msg):
        return InputError(f"bad host range '[{spec}]' in '{pattern}': {msg}", file=pos.file, line=pos.line,
                          key=pattern)
    fields = spec.split(":")
    if len(fields) not in (2, 3):
        raise bad("expected [start:end] or [start:end:step]")
    beg, end = fields[0].strip(), fields[1].strip()
    step = 1
    if len(fields) == 3:
        if not fields[2].strip().isdigit() or int(fields[2]) < 1:
            raise bad("step must be a positive integer")
        step = int(fields[2])
    if not beg:
        beg = "0"
    if not end:
        raise bad("range needs an end")
    if beg.isdigit() and end.isdigit():
        width = len(beg) if beg.startswith("0") and len(beg) > 1 else 0
        if width and len(end) != width:
            raise bad("zero-padded start and end must have the same length")
        b, e = int(beg), int(end)
        if b > e:
            raise bad("start is after end")
        return [str(n).zfill(width) for n in range(b, e + 1, step)]
    letters = string.ascii_letters
    if len(beg) == 1 and len(end) == 1 and beg in letters and end in letters:
        b, e = letters.index(beg), letters.index(end)
        if b > e:
            raise bad("start is after end")
        return list(letters[b:e + 1:step])
    raise bad("start and end must both be numbers or both single letters")


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
