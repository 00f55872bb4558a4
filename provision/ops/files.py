"""copy, template, file, lineinfile: decided from one stat+content probe; contents travel as stdin of one command."""
from __future__ import annotations

import os
import re

from provision.ops.core import (Cmd, FileState, Op, OpError, Plan, as_text, attr_cmds, file_diff, owner_cmds,
                                parse_mode, parse_stat, q, stat_probe, write_file_plan)
from provision.ops.spec import ArgSpec, module

_OWNERSHIP = {"mode": ArgSpec("raw"), "owner": ArgSpec("str"), "group": ArgSpec("str")}
_VALIDATE = {"validate": ArgSpec("str")}     # a command with %s: the new content must pass it to replace the file


def find_local(src: str, ctx, kind: str) -> str:
    """A controller-side file: absolute, else ROLE/<kind>/src, ROLE/src, PLAYBOOK_DIR/<kind>/src, PLAYBOOK_DIR/src."""
    src = os.path.expanduser(str(src))
    if os.path.isabs(src):
        if os.path.exists(src):
            return src
        raise OpError(f"{src}: no such file on the controller")
    tried = []
    for base in ctx.search_paths:
        for cand in (os.path.join(base, kind, src), os.path.join(base, src)):
            tried.append(cand)
            if os.path.exists(cand):
                return cand
    raise OpError(f"{src}: not found on the controller (looked in {', '.join(tried) or 'the current folder'})")


class _Writer(Op):
    # the old content is only read for --diff: without it the checksum alone decides (and nothing shows a diff)
    def probe(self, args, ctx):
        return stat_probe(args["dest"], content=ctx.diff)

    def data(self, args, ctx) -> bytes:
        raise NotImplementedError

    def plan(self, args, facts, probe, ctx):
        st = parse_stat(probe.stdout)
        dest = args["dest"]
        if st.kind == "directory" and args.get("src"):   # into the folder, under the source's name
            dest = dest.rstrip("/") + "/" + os.path.basename(str(args["src"]))
            if dest.endswith(".j2"):
                dest = dest[:-3]
            return Plan([Cmd(stat_probe(dest, content=ctx.diff), readonly=True, counts=False, ok_rc=None)],
                        then=lambda _facts, results: self.write(args, dest, parse_stat(results[0].stdout), ctx))
        return self.write(args, dest, st, ctx)

    def write(self, args, dest: str, st: FileState, ctx) -> Plan:
        if st.kind != "absent" and args.get("force") is False:
            return Plan(noop=f"{dest} exists and force is off")
        data = self.data(args, ctx)
        return write_file_plan(dest, data, st, mode=parse_mode(args.get("mode")), owner=args.get("owner"),
                               group=args.get("group"), backup=bool(args.get("backup")), validate=args.get("validate"))


@module("copy", args={"dest": ArgSpec("path", required=True), "content": ArgSpec("raw"), "src": ArgSpec("path"),
                      "backup": ArgSpec("bool", default=False), "force": ArgSpec("bool", default=True),
                      "remote_src": ArgSpec("bool", default=False), **_OWNERSHIP, **_VALIDATE})
class Copy(_Writer):
    def plan(self, args, facts, probe, ctx):
        if not args.get("remote_src"):
            return super().plan(args, facts, probe, ctx)
        src = str(args.get("src") or "")      # a file of the host: read with one stat+content probe, then written
        if not src:
            return Plan(failed=True, msg="copy with remote_src needs src (a file on the host)")
        return Plan([Cmd(stat_probe(src), readonly=True, counts=False, ok_rc=None)],
                    then=lambda _facts, rs: self.from_host(args, src, parse_stat(probe.stdout),
                                                           parse_stat(rs[0].stdout)))

    def from_host(self, args, src: str, st: FileState, got: FileState) -> Plan:
        dest = str(args["dest"])
        if got.kind != "file":
            return Plan(failed=True, msg=f"{src} is {'absent' if got.kind == 'absent' else 'a ' + got.kind} on the "
                                         "host (remote_src copies one file)")
        if st.kind == "directory":
            return Plan(failed=True, msg=f"{dest} is a directory: give the file's path as dest with remote_src")
        if st.kind != "absent" and args.get("force") is False:
            return Plan(noop=f"{dest} exists and force is off")
        mode, owner, group = parse_mode(args.get("mode")), args.get("owner"), args.get("group")
        if got.content is not None:
            return write_file_plan(dest, got.content, st, mode=mode, owner=owner, group=group,
                                   backup=bool(args.get("backup")), validate=args.get("validate"))
        same = st.kind == "file" and st.sha256 == got.sha256     # too big to carry: the host copies it
        cmds = ([] if same else [Cmd(f"cp -- {q(src)} {q(dest)}")]) + \
            attr_cmds(dest, mode, owner, group, st if same else None)
        return Plan(cmds, extra={"dest": dest, "checksum": got.sha256}) if cmds else \
            Plan(noop=f"{dest} is up to date", extra={"dest": dest, "checksum": got.sha256})

    def data(self, args, ctx) -> bytes:
        if args.get("content") is not None:
            c = args["content"]
            if not isinstance(c, (str, bytes)):
                import json
                c = json.dumps(c, indent=2, sort_keys=True) + "\n"
            return c if isinstance(c, bytes) else str(c).encode()
        if args.get("src"):
            path = find_local(args["src"], ctx, "files")
            if os.path.isdir(path):
                raise OpError(f"{path}: copying a folder is not supported; copy its files one by one")
            with open(path, "rb") as fh:
                return fh.read()
        raise OpError("copy needs content or src")


