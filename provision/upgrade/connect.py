"""Open a Connector to an inventory host through the engine's ``provision.connectors.connect`` (ssh with
known_hosts verification, local, docker); the upgrade opens a fresh one after every reboot."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from provision.connectors.base import Connector


@dataclass(frozen=True)
class ConnectOptions:
    host_key_checking: str = "yes"      # yes | accept-new | off
    connect_timeout: float = 10.0
    become: bool | None = None          # None: from the inventory (ansible_become; non-root users)


def _hv(host: Any, *names, default=None):
    vars_ = getattr(host, "vars", {}) or {}
    for n in names:
        if vars_.get(n) not in (None, ""):
            return vars_[n]
    return default


def wants_become(host: Any, opts: ConnectOptions) -> bool:
    if opts.become is not None:
        return opts.become
    v = getattr(host, "become", None)
    if v is None:
        v = _hv(host, "ansible_become")
    if isinstance(v, str):
        return v.strip().lower() in ("1", "yes", "true", "on")
    if v is not None:
        return bool(v)
    user = getattr(host, "user", None) or _hv(host, "ansible_user", "ansible_ssh_user")
    return bool(user) and user != "root"


def connector_factory(host: Any, opts: ConnectOptions) -> Callable[[], Connector]:
    from provision.connectors import ConnectOptions as EngineOptions, connect

    eng = EngineOptions(host_key_checking=opts.host_key_checking, connect_timeout=opts.connect_timeout,
                        keepalive=5)

    def open_() -> Connector:
        return connect(host, eng)

    return open_
