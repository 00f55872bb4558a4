"""A plan: what an operation asks of a host, as data. Operations build plans; only the executor's runner
(:mod:`provision.executor.runner`) carries them out, so no operation holds a connection and check mode is the
runner not running what would change.

The command objects (after pyinfra's StringCommand / FileUploadCommand / FunctionCommand and its reboot):

* :class:`Cmd` a shell command (stdin: bytes, or a controller file streamed in chunks; timeout, become override,
  read-only or not, dpkg-lock retry);
* :class:`FilePut` content written to a path atomically, with mode and owner: the one way to write a file on a host;
* :class:`RebootAndWait` reboot, then wait for a new boot id and a working test command;
* :class:`Call` a controller-side step that issues command objects as it goes (the upgrade's states).

A plan may go on after its commands ran: ``then(facts, results)`` is a pure function of the facts (re-read where
``refresh_facts`` says) and the results of this plan's commands, returning the next plan (apt: update the cache,
then decide from the fresh cache; check mode: simulate, then show the simulation as the diff).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Callable, Mapping, Sequence

from provision.hostio import CommandResult


@dataclass
class Cmd:
    cmd: str
    stdin: bytes | PurePath | None = None   # a path: that controller file, streamed in chunks (never read whole)
    desc: str | None = None          # shown instead of cmd (e.g. "write /etc/x (1.2 kB)")
    timeout: float | None = None
    counts: bool = True              # False: housekeeping that is not a change (apt-get update, daemon-reload)
    become: bool | None = None       # None: as the task says
    readonly: bool = False           # changes nothing: runs in check mode too, keeps prefetched probes
    ok_rc: tuple | None = (0,)       # any other rc fails the task; None: the plan's ``result`` decides
    dpkg_lock: bool = False          # retry while another dpkg/apt holds its lock (apt-mark has no lock timeout)

    @property
    def shown(self) -> str:
        return self.desc or self.cmd


@dataclass
class FilePut:
    """Write ``content`` to ``path`` (temp file in the same folder, then rename). ``mode`` None keeps an existing
    file's mode and owner (0644 for a new file); owner/group are set after the write when given."""
    path: str
    content: bytes
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    make_parent: bool = False
    fsync: bool = False              # on disk before the rename (state that must survive a reboot right after)
    validate: str | None = None      # a command with %s (the temp file) that must succeed before the rename
    desc: str | None = None
    counts: bool = True
    become: bool | None = None
    readonly = False
    timeout = None

    @property
    def shown(self) -> str:
        return self.desc or (f"write {self.path} ({len(self.content)} bytes"
                             + (f", mode {self.mode:04o}" if self.mode is not None else "") + ")")


@dataclass
class RebootAndWait:
    """Reboot the host and wait until it is back: the boot id differs from ``boot_id_before`` (read first when
    None) and ``test_command`` succeeds. ``announce`` runs in the same round trip as the (detached) reboot, so
    that the two happen together or not at all; ``ask=False`` only waits (a reboot asked for earlier)."""
    command: str = "systemctl reboot || reboot"
    timeout: float = 600.0
    pre_delay: float = 0.0
    post_delay: float = 0.0
    test_command: str = "whoami"
    boot_id_before: str | None = None
    ask: bool = True
    announce: str = ""
    wait_system: bool = False        # also wait (bounded) for `systemctl is-system-running --wait`
    poll: float = 2.0
    desc: str | None = None
    counts: bool = True
    become: bool | None = None
    readonly = False
    timeout_cmd = 30.0

    @property
    def shown(self) -> str:
        return self.desc or "reboot"


@dataclass
class Call:
    """A step that must look at the host as it goes (pyinfra's FunctionCommand): ``function(runner, ctx)`` runs on
    the controller during execution and issues its own command objects through ``runner.do(ctx, command)``; it
    returns a CommandResult. The rolling upgrade's states are such steps."""
    function: Callable[..., CommandResult]
    desc: str = "step"
    counts: bool = True
    become: bool | None = None
    readonly: bool = False           # True: the function only looks (it runs in check mode too)
    ok_rc = None

    @property
    def shown(self) -> str:
        return self.desc


Command = Cmd | FilePut | RebootAndWait | Call


@dataclass
class Plan:
    commands: list = field(default_factory=list)     # Command objects, run in order, stopping at a failure
    changed: bool | None = None      # default: any counted command
    diff: list[dict] = field(default_factory=list)
    msg: str = ""
    noop: str | None = None          # reason nothing needs doing
    failed: bool = False
    extra: dict = field(default_factory=dict)
    refresh_facts: tuple = ()        # fact sections stale once the commands ran (re-read before ``then``)
    skip_in_check: str | None = None  # command/shell: cannot predict, reported as skipped in check mode
    # the task's result from the commands' results (a pure function): keys of HostResult (rc, stdout, stderr,
    # msg, failed, changed, extra...) to set
    result: Callable[[Sequence[CommandResult | None]], dict] | None = None
    # the next plan, from the facts and this plan's results (None entries: not run, check mode)
    then: Callable[[Mapping, Sequence[CommandResult | None]], "Plan"] | None = None

    @property
    def is_change(self) -> bool:
        if self.changed is not None:
            return self.changed
        return any(c.counts and not c.readonly for c in self.commands)   # a look is never a change
