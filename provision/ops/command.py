"""command and shell (alias raw): run a command; `creates`/`removes` make it idempotent; skipped in check mode
otherwise."""
from __future__ import annotations

import shlex

from provision.ops.core import Cmd, Op, OpError, Plan, q
from provision.ops.spec import ArgSpec, module

_ARGS = {
    "_raw_params": ArgSpec("str"),
    "cmd": ArgSpec("str"),
    "argv": ArgSpec("list"),
    "chdir": ArgSpec("path"),
    "creates": ArgSpec("path"),
    "removes": ArgSpec("path"),
    "stdin": ArgSpec("str"),
    "stdin_add_newline": ArgSpec("bool", default=True),
    "executable": ArgSpec("path"),
    "strip_empty_ends": ArgSpec("bool", default=True),
}


class _Command(Op):
    shell = False

    def command_line(self, args: dict) -> str:
        raw = args.get("cmd") or args.get("_raw_params")
        if args.get("argv"):
            line = " ".join(q(str(a)) for a in args["argv"])
        elif raw:
            raw = str(raw)
            if self.shell:
                line = raw
                if args.get("executable"):
                    line = f"{q(args['executable'])} -c {q(raw)}"
            else:  # no shell semantics: each word is passed as it is, as Ansible's command module does
                try:
                    line = " ".join(q(w) for w in shlex.split(raw))
                except ValueError as err:
                    raise OpError(f"cannot split the command line: {err}") from None
        else:
            raise OpError("no command given (free-form text, cmd or argv)")
        if args.get("chdir"):
            line = f"cd -- {q(args['chdir'])} && {line}"
        return line

    def probe(self, args, ctx):
        tests = []
        if args.get("creates"):
            tests.append(f"[ -e {q(args['creates'])} ] && echo creates-exists")
        if args.get("removes"):
            tests.append(f"[ -e {q(args['removes'])} ] || echo removes-missing")
        return "; ".join(tests) + "; true" if tests else None

    def plan(self, args, facts, probe, ctx):
        line = self.command_line(args)
        out = probe.stdout if probe else ""
        if "creates-exists" in out:
            return Plan(noop=f"skipped, since {args['creates']} exists", extra={"cmd": line, "rc": 0})
        if "removes-missing" in out:
            return Plan(noop=f"skipped, since {args['removes']} does not exist", extra={"cmd": line, "rc": 0})
        stdin = args.get("stdin")
        data = None
        if stdin is not None:
            data = (str(stdin) + ("\n" if args.get("stdin_add_newline", True) else "")).encode()
        strip = args.get("strip_empty_ends", True)

        def result(results) -> dict:
            res = results[0]
            if res is None:      # check mode: not run
                return {}
            return {"rc": res.rc, "stdout": res.stdout.rstrip("\n") if strip else res.stdout,
                    "stderr": res.stderr.rstrip("\n") if strip else res.stderr, "duration": res.duration,
                    "extra": {"delta": f"{res.duration:.3f}"}, "failed": res.rc != 0,
                    "msg": "non-zero return code" if res.rc != 0 else ""}
        cmd = Cmd(line, stdin=data, ok_rc=None)
        if args.get("creates") or args.get("removes"):   # as Ansible: predictable, so reported as a change
            return Plan([cmd], msg="Command would have run if not in check mode" if ctx.check else "",
                        extra={"cmd": line}, result=result)
        return Plan([cmd], skip_in_check="skipped: command tasks do not run in check mode", extra={"cmd": line},
                    result=result)


@module("command", args=_ARGS, free_form=True)
class Command(_Command):
    shell = False


@module("shell", args=_ARGS, free_form=True, aliases=("raw",))   # raw: a shell line, no module on the host
class Shell(_Command):
    shell = True
