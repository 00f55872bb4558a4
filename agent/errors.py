"""gpu-agent's bad-input errors: one line naming file, line and key, and the nearest valid choice.

The agent ships alone (the ``gpufleet-agent`` distribution), so it keeps its own copy of this small contract
instead of importing the provisioner's: ``gpu-agent`` prints ``gpu-agent: <str(err)>`` and exits with
``err.exit_code``, 4 for a bad config file and 5 for a bad flag or an address it cannot listen on.
"""
from __future__ import annotations

import difflib
from typing import Iterable

EXIT_BAD_CONFIG = 4
EXIT_BAD_FLAG = 5


def nearest_choice(name: str, choices: Iterable[str]) -> str | None:
    """The valid choice nearest to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), sorted(set(choices)), n=1, cutoff=0.6)
    return matches[0] if matches else None


class AgentInputError(Exception):
    """Bad input from a config file or the command line."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, hint: str | None = None, choices: Iterable[str] | None = None,
                 exit_code: int = EXIT_BAD_CONFIG):
        if hint is None and choices is not None and key is not None:
            hint = nearest_choice(key, choices)
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
