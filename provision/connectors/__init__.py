"""Connectors: ssh (paramiko), local, docker. :func:`connect` picks one from the host's ``ansible_connection``."""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from provision.connectors.base import (CommandResult, CommandTimeout, Connector, ConnectorError,  # noqa: F401
                                       HostKeyMismatch, Unreachable)

HOST_KEY_CHECKING = ("yes", "accept-new", "off")
SSH_ARGS_HELP = ("-o ProxyJump=HOST / -J HOST, -o StrictHostKeyChecking=yes|no|accept-new, "
                 "-o UserKnownHostsFile=FILE, -o Port=N")
_STRICT = {"yes": "yes", "no": "off", "off": "off", "accept-new": "accept-new"}


def parse_ssh_args(text: str, key: str) -> dict:
    """``--ssh-common-args`` / ``ansible_ssh_common_args`` -> what paramiko can honour: {proxy_jump,
    host_key_checking, known_hosts_file, port}. Anything else raises ValueError-like OptionError naming ``key``."""
    from provision.errors import OptionError
    try:
        words = shlex.split(text or "")
    except ValueError as err:
        raise OptionError(f"cannot split {text!r}: {err}", key=key) from None
    out: dict = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("-o", "-J") and i + 1 < len(words):
            flag, value, i = w, words[i + 1], i + 2
        elif w.startswith(("-o", "-J")) and len(w) > 2:
            flag, value, i = w[:2], w[2:], i + 1
        else:
            raise OptionError(f"{w!r} is not supported (paramiko honours {SSH_ARGS_HELP})", key=key)
        if flag == "-J":
            out["proxy_jump"] = value
            continue
        name, sep, val = value.replace("=", " ", 1).partition(" ")
        name, val = name.strip().lower(), val.strip()
        if not sep or not val:
            raise OptionError(f"expected -o Name=value, got {value!r}", key=key)
        if name == "proxyjump":
            out["proxy_jump"] = val
        elif name == "stricthostkeychecking" and val.lower() in _STRICT:
            out["host_key_checking"] = _STRICT[val.lower()]
        elif name == "userknownhostsfile":
            out["known_hosts_file"] = os.path.expanduser(val.split()[0])
        elif name == "port" and val.isdigit() and 0 < int(val) < 65536:
            out["port"] = int(val)
        else:
            raise OptionError(f"-o {value} is not supported (paramiko honours {SSH_ARGS_HELP})", key=key)
    return out


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
    private_key: str | None = None        # --private-key / ansible.cfg private_key_file (the inventory's key wins)
    connection: str | None = None         # -c: for hosts whose inventory sets no ansible_connection
    proxy_jump: str | None = None         # --ssh-common-args -J / -o ProxyJump (ansible_ssh_common_args wins)
    known_hosts_file: str | None = None   # --ssh-common-args -o UserKnownHostsFile
    port: int | None = None               # --ssh-common-args -o Port (ansible_port wins)
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
    own = getattr(host, "connection", None) or _var(host, "ansible_connection")
    kind = (own if _var(host, "ansible_connection") else options.connection or own) or "ssh"
    kind = {"paramiko": "ssh", "smart": "ssh"}.get(str(kind), str(kind))
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
    if kind != "ssh":
        raise ConnectorError(f"{name}: unknown ansible_connection {kind!r} (ssh, local or docker)")
    from provision.connectors.ssh import SSHConnector
    host_ssh = parse_ssh_args(str(_var(host, "ansible_ssh_common_args")), "ansible_ssh_common_args") \
        if _var(host, "ansible_ssh_common_args") else {}
    explicit_port = _var(host, "ansible_port", "ansible_ssh_port") or host_ssh.get("port") or options.port
    explicit_user = _var(host, "ansible_user", "ansible_ssh_user") or options.remote_user
    key = getattr(host, "key_file", None) or _var(host, "ansible_ssh_private_key_file", "ansible_private_key_file") \
        or options.private_key
    known = getattr(host, "known_hosts_file", None) or _var(host, "ansible_ssh_known_hosts_file") \
        or host_ssh.get("known_hosts_file") or options.known_hosts_file
    become_pass = _var(host, "ansible_become_password", "ansible_become_pass") or options.become_password
    return SSHConnector(
        name, address=address, port=int(explicit_port) if explicit_port else None,
        user=explicit_user, key_files=[os.path.expanduser(str(key))] if key else None,
        password=_var(host, "ansible_password", "ansible_ssh_pass"),
        known_hosts_file=os.path.expanduser(str(known)) if known else None,
        host_key_checking=host_ssh.get("host_key_checking", options.host_key_checking),
        proxy_jump=host_ssh.get("proxy_jump", options.proxy_jump), connect_timeout=options.connect_timeout,
        command_timeout=options.command_timeout, keepalive=options.keepalive, become_password=become_pass,
        ssh_config=options.ssh_config, warn=options.warn)
