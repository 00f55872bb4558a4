"""The Ansible compatibility suite: how much of real roles gpufleet loads, task by task.

Given folders holding Ansible roles (a folder with tasks/ is a role; a folder of roles is searched one level down)
and playbooks, it counts every task (inside blocks, rescue and always too; handlers included) and asks gpufleet's
own playbook loader about each one: the constructs it refuses (an unknown module, an unsupported keyword, a
templated include...) are that task's blockers. A block's blockers count against every task it holds. Then each
role is loaded whole, as ``--syntax-check`` does (a one-play playbook applying the role, through
``load_playbook``). The roles' code is only read, never copied: keep the checkouts outside the repository.

    python3 -m bench.compat /tmp/compat-roles [--json OUT.json] [--markdown]

Prints one line per role and the blockers ranked by tasks; ``--markdown`` prints the table docs/ansible-compat.md
holds.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field

from provision import ansiblecfg, yamlsrc
from provision.errors import InputError
from provision.playbook import load_playbook
from provision.playbook.compat import _FAMILY_OF
from provision.playbook.fields import BLOCK_KEYS, HANDLER_KEYS, IMPORT_KEYS, TASK_KEYS
from provision.playbook.loader import _Loader
from provision.playbook.tasks import _Ctx
from provision.yamlsrc import LineDict, LineList, SourcePos

KEYWORDS = set(TASK_KEYS) | set(HANDLER_KEYS) | set(BLOCK_KEYS) | set(IMPORT_KEYS) | {
    "delegate_to", "local_action", "action", "run_once", "async", "poll", "throttle", "any_errors_fatal",
    "with_items", "with_first_found", "with_fileglob", "with_together", "with_nested", "with_subelements",
    "with_sequence", "with_indexed_items", "with_flattened", "with_random_choice", "loop_control", "collections",
    "debugger", "diff", "timeout", "module_defaults", "connection", "remote_user", "port", "delegate_facts"}


@dataclass
class TaskReport:
    file: str
    line: int
    name: str
    module: str
    blockers: list[str] = field(default_factory=list)


@dataclass
class RoleReport:
    name: str
    path: str
    tasks: list[TaskReport] = field(default_factory=list)
    syntax_check: str = "not run"      # "ok" or the first error, as the loader reports it

    @property
    def blocked(self) -> int:
        return sum(1 for t in self.tasks if t.blockers)

    @property
    def other_family(self) -> int:
        """Blocked tasks whose only blockers are another OS family's modules (yum on a RedHat branch...): they
        fail nothing on the Debian family, where gpufleet runs."""
        return sum(1 for t in self.tasks if t.blockers and all(b.endswith(" family)") for b in t.blockers))


def _category(err: InputError, path: str) -> str:
    """A short name for what the loader refused."""
    msg = err.message
    if msg.startswith("unknown module") or msg.startswith("unknown task key") and err.key:
        return f"module {err.key}" if msg.startswith("unknown module") else f"keyword {err.key}"
    if err.key and ("not supported" in msg or "is a play key" in msg or "write the module name" in msg):
        return f"keyword {err.key}"
    return f"{err.key}: {msg}" if err.key else msg


def _module_of(item: dict) -> str:
    mods = [k for k in item if k not in KEYWORDS and not str(k).startswith("with_")]
    return str(mods[0]) if mods else ""


class Scanner:
    def __init__(self) -> None:
        self.roles_path: tuple[str, ...] = ()      # the scanned folder's ansible.cfg roles_path
        self.loader = _Loader(os.path.join(tempfile.gettempdir(), "compat-playbook.yml"))
        self.top = os.getcwd()     # task files are shown relative to the folder scanned

    def check(self, item: LineDict, pos: SourcePos, ctx: _Ctx) -> list[str]:
        """The loader's verdict on one task, block (its own keys) or include (not the file it includes): what it
        refuses (an InputError) or loads as unsupported (a module gpufleet lacks: it would fail the hosts that
        reach it)."""
        try:
            tasks = self.loader._task_or_block(item, pos, ctx)
        except InputError as err:
            if err.file and os.path.abspath(err.file) != os.path.abspath(ctx.file):
                return []      # a problem inside an imported file: that file's own tasks count it
            return [_category(err, ctx.file)]
        out = []
        for t in tasks if "block" not in item else ():
            if getattr(t, "unsupported", None):
                family = _FAMILY_OF.get(t.module.rsplit(".", 1)[-1])
                out.append(f"module {t.module}" + (f" ({family} family)" if family else ""))
        return out

    def walk(self, items, ctx: _Ctx, inherited: list[str], out: list[TaskReport]) -> None:
        if not isinstance(items, list):
            return
        for i, item in enumerate(items):
            pos = items.pos(i) if isinstance(items, LineList) else SourcePos(ctx.file, 0)
            if not isinstance(item, dict):
                out.append(TaskReport(ctx.file, pos.line, "", "", ["not a mapping"]))
                continue
            if any(k in item for k in ("block", "rescue", "always")):
                shell = LineDict({k: ([] if k in ("block", "rescue", "always") else v) for k, v in item.items()})
                shell.file, shell.line, shell.key_lines = item.file, item.line, item.key_lines
                own = self.check(shell, pos, ctx)
                for k in ("block", "rescue", "always"):
                    self.walk(item.get(k), ctx, inherited + own, out)
                continue
            blockers = list(inherited) + self.check(item, pos, ctx)
            out.append(TaskReport(os.path.relpath(ctx.file, self.top), pos.line, str(item.get("name") or ""),
                                  _module_of(item), blockers))

    def task_file(self, path: str, ctx: _Ctx, out: list[TaskReport]) -> None:
        try:
            data = yamlsrc.load(path, what="task file")
        except InputError as err:
            out.append(TaskReport(os.path.relpath(path, self.top), err.line or 0, "", "", [f"yaml: {err.message}"]))
            return
        self.walk(data, _Ctx(file=path, playbook_dir=ctx.playbook_dir, base_dir=os.path.dirname(path),
                             role=ctx.role, role_path=ctx.role_path, handler=ctx.handler), [], out)

    def role(self, path: str) -> RoleReport:
        name = os.path.basename(os.path.abspath(path))
        rep = RoleReport(name, path)
        # the roles it includes are found beside it and on the roles_path, as when a playbook applies it
        self.loader = _Loader(os.path.join(os.path.dirname(os.path.abspath(path)), "compat.yml"), self.roles_path)
        self.loader.role_dirs.append(os.path.abspath(path))
        for sub, handler in (("tasks", False), ("handlers", True)):
            base = os.path.join(path, sub)
            for root, dirs, files in os.walk(base, followlinks=True):
                dirs.sort()
                for f in sorted(files):
                    if f.endswith((".yml", ".yaml")):
                        ctx = _Ctx(file="", playbook_dir=os.path.dirname(path), base_dir=root, role=name,
                                   role_path=path, handler=handler)
                        self.task_file(os.path.join(root, f), ctx, rep.tasks)
        rep.syntax_check = syntax_check(path, self.roles_path)
        return rep

    def playbook(self, path: str) -> RoleReport | None:
        """A playbook's own tasks (its roles are scanned as roles)."""
        try:
            data = yamlsrc.load(path, what="playbook")
        except InputError:
            return None
        if not isinstance(data, list) or not all(isinstance(p, dict) for p in data) or \
                not any("hosts" in p or "import_playbook" in p for p in data):
            return None
        rep = RoleReport(os.path.relpath(path, self.top), path)
        self.loader = _Loader(path, self.roles_path)     # its roles are found as the playbook finds them
        for play in data:
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                ctx = _Ctx(file=path, playbook_dir=os.path.dirname(path), base_dir=os.path.dirname(path),
                           handler=key == "handlers")
                self.walk(play.get(key), ctx, [], rep.tasks)
        try:
            load_playbook(path, self.roles_path)
            rep.syntax_check = "ok"
        except InputError as err:
            rep.syntax_check = str(err)
        return rep


