"""The `local` connection: commands run on the controller itself (ansible_connection: local)."""
from __future__ import annotations

import getpass
import shlex
from typing import Mapping

from provision.connectors._become import env_prefix, strip_prompt, sudo_wrap
from provision.connectors._proc import result, run_process
from provision.connectors.base import CommandResult, ConnectorError


class LocalConnector:
    kind = "local"

    def __init__(self, host: str = "localhost", *, become_password: str | None = None,
                 command_timeout: float | None = None):
        self.host = host
        self._password = become_password
        self._default_timeout = command_timeout
        self._sudo_mode: str | None = None
        self.user = getpass.getuser()

    # -- become ---------------------------------------------------------------------------------------
    def _needs_sudo(self, become: bool, become_user: str) -> bool:
        return bool(become) and become_user != self.user

    def _sudo(self) -> str:
        if self._sudo_mode is None:
            rc, _, _, _ = run_process(["/bin/sh", "-c", "sudo -n true"], stdin=None, timeout=30, host=self.host)
            if rc == 127:
                raise ConnectorError(f"{self.host}: become needs sudo, which is not installed")
            self._sudo_mode = "nopass" if rc == 0 else "pass"
        return self._sudo_mode

    def _wrap(self, command: str, stdin: bytes | None, become: bool, env, become_user: str):
        command = env_prefix(env) + command
        if not self._needs_sudo(become, become_user):
            return command, stdin
        mode = self._sudo()
        if mode == "pass":
            if self._password is None:
                raise ConnectorError(f"{self.host}: sudo needs a password: set PROVISION_BECOME_PASS or use "
                                     "--ask-become-pass")
            stdin = self._password.encode() + b"\n" + (stdin or b"")
        return sudo_wrap(command, user=become_user, mode=mode), stdin

    # -- contract -------------------------------------------------------------------------------------
    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            become: bool = False, env: Mapping[str, str] | None = None, become_user: str = "root") -> CommandResult:
        cmd, data = self._wrap(command, stdin, become, env, become_user)
        rc, out, err, dur = run_process(["/bin/sh", "-c", cmd], stdin=data,
                                        timeout=timeout or self._default_timeout, host=self.host)
        res = result(rc, out, err, dur)
        return CommandResult(res.rc, res.stdout, strip_prompt(res.stderr), res.duration)

    def get(self, path: str, *, become: bool = False, become_user: str = "root") -> bytes:
        if not self._needs_sudo(become, become_user):
            with open(path, "rb") as fh:
                return fh.read()
        cmd, data = self._wrap(f"cat -- {shlex.quote(path)}", None, become, None, become_user)
        rc, out, err, _ = run_process(["/bin/sh", "-c", cmd], stdin=data, timeout=self._default_timeout,
                                      host=self.host)
        if rc != 0:
            raise ConnectorError(f"{self.host}: cannot read {path}: {err.decode(errors='replace').strip()}")
        return out

    def close(self) -> None:
        pass
