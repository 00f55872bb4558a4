"""blockinfile, replace and ini_file: text edits of one file, decided as pure functions of its content (read by one
stat+content probe) and written through write_file_plan, as lineinfile is (diff, check mode, backup, mode/owner)."""
from __future__ import annotations

import re

from provision.ops.files import _OWNERSHIP, _VALIDATE, TextEdit
from provision.ops.spec import ArgSpec, module

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


@module("blockinfile", args={
    "path": ArgSpec("path", required=True, aliases=("dest", "destfile", "name")),
    "block": ArgSpec("str", default="", aliases=("content",)),
    "marker": ArgSpec("str", default=DEFAULT_MARKER), "marker_begin": ArgSpec("str", default="BEGIN"),
    "marker_end": ArgSpec("str", default="END"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "insertafter": ArgSpec("str"), "insertbefore": ArgSpec("str"),
    "create": ArgSpec("bool", default=False), "backup": ArgSpec("bool", default=False), **_OWNERSHIP, **_VALIDATE,
})
class BlockInFile(TextEdit):
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
    "encoding": ArgSpec("str", default="utf-8", choices=("utf-8",)), **_OWNERSHIP, **_VALIDATE,
})
class Replace(TextEdit):
    def edit(self, args, before: str) -> str:
        return edit_replace(before, str(args["regexp"]), str(args.get("replace") or ""), after=args.get("after"),
                            before=args.get("before"))[0]


_SECTION = re.compile(r"^\s*\[([^\]]*)\]\s*$")


def edit_ini(text: str, section: str | None, option: str | None, value: str | None, *, present: bool,
             spaces: bool = True, allow_no_value: bool = False, exclusive: bool = True) -> str:
    """ini_file's decision: ``option = value`` set (or removed) in ``section`` (None: before the first section);
    ``present`` without an option only makes sure the section exists; absent without an option removes the
    section. The first setting of the option is replaced, the others removed (``exclusive``)."""
    lines = text.splitlines()
    start, end = 0, len(lines)        # the section's body: lines[start:end]
    found = section is None
    if section is None:
        end = next((i for i, line in enumerate(lines) if _SECTION.match(line)), len(lines))
    else:
        for i, line in enumerate(lines):
            m = _SECTION.match(line)
            if m and not found and m.group(1).strip() == section:
                found, start, end = True, i + 1, len(lines)
            elif m and found and i >= start:
                end = i
                break
    if not present and option is None:
        if found and section is not None:
            del lines[start - 1:end]
        return "\n".join(lines) + ("\n" if lines else "")
    rx = re.compile(rf"^\s*[#;]?\s*{re.escape(option)}\s*(=|$)") if option else None
    want = None
    if option is not None:
        sep = "=" if not spaces else " = "
        want = option if value is None and allow_no_value else f"{option}{sep}{'' if value is None else value}"
    if not found:
        if present:
            if lines and lines[-1].strip():
                lines.append("")
            lines += [f"[{section}]"] + ([want] if want is not None else [])
        return "\n".join(lines) + ("\n" if lines else "")
    body = lines[start:end]
    hits = [i for i, line in enumerate(body) if rx and rx.match(line) and not line.lstrip().startswith(("#", ";"))]
    if not present:
        body = [line for i, line in enumerate(body) if i not in hits]
    elif want is not None:
        if hits:
            body[hits[0]] = want
            if exclusive:
                body = [line for i, line in enumerate(body) if i not in hits[1:]]
        else:
            last = max([i for i, line in enumerate(body) if line.strip()] or [-1])
            body.insert(last + 1, want)
    lines[start:end] = body
    return "\n".join(lines) + ("\n" if lines else "")


@module("ini_file", args={
    "path": ArgSpec("path", required=True, aliases=("dest",)), "section": ArgSpec("str"),
    "option": ArgSpec("str", aliases=("key",)), "value": ArgSpec("str"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "no_extra_spaces": ArgSpec("bool", default=False), "allow_no_value": ArgSpec("bool", default=False),
    "exclusive": ArgSpec("bool", default=True), "create": ArgSpec("bool", default=True),
    "backup": ArgSpec("bool", default=False), **_OWNERSHIP,
})
class IniFile(TextEdit):
    def edit(self, args, before: str) -> str:
        return edit_ini(before, args.get("section"), args.get("option"), args.get("value"),
                        present=args.get("state", "present") == "present", spaces=not args.get("no_extra_spaces"),
                        allow_no_value=bool(args.get("allow_no_value")), exclusive=args.get("exclusive", True))