def syntax_check(role_path: str, roles_path: tuple[str, ...] = ()) -> str:
    """Load the role whole, as ``--syntax-check`` does: a one-play playbook beside a roles/ link to it."""
    with tempfile.TemporaryDirectory(prefix="compat-") as d:
        os.mkdir(os.path.join(d, "roles"))
        name = os.path.basename(os.path.abspath(role_path))
        os.symlink(os.path.abspath(role_path), os.path.join(d, "roles", name))
        site = os.path.join(d, "site.yml")
        with open(site, "w") as fh:
            fh.write(f"- hosts: all\n  roles:\n    - {name}\n")
        try:
            load_playbook(site, roles_path)
            return "ok"
        except InputError as err:
            return str(err).replace(os.path.abspath(role_path), name).replace(d + "/", "")


def find_sources(top: str) -> tuple[list[str], list[str]]:
    """(roles, playbooks) under ``top``: a folder with tasks/ is a role; molecule/ and tests/ folders are left out."""
    roles, books = [], []
    for root, dirs, files in os.walk(top, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("molecule", "tests"))
        if os.path.isdir(os.path.join(root, "tasks")) and os.path.basename(root) not in ("tasks", "handlers"):
            roles.append(root)
            dirs[:] = []
            continue
        books += [os.path.join(root, f) for f in sorted(files) if f.endswith((".yml", ".yaml"))]
    return roles, books


