"""command and shell: run a command; `creates`/`removes` make it idempotent; skipped in check mode otherwise."""
from __future__ import annotations

import shlex

from provision.ops.core import Cmd, Op, OpError, Plan, execute_plan, q
from provision.ops.spec import ArgSpec, module
from provision.results import HostResult

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
            line = f"cd {q(args['chdir'])} && {line}"
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
        if args.get("creates") or args.get("removes"):   # as Ansible: predictable, so reported as a change
            return Plan([Cmd(line, stdin=data)], msg="Command would have run if not in check mode" if ctx.check
                        else "", extra={"cmd": line})
        return Plan([Cmd(line, stdin=data)], skip_in_check="skipped: command tasks do not run in check mode",
                    extra={"cmd": line})

    def run(self, args, ctx) -> HostResult:
        probe_cmd = self.probe(args, ctx)
        probe = ctx.probe(probe_cmd) if probe_cmd else None
        plan = self.plan(args, ctx.facts, probe, ctx)
        if plan.noop is not None or ctx.check:
            return execute_plan(plan, ctx)
        c = plan.commands[0]
        res = ctx.run(c.cmd, stdin=c.stdin)
        strip = args.get("strip_empty_ends", True)
        r = HostResult(ctx.host, changed=True, rc=res.rc, stdout=res.stdout.rstrip("\n") if strip else res.stdout,
                       stderr=res.stderr.rstrip("\n") if strip else res.stderr, commands=[c.cmd],
                       extra={"cmd": c.cmd, "delta": f"{res.duration:.3f}"}, duration=res.duration)
        if res.rc != 0:
            r.failed = True
            r.msg = "non-zero return code"
        return r


@module("command", args=_ARGS, free_form=True)
class Command(_Command):
    shell = False


@module("shell", args=_ARGS, free_form=True)
class Shell(_Command):
    shell = True
