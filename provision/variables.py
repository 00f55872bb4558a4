"""The variables one task sees on one host, by Ansible's precedence (lowest first; Ansible's level in brackets,
the full table in docs/inventory.md):

1. role defaults (roles/NAME/defaults/main.yaml) [2]
2. the inventory view ``Host.vars`` [3-10], merged by provision.inventory.loader in Ansible's order: inline group
   vars (``all``, then groups by depth/priority/name) < group_vars/all files < group_vars/GROUP files (inventory,
   then playbook) < inline host vars < host_vars/ files. A group_vars/ file beats any inline group var.
3. facts: ``ansible_facts`` and each fact as a top-level ``ansible_<name>`` [11]
4. play ``vars`` < play ``vars_files`` [12, 14]
5. task vars (role vars < role params < block vars < the task's own ``vars``) [15, 20, 16, 17]
6. ``set_fact`` values (and include_vars) and registered results [18, 19]
7. extra vars (``-e``) — always win [22]
8. magic variables (inventory_hostname, groups, hostvars...) cannot be overridden.

The result is a :class:`VarDict`: its ``raw_keys`` (facts, registered results, set_fact values, magic vars) are
never templated again by provision.templating, so command output that contains ``{{`` stays text.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable

from provision.templating import OMIT, lazy


class VarDict(dict):
    """A dict of variables plus the keys whose values must not be templated."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.raw_keys: set[str] = set()


def fact_vars(facts: Mapping | None) -> dict:
    """``ansible_facts`` plus each fact as a top-level ``ansible_<name>`` (as Ansible injects them)."""
    if not facts:
        return {"ansible_facts": {}}
    out: dict[str, Any] = {"ansible_facts": dict(facts)}
    for k, v in facts.items():
        k = str(k)
        out[k if k.startswith("ansible_") else f"ansible_{k}"] = v
    return out


class HostVars(Mapping):
    """Lazy ``hostvars``: hostvars[name] builds that host's inventory vars (+ facts, and ``extra_by_host`` such as
    set_fact values and registered results, if given) on access; templated inventory values render when read."""

    def __init__(self, inventory, facts_by_host: Mapping | Callable[[str], Mapping | None] | None = None,
                 extra_by_host: Mapping | Callable[[str], Mapping | None] | None = None,
                 extra_vars: Mapping | None = None):
        self._inv = inventory
        self._facts = facts_by_host
        self._extra = extra_by_host
        self._extra_vars = extra_vars or {}
        self._cache: dict[str, dict] = {}

    @staticmethod
    def _get(src, name):
        if src is None:
            return None
        if callable(src):
            return src(name)
        return src.get(name)

    def __getitem__(self, name: str) -> Mapping:
        if name not in self._cache:
            host = self._inv.hosts[name]   # KeyError -> undefined in templates
            v = VarDict(host.vars)
            fv = fact_vars(self._get(self._facts, name))
            v.update(fv)
            extra = self._get(self._extra, name) or {}
            v.update(extra)
            v.update(self._extra_vars)
            magic = dict(inventory_hostname=name, inventory_hostname_short=name.split(".")[0],
                         group_names=group_names(host))
            v.update(magic)
            v.raw_keys.update(fv, extra, magic)
            v.raw_keys -= set(self._extra_vars)
            self._cache[name] = lazy(v)   # templated inventory values render on access, as in Ansible
        return self._cache[name]

    def __contains__(self, name) -> bool:
        return name in self._inv.hosts

    def __iter__(self):
        return iter(self._inv.hosts)

    def __len__(self):
        return len(self._inv.hosts)


def group_names(host) -> list[str]:
    return sorted(g for g in host.groups if g != "all")


_CACHE: dict[tuple, tuple[Any, Any]] = {}


def _cached(inventory, key: tuple, make: Callable[[], Any]) -> Any:
    """Per-inventory cache (inventories are frozen): the executor asks for the same maps for every task x host."""
    k = (id(inventory),) + key
    hit = _CACHE.get(k)
    if hit is not None and hit[0] is inventory:
        return hit[1]
    if len(_CACHE) > 256:
        _CACHE.clear()
    value = make()
    _CACHE[k] = (inventory, value)
    return value


def groups_map(inventory) -> dict[str, list[str]]:
    """``groups``: every group name -> its hosts (descendants included), computed once per inventory."""
    return _cached(inventory, ("groups",), lambda: {g: inventory.group_hosts(g) for g in inventory.groups})


def _play_hosts(inventory, pattern: str) -> list[str]:
    def make():
        try:
            return [h.name for h in inventory.select(pattern)]
        except Exception:  # noqa: BLE001 - validated before; a templated pattern just gives no list
            return []
    return _cached(inventory, ("play_hosts", pattern), make)


def host_variables(host, play, *, extra_vars: Mapping | None = None, facts: Mapping | None = None,
                   set_facts: Mapping | None = None, registered: Mapping | None = None, task=None,
                   inventory=None, check_mode: bool = False, diff_mode: bool = False,
                   play_hosts: list[str] | None = None, hostvars: Mapping | None = None,
                   groups: Mapping | None = None) -> VarDict:
    """Every variable ``task`` sees on ``host`` in ``play`` (see the module docstring for the order).

    ``play_hosts``: names of the hosts of the current batch (default: the play's hosts in the inventory).
    ``hostvars``/``groups``: pass precomputed ones to share them across hosts (HostVars(...), groups_map(...)).
    """
    out = VarDict()
    if play is not None:
        out.update(play.role_defaults)
    out.update(host.vars)
    fv = fact_vars(facts)
    out.update(fv)
    if play is not None:
        out.update(play.vars)
    if task is not None:
        out.update(task.vars)
    for src in (set_facts, registered):
        if src:
            out.update(src)
    out.raw_keys.update(fv)
    for src in (set_facts, registered):
        if src:
            out.raw_keys.update(src)
    # a later template-able layer hides an earlier raw value of the same name
    later_templated = set(play.vars if play is not None else ()) | set(task.vars if task is not None else ())
    out.raw_keys -= later_templated - set(set_facts or ()) - set(registered or ())
    if extra_vars:
        out.update(extra_vars)
        out.raw_keys -= set(extra_vars)

    magic: dict[str, Any] = {
        "inventory_hostname": host.name,
        "inventory_hostname_short": host.name.split(".")[0],
        "group_names": group_names(host),
        "ansible_check_mode": bool(check_mode),
        "ansible_diff_mode": bool(diff_mode),
        "omit": OMIT,
    }
    if inventory is not None:
        magic["groups"] = groups if groups is not None else groups_map(inventory)
        magic["hostvars"] = hostvars if hostvars is not None else HostVars(
            inventory, {host.name: facts} if facts else None, extra_vars=extra_vars)
        magic["inventory_file"] = os.path.abspath(inventory.path)
        magic["inventory_dir"] = os.path.dirname(os.path.abspath(inventory.path))
        if play_hosts is None and play is not None:
            play_hosts = _play_hosts(inventory, play.hosts)
    if play_hosts is not None:
        magic["play_hosts"] = magic["ansible_play_hosts"] = magic["ansible_play_batch"] = play_hosts
    if play is not None and getattr(play, "playbook_dir", ""):
        magic["playbook_dir"] = play.playbook_dir
    if task is not None and getattr(task, "role", None):
        magic["role_name"] = task.role
        magic["role_path"] = task.role_path
    out.update(magic)
    out.raw_keys.update(magic)
    return out
