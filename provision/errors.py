"""Errors the user can act on: one line naming file, line and key, and the nearest valid choice.

Everything that reads user input raises :class:`InputError`; the CLI prints ``str(err)`` and exits with
``err.exit_code`` (4 for inventory/playbook parse errors, 5 for bad options, as ansible-playbook does).
No traceback ever reaches the user for bad input.
"""
from __future__ import annotations

# One InputError, one closest(), shared with the agent: defined in agent/errors.py, because the agent ships alone
# and may not import the provisioner.
from agent.errors import EXIT_OPTIONS, EXIT_PARSE, InputError, closest  # noqa: F401  (re-exported)

EXIT_OK = 0
EXIT_FAILED = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 99
EXIT_UNEXPECTED = 250


class OptionError(InputError):
    """Bad command-line options (exit 5)."""

    def __init__(self, message: str, **kw):
        kw.setdefault("exit_code", EXIT_OPTIONS)
        super().__init__(message, **kw)
