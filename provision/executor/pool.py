"""The connection pool: at most ``forks`` connections open, one per host, reused for the whole run while it fits."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

from provision.connectors import ConnectOptions, connect


def _key(host) -> str:
    """A pool slot: the host and the login (a play's remote_user/connection keywords may log in otherwise than
    the play before)."""
    hv = getattr(host, "vars", None) or {}
    return "\0".join((host.name, str(hv.get("ansible_user") or ""), str(hv.get("ansible_connection") or "")))


class ConnectionPool:
    """At most ``limit`` open connections; one per host, reused for the whole run while it fits."""

    def __init__(self, limit: int, options: ConnectOptions, factory: Callable = connect):
        self.limit = max(1, int(limit))
        self.options = options
        self.factory = factory
        self._conns: OrderedDict[str, Any] = OrderedDict()
        self._busy: dict[str, int] = {}
        self._cond = threading.Condition()
        self.peak = 0
        self.opened = 0

    def acquire(self, host) -> Any:
        name = _key(host)
        with self._cond:
            while True:
                if name in self._conns and self._conns[name] is not None:
                    self._conns.move_to_end(name)
                    self._busy[name] = self._busy.get(name, 0) + 1
                    return self._conns[name]
                if name in self._conns:          # another thread is connecting to it
                    self._cond.wait(0.1)
                    continue
                if len(self._conns) < self.limit:
                    break
                victim = next((n for n, c in self._conns.items() if c is not None and not self._busy.get(n)), None)
                if victim is not None:
                    old = self._conns.pop(victim)
                    self._close(old)
                    continue
                self._cond.wait(0.1)
            self._conns[name] = None   # reserve the slot
            self._busy[name] = 1
            self.peak = max(self.peak, len(self._conns))
        try:
            conn = self.factory(host, self.options)
        except BaseException:
            with self._cond:
                self._conns.pop(name, None)
                self._busy.pop(name, None)
                self._cond.notify_all()
            raise
        with self._cond:
            self._conns[name] = conn
            self.opened += 1
            self._cond.notify_all()
        return conn

    def release(self, host) -> None:
        with self._cond:
            n = self._busy.get(_key(host), 0) - 1
            if n <= 0:
                self._busy.pop(_key(host), None)
            else:
                self._busy[_key(host)] = n
            self._cond.notify_all()

    def reconnect(self, host) -> Any:
        """Drop the host's connection and open a new one in the same slot (reboot)."""
        with self._cond:
            old = self._conns.get(_key(host))
            self._conns[_key(host)] = None
        if old is not None:
            self._close(old)
        try:
            conn = self.factory(host, self.options)
        except BaseException:
            with self._cond:
                self._conns.pop(_key(host), None)
                self._cond.notify_all()
            raise
        with self._cond:
            self._conns[_key(host)] = conn
            self.opened += 1
            self._cond.notify_all()
        return conn

    def drop(self, host) -> None:
        """Close the host's connections, every login's (unreachable or rebooted: none of them is usable)."""
        prefix = host.name + "\0"
        with self._cond:
            keys = [k for k in self._conns if k.startswith(prefix)]
            old = [self._conns.pop(k) for k in keys]
            for k in keys + [_key(host)]:
                self._busy.pop(k, None)
            self._cond.notify_all()
        for conn in old:
            if conn is not None:
                self._close(conn)

    @staticmethod
    def _close(conn) -> None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass

    def close_all(self) -> None:
        with self._cond:
            conns = list(self._conns.values())
            self._conns.clear()
            self._busy.clear()
        for c in conns:
            if c is not None:
                self._close(c)


