"""package: Ansible's generic package module, dispatched by the host's facts to the package manager's op (apt on
the Debian family: the only backend gpufleet has; any other fails that host with a clear message). The arguments a
backend takes (allow_downgrade, update_cache, install_recommends...) pass through, as Ansible passes them.
dpkg_selections sets dpkg's selection of a package (hold, purge...)."""
from __future__ import annotations

from provision.ops.apt import APT_ARGS, Apt
from provision.ops.core import Cmd, Op, Plan, q
from provision.ops.spec import ArgSpec, module

BACKENDS = {"apt": Apt}


def backend(use: str | None, facts) -> str | None:
    """The backend's name: ``use`` unless 'auto', else the host's ``pkg_mgr`` fact (apt on the Debian family)."""
    if use and use != "auto":
        return use
    mgr = facts.get("pkg_mgr")
    if mgr in (None, "", "unknown") and facts.get("os_family") == "Debian":
        return "apt"
    return mgr


@module("package", args={**APT_ARGS, "name": ArgSpec("list", required=True, aliases=("pkg", "package")),
                         "use": ArgSpec("str", default="auto")})
class Package(Apt):
    facts = (*Apt.facts, "pkg_mgr", "os")

    def probe(self, args, ctx):
        return super().probe(args, ctx) if backend(args.get("use"), ctx.facts) == "apt" else None

    def plan(self, args, facts, probe, ctx) -> Plan:
        name = backend(args.get("use"), facts)
        if name not in BACKENDS:
            return Plan(failed=True, msg=f"package: no '{name or 'unknown'}' backend in gpufleet "
                                         f"(it has: {', '.join(BACKENDS)}); this host's pkg_mgr is "
                                         f"{facts.get('pkg_mgr') or 'unknown'}")
        return super().plan({k: v for k, v in args.items() if k != "use"}, facts, probe, ctx)


@module("dpkg_selections", args={"name": ArgSpec("str", required=True),
                                 "selection": ArgSpec("str", required=True,
                                                      choices=("install", "hold", "deinstall", "purge"))})
class DpkgSelections(Op):
    """dpkg's selection of one package (hold, purge...), read with `dpkg --get-selections`."""

    def probe(self, args, ctx):
        return f"dpkg --get-selections -- {q(str(args['name']))} 2>/dev/null; true"

    def plan(self, args, facts, probe, ctx) -> Plan:
        name, want = str(args["name"]), str(args["selection"])
        fields = (probe.stdout if probe else "").split()
        have = fields[1] if len(fields) >= 2 else "not present"
        if have == want:
            return Plan(noop=f"{name} is {want}")
        return Plan([Cmd(f"echo {q(f'{name} {want}')} | dpkg --set-selections", dpkg_lock=True)],
                    diff=[{"before_header": f"selection {name}", "after_header": f"selection {name}",
                           "before": f"{have}\n", "after": f"{want}\n"}])
