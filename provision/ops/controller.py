"""Modules that run on the controller only: debug, set_fact, assert, fail, meta. No connection is used."""
from __future__ import annotations

import json

from provision.ops.core import Op
from provision.ops.spec import ArgSpec, module
from provision.results import HostResult


def _tmpl():
    from provision import templating
    return templating


@module("debug", runs_on_controller=True, args={"msg": ArgSpec("raw"), "var": ArgSpec("str"),
                                                 "verbosity": ArgSpec("int", default=0)})
class Debug(Op):
    controller = True
    raw_args = ("var",)

    def run(self, args, ctx) -> HostResult:
        if args.get("var"):
            name = str(args["var"])
            try:
                value = _tmpl().evaluate(name, ctx.vars)
            except Exception as err:  # noqa: BLE001
                value = f"VARIABLE IS NOT DEFINED! ({err})"
            return HostResult(ctx.host, extra={name: value}, show={name: value})
        msg = args.get("msg", "Hello world!")
        return HostResult(ctx.host, msg=msg if isinstance(msg, str) else json.dumps(msg, default=str),
                          show={"msg": msg})


@module("set_fact", runs_on_controller=True, free_form=True, args={"cacheable": ArgSpec("bool", default=False)})
class SetFact(Op):
    """Any key is a fact name (the loader accepts any argument for set_fact)."""
    controller = True

    def run(self, args, ctx) -> HostResult:
        facts = {k: v for k, v in args.items() if k not in ("cacheable", "_raw_params")}
        return HostResult(ctx.host, extra={"ansible_facts": facts})


@module("assert", runs_on_controller=True, args={
    "that": ArgSpec("list", required=True), "fail_msg": ArgSpec("str", aliases=("msg",)),
    "success_msg": ArgSpec("str"), "quiet": ArgSpec("bool", default=False)})
class Assert(Op):
    controller = True
    raw_args = ("that",)

    def run(self, args, ctx) -> HostResult:
        for cond in args.get("that") or []:
            try:
                ok = _tmpl().evaluate(cond, ctx.vars)
            except Exception as err:  # noqa: BLE001
                return HostResult(ctx.host, failed=True, msg=f"assertion {cond!r} could not be evaluated: {err}")
            if not ok:
                return HostResult(ctx.host, failed=True, msg=args.get("fail_msg") or f"Assertion failed: {cond}",
                                  extra={"assertion": cond, "evaluated_to": False})
        return HostResult(ctx.host, msg=args.get("success_msg") or "All assertions passed")


@module("fail", runs_on_controller=True, args={"msg": ArgSpec("str", default="Failed as requested from task")})
class Fail(Op):
    controller = True

    def run(self, args, ctx) -> HostResult:
        return HostResult(ctx.host, failed=True, msg=str(args.get("msg") or "Failed as requested from task"))


META_ACTIONS = ("flush_handlers", "noop", "end_play", "end_host", "clear_facts", "refresh_inventory",
                "reset_connection")


@module("meta", runs_on_controller=True, free_form=True, args={"_raw_params": ArgSpec("str", choices=META_ACTIONS)})
class Meta(Op):
    """Handled by the executor (flush_handlers, end_play, end_host, noop)."""
    controller = True

    def run(self, args, ctx) -> HostResult:
        return HostResult(ctx.host, skipped=True, msg=f"meta: {args.get('_raw_params')}")


@module("include_vars", runs_on_controller=True, free_form=True, args={
    "file": ArgSpec("path"), "dir": ArgSpec("path"), "name": ArgSpec("str"), "depth": ArgSpec("int", default=0),
    "files_matching": ArgSpec("str"), "ignore_files": ArgSpec("list", default=[]),
    "extensions": ArgSpec("list", default=["yaml", "yml", "json"]),
    "ignore_unknown_extensions": ArgSpec("bool", default=False),
    "hash_behaviour": ArgSpec("str", choices=("replace",)),     # merge: not supported
})
class IncludeVars(Op):
    """Variables from YAML/JSON files on the controller (a file, or every file of a folder in name order, ``depth``
    levels deep), found as Ansible finds them: absolute, else the role's vars/, the role, the playbook's vars/, the
    playbook's folder. They become the host's variables (as set_fact's), under ``name`` when given."""
    controller = True

    def run(self, args, ctx) -> HostResult:
        import os
        import re
        from provision.errors import InputError
        from provision.ops.core import OpError
        from provision.ops.files import find_local
        from provision.yamlsrc import load, plain
        src = args.get("file") or args.get("_raw_params")
        try:
            if bool(src) == bool(args.get("dir")):
                raise OpError("include_vars takes a file (or free-form file name) or dir, one of them")
            if src:
                files = [find_local(str(src), ctx, "vars")]
            else:
                top = find_local(str(args["dir"]), ctx, "vars")
                exts = tuple(f".{e.lstrip('.')}" for e in args.get("extensions") or ())
                match = re.compile(args["files_matching"]) if args.get("files_matching") else None
                depth = int(args.get("depth") or 0)
                files = []
                for root, dirs, names in os.walk(top):
                    dirs.sort()
                    level = root[len(top):].count(os.sep)    # depth 1: the folder's own files only
                    if depth and level + 1 >= depth:
                        dirs[:] = []
                    for n in sorted(names):
                        if n in (args.get("ignore_files") or []) or (match and not match.search(n)):
                            continue
                        if not n.endswith(exts):
                            if args.get("ignore_unknown_extensions"):
                                continue
                            raise OpError(f"{os.path.join(root, n)}: not a vars file ({', '.join(exts)})")
                        files.append(os.path.join(root, n))
            merged: dict = {}
            for path in files:
                data = plain(load(path, what="vars file"))
                if data is None:
                    continue
                if not isinstance(data, dict):
                    raise OpError(f"{path}: a vars file must hold a mapping")
                merged.update(data)
        except (OpError, InputError) as err:
            return HostResult(ctx.host, failed=True, msg=str(err))
        facts = {str(args["name"]): merged} if args.get("name") else merged
        return HostResult(ctx.host, extra={"ansible_facts": facts, "ansible_included_var_files": files})


@module("pause", runs_on_controller=True, args={"seconds": ArgSpec("int"), "minutes": ArgSpec("int"),
                                                 "prompt": ArgSpec("str"), "echo": ArgSpec("bool", default=True)})
class Pause(Op):
    """Wait on the controller (also in check mode, as Ansible). A prompt needs someone at a terminal: refused."""
    controller = True

    def run(self, args, ctx) -> HostResult:
        import time
        if args.get("prompt") is not None or (args.get("seconds") is None and args.get("minutes") is None):
            return HostResult(ctx.host, failed=True, msg="pause: only seconds/minutes are supported (a prompt needs "
                                                          "a terminal; provision runs unattended)")
        secs = int(args.get("seconds") or 0) + 60 * int(args.get("minutes") or 0)
        start = time.monotonic()
        time.sleep(max(0, secs))
        return HostResult(ctx.host, extra={"delta": int(time.monotonic() - start), "echo": args.get("echo", True)},
                          msg=f"Paused for {secs} seconds")
