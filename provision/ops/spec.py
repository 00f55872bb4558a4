"""Module specs: the names and arguments each module accepts.

The playbook loader validates every task against these specs *before* any host is contacted (unknown module or
argument → one line with the closest valid name). Operations register themselves with :func:`module`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

_UNSET = object()


@dataclass(frozen=True)
class ArgSpec:
    type: str = "str"            # str, int, float, bool, list, dict, path, raw
    required: bool = False
    default: Any = None
    choices: tuple = ()
    aliases: tuple = ()
    no_log: bool = False         # value never shown in output or diff


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    args: Mapping[str, ArgSpec] = field(default_factory=dict)
    free_form: bool = False      # `command: echo hi` style: the string goes to the `_raw_params` argument
    runs_on_controller: bool = False   # debug, set_fact, assert, fail, meta: no connection needed
    aliases: tuple = ()          # e.g. ansible.builtin.apt
    impl: Callable | None = None


_REGISTRY: dict[str, ModuleSpec] = {}


def module(name: str, *, args: Mapping[str, ArgSpec] | None = None, free_form: bool = False,
           runs_on_controller: bool = False, aliases: tuple = ()):
    """Decorator registering an operation implementation under ``name`` (and ``ansible.builtin.name``)."""

    def wrap(fn):
        spec = ModuleSpec(name, dict(args or {}), free_form, runs_on_controller,
                          tuple(aliases) + (f"ansible.builtin.{name}",), fn)
        for n in (name, *spec.aliases):
            _REGISTRY[n] = spec
        return fn

    return wrap


def registry() -> Mapping[str, ModuleSpec]:
    """All known modules, importing the built-in operations on first use."""
    import provision.ops  # noqa: PLC0415 - registers the built-ins on first use
    provision.ops.load_all()
    return _REGISTRY