def scan(tops: list[str]) -> list[RoleReport]:
    s = Scanner()
    out = []
    for top in tops:
        s.top = os.path.abspath(top)
        s.roles_path = ansiblecfg.load(env={}, cwd=s.top).roles_path
        roles, books = find_sources(top)
        out += [s.role(r) for r in roles]
        out += [r for r in (s.playbook(b) for b in books) if r is not None and r.tasks]
    return out


def summary(reports: list[RoleReport]) -> dict:
    tasks = sum(len(r.tasks) for r in reports)
    blocked = sum(r.blocked for r in reports)
    ranked = collections.Counter(b for r in reports for t in r.tasks for b in set(t.blockers))
    other = sum(r.other_family for r in reports)
    return {"roles": len(reports), "tasks": tasks, "blocked": blocked, "other_family": other,
            "free_pct": round(100.0 * (tasks - blocked) / tasks, 1) if tasks else 100.0,
            "free_debian_pct": round(100.0 * (tasks - blocked + other) / tasks, 1) if tasks else 100.0,
            "clean_roles": sum(1 for r in reports if not r.blocked),
            "syntax_ok": sum(1 for r in reports if r.syntax_check == "ok"), "blockers": ranked.most_common()}


def markdown(reports: list[RoleReport]) -> str:
    lines = ["| role / playbook | tasks | blocked | of which other OS family | syntax-check | what blocks (tasks) |",
             "|---|---:|---:|---:|---|---|"]
    for r in reports:
        what = collections.Counter(b for t in r.tasks for b in set(t.blockers))
        shown = "; ".join(f"{b} ({n})" for b, n in what.most_common()) or "-"
        syn = "ok" if r.syntax_check == "ok" else f"fails: {r.syntax_check}"
        lines.append(f"| {r.name} | {len(r.tasks)} | {r.blocked} | {r.other_family} | {syn.replace('|', '/')} | "
                     f"{shown.replace('|', '/')} |")
    s = summary(reports)
    lines.append(f"| **all** | {s['tasks']} | {s['blocked']} | {s['other_family']} | {s['syntax_ok']}/{s['roles']} "
                 f"ok | {s['free_pct']}% of tasks free of blockers; {s['free_debian_pct']}% on the Debian family |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--json", help="write every task's verdict here")
    ap.add_argument("--markdown", action="store_true", help="print the table of docs/ansible-compat.md")
    ap.add_argument("--tasks", action="store_true", help="also print each blocked task")
    a = ap.parse_args(argv)
    reports = scan(a.folders)
    if a.markdown:
        sys.stdout.write(markdown(reports))
    else:
        for r in reports:
            print(f"{r.name}: {len(r.tasks)} tasks, {r.blocked} blocked; syntax-check: {r.syntax_check}")
            if a.tasks:
                for t in r.tasks:
                    if t.blockers:
                        print(f"    {t.file}:{t.line} {t.module or '-'}: {'; '.join(t.blockers)}")
        s = summary(reports)
        print(f"all: {s['tasks']} tasks in {s['roles']} roles/playbooks, {s['blocked']} blocked "
              f"({s['free_pct']}% free; {s['other_family']} only another OS family's: {s['free_debian_pct']}% free "
              f"on the Debian family), {s['clean_roles']} clean, syntax-check ok {s['syntax_ok']}")
        for b, n in s["blockers"]:
            print(f"  {n:4d}  {b}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"summary": summary(reports), "roles": [{**asdict(r), "blocked": r.blocked} for r in reports]},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