@module("template", args={"src": ArgSpec("path", required=True), "dest": ArgSpec("path", required=True),
                          "backup": ArgSpec("bool", default=False), "force": ArgSpec("bool", default=True),
                          **_OWNERSHIP, **_VALIDATE})
class Template(_Writer):
    def data(self, args, ctx) -> bytes:
        from provision import templating
        path = find_local(args["src"], ctx, "templates")
        try:
            text = templating.render_template_file(path, ctx.vars, [os.path.join(p, "templates")
                                                                    for p in ctx.search_paths])
        except templating.TemplateError as err:
            raise OpError(f"template {args['src']}: {err}") from None
        return text.encode()


@module("file", args={"path": ArgSpec("path", required=True, aliases=("dest", "name")),
                      "state": ArgSpec("str", choices=("file", "directory", "absent", "link", "touch")),
                      "src": ArgSpec("path"), "force": ArgSpec("bool", default=False),
                      "recurse": ArgSpec("bool", default=False), **_OWNERSHIP})
class File(Op):
    def probe(self, args, ctx):
        return stat_probe(args["path"], content=args.get("state") == "absent" and ctx.diff)

    def plan(self, args, facts, probe, ctx):
        path = args["path"]
        st = parse_stat(probe.stdout)
        state = args.get("state") or ("file" if st.kind == "file" else "directory" if st.kind == "directory"
                                      else "link" if args.get("src") else "file")
        mode = parse_mode(args.get("mode"))
        owner, group = args.get("owner"), args.get("group")

        def attrs(current: FileState | None, link=False) -> list[Cmd]:
            return attr_cmds(path, mode, owner, group, current, link=link)

        def state_diff(before, after):
            return [{"before_header": path, "after_header": path, "before": f"state: {before}\n",
                     "after": f"state: {after}\n"}]

        if state == "absent":
            if st.kind == "absent":
                return Plan(noop=f"{path} is absent")
            d = [file_diff(path, st.content, None, after_absent=True)] if st.kind == "file" else \
                state_diff(st.kind, "absent")
            return Plan([Cmd(f"rm -rf -- {q(path)}")], diff=d)
        if state == "directory":
            if st.kind == "directory":
                cmds = attrs(st)
                if args.get("recurse") and (owner or group):
                    cmds = [Cmd(c.cmd.replace("chown ", "chown -R ", 1)) for c in cmds]
                return Plan(cmds, diff=state_diff("directory (attributes differ)", "directory")) if cmds else \
                    Plan(noop=f"{path} is a directory as wanted")
            if st.kind != "absent":
                return Plan(failed=True, msg=f"{path} exists and is a {st.kind}, not a directory")
            return Plan([Cmd(f"mkdir -p -- {q(path)}")] + attrs(None), diff=state_diff("absent", "directory"))
        if state == "file":
            if st.kind == "absent":
                return Plan(failed=True, msg=f"file {path} is absent, cannot continue (use state: touch to "
                                             "create it)")
            if st.kind != "file":
                return Plan(failed=True, msg=f"{path} is a {st.kind}, not a file")
            cmds = attrs(st)
            return Plan(cmds, diff=state_diff("file (attributes differ)", "file")) if cmds else \
                Plan(noop=f"{path} is as wanted")
        if state == "touch":
            if st.kind == "absent":
                return Plan([Cmd(f"touch -- {q(path)}")] + attrs(None), diff=state_diff("absent", "file"))
            cmds = attrs(st)
            return Plan(cmds, diff=state_diff(f"{st.kind} (attributes differ)", st.kind)) if cmds else \
                Plan(noop=f"{path} exists (touch does not count a new timestamp as a change)")
        # link
        src = args.get("src")
        if not src:
            return Plan(failed=True, msg="state link needs src")
        if st.kind == "link" and st.link_target == str(src):
            cmds = owner_cmds(path, owner, group, st, link=True)
            return Plan(cmds) if cmds else Plan(noop=f"{path} already links to {src}")
        if st.kind not in ("absent", "link") and not args.get("force"):
            return Plan(failed=True, msg=f"{path} exists as a {st.kind}; set force: true to replace it by a link")
        return Plan([Cmd(f"ln -sfn -- {q(str(src))} {q(path)}")] + owner_cmds(path, owner, group, None, link=True),
                    diff=state_diff(f"{st.kind}{' -> ' + st.link_target if st.link_target else ''}",
                                    f"link -> {src}"))


