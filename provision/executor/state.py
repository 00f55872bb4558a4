"""The executor's per-host state and the pure choices of a run: batches (serial), tags, --start-at-task, and a
task's arguments templated for one host."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

from provision import templating


def render_args(args, raw_keys, variables) -> dict:
    """A task's arguments templated for one host; an argument that renders to ``omit`` is left out, as if the
    task had not given it (Ansible's ``default(omit)``). ``raw_keys`` stay as written (the op renders them)."""
    out = {}
    for key, val in args.items():
        if key not in raw_keys:
            val = templating.render(val, variables)
            if isinstance(val, str) and val == templating.OMIT:
                continue
        out[key] = val
    return out


@dataclass
class HostState:
    host: Any
    facts: dict = field(default_factory=dict)
    gathered: set = field(default_factory=set)
    set_facts: dict = field(default_factory=dict)
    registered: dict = field(default_factory=dict)
    notified: list = field(default_factory=list)
    failed: bool = False
    unreachable: bool = False
    ended: bool = False
    secrets: list = field(default_factory=list)   # values to mask in this host's output (current task)
    probe_cache: dict = field(default_factory=dict)   # prefetched read-only probes, cleared by any change

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def active(self) -> bool:
        return not (self.failed or self.unreachable or self.ended)


def batches(hosts: list, serial: tuple) -> list[list]:
    """Split hosts by ``serial`` (ints, "N%", a list whose last item repeats)."""
    if not serial:
        return [list(hosts)] if hosts else []
    out, i, k, n = [], 0, 0, len(hosts)
    while i < n:
        s = serial[min(k, len(serial) - 1)]
        if isinstance(s, str) and s.strip().endswith("%"):
            size = max(1, int(math.floor(n * float(s.strip()[:-1]) / 100.0)))
        else:
            size = max(1, int(s))
        out.append(list(hosts[i:i + size]))
        i += size
        k += 1
    return out


def tag_selected(task_tags: tuple, tags: tuple, skip_tags: tuple) -> bool:
    t = set(task_tags)
    if skip_tags:
        s = set(skip_tags)
        if t & s or ("tagged" in s and t) or ("untagged" in s and not t) or "all" in s and "always" not in t:
            return False
    if "always" in t:
        return True
    sel = set(tags) if tags else {"all"}
    if "never" in t and not (t - {"never"}) & sel:
        return False
    if "all" in sel:
        return True
    return bool(t & sel) or ("tagged" in sel and bool(t)) or ("untagged" in sel and not t)


def task_matches(task, pattern: str) -> bool:
    names = [task.name] + ([f"{task.role} : {task.name}"] if getattr(task, "role", None) else [])
    return any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in names)
