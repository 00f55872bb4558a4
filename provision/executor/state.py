"""The executor's per-host state and the pure choices of a run: batches (serial), tags, --start-at-task, a task's
arguments and environment templated for one host, where a failure in a block goes (rescue, always), and the host
as a play or task connects to it (remote_user, connection)."""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provision import templating
from provision.truthy import lenient_bool

# the Ansible release whose playbook language gpufleet follows (roles compare ansible_version against it)
ANSIBLE_VERSION = {"full": "2.19.0", "major": 2, "minor": 19, "revision": 0, "string": "2.19.0"}


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
    skip_to: tuple | None = None   # (block id, 'rescue' | 'always'): a block task failed; run nothing before that
    refail: dict = field(default_factory=dict)        # block id -> its outer frames: fail again once it ends
    rescuing: set = field(default_factory=set)        # blocks whose rescue section this host runs
    block_vars: dict = field(default_factory=dict)    # ansible_failed_task / ansible_failed_result
    last_result: Any = None                           # the host's last task result (run_once shares it)

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


def block_failure(s: HostState, frames: tuple) -> str:
    """A task failed on ``s`` inside ``frames`` (outermost first): 'rescue' when a rescue section takes over (the
    failure is cleared), 'always' when only an always section runs before the host fails, 'failed' when no block
    catches it (``s.failed`` is set)."""
    for i in range(len(frames) - 1, -1, -1):
        f = frames[i]
        if f.section == "block" and f.rescue:
            s.skip_to = (f.id, "rescue")
            return "rescue"
        if f.section in ("block", "rescue") and f.always:
            s.skip_to = (f.id, "always")
            s.refail[f.id] = frames[:i]
            return "always"
    s.failed = True
    return "failed"


def leave_blocks(s: HostState, frames: tuple) -> None:
    """``s`` is now at a task inside ``frames``: blocks it has left drop their pending jump, and a host whose
    always section ran after a failure fails again outside that block."""
    ids = {f.id for f in frames}
    if s.skip_to is not None and s.skip_to[0] not in ids:
        s.skip_to = None
    s.rescuing &= {f.id for f in frames if f.section == "rescue"}
    for bid in sorted((b for b in s.refail if b not in ids), key=lambda b: -len(s.refail[b])):
        outer = s.refail.pop(bid)
        if not s.failed and s.skip_to is None:
            block_failure(s, outer)


def reaches(s: HostState, frames: tuple) -> bool:
    """Whether a task inside ``frames`` runs on ``s``: after a failure in a block, only that block's rescue (or
    always) section does; a rescue section runs only on the hosts that failed in its block."""
    if s.skip_to is not None:
        bid, section = s.skip_to
        if not any(f.id == bid and (f.section == section or f.section == "always") for f in frames):
            return False
        s.skip_to = None
        if section == "rescue":
            s.rescuing.add(bid)
    return all(f.id in s.rescuing for f in frames if f.section == "rescue")


def ignores_errors(task, variables) -> bool:
    """``ignore_errors`` for one host: a boolean, or a template (``"{{ ansible_check_mode }}"``) rendered with the
    host's variables (unrenderable, or no variables yet: False)."""
    value = task.ignore_errors
    if not isinstance(value, str):
        return bool(value)
    if variables is None:
        return False
    try:
        return lenient_bool(templating.render(value, variables))
    except templating.TemplateError:
        return False


def connecting_host(host, remote_user: str | None, connection: str | None):
    """The host as a play or task connects to it: ``remote_user``/``connection`` keywords fill in what the
    inventory leaves unset (ansible_user / ansible_connection win, as in Ansible)."""
    hv = dict(getattr(host, "vars", {}) or {})
    add = {}
    if remote_user and not (hv.get("ansible_user") or hv.get("ansible_ssh_user")):
        add["ansible_user"] = remote_user
    if connection and not hv.get("ansible_connection"):
        add["ansible_connection"] = connection
    return dataclasses.replace(host, vars={**hv, **add}) if add else host


def render_environment(env, variables) -> dict | None:
    """A task's ``environment:`` for one host: a mapping, or layers (mappings and template strings, outermost
    first) each rendered to a mapping and merged; values as strings."""
    layers = env if isinstance(env, tuple) else (env,)
    out: dict = {}
    for layer in layers:
        val = templating.render(layer, variables) if layer else {}
        if not isinstance(val, Mapping):
            raise templating.TemplateError(f"environment must render to a mapping, got {type(val).__name__}")
        out.update({str(k): "" if v is None else str(v) for k, v in val.items()})
    return out or None