def edit_lines(text: str, *, line: str | None, regexp: str | None, state: str, insertafter: str | None,
               insertbefore: str | None, firstmatch: bool = False, backrefs: bool = False) -> str:
    """lineinfile's decision as a pure function: the file's new text."""
    lines = text.splitlines()
    trailing = text.endswith("\n") or not text
    rx = re.compile(regexp) if regexp else None
    if state == "absent":
        keep = [x for x in lines if not ((rx and rx.search(x)) or (not rx and x == line))]
        out = keep
    else:
        matches = [i for i, x in enumerate(lines) if rx and rx.search(x)]
        if matches:
            i = matches[0] if firstmatch else matches[-1]
            new = rx.sub(line, lines[i]) if backrefs else line
            if backrefs:
                m = rx.search(lines[i])
                new = m.expand(line) if m else lines[i]
            out = lines[:i] + [new] + lines[i + 1:]
        elif backrefs:
            out = lines
        elif line in lines:
            out = lines
        else:
            pos = len(lines)
            if insertbefore:
                if insertbefore == "BOF":
                    pos = 0
                else:
                    ib = [i for i, x in enumerate(lines) if re.search(insertbefore, x)]
                    if ib:
                        pos = ib[0] if firstmatch else ib[-1]
            elif insertafter and insertafter != "EOF":
                ia = [i for i, x in enumerate(lines) if re.search(insertafter, x)]
                if ia:
                    pos = (ia[0] if firstmatch else ia[-1]) + 1
            out = lines[:pos] + [line] + lines[pos:]
    result = "\n".join(out)
    if out and (trailing or state != "absent"):
        result += "\n"
    return result


class TextEdit(Op):
    """A text edit of one file (lineinfile, blockinfile, replace, ini_file): read its content and state with one
    probe, compute the new text (:meth:`edit`, a pure function), write it when it differs (mode/owner/group still
    applied when it does not). A missing file is created only with ``create``."""
    missing = "Path {path} does not exist !"    # the message when the file is missing and create is off

    def probe(self, args, ctx):
        return stat_probe(str(args["path"]))

    def problem(self, args) -> str | None:
        """What is wrong with the arguments together (None: nothing)."""
        return None

    def nothing_if_missing(self, args) -> bool:
        return False

    def edit(self, args, before: str) -> str:
        raise NotImplementedError

    def plan(self, args, facts, probe, ctx):
        path = str(args["path"])
        st = parse_stat(probe.stdout)
        problem = self.problem(args)
        if problem:
            return Plan(failed=True, msg=problem)
        if st.kind == "absent":
            if self.nothing_if_missing(args):
                return Plan(noop=f"{path} does not exist")
            if not args.get("create"):
                return Plan(failed=True, msg=self.missing.format(path=path))
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
                               group=args.get("group"), backup=bool(args.get("backup")) and after != before,
                               validate=args.get("validate"))
        if plan.noop:
            plan.noop = f"{path} is as wanted"
        return plan


@module("lineinfile", args={"path": ArgSpec("path", required=True, aliases=("dest", "destfile", "name")),
                            "line": ArgSpec("str", aliases=("value",)), "regexp": ArgSpec("str", aliases=("regex",)),
                            "state": ArgSpec("str", default="present", choices=("present", "absent")),
                            "insertafter": ArgSpec("str"), "insertbefore": ArgSpec("str"),
                            "create": ArgSpec("bool", default=False), "backup": ArgSpec("bool", default=False),
                            "firstmatch": ArgSpec("bool", default=False), "backrefs": ArgSpec("bool", default=False),
                            **_OWNERSHIP, **_VALIDATE})
class LineInFile(TextEdit):
    missing = "Destination {path} does not exist (set create: true)"

    def problem(self, args):
        state = args.get("state", "present")
        if state == "present" and args.get("line") is None:
            return "line is required with state=present"
        if state == "absent" and args.get("line") is None and not args.get("regexp"):
            return "one of line or regexp is required with state=absent"
        return None

    def nothing_if_missing(self, args):
        return args.get("state", "present") == "absent"

    def edit(self, args, before):
        return edit_lines(before, line=None if args.get("line") is None else str(args["line"]),
                          regexp=args.get("regexp"), state=args.get("state", "present"),
                          insertafter=args.get("insertafter"), insertbefore=args.get("insertbefore"),
                          firstmatch=bool(args.get("firstmatch")), backrefs=bool(args.get("backrefs")))
