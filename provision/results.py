"""Results of tasks per host, the registered-variable shape (as Ansible's), and the recap counters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK, CHANGED, FAILED, SKIPPED, UNREACHABLE = "ok", "changed", "failed", "skipped", "unreachable"


# The message of a task skipped because its `when` was false (Ansible's wording).
SKIPPED_BY_WHEN = "Conditional result was False"


@dataclass
class HostResult:
    host: str
    task: str = ""
    changed: bool = False
    failed: bool = False
    skipped: bool = False
    unreachable: bool = False
    ignored: bool = False          # failed but ignore_errors
    msg: str = ""
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    diff: list[dict] = field(default_factory=list)   # [{"before","after","before_header","after_header"}]
    results: list["HostResult"] = field(default_factory=list)   # loop items
    item: Any = None
    commands: list[str] = field(default_factory=list)   # what ran (or would run in check mode)
    extra: dict = field(default_factory=dict)            # module-specific keys for register (e.g. ansible_facts)
    no_log: bool = False
    duration: float = 0.0
    show: dict | None = None       # what the live line shows after "=>" without -v (debug's msg/var)

    @property
    def status(self) -> str:
        if self.unreachable:
            return UNREACHABLE
        if self.failed:
            return FAILED
        if self.skipped:
            return SKIPPED
        return CHANGED if self.changed else OK

    def registered(self) -> dict:
        """The dict a `register:` variable holds (Ansible's shape)."""
        if self.no_log:
            d = {"changed": self.changed, "failed": self.failed, "skipped": self.skipped,
                 "censored": "the output has been hidden due to the fact that 'no_log: true' was specified"}
            if self.results:
                d["results"] = [r.registered() for r in self.results]
            return d
        d: dict[str, Any] = {"changed": self.changed, "failed": self.failed, "skipped": self.skipped,
                             "msg": self.msg}
        if self.unreachable:
            d["unreachable"] = True
        if self.rc is not None:
            d["rc"] = self.rc
        if self.rc is not None or self.stdout or self.stderr:
            d.update(stdout=self.stdout, stdout_lines=self.stdout.splitlines(), stderr=self.stderr,
                     stderr_lines=self.stderr.splitlines())
        if self.results:
            d["results"] = [r.registered() for r in self.results]
        if self.item is not None:
            d["item"] = self.item
        d.update(self.extra)
        return d


@dataclass
class Recap:
    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    def add(self, r: HostResult) -> None:
        if r.unreachable:
            self.unreachable += 1
        elif r.failed and r.ignored:   # as Ansible: an ignored failure counts as ok and ignored
            self.ok += 1
            self.ignored += 1
        elif r.failed:
            self.failed += 1
        elif r.skipped:
            self.skipped += 1
        else:
            self.ok += 1
            if r.changed:
                self.changed += 1

    def as_dict(self) -> dict:
        return dict(ok=self.ok, changed=self.changed, unreachable=self.unreachable, failed=self.failed,
                    skipped=self.skipped, rescued=self.rescued, ignored=self.ignored)


@dataclass
class RunStats:
    recap: dict[str, Recap] = field(default_factory=dict)
    failed_hosts: set = field(default_factory=set)
    unreachable_hosts: set = field(default_factory=set)
    peak_connections: int = 0
    connections_opened: int = 0

    def host(self, name: str) -> Recap:
        return self.recap.setdefault(name, Recap())

    def exit_code(self) -> int:
        from provision.errors import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
        if self.failed_hosts:
            return EXIT_FAILED
        if self.unreachable_hosts:
            return EXIT_UNREACHABLE
        return EXIT_OK
