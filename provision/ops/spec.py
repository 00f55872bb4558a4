"""Module specs: the names and arguments each module accepts, and the one validator of a task's arguments.

Operations register themselves with :func:`module`. :func:`check_args` validates and coerces arguments against a
spec, as Ansible's ArgumentSpecValidator does: the playbook loader calls it before any host is contacted (each
problem becomes a one-line InputError with file:line:key and the closest valid name), and the executor calls it
again through :func:`provision.ops.core.normalize` once templated values are rendered.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from provision.errors import InputError, closest
from provision.truthy import strict_bool
from provision.yamlsrc import describe, short_repr


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
    """Decorator registering an operation implementation under ``name`` and its short ``aliases``, each also as
    ``ansible.builtin.<n>`` and ``ansible.legacy.<n>`` (the names Ansible resolves them by)."""

    def wrap(fn):
        short = (name, *(a for a in aliases if "." not in a))   # a collection's name (x.y.z) stays as it is
        fqcn = tuple(f"{ns}.{n}" for n in short for ns in ("ansible.builtin", "ansible.legacy"))
        spec = ModuleSpec(name, dict(args or {}), free_form, runs_on_controller, tuple(aliases) + fqcn, fn)
        for n in (name, *spec.aliases):
            _REGISTRY[n] = spec
        return fn

    return wrap


def registry() -> Mapping[str, ModuleSpec]:
    """All known modules, importing the built-in operations on first use."""
    import provision.ops  # noqa: PLC0415 - registers the built-ins on first use
    provision.ops.load_all()
    return _REGISTRY


# ------------------------------------------------------------------------------------------------ validation

class ArgError(InputError):
    """One problem with a task's arguments: ``arg`` is the argument as written, None when the problem is the
    arguments as a whole (a missing required one, free-form text); ``key`` is what the message names."""

    def __init__(self, message: str, *, arg: str | None = None, key: str | None = None, hint: str | None = None):
        super().__init__(message, key=arg if key is None else key, hint=hint)
        self.arg = arg


VAR_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")   # a variable, fact or register name
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+(\.\d*)?([eE]-?\d+)?")
_TYPE_WORDS = {"str": "a string", "path": "a path (string)", "int": "an integer", "float": "a number",
               "bool": "a boolean", "list": "a list", "dict": "a mapping", "raw": "any value"}


def _never(_value: Any) -> bool:
    return False


def _coerce(kind: str, v: Any) -> Any:
    """``v`` as an argument of type ``kind``; ValueError when it is not one."""
    scalar = isinstance(v, (str, int, float)) and not isinstance(v, bool)
    if kind == "str" and (scalar or isinstance(v, bool)) or kind == "path" and scalar:
        return v
    if kind == "int" and isinstance(v, int) and not isinstance(v, bool):
        return v
    if kind == "int" and isinstance(v, str) and _INT.fullmatch(v.strip()):
        return int(v)
    if kind == "float" and scalar and (not isinstance(v, str) or _FLOAT.fullmatch(v.strip())):
        return float(v)
    if kind == "bool":
        return strict_bool(v)   # NotABoolean is a ValueError
    if kind == "list" and isinstance(v, (list, tuple)):
        return v
    if kind == "list" and scalar:
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else [v]
    if kind == "dict" and isinstance(v, Mapping):
        return v
    if kind not in _TYPE_WORDS or kind == "raw":   # any value, or a type no check knows
        return v
    raise ValueError(kind)


def check_args(spec: ModuleSpec, raw: Mapping[str, Any], *, templated: bool = False) -> tuple[dict, list[ArgError]]:
    """Validate and coerce a task's arguments: (arguments under their canonical names, defaults filled, values of
    type bool/int/float/list coerced; the problems found, in the order written). Unknown argument (with the
    closest name), an argument given twice through an alias, wrong type, a value outside ``choices``, a missing
    required argument. ``templated=True`` (load time): a value still holding a template is left as it is, to be
    checked once rendered. set_fact takes any variable name."""
    out: dict[str, Any] = {}
    errors: list[ArgError] = []
    if spec.name == "set_fact":
        for k, v in (raw or {}).items():
            if k == "_raw_params":
                errors.append(ArgError("set_fact takes key=value pairs or a mapping", key=spec.name))
            elif k != "cacheable" and not VAR_NAME.match(str(k)):
                errors.append(ArgError(f"set_fact: fact names must be variable names, got {k!r}", arg=str(k)))
            out[k] = v
        raw = {k: v for k, v in out.items() if k in spec.args}
    canonical = {a: n for n, s in spec.args.items() for a in (n, *s.aliases)}
    if spec.free_form:
        canonical.setdefault("_raw_params", "_raw_params")
    is_template = has_template = _never
    if templated:
        from provision.templating import has_template, is_template
    seen: dict[str, str] = {}
    for k, v in (raw or {}).items():
        name = canonical.get(k)
        if name is None:
            if k == "_raw_params":
                errors.append(ArgError(f"module '{spec.name}' takes key=value arguments or a mapping, not free-form "
                                       "text", arg=k, key=spec.name))
            else:
                errors.append(ArgError(f"unknown argument for module '{spec.name}'", arg=str(k),
                                       hint=closest(str(k), canonical)))
            continue
        if name in seen:
            errors.append(ArgError(f"argument given twice (as '{seen[name]}' and '{k}')", arg=str(k)))
            continue
        seen[name] = k
        out[name] = v
        a = spec.args.get(name)
        if a is None or v is None or is_template(v):
            continue
        try:
            out[name] = _coerce(a.type, v)
        except ValueError:
            errors.append(ArgError(f"expected {_TYPE_WORDS.get(a.type, a.type)}, got {describe(v)} {short_repr(v)}",
                                   arg=str(k)))
            continue
        if a.choices and not has_template(v):
            choices = [str(c) for c in a.choices]
            for item in (v if a.type == "list" and isinstance(v, list) else [v]):
                if item not in a.choices and str(item) not in choices:
                    errors.append(ArgError(f"invalid value {item!r} (choices: {', '.join(choices)})", arg=str(k),
                                           hint=closest(str(item), choices)))
                    break
    for name, a in spec.args.items():
        if a.required and name not in seen:
            errors.append(ArgError(f"module '{spec.name}' requires argument '{name}'", key=spec.name))
        elif out.get(name) is None and a.default is not None:
            out[name] = a.default
    return out, errors
