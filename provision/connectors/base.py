"""The connector contract: every way of reaching a host offers run/get/close (files are written by the executor's
runner as a command: provision/executor/runner.py put_command).

Connectors never decide anything; operations and the executor do. Deadlines are enforced by the connector
itself (paramiko's timeouts are per read, so ``run`` keeps its own wall-clock deadline).
"""
from __future__ import annotations

from typing import Mapping, Protocol

from provision.hostio import (CommandResult, CommandTimeout, ConnectorError, HostKeyMismatch,  # noqa: F401
                             Unreachable)


class Connector(Protocol):
    host: str

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            become: bool = False, env: Mapping[str, str] | None = None) -> CommandResult: ...

    def get(self, path: str, *, become: bool = False) -> bytes: ...

    def close(self) -> None: ...
