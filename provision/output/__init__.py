"""Reporters: how a run is shown. No logic here; the executor calls them (from worker threads: they lock).

:class:`TextReporter` prints Ansible's live lines and PLAY RECAP (colour and a progress line only on a TTY);
:class:`JsonReporter` prints one JSON document at the end (``--json``).
:class:`SilentHooks` are the hooks a reporter that prints at the end inherits. One reporter a file: ``text``,
``jsondoc``, ``silent``.
"""
from __future__ import annotations

from provision.output.jsondoc import JsonReporter
from provision.output.silent import SilentHooks
from provision.output.text import TextReporter

__all__ = ["JsonReporter", "SilentHooks", "TextReporter", "make_reporter"]


def make_reporter(args, *, diff: bool = False):
    """The reporter the command line asks for: ``--json`` or the live text."""
    if getattr(args, "json", False):
        return JsonReporter(diff=diff)
    return TextReporter(verbosity=getattr(args, "verbose", 0) or 0, diff=diff)
