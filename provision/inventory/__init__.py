"""Ansible's YAML inventory -> frozen Inventory/Host/Group models, and host patterns (``--limit``).

Read as Ansible reads it: ``all``/``children``/``hosts``/``vars``, host ranges (``gpu[01:16].lab``, ``node[a:c]``,
``[1:9:2]``), ``group_vars/`` and ``host_vars/`` beside the inventory (``NAME``, ``NAME.yml|.yaml|.json`` or a
``NAME/`` directory of such files). Host.vars is the merged inventory view for a host:
``all`` < parent groups < child groups (same depth: ``ansible_group_priority``, then name) < host; a
group_vars/host_vars file overrides inline vars of the same group/host. See docs/inventory.md.

The package: :mod:`.models` (Host, Group, Inventory), :mod:`.loader` (``load_inventory``), :mod:`.patterns` (host
patterns and host ranges).
"""
from __future__ import annotations

from provision.inventory.loader import load_inventory
from provision.inventory.models import CONNECTIONS, KNOWN_ANSIBLE_VARS, Group, Host, Inventory
from provision.inventory.patterns import expand_hostname, split_pattern

__all__ = ["CONNECTIONS", "KNOWN_ANSIBLE_VARS", "Group", "Host", "Inventory", "expand_hostname", "load_inventory",
           "split_pattern"]
