"""The `docker` connection: commands run with `docker exec` in a running container (ansible_connection: docker).

The container is the host's ``ansible_host`` (or its name). ``become`` switches user with ``docker exec -u``.
"""
from __future__ import annotations

import shlex
from typing import Mapping

from provision.connectors._become import with_env
from provision.connectors._proc import result, run_process
from provision.connectors.base import CommandResult, ConnectorError, Unreachable


class DockerConnector:
    kind = "docker"

    def __init__(self, name: str, container: str, *, user: str | None = None,
                 command_timeout: float | None = None, connect_timeout: float = 10.0):
        self.host = name
        self.container = container
        self.user = user
        self._default_timeout = command_timeout
        try:
            rc, out, err, _ = run_process(["docker", "inspect", "-f", "{{.State.Running}}", container],
                                          stdin=None, timeout=connect_timeout, host=name)
        except FileNotFoundError:
            raise Unreachable(f"{name}: the docker client is not installed") from None
        if rc != 0 or out.strip() != b"true":
            raise Unreachable(f"{name}: container {container} is not running: "
                              f"{(err or out).decode(errors='replace').strip()}")

    def _argv(self, command: str, become: bool, become_user: str) -> list[str]:
        argv = ["docker", "exec", "-i"]
        user = become_user if become else self.user
        if user:
            argv += ["-u", user]
        return argv + [self.container, "/bin/sh", "-c", command]

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            become: bool = False, env: Mapping[str, str] | None = None, become_user: str = "root") -> CommandResult:
        command, stdin = with_env(command, stdin, env)      # the environment in stdin, never on a command line
        rc, out, err, dur = run_process(self._argv(command, become, become_user), stdin=stdin,
                                        timeout=timeout or self._default_timeout, host=self.host)
        if rc in (125, 126) and b"is not running" in err or b"No such container" in err:
            raise Unreachable(f"{self.host}: {err.decode(errors='replace').strip()}")
        return result(rc, out, err, dur)

    def get(self, path: str, *, become: bool = False, become_user: str = "root") -> bytes:
        rc, out, err, _ = run_process(self._argv(f"cat -- {shlex.quote(path)}", become, become_user), stdin=None,
                                      timeout=self._default_timeout, host=self.host)
        if rc != 0:
            raise ConnectorError(f"{self.host}: cannot read {path}: {err.decode(errors='replace').strip()}")
        return out

    def close(self) -> None:
        pass
