"""`provision inventory -i INVENTORY --list | --graph [GROUP] | --host NAME [--limit PATTERN]`.

Shows the inventory as provision reads it, in the shapes ``ansible-inventory`` prints: ``--list`` JSON with
``_meta.hostvars`` and every group's ``hosts``/``children`` (in inventory order, empty keys left out), ``--graph`` a
tree (``@all:`` / ``  |--@group:`` / ``  |  |--host``), ``--host`` one host's merged variables. Opens no connection.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from provision.errors import OptionError, closest
from provision.inventory import Inventory, load_inventory


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inventory", help="show the inventory as provision reads it (--list, --graph, --host)",
        description="Show Ansible inventories (YAML, INI, directories, host lists) as provision reads them: group "
                    "membership, merged host variables (group_vars/, host_vars/, precedence as in docs/inventory.md). "
                    "No host is contacted.")
    p.add_argument("inventory_pos", nargs="?", metavar="INVENTORY", help="inventory (or use -i)")
    p.add_argument("-i", "--inventory", dest="inventory", action="append", metavar="INVENTORY",
                   help="inventory file (YAML or INI), directory, or host list 'h1,h2,'; repeatable (merged in "
                        "order); default: ansible.cfg's inventory")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="JSON like `ansible-inventory --list`")
    mode.add_argument("--graph", nargs="?", const="all", metavar="GROUP", help="a tree of groups and hosts")
    mode.add_argument("--host", metavar="NAME", help="JSON of one host's merged variables")
    mode.add_argument("--prometheus-sd", metavar="FILE",
                      help="write Prometheus file_sd targets for every host running gpu-agent, with the inventory's "
                           "groups as labels ('-' prints them); see docs/agent.md")
    p.add_argument("--playbook-dir", metavar="DIR",
                   help="also read group_vars/ and host_vars/ beside a playbook in DIR (as ansible-inventory's)")
    p.add_argument("-l", "--limit", metavar="PATTERN",
                   help="restrict to hosts matching an Ansible pattern (host, group, *, ~regex, a:b, a:&b, a:!b, "
                        "@retry-file)")
    p.set_defaults(func=run)


def _json(data: Any) -> str:
    return json.dumps(data, indent=4, sort_keys=True, default=_default)


def _default(value: Any) -> Any:
    if hasattr(value, "items"):
        return dict(value.items())
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def list_inventory(inv: Inventory, selected: set[str] | None = None) -> dict:
    """The ``ansible-inventory --list`` structure (optionally restricted to ``selected`` host names)."""
    out: dict[str, Any] = {}

    def fmt(name: str) -> None:
        group = inv.groups[name]
        entry: dict[str, Any] = {}
        if name != "all":
            entry["hosts"] = [h for h in group.hosts if selected is None or h in selected]
        entry["children"] = list(group.children)
        for child in entry["children"]:
            if child not in out:
                fmt(child)
        for k in ("hosts", "children"):
            if k in entry and not entry[k]:
                del entry[k]
        if entry:
            out[name] = entry

    fmt("all")
    hostvars = {}
    for name, host in inv.hosts.items():
        if (selected is None or name in selected) and host.vars:
            hostvars[name] = dict(host.vars)
    out["_meta"] = {"hostvars": hostvars}
    return out


def graph_inventory(inv: Inventory, group: str = "all", selected: set[str] | None = None) -> str:
    """The ``ansible-inventory --graph`` tree (groups and hosts in inventory order, as ansible-core 2.19 prints it)."""
    lines: list[str] = []

    def name(text: str, depth: int) -> str:
        return ("  |" * depth + "--" + text) if depth else text

    def walk(g: str, depth: int) -> None:
        lines.append(name(f"@{g}:", depth))
        grp = inv.groups[g]
        for child in grp.children:
            walk(child, depth + 1)
        if g != "all":
            for h in grp.hosts:
                if selected is None or h in selected:
                    lines.append(name(h, depth + 1))

    walk(group, 0)
    return "\n".join(lines)


def run(args) -> int:
    from provision.commands.apply import inventory_sources
    if args.playbook_dir and not os.path.isdir(args.playbook_dir):
        raise OptionError("no such directory", file=args.playbook_dir, key="--playbook-dir")
    inv = load_inventory(inventory_sources(args, must_exist=False),   # a missing one: exit 4
                         playbook_dir=args.playbook_dir)
    path = ", ".join(inv.sources)
    for w in inv.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    selected = None
    if args.limit is not None:
        selected = {h.name for h in inv.limit(list(inv.hosts.values()), args.limit)}
    if args.prometheus_sd:
        from provision.inventory.prometheus_sd import file_sd, write_file_sd
        write_file_sd(args.prometheus_sd, file_sd(inv, selected))
    elif args.list:
        print(_json(list_inventory(inv, selected)))
    elif args.host is not None:
        if args.host not in inv.hosts or (selected is not None and args.host not in selected):
            raise OptionError(f"no host named '{args.host}' in {path}" + (" within --limit" if selected else ""),
                              key="--host", hint=closest(args.host, inv.hosts))
        print(_json(dict(inv.hosts[args.host].vars)))
    else:
        if args.graph not in inv.groups:
            raise OptionError(f"no group named '{args.graph}' in {path}", key="--graph",
                              hint=closest(args.graph, inv.groups))
        print(graph_inventory(inv, args.graph, selected))
    return 0
