"""Ansible inventories (YAML, INI, directories of them, ``h1,h2,`` lists) -> frozen Inventory/Host/Group models,
and host patterns (``--limit``).

Read as Ansible reads it: ``all``/``children``/``hosts``/``vars``, INI ``[group]``/``[group:vars]``/
``[group:children]``, host ranges (``gpu[01:16].lab``, ``node[a:c]``, ``[1:9:2]``), ``host:PORT``, ``group_vars/``
and ``host_vars/`` beside each source (``NAME``, ``NAME.yml|.yaml|.json`` or a ``NAME/`` directory of such files).
Host.vars is the merged inventory view for a host, in Ansible's order: inline vars (``all`` < parent groups <
child groups, same depth by ``ansible_group_priority`` then name) < group_vars/ files (same order) < the host's
inline vars < host_vars/ files. See docs/inventory.md.

The package: :mod:`.models` (Host, Group, Inventory), :mod:`.loader` (``load_inventory``: sources, YAML, merging),
:mod:`.ini` (the INI grammar), :mod:`.patterns` (host patterns, host ranges, ``host:PORT``).
"""
from __future__ import annotations

from provision.inventory.loader import load_inventory
from provision.inventory.models import CONNECTIONS, KNOWN_ANSIBLE_VARS, Group, Host, Inventory
from provision.inventory.patterns import expand_hostname, split_pattern, split_port

__all__ = ["CONNECTIONS", "KNOWN_ANSIBLE_VARS", "Group", "Host", "Inventory", "expand_hostname", "load_inventory",
           "split_pattern", "split_port"]
