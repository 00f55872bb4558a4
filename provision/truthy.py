"""The one truthy/falsy table: Ansible's spellings of true and false, and the two ways to read a value with it.

:func:`strict_bool` is for input that is being validated (play keywords, module arguments, ``ansible_become``):
anything outside the table is an error naming the key. :func:`lenient_bool` is for values that are only tested
(the ``bool`` filter, a ``when`` that renders to a word, host variables read as switches): true when the value is
one of the true spellings, false otherwise. Strings are compared without case and surrounding blanks.
"""
from __future__ import annotations

from typing import Any

TRUE = frozenset({"y", "yes", "on", "1", "true", "t", 1, 1.0, True})
FALSE = frozenset({"n", "no", "off", "0", "false", "f", 0, 0.0, False})


class NotABoolean(ValueError):
    """A value outside the table where a boolean is required; ``str()`` names the key when one was given."""

    def __init__(self, value: Any, key: str | None = None):
        self.value, self.key = value, key
        self.message = f"expected a boolean (true/false), got {value!r}"
        super().__init__(f"{key}: {self.message}" if key else self.message)


def _spelling(value: Any) -> Any:
    """The value as the table lists it: strings folded, numbers and booleans as they are, anything else None."""
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, (bool, int, float)):
        return value
    return None


def strict_bool(value: Any, key: str | None = None) -> bool:
    """True or False for a spelling in the table; :class:`NotABoolean` (naming ``key``) for anything else."""
    s = _spelling(value)
    if s in TRUE:
        return True
    if s in FALSE:
        return False
    raise NotABoolean(value, key)


def lenient_bool(value: Any) -> bool:
    """True for a true spelling in the table, False for anything else (None, other words, other numbers)."""
    return _spelling(value) in TRUE
