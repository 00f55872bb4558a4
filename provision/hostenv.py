"""A task's ``environment:`` on its way to a host command.

* Names are POSIX shell names (``[A-Za-z_][A-Za-z0-9_]*``): checked when the playbook loads (file:line) and again
  once a templated environment is rendered; anything else (a ``;``, a space, ``$``) is refused, never quoted into
  a command.
* Values never go on a command line (``ps`` shows every local user the command lines): the connector sends
  :func:`env_preamble` as the first line of the command's stdin and prefixes the command with :data:`ENV_READER`,
  which reads that one line and exports its assignments before the command itself runs (after sudo, so the become
  user's command gets them). A value may hold any character but NUL (an environment cannot).
"""
from __future__ import annotations

import re
import shlex
from typing import Mapping

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VAR = "__gpufleet_env"
ENV_READER = f'IFS= read -r {_VAR} || exit 125; eval "${_VAR}" || exit 125; unset {_VAR}\n'


def env_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be an environment variable's name, or None."""
    if not isinstance(name, str) or not ENV_NAME.match(name):
        return f"{name!r} is not a variable name (letters, digits and '_', not starting with a digit)"
    return None


def env_problem(env: Mapping[str, str]) -> str | None:
    """Why a rendered environment cannot be sent, or None."""
    for k, v in env.items():
        why = env_name_problem(k)
        if why:
            return f"environment: {why}"
        if "\0" in str(v):
            return f"environment: {k}: a value cannot hold a NUL character"
    return None


def _assign(name: str, value: str) -> str:
    if "\n" not in value:
        return f"{name}={shlex.quote(value)}; export {name}"
    # one line on the wire: newlines are printed by printf (a trailing 'x' keeps trailing newlines)
    parts = "; printf '\\n'; ".join(f"printf %s {shlex.quote(p)}" for p in value.split("\n"))
    return f'{name}="$({parts}; printf x)"; {name}="${{{name}%x}}"; export {name}'


def env_preamble(env: Mapping[str, str]) -> bytes:
    """The one line :data:`ENV_READER` reads: shell assignments of every variable (names already checked)."""
    why = env_problem(env)
    if why:
        raise ValueError(why)
    return ("; ".join(_assign(k, str(v)) for k, v in env.items()) + "\n").encode()
