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
