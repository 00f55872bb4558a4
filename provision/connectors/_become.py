"""Privilege escalation through sudo, shared by the connectors.

The password (PROVISION_BECOME_PASS or --ask-become-pass) is written to sudo's stdin (``-S``) and never appears in a
command line or a log. ``-k`` makes sudo ask every time, so the password line can never leak into the command's own
stdin when a cached credential would have skipped the prompt.
"""
from __future__ import annotations

import shlex
from typing import Mapping

SUDO_PROMPT = "[provision-sudo]"


def env_prefix(env: Mapping[str, str] | None) -> str:
    if not env:
        return ""
    return "".join(f"export {k}={shlex.quote(str(v))}; " for k, v in env.items())


def sudo_wrap(command: str, *, user: str = "root", mode: str = "nopass") -> str:
    """``mode``: 'nopass' (sudo -n) or 'pass' (sudo -S -k, password first line of stdin)."""
    inner = shlex.quote(command)
    u = shlex.quote(user)
    if mode == "pass":
        return f"sudo -k -S -p {shlex.quote(SUDO_PROMPT)} -H -u {u} -- /bin/sh -c {inner}"
    return f"sudo -n -H -u {u} -- /bin/sh -c {inner}"


def strip_prompt(stderr: str) -> str:
    return stderr.replace(SUDO_PROMPT, "")
