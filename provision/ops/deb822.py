"""deb822_repository: a repository in its own /etc/apt/sources.list.d/NAME.sources, as Ansible's module writes it.
``signed_by`` a url or an armored key: the key goes to /etc/apt/keyrings/NAME.gpg through apt_key's plan (fetched by
the host, dearmored) and the sources file names it; a path or fingerprints are written as they are. The file
itself is apt_repository's plan (format deb822). As Ansible's, it does not update the cache (roles notify a
handler that does)."""
from __future__ import annotations

from typing import Callable

from provision.ops.apt_repo import AptKey, AptRepository
from provision.ops.core import Cmd, Op, Plan
from provision.ops.spec import ArgSpec, module


def planned(op: Op, args: dict, ctx) -> Plan:
    """``op``'s plan for ``args``, its probe run first as a read-only command of the plan."""
    probe = op.probe(args, ctx)
    if not probe:
        return op.plan(args, ctx.facts, None, ctx)
    return Plan([Cmd(probe, readonly=True, counts=False, ok_rc=None)],
                then=lambda facts, rs: op.plan(args, facts, rs[0], ctx))


def chain(first: Plan, after: Callable[[], Plan]) -> Plan:
    """``first``, then (once it and its continuations are done, unless it failed) the plan ``after()`` gives."""
    if first.failed:
        return first
    inner = first.then
    first.then = (lambda facts, rs: _chain_or_after(inner(facts, rs), after)) if inner else \
        (lambda facts, rs: after())
    return first


def _chain_or_after(nxt: Plan | None, after: Callable[[], Plan]) -> Plan:
    return after() if nxt is None else chain(nxt, after)


@module("deb822_repository", args={
    "name": ArgSpec("str", required=True), "types": ArgSpec("list", default=["deb"]),
    "uris": ArgSpec("list"), "suites": ArgSpec("list"), "components": ArgSpec("list"),
    "architectures": ArgSpec("list", aliases=("arch",)), "signed_by": ArgSpec("str"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "enabled": ArgSpec("bool", default=True), "mode": ArgSpec("raw", default="0644"),
    "install_python_debian": ArgSpec("bool", default=False),
})
class Deb822Repository(Op):
    def plan(self, args, facts, probe, ctx):
        name = str(args["name"])
        signed = str(args.get("signed_by") or "")
        repo_args = {"filename": name, "format": "deb822", "update_cache": False, "state": args.get("state"),
                     "types": args.get("types"), "uris": args.get("uris"), "suites": args.get("suites"),
                     "components": args.get("components"), "architectures": args.get("architectures"),
                     "mode": args.get("mode"), "signed_by": signed or None}
        if args.get("enabled") is False:
            return Plan(failed=True, msg="deb822_repository: enabled: false is not supported (remove the "
                                         "repository with state: absent)")
        key = None
        if "://" in signed or "BEGIN PGP" in signed:
            keyring = f"/etc/apt/keyrings/{name}.gpg"
            key = {"keyring": keyring, "state": args.get("state")}
            key.update({"url": signed} if "://" in signed else {"data": signed})
            repo_args["signed_by"] = keyring
        if key is None:
            return planned(AptRepository(), repo_args, ctx)
        if args.get("state") == "absent":
            return chain(planned(AptRepository(), repo_args, ctx), lambda: planned(AptKey(), key, ctx))
        return chain(planned(AptKey(), key, ctx), lambda: planned(AptRepository(), repo_args, ctx))
