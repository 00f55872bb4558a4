"""Ansible host patterns over an inventory (``all``, groups, hosts, ``*`` and ``~regex``, ``&`` and ``!``,
``[i]``/``[i:j]`` subscripts, ``@retry-file``; ``--limit``) and host ranges in inventory names (``gpu[01:16].lab``,
``node[a:c]``, ``x[1:9:2]``)."""
from __future__ import annotations

import fnmatch
import itertools
import re
import string
from typing import TYPE_CHECKING

from provision.errors import EXIT_OPTIONS, EXIT_PARSE, InputError, closest
from provision.yamlsrc import SourcePos

if TYPE_CHECKING:
    from provision.inventory.models import Host


class HostPatterns:
    """Host pattern lookups for :class:`provision.inventory.models.Inventory` (its ``path``, ``hosts``, ``groups``)."""

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


_RANGE = re.compile(r"\[([^\]]*)\]")
_IPV6_PORT = re.compile(r"^\[([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)\](?::(\d+))?$")


def split_port(pattern: str, pos: SourcePos) -> tuple[str, int | None]:
    """``host:PORT`` / ``web[01:03].lab:2200`` / ``[fe80::1]:2222`` -> (name, port); a bare IPv6 address or a name
    whose tail is not a number keeps its colons (as Ansible's parse_address). A name ending in ':' is an error."""
    m = _IPV6_PORT.match(pattern)
    if m:
        return m.group(1), int(m.group(2)) if m.group(2) else None
    depth, colons = 0, []
    for i, ch in enumerate(pattern):
        depth += ch == "["
        depth -= ch == "]"
        if ch == ":" and depth == 0:
            colons.append(i)
    if len(colons) != 1:
        return pattern, None
    head, tail = pattern[:colons[0]], pattern[colons[0] + 1:]
    if tail == "":
        raise InputError(f"host '{pattern}' ends in ':' (a ':' is followed by a port number)", file=pos.file,
                         line=pos.line, key=pattern)
    return (head, int(tail)) if tail.isdigit() else (pattern, None)


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
