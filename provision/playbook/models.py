"""The frozen models a playbook loads into (Playbook, Play, Task) and where a task's relative files are found."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from provision.errors import InputError
from provision.templating.lookups import search_dirs
from provision.yamlsrc import SourcePos


_EMPTY: Mapping = MappingProxyType({})


def _freeze(d: Mapping | None) -> Mapping:
    return MappingProxyType(dict(d or {}))


# ------------------------------------------------------------------------------------------------ models

@dataclass(frozen=True)
class BlockFrame:
    """Where a task sits in a ``block:``: the block (an id unique in the playbook), the section (block, rescue or
    always) and whether the block has rescue / always tasks. A task holds its frames outermost first."""
    id: int
    section: str
    rescue: bool
    always: bool


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
    ignore_errors: bool | str = False      # or a template (``"{{ ansible_check_mode }}"``) rendered per host
    changed_when: tuple[str, ...] | None = None
    failed_when: tuple[str, ...] | None = None
    until: str | None = None
    retries: int = 3
    delay: float = 5.0
    no_log: bool = False
    # a mapping; or, where a templated string is given (`environment: "{{ proxy_env }}"`), a tuple of layers (mappings
    # and template strings, outermost first) rendered and merged when the task runs
    environment: Mapping[str, str] | tuple = field(default_factory=lambda: _EMPTY)
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
    run_once: bool = False
    delegate_to: str | None = None        # an inventory host (or localhost) the task runs on, with this host's vars
    delegate_facts: bool = False
    remote_user: str | None = None        # play/block/task keywords; the inventory's ansible_user wins
    connection: str | None = None
    frames: tuple[BlockFrame, ...] = ()   # the blocks the task is in (rescue/always), outermost first
    loop_lookup: str | None = None        # with_first_found / with_fileglob: the lookup the loop's terms go through
    unsupported: str | None = None        # a module gpufleet lacks: why; the task fails only the hosts reaching it
    include: Any = field(default=None, compare=False, repr=False)   # include_tasks/include_role: the loader
    #                                       context its file is read with, per host, when the task runs
    defines: tuple[str, ...] = ()         # include: names its files may register or set_fact (static check)
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
    remote_user: str | None = None        # play keywords for Gathering Facts (tasks carry their own)
    connection: str | None = None
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
    return search_dirs(task.role_path, task.playbook_dir, kind)


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
