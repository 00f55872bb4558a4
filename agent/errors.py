"""Bad input, as one line naming file, line and key, and the nearest valid choice.

Defined here because the agent ships alone (the ``gpufleet-agent`` distribution) and imports nothing from the
provisioner; the provisioner uses the same class and exit codes through :mod:`provision.errors`. ``gpu-agent``
prints ``gpu-agent: <str(err)>`` and exits with ``err.exit_code``: 4 for a file it cannot parse, 5 for a bad
flag or option (as ansible-playbook does).
"""
from __future__ import annotations

import difflib
from typing import Iterable

EXIT_PARSE = 4
EXIT_OPTIONS = 5


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid choice nearest to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), sorted(set(choices)), n=1, cutoff=0.6)
    return matches[0] if matches else None


class InputError(Exception):
    """Bad input from a file or the command line."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, hint: str | None = None, choices: Iterable[str] | None = None,
                 exit_code: int = EXIT_PARSE):
        if hint is None and choices is not None and key is not None:
            hint = closest(key, choices)
        self.message, self.file, self.line, self.key, self.hint = message, file, line, key, hint
        self.exit_code = exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        hint = f" (did you mean '{self.hint}'?)" if self.hint else ""
        return f"{where}{key}{self.message}{hint}"
