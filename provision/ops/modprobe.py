"""modprobe and kernel_blacklist: kernel modules, loaded now and across boots.

modprobe decides from one read-only probe in the facts' section protocol: the loaded modules (/proc/modules),
whether the module is built into the kernel, and the files that make it persistent (``persistent: present``
writes /etc/modules-load.d/NAME.conf and, with params, /etc/modprobe.d/NAME.conf; ``absent`` removes them).
kernel_blacklist (community.general's) keeps a ``blacklist NAME`` line in a modprobe.d file.
"""
from __future__ import annotations

import re

from provision.facts import section_script, split_sections
from provision.ops.core import Cmd, FilePut, Op, Plan, parse_stat, q, stat_probe, write_file_plan
from provision.ops.files import LineInFile
from provision.ops.spec import ArgSpec, module


def module_files(name: str) -> tuple[str, str]:
    """(modules-load.d file, modprobe.d options file) that ``persistent`` manages for ``name``."""
    return f"/etc/modules-load.d/{name}.conf", f"/etc/modprobe.d/{name}.conf"


@module("modprobe", aliases=("community.general.modprobe",), args={
    "name": ArgSpec("str", required=True), "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "params": ArgSpec("str", default=""),
    "persistent": ArgSpec("str", default="disabled", choices=("disabled", "absent", "present")),
})
class Modprobe(Op):
    def probe(self, args, ctx):
        name = str(args["name"])
        load, opts = module_files(name)
        return section_script([
            ("loaded", "cut -d' ' -f1 /proc/modules"),
            ("builtin", f"grep -E {q('/' + re.escape(name).replace('_', '[_-]') + '[.]ko')} "
                        "/lib/modules/$(uname -r)/modules.builtin"),
            ("load", stat_probe(load)), ("options", stat_probe(opts))])

    def plan(self, args, facts, probe, ctx):
        name, state, params = str(args["name"]), args.get("state", "present"), str(args.get("params") or "").strip()
        sections = split_sections(probe.stdout if probe else "")
        loaded = name.replace("-", "_") in sections.get("loaded", "").split()
        builtin = bool(sections.get("builtin", "").strip())
        cmds, before, after = [], [], []
        if state == "present" and not loaded and not builtin:
            cmds.append(Cmd(f"modprobe -- {q(name)}" + "".join(f" {q(p)}" for p in params.split())))
        elif state == "absent" and loaded:
            cmds.append(Cmd(f"modprobe -r -- {q(name)}"))
        elif state == "absent" and builtin:
            return Plan(failed=True, msg=f"{name} is built into the kernel: it cannot be unloaded")
        if cmds:
            before.append(f"{name} {'loaded' if loaded else 'not loaded'}")
            after.append(f"{name} {'loaded' if state == 'present' else 'not loaded'}")
        diff = [{"before_header": f"module {name}", "after_header": f"module {name}",
                 "before": "".join(x + "\n" for x in before), "after": "".join(x + "\n" for x in after)}] \
            if cmds else []
        persistent = args.get("persistent", "disabled")
        load_path, opts_path = module_files(name)
        for path, key, text in ((load_path, "load", f"{name}\n"),
                                (opts_path, "options", f"options {name} {params}\n" if params else "")):
            st = parse_stat(sections.get(key, "absent\n"))
            if persistent == "present" and text:
                part = write_file_plan(path, text.encode(), st, mode=None, make_parent=True)
                cmds += part.commands
                diff += part.diff
            elif persistent == "absent" or (persistent == "present" and not text):
                if st.kind != "absent" and (persistent == "absent" or st.content != text.encode()):
                    cmds.append(Cmd(f"rm -f -- {q(path)}"))
                    diff.append({"before_header": path, "after_header": f"{path} (absent)",
                                 "before": (st.content or b"").decode("utf-8", "replace"), "after": ""})
        if not cmds:
            return Plan(noop=f"{name} is {'loaded' if state == 'present' else 'not loaded'}"
                        + (" and persistent as wanted" if persistent != "disabled" else ""), extra={"name": name})
        return Plan(cmds, diff=diff, extra={"name": name, "params": params})


@module("kernel_blacklist", aliases=("community.general.kernel_blacklist",), args={
    "name": ArgSpec("str", required=True), "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "blacklist_file": ArgSpec("path", default="/etc/modprobe.d/blacklist.conf"),
})
class KernelBlacklist(LineInFile):
    """A ``blacklist NAME`` line in ``blacklist_file``: lineinfile's plan with the line and its regexp."""

    def probe(self, args, ctx):
        return stat_probe(str(args["blacklist_file"]))

    def plan(self, args, facts, probe, ctx):
        name = str(args["name"])
        line_args = {"path": str(args["blacklist_file"]), "line": f"blacklist {name}", "create": True,
                     "regexp": rf"^\s*blacklist\s+{re.escape(name)}\s*$", "state": args.get("state", "present")}
        plan = super().plan(line_args, facts, probe, ctx)
        for c in plan.commands:       # /etc/modprobe.d may not exist yet (a minimal system)
            if isinstance(c, FilePut):
                c.make_parent = True
        return plan
