"""The `local` connection: commands run on the controller itself (ansible_connection: local)."""
from __future__ import annotations

import getpass
import shlex
from typing import Mapping

from provision.connectors._become import Sudo, with_env
from provision.connectors._proc import result, run_process
from provision.connectors.base import CommandResult, ConnectorError


class LocalConnector:
    kind = "local"

    def __init__(self, host: str = "localhost", *, become_password: str | None = None,
                 command_timeout: float | None = None):
        self.host = host
        self._password = become_password
        self._default_timeout = command_timeout
        self.user = getpass.getuser()

    # -- become ---------------------------------------------------------------------------------------
    def _needs_sudo(self, become: bool, become_user: str) -> bool:
        return bool(become) and become_user != self.user

    def _wrap(self, command: str, stdin, become: bool, env, become_user: str):
        """(command, stdin, Sudo or None): the environment in stdin, sudo's conversation (connectors/_become.py)."""
        command, stdin = with_env(command, stdin, env)
        if not self._needs_sudo(become, become_user):
            return command, stdin, None
        sudo = Sudo(self.host, become_user, self._password)
        return sudo.wrap(command), stdin, sudo

    def _run(self, command: str, stdin, timeout, become: bool, env, become_user: str):
        cmd, data, sudo = self._wrap(command, stdin, become, env, become_user)
        return run_process(["/bin/sh", "-c", cmd], stdin=data, timeout=timeout or self._default_timeout,
                           host=self.host, sudo=sudo)

    # -- contract -------------------------------------------------------------------------------------
    def run(self, command: str, *, stdin=None, timeout: float | None = None,
            become: bool = False, env: Mapping[str, str] | None = None, become_user: str = "root") -> CommandResult:
        return result(*self._run(command, stdin, timeout, become, env, become_user))

    def get(self, path: str, *, become: bool = False, become_user: str = "root") -> bytes:
        if not self._needs_sudo(become, become_user):
            with open(path, "rb") as fh:
                return fh.read()
        rc, out, err, _ = self._run(f"cat -- {shlex.quote(path)}", None, None, become, None, become_user)
        if rc != 0:
            raise ConnectorError(f"{self.host}: cannot read {path}: {err.decode(errors='replace').strip()}")
        return out

    def close(self) -> None:
        pass
