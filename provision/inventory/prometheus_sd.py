"""Prometheus file-based service discovery from the inventory: the hosts that run gpu-agent, as file_sd targets.

One target group per host (``{"targets": ["ADDRESS:PORT"], "labels": {...}}``), so Prometheus scrapes exactly the
provisioned hosts and each series carries the inventory's view of the host:

- ``inventory_host``: the host's inventory name (``instance`` stays ADDRESS:PORT, Prometheus' own default);
- ``group``: the host's first group in the inventory (the most direct one), for a simple dashboard filter;
- ``groups``: every group the host is in, comma-joined with a comma at both ends (``,gpu,lab,``), so a selector
  ``{groups=~".*,gpu,.*"}`` matches one group exactly, as Prometheus' Consul discovery does with its tags;
- ``__scheme__``: ``https`` where ``gpu_agent_scheme: https`` (the agent behind its web config's TLS);
- the host's ``gpu_agent_sd_labels`` mapping, for anything else (site, rack...).

Which hosts: every host where ``gpu_agent_enabled`` is not false (the gpu_agent role's own default is true).
The address: ``gpu_agent_scrape_address``, else ``ansible_host``, else the name; the port ``gpu_agent_port``
(10240, the role's default). Values are rendered with the host's variables where they are templated.
"""
from __future__ import annotations

import json
import re
from typing import Any

from agent.hostpaths import AGENT_PORT
from provision.atomicfile import write_atomic
from provision.errors import InputError
from provision.inventory.models import Host, Inventory
from provision.truthy import strict_bool

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _value(host: Host, name: str, default: Any = None) -> Any:
    value = host.vars.get(name, default)
    if isinstance(value, str) and "{{" in value:
        from provision import templating
        try:
            value = templating.render(value, dict(host.vars))
        except Exception as err:  # noqa: BLE001 - one line naming the host and the variable
            raise InputError(f"host {host.name}: cannot render {name}: {err}", key=name) from None
    return value


def _where(host: Host, name: str) -> dict:
    pos = host.var_sources.get(name) if host.var_sources else None
    return {"file": pos.file, "line": pos.line} if pos else {}


def host_groups(inv: Inventory, host: Host) -> list[str]:
    """The host's groups, the ones that list it directly first, then their parents (nearest first), without
    all/ungrouped."""
    out: list[str] = []
    todo = sorted(g for g in host.groups if host.name in inv.groups[g].hosts)
    while todo:
        g = todo.pop(0)
        if g not in out:
            out.append(g)
            todo.extend(sorted(inv.groups[g].parents))
    return [g for g in out if g not in ("all", "ungrouped")]


def target_group(host: Host, groups: list[str]) -> dict | None:
    """The host's file_sd target group (``groups``: :func:`host_groups`), or None where the host runs no agent."""
    try:
        enabled = strict_bool(_value(host, "gpu_agent_enabled", True), key="gpu_agent_enabled")
    except InputError as err:
        raise InputError(f"host {host.name}: {err.message}", key="gpu_agent_enabled",
                         **_where(host, "gpu_agent_enabled")) from None
    if not enabled:
        return None
    address = str(_value(host, "gpu_agent_scrape_address", None) or host.address)
    port = _value(host, "gpu_agent_port", AGENT_PORT)
    try:
        port = int(port)
        if not 0 < port < 65536:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"host {host.name}: gpu_agent_port must be a port number, got {port!r}",
                         key="gpu_agent_port", **_where(host, "gpu_agent_port")) from None
    labels = {"inventory_host": host.name}
    if groups:
        labels["group"] = groups[0]
        labels["groups"] = "," + ",".join(groups) + ","
    scheme = str(_value(host, "gpu_agent_scheme", "http")).lower()
    if scheme not in ("http", "https"):
        raise InputError(f"host {host.name}: gpu_agent_scheme must be http or https, got {scheme!r}",
                         key="gpu_agent_scheme", **_where(host, "gpu_agent_scheme"))
    if scheme == "https":
        labels["__scheme__"] = "https"
    extra = _value(host, "gpu_agent_sd_labels", None) or {}
    if not isinstance(extra, dict):
        raise InputError(f"host {host.name}: gpu_agent_sd_labels must be a mapping of label: value",
                         key="gpu_agent_sd_labels", **_where(host, "gpu_agent_sd_labels"))
    for k, v in extra.items():
        if not LABEL_NAME.match(str(k)) or str(k).startswith("__"):
            raise InputError(f"host {host.name}: gpu_agent_sd_labels: {k!r} is not a Prometheus label name "
                             f"([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", key="gpu_agent_sd_labels",
                             **_where(host, "gpu_agent_sd_labels"))
        labels[str(k)] = str(v)
    host_part = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return {"targets": [f"{host_part}:{port}"], "labels": labels}


def file_sd(inv: Inventory, selected: set[str] | None = None) -> list[dict]:
    """Every agent host's target group, in inventory order (all checked before anything is written)."""
    out = []
    for name, host in inv.hosts.items():
        if selected is not None and name not in selected:
            continue
        group = target_group(host, host_groups(inv, host))
        if group is not None:
            out.append(group)
    return out


def write_file_sd(path: str, groups: list[dict]) -> None:
    """Write the targets where Prometheus watches them, atomically (Prometheus never reads half a file); ``-``
    prints them."""
    text = json.dumps(groups, indent=2, sort_keys=True) + "\n"
    if path == "-":
        print(text, end="")
        return
    write_atomic(path, text.encode(), mode=0o644)
