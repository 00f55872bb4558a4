"""Privilege escalation through sudo, and the environment of a command, shared by the connectors.

The become password (PROVISION_BECOME_PASS or --ask-become-pass) is sent only in answer to sudo's own prompt, never
to a command that did not ask for it. Each become command gets a prompt and a marker unique to it (:class:`Sudo`):

    sudo -S -p '<prompt>' -H -u USER -- /bin/sh -c 'echo <marker>; <command>'

and the connector, before it sends anything else, reads the command's output until either shows up (within
:data:`BECOME_TIMEOUT`): the prompt on stderr gets the password; the marker on stdout means the command itself now
runs, and only then does its stdin go. Where sudo does not ask (a NOPASSWD rule, a cached credential), the marker
comes first and the password is never sent; a second prompt means the password was refused and the command is
stopped. The password never appears in a command line, a log, a file or the command's stdin.

The environment (``env``) travels the same way as stdin, never on the command line: provision/hostenv.py.
"""
from __future__ import annotations

import secrets
import shlex
from typing import Mapping

from provision.hostenv import ENV_READER, env_preamble
from provision.hostio import ConnectorError

BECOME_TIMEOUT = 30.0      # seconds for sudo to ask for the password or to start the command
NEEDS_PASSWORD = "sudo needs a password: set PROVISION_BECOME_PASS or use --ask-become-pass"


def with_env(command: str, stdin, env: Mapping[str, str] | None):
    """(command, stdin) that set ``env`` from the first line of stdin (hostenv.ENV_READER), or as they are."""
    if not env:
        return command, stdin
    first = env_preamble(env)
    return ENV_READER + command, [first] if stdin is None else [first, stdin]


class Sudo:
    """One become command's sudo conversation. ``wrap`` gives the command line; the connector feeds what the
    command prints to :meth:`step` until :attr:`started`, writing what step returns to the command's stdin."""

    def __init__(self, host: str, user: str, password: str | None):
        token = secrets.token_hex(12)
        self.host, self.user, self.password = host, user, password
        self.prompt = f"[sudo for gpufleet {token[:8]}] password: ".encode()
        self.marker = f"__gpufleet_become_{token}__".encode()
        self.started = False        # the marker came: the command runs, its stdin may go
        self.asked = 0              # prompts seen
        self._out = b""
        self._err = b""

    def wrap(self, command: str) -> str:
        inner = f"echo {self.marker.decode()}; {command}"
        return (f"sudo -S -p {shlex.quote(self.prompt.decode())} -H -u {shlex.quote(self.user)} -- "
                f"/bin/sh -c {shlex.quote(inner)}")

    def step(self, out: bytes, err: bytes) -> tuple[bytes | None, bytes, bytes]:
        """What arrived -> (bytes to send to the command's stdin now or None, stdout and stderr that are the
        command's own). Raises ConnectorError when sudo needs a password it cannot have or refuses the one sent."""
        self._out += out
        self._err += err
        send = None
        while self.prompt in self._err:
            self._err = self._err.replace(self.prompt, b"", 1)
            self.asked += 1
            if self.password is None:
                raise ConnectorError(f"{self.host}: {NEEDS_PASSWORD}")
            if self.asked > 1:
                raise ConnectorError(f"{self.host}: sudo refused the become password for {self.user} "
                                     "(PROVISION_BECOME_PASS / --ask-become-pass)")
            send = self.password.encode() + b"\n"
        line = self.marker + b"\n"
        if not self.started and line in self._out:
            before, _, after = self._out.partition(line)
            self.started, self._out = True, b""
            err, self._err = self._err, b""
            return send, before + after, err
        if self.started:
            out, self._out, err, self._err = self._out, b"", self._err, b""
            return send, out, err
        return send, b"", b""

    def leftover(self) -> tuple[bytes, bytes]:
        """Output held while waiting (the command ended before the marker: sudo's own complaint)."""
        out, err = self._out, self._err
        self._out = self._err = b""
        return out, err.replace(self.prompt, b"")

    def ended(self, rc: int) -> None:
        """The command is over: sudo itself missing is one clear line."""
        if not self.started and rc == 127:
            raise ConnectorError(f"{self.host}: become needs sudo, which is not installed")

    def timed_out(self) -> ConnectorError:
        return ConnectorError(f"{self.host}: sudo neither asked for a password nor started the command within "
                              f"{BECOME_TIMEOUT:g}s")

