"""The frozen inventory models: Host (its connection variables as properties), Group, Inventory."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from provision.inventory.patterns import HostPatterns
from provision.truthy import strict_bool
from provision.yamlsrc import SourcePos


GROUP_KEYS = ("hosts", "children", "vars")
VAR_FILE_EXTS = ("", ".yml", ".yaml", ".json")
CONNECTIONS = {"ssh": "ssh", "paramiko": "ssh", "smart": "ssh", "local": "local", "docker": "docker"}

# Behavioural inventory variables we understand (others are kept as plain vars). Used for "did you mean" warnings.
KNOWN_ANSIBLE_VARS = (
    "ansible_host", "ansible_port", "ansible_user", "ansible_connection", "ansible_ssh_private_key_file",
    "ansible_private_key_file", "ansible_ssh_known_hosts_file", "ansible_ssh_common_args", "ansible_ssh_extra_args",
    "ansible_become", "ansible_become_user", "ansible_become_method", "ansible_become_password",
    "ansible_become_pass", "ansible_become_exe", "ansible_become_flags", "ansible_password", "ansible_ssh_pass",
    "ansible_ssh_host", "ansible_ssh_port", "ansible_ssh_user", "ansible_python_interpreter",
    "ansible_group_priority", "ansible_shell_type", "ansible_timeout", "ansible_ssh_timeout",
    "ansible_docker_extra_args", "ansible_host_key_checking", "ansible_ssh_host_key_checking",
)


def _freeze(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Host:
    name: str
    vars: Mapping[str, Any]
    groups: tuple[str, ...]
    source: SourcePos
    var_sources: Mapping[str, SourcePos] = field(default_factory=dict, compare=False, repr=False)

    def __hash__(self) -> int:
        return hash(("Host", self.name, self.source))

    def _var(self, *names: str, default: Any = None) -> Any:
        for n in names:
            v = self.vars.get(n)
            if v is not None:
                return v
        return default

    @property
    def address(self) -> str:
        return str(self._var("ansible_host", "ansible_ssh_host", default=self.name))

    @property
    def port(self) -> int:
        return int(self._var("ansible_port", "ansible_ssh_port", default=22))

    @property
    def user(self) -> str | None:
        v = self._var("ansible_user", "ansible_ssh_user")
        return None if v is None else str(v)

    @property
    def key_file(self) -> str | None:
        v = self._var("ansible_ssh_private_key_file", "ansible_private_key_file")
        return None if v is None else os.path.expanduser(str(v))

    @property
    def connection(self) -> str:
        return CONNECTIONS.get(str(self._var("ansible_connection", default="ssh")), "ssh")

    @property
    def known_hosts_file(self) -> str | None:
        v = self._var("ansible_ssh_known_hosts_file")
        return None if v is None else os.path.expanduser(str(v))

    @property
    def become(self) -> bool | None:
        v = self._var("ansible_become")
        return None if v is None else strict_bool(v, "ansible_become")

    @property
    def become_user(self) -> str | None:
        v = self._var("ansible_become_user")
        return None if v is None else str(v)

    @property
    def become_password(self) -> str | None:
        v = self._var("ansible_become_password", "ansible_become_pass")
        return None if v is None else str(v)

    @property
    def password(self) -> str | None:
        v = self._var("ansible_password", "ansible_ssh_pass")
        return None if v is None else str(v)


@dataclass(frozen=True)
class Group:
    name: str
    hosts: tuple[str, ...]
    children: tuple[str, ...]
    vars: Mapping[str, Any]
    source: SourcePos
    parents: tuple[str, ...] = ()
    depth: int = 0
    priority: int = 1

    def __hash__(self) -> int:
        return hash(("Group", self.name, self.source))


@dataclass(frozen=True)
class Inventory(HostPatterns):
    """Hosts and groups as read; host patterns (``select``, ``limit``) from :class:`HostPatterns`."""
    path: str
    hosts: Mapping[str, Host]
    groups: Mapping[str, Group]
    warnings: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()          # every -i source, in order (``path`` is the first)

    def __hash__(self) -> int:
        return hash(("Inventory", self.path, self.sources))
