"""blockinfile and replace: text edits of one file, decided as pure functions of its content (read by one
stat+content probe) and written through write_file_plan, as lineinfile is (diff, check mode, backup, mode/owner)."""
from __future__ import annotations

import re

from provision.ops.core import Op, Plan, as_text, parse_mode, parse_stat, stat_probe, write_file_plan
from provision.ops.spec import ArgSpec, module

_OWNERSHIP = {"mode": ArgSpec("raw"), "owner": ArgSpec("str"), "group": ArgSpec("str")}
DEFAULT_MARKER = "# {mark} ANSIBLE MANAGED BLOCK"


def edit_block(text: str, block: str, *, begin: str, end: str, present: bool, insertafter: str | None = None,
               insertbefore: str | None = None) -> str:
    """blockinfile's decision (Ansible's algorithm): the marked block replaced where its markers are, else inserted
    after the last line matching ``insertafter`` (EOF: at the end, the default) or before the last line matching
    ``insertbefore`` (BOF: at the start); a regexp that matches nothing puts it at the end. An absent ``present``
    or an empty block removes it."""
    lines = text.splitlines()
    n0 = n1 = None
    for i, line in enumerate(lines):
        if line == begin:
            n0 = i
        if line == end:
            n1 = i
    blocklines = [begin, *block.splitlines(), end] if present and block else []
    if n0 is None or n1 is None:
        n0 = len(lines)
        if insertbefore == "BOF":
            n0 = 0
        elif insertbefore or (insertafter and insertafter != "EOF"):
            rx = re.compile(insertbefore or insertafter)
            hits = [i for i, line in enumerate(lines) if rx.search(line)]
            if hits:
                n0 = hits[-1] + (0 if insertbefore else 1)
    elif n0 < n1:
        del lines[n0:n1 + 1]
    else:
        del lines[n1:n0 + 1]
        n0 = n1
    lines[n0:n0] = blocklines
    return "\n".join(lines) + ("\n" if lines else "")


def edit_replace(text: str, regexp: str, replacement: str, *, after: str | None = None,
                 before: str | None = None) -> tuple[str, int]:
    """replace's decision: every match of ``regexp`` (multiline) between the first match of ``after`` and the
    first match of ``before`` replaced (backreferences as Python's re.sub) -> (new text, count)."""
    start, stop = 0, len(text)
    if after:
        m = re.search(after, text, re.MULTILINE)
        start = m.end() if m else stop
    if before:
        m = re.search(before, text[start:], re.MULTILINE)
        stop = start + m.start() if m else stop
    new, count = re.subn(regexp, replacement, text[start:stop], flags=re.MULTILINE)
    return text[:start] + new + text[stop:], count


class _TextEdit(Op):
    """Read the file (content and state), compute its new text, write it when different."""

    def probe(self, args, ctx):
        return stat_probe(str(args["path"]))

    def edit(self, args, before: str) -> str:
        raise NotImplementedError

    def plan(self, args, facts, probe, ctx):
        path = str(args["path"])
        st = parse_stat(probe.stdout)
        if st.kind == "absent":
            if not args.get("create"):
                return Plan(failed=True, msg=f"Path {path} does not exist !")
            before = ""
        elif st.kind != "file":
            return Plan(failed=True, msg=f"{path} is a {st.kind}")
        else:
            before = as_text(st.content)
            if before is None:
                return Plan(failed=True, msg=f"{path} is binary or larger than the editing limit")
        try:
            after = self.edit(args, before)
        except re.error as err:
            return Plan(failed=True, msg=f"bad regular expression: {err}")
        if st.kind == "absent" and not after:
            return Plan(noop=f"{path}: nothing to write")
        plan = write_file_plan(path, after.encode(), st, mode=parse_mode(args.get("mode")), owner=args.get("owner"),
                               group=args.get("group"), backup=bool(args.get("backup")) and after != before)
        if plan.noop:
            plan.noop = f"{path} is as wanted"
        return plan


@module("blockinfile", args={
    "path": ArgSpec("path", required=True, aliases=("dest", "destfile", "name")),
    "block": ArgSpec("str", default="", aliases=("content",)),
    "marker": ArgSpec("str", default=DEFAULT_MARKER), "marker_begin": ArgSpec("str", default="BEGIN"),
    "marker_end": ArgSpec("str", default="END"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "insertafter": ArgSpec("str"), "insertbefore": ArgSpec("str"),
    "create": ArgSpec("bool", default=False), "backup": ArgSpec("bool", default=False), **_OWNERSHIP,
})
class BlockInFile(_TextEdit):
    def edit(self, args, before: str) -> str:
        marker = str(args.get("marker") or DEFAULT_MARKER)
        return edit_block(before, str(args.get("block") or ""),
                          begin=marker.replace("{mark}", str(args.get("marker_begin") or "BEGIN")),
                          end=marker.replace("{mark}", str(args.get("marker_end") or "END")),
                          present=args.get("state", "present") == "present", insertafter=args.get("insertafter"),
                          insertbefore=args.get("insertbefore"))


@module("replace", args={
    "path": ArgSpec("path", required=True, aliases=("dest", "destfile", "name")),
    "regexp": ArgSpec("str", required=True), "replace": ArgSpec("str", default=""),
    "after": ArgSpec("str"), "before": ArgSpec("str"), "backup": ArgSpec("bool", default=False),
    "encoding": ArgSpec("str", default="utf-8", choices=("utf-8",)), **_OWNERSHIP,
})
class Replace(_TextEdit):
    def edit(self, args, before: str) -> str:
        return edit_replace(before, str(args["regexp"]), str(args.get("replace") or ""), after=args.get("after"),
                            before=args.get("before"))[0]
