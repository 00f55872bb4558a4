"""Connectors: ssh (paramiko), local, docker. :func:`connect` picks one from the host's ``ansible_connection``."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from provision.connectors.base import (CommandResult, CommandTimeout, Connector, ConnectorError,  # noqa: F401
                                       HostKeyMismatch, Unreachable)

HOST_KEY_CHECKING = ("yes", "accept-new", "off")


def _warn(msg: str) -> None:
    print(f"[WARNING]: {msg}", file=sys.stderr)


@dataclass
class ConnectOptions:
    host_key_checking: str = "yes"        # yes | accept-new | off
    connect_timeout: float = 10.0
    command_timeout: float | None = 3600.0   # default wall-clock deadline per command
    keepalive: int = 15
    become_password: str | None = None    # PROVISION_BECOME_PASS or --ask-become-pass; never logged
    ssh_config: str | None = None         # default ~/.ssh/config
    remote_user: str | None = None        # -u: the user for hosts whose inventory names none (ansible_user wins)
    warn: Callable[[str], None] = field(default=_warn, repr=False)

    def __repr__(self) -> str:  # the password never shows up in a repr
        return f"ConnectOptions(host_key_checking={self.host_key_checking!r})"


def _var(host: Any, *names: str, default=None):
    hv = getattr(host, "vars", {}) or {}
    for n in names:
        if hv.get(n) not in (None, ""):
            return hv[n]
    return default


def connect(host: Any, options: ConnectOptions | None = None) -> Connector:
    """Open the one connection used for ``host`` during the run. Raises :class:`Unreachable`."""
    options = options or ConnectOptions()
    kind = getattr(host, "connection", None) or _var(host, "ansible_connection", default="ssh")
    name = getattr(host, "name", str(host))
    address = getattr(host, "address", None) or _var(host, "ansible_host", default=name)
    if kind == "local":
        from provision.connectors.local import LocalConnector
        return LocalConnector(name, become_password=options.become_password,
                              command_timeout=options.command_timeout)
    if kind == "docker":
        from provision.connectors.docker import DockerConnector
        return DockerConnector(name, address, user=_var(host, "ansible_user"),
                               command_timeout=options.command_timeout, connect_timeout=options.connect_timeout)
    if kind not in ("ssh", "paramiko", "smart"):
        raise ConnectorError(f"{name}: unknown ansible_connection {kind!r} (ssh, local or docker)")
    from provision.connectors.ssh import SSHConnector
    explicit_port = _var(host, "ansible_port", "ansible_ssh_port")
    explicit_user = _var(host, "ansible_user", "ansible_ssh_user") or options.remote_user
    key = getattr(host, "key_file", None) or _var(host, "ansible_ssh_private_key_file", "ansible_private_key_file")
    known = getattr(host, "known_hosts_file", None) or _var(host, "ansible_ssh_known_hosts_file")
    become_pass = _var(host, "ansible_become_password", "ansible_become_pass") or options.become_password
    return SSHConnector(
        name, address=address, port=int(explicit_port) if explicit_port else None,
        user=explicit_user, key_files=[os.path.expanduser(str(key))] if key else None,
        password=_var(host, "ansible_password", "ansible_ssh_pass"),
        known_hosts_file=os.path.expanduser(str(known)) if known else None,
        host_key_checking=options.host_key_checking, connect_timeout=options.connect_timeout,
        command_timeout=options.command_timeout, keepalive=options.keepalive, become_password=become_pass,
        ssh_config=options.ssh_config, warn=options.warn)
