"""The connector contract: every way of reaching a host offers run/put/get/close.

Connectors never decide anything; operations and the executor do. Deadlines are enforced by the connector
itself (paramiko's timeouts are per read, so ``run`` keeps its own wall-clock deadline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rc == 0


class ConnectorError(Exception):
    """Base for connection problems."""


class Unreachable(ConnectorError):
    """The host cannot be reached (connect refused/timed out, auth failed, host key rejected, connection lost)."""


class HostKeyMismatch(Unreachable):
    """The host's key is not the one known_hosts holds: never connect."""


class CommandTimeout(ConnectorError):
    """A command ran past its deadline; the connector killed it."""


class Connector(Protocol):
    host: str

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            become: bool = False, env: Mapping[str, str] | None = None) -> CommandResult: ...

    def put(self, path: str, data: bytes, *, mode: int | None = None, become: bool = False) -> None: ...

    def get(self, path: str, *, become: bool = False) -> bytes: ...

    def close(self) -> None: ...
