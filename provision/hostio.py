"""What crosses between the engine and a host: a command's result and the ways reaching a host can fail.

Connectors raise these; the executor's runner catches them; operations and the rolling upgrade only name them (none
of them imports a connector)."""
from __future__ import annotations

from dataclasses import dataclass


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
