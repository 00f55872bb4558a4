"""Jinja2 templating with Ansible's semantics: StrictUndefined, Ansible's common filters and tests, native values for
a string that is exactly one ``{{ expr }}``, lazily templated variables (``a: "{{ b }}"``), compiled-template caches.

Public API (used by the executor and the modules):

- :func:`render` ``(value, variables) -> Any`` recursive over dicts/lists; dict entries whose value renders to
  :data:`OMIT` (``{{ omit }}``) are dropped.
- :func:`evaluate` ``(expr, variables) -> Any`` for bare expressions (``when``/``changed_when``/``failed_when``/
  ``until``); :func:`conditional` ``(exprs, variables) -> bool`` ANDs a list of them as Ansible does.
- :func:`render_template_file` ``(path, variables, search_path=()) -> str`` for the template module.
- Every failure raises :class:`TemplateError` (the executor reports it as a task failure).

The filters are in :mod:`.filters`, the tests in :mod:`.jinja_tests`; :mod:`.base` holds what both share.

Variables can be any Mapping. If it has a ``raw_keys`` attribute (see provision.variables.VarDict), the values of
those keys (facts, registered results, set_fact values, magic vars) are never templated again — command output
containing ``{{`` stays text, as Ansible's "unsafe" marking does.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Iterable

import jinja2
from jinja2 import nodes
from jinja2.meta import find_undeclared_variables

from provision.templating.base import OMIT, TemplateError, Unsafe
from provision.templating.filters import FILTERS
from provision.templating.jinja_tests import TESTS
from provision.templating.lookups import file_lookup
from provision.truthy import NotABoolean, strict_bool


# ------------------------------------------------------------------------------------------------ globals

@jinja2.pass_context
def _lookup(context, name, *terms, **kw):
    if str(name).startswith(("ansible.builtin.", "ansible.legacy.")):
        name = str(name).rsplit(".", 1)[-1]
    if name in ("first_found", "fileglob"):
        found = file_lookup(name, list(terms), context.get("role_path"), context.get("playbook_dir"), **kw)
        if name == "first_found":
            return found if kw.get("wantlist") else (found[0] if found else "")
        return found if kw.get("wantlist") else ",".join(found)
    out = []
    for term in terms:
        if name == "env":
            out.append(os.environ.get(str(term), kw.get("default", "")))
        elif name == "file":
            try:
                with open(os.path.expanduser(str(term)), encoding="utf-8") as fh:
                    out.append(fh.read().rstrip("\n") if kw.get("rstrip", True) else fh.read())
            except OSError as err:
                raise TemplateError(f"lookup('file'): cannot read {term}: {err.strerror}") from None
        elif name == "items" or name == "list":
            out.extend(term if isinstance(term, list) else [term])
        else:
            raise TemplateError(f"lookup plugin {name!r} is not supported (supported: env, file, fileglob, "
                                "first_found, items, list)")
    if name in ("items", "list"):
        return out
    return ",".join(str(x) for x in out) if not kw.get("wantlist") else out


@jinja2.pass_context
def _query(context, name, *terms, **kw):
    kw["wantlist"] = True
    res = _lookup(context, name, *terms, **kw)
    return res if isinstance(res, list) else [res]


def _now(utc=False, fmt=None):
    t = datetime.datetime.now(datetime.timezone.utc) if utc else datetime.datetime.now()
    return t.strftime(fmt) if fmt else t


ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    keep_trailing_newline=True,
    extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"],
    autoescape=False,
)
ENV.filters.update(FILTERS)
ENV.filters["d"] = ENV.filters["default"]
ENV.tests.update(TESTS)
ENV.globals.update(lookup=_lookup, query=_query, q=_query, now=_now)

_TEMPLATE_MARKERS = ("{{", "{%", "{#")


def is_template(value: Any) -> bool:
    return isinstance(value, str) and not isinstance(value, Unsafe) and any(m in value for m in _TEMPLATE_MARKERS)


def has_template(value: Any) -> bool:
    """True when value, or anything inside it, would be changed by templating."""
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(has_template(k) or has_template(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_template(v) for v in value)
    return False


# ------------------------------------------------------------------------------------------------ compile caches

def _short(source: str, n: int = 80) -> str:
    s = source.replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 3] + "..."


def _syntax_error(err: jinja2.TemplateSyntaxError, source: str) -> TemplateError:
    return TemplateError(f"template syntax error: {err.message} in '{_short(source)}'")


@lru_cache(maxsize=8192)
def _compile(source: str) -> tuple[jinja2.Template, str | None]:
    """Compile a template string. Returns (template, inner expression if the string is exactly one {{ expr }})."""
    try:
        tree = ENV.parse(source)
        template = ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as err:
        raise _syntax_error(err, source) from None
    inner = None
    body = tree.body
    if (len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1
            and not isinstance(body[0].nodes[0], nodes.TemplateData)):
        text = source.strip()
        if text.startswith("{{") and text.endswith("}}"):
            inner = text[2:-2].strip("-+").strip()
    return template, inner


@lru_cache(maxsize=8192)
def _compile_expr(expr: str) -> jinja2.Template:
    try:
        compiled = ENV.compile_expression(expr, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"expression syntax error: {err.message} in '{_short(expr)}'") from None
    return compiled._template  # the Template that assigns the expression to 'result'


# ------------------------------------------------------------------------------------------------ lazy variables

class _Vars(Mapping):
    """A view over the variables that templates values lazily on access and detects self-references."""

    def __init__(self, base: Mapping, extra: Mapping | None = None, *, with_globals: bool = True):
        self._base = base
        self._extra = extra or {}
        self._globals = ENV.globals if with_globals else {}
        self._raw = getattr(base, "raw_keys", ())
        self._cache: dict = {}
        self._resolving: set = set()

    def __contains__(self, key) -> bool:
        return key in self._extra or key in self._base or key in self._globals

    def __getitem__(self, key):
        if key in self._extra:
            return self._extra[key]
        if key in self._cache:
            return self._cache[key]
        if key not in self._base:
            return self._globals[key]
        value = self._base[key]
        if key in self._raw or not has_template(value):
            return value
        if key in self._resolving:
            raise TemplateError(f"recursive loop detected in template for variable '{key}'")
        self._resolving.add(key)
        try:
            result = _render(value, self)
        finally:
            self._resolving.discard(key)
        self._cache[key] = result
        return result

    def __iter__(self):
        seen = set()
        for src in (self._extra, self._base, self._globals):
            for k in src:
                if k not in seen:
                    seen.add(k)
                    yield k

    def __len__(self):
        return sum(1 for _ in self)


def lazy(variables: Mapping) -> Mapping:
    """A read-only view of ``variables`` whose templated values render on access (used for ``hostvars[h]``)."""
    return _Vars(variables, with_globals=False)


def _view(variables: Mapping | None) -> _Vars:
    if isinstance(variables, _Vars):
        return variables
    return _Vars(variables if variables is not None else {})


def _run(template: jinja2.Template, view: _Vars):
    ctx = template.new_context(view, shared=True)
    return ctx, template.root_render_func(ctx)


def _check_defined(value: Any, source: str) -> Any:
    if isinstance(value, jinja2.Undefined):
        try:
            value._fail_with_undefined_error()
        except jinja2.UndefinedError as err:
            raise TemplateError(f"{err.message} in '{_short(source)}'") from None
    if isinstance(value, list):
        for v in value:
            _check_defined(v, source)
    elif isinstance(value, dict):
        for v in value.values():
            _check_defined(v, source)
    return value


def _wrap(err: Exception, source: str) -> TemplateError:
    if isinstance(err, TemplateError):
        return err
    if isinstance(err, jinja2.UndefinedError):
        return TemplateError(f"{err.message} in '{_short(source)}'")
    if isinstance(err, jinja2.TemplateError):
        return TemplateError(f"{err.message or type(err).__name__} in '{_short(source)}'")
    return TemplateError(f"{type(err).__name__}: {err} in '{_short(source)}'")


def _eval_expr(expr: str, view: _Vars, source: str | None = None) -> Any:
    template = _compile_expr(expr)
    try:
        ctx, gen = _run(template, view)
        for _ in gen:
            pass
        return _check_defined(ctx.vars["result"], source or expr)
    except Exception as err:  # noqa: BLE001 - every template failure becomes TemplateError
        raise _wrap(err, source or expr) from None


def _render_str(source: str, view: _Vars) -> Any:
    if not is_template(source):
        return source
    template, inner = _compile(source)
    if inner is not None:
        return _eval_expr(inner, view, source)
    try:
        _ctx, gen = _run(template, view)
        return "".join(gen)
    except Exception as err:  # noqa: BLE001
        raise _wrap(err, source) from None


def _render(value: Any, view: _Vars) -> Any:
    if isinstance(value, str):
        return _render_str(value, view)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            rv = _render(v, view)
            if isinstance(rv, str) and rv == OMIT:
                continue
            out[_render(k, view) if isinstance(k, str) else k] = rv
        return out
    if isinstance(value, (list, tuple)):
        return [rv for rv in (_render(v, view) for v in value) if not (isinstance(rv, str) and rv == OMIT)]
    return value


# ------------------------------------------------------------------------------------------------ public API

def render(value: Any, variables: Mapping | None) -> Any:
    """Template ``value`` (str, or dicts/lists of them) with ``variables``; exactly-one-expression strings keep
    their native type. Raises TemplateError."""
    if not has_template(value):
        return value
    return _render(value, _view(variables))


def evaluate(expr: Any, variables: Mapping | None) -> Any:
    """Evaluate a bare Jinja2 expression (``when``, ``changed_when``, ``failed_when``, ``until``)."""
    if isinstance(expr, bool) or expr is None or isinstance(expr, (int, float)):
        return expr
    text = str(expr).strip()
    view = _view(variables)
    if is_template(text):  # `when: "{{ x }}"` (Ansible warns but accepts)
        value = _render_str(text, view)
        if isinstance(value, str):
            if not value.strip():
                return False
            try:
                return strict_bool(value)   # a word of the truthy table
            except NotABoolean:
                return _eval_expr(value, view)
        return value
    if not text:
        raise TemplateError("empty conditional")
    return _eval_expr(text, view)


def conditional(exprs: Iterable[Any] | Any, variables: Mapping | None) -> bool:
    """All conditions true (a list of ``when`` strings is ANDed, as in Ansible)."""
    if isinstance(exprs, (str, bool)) or exprs is None:
        exprs = [] if exprs is None else [exprs]
    view = _view(variables)
    for expr in exprs:
        if not evaluate(expr, view):
            return False
    return True


@lru_cache(maxsize=64)
def _file_env(search_path: tuple[str, ...]) -> jinja2.Environment:
    return ENV.overlay(loader=jinja2.FileSystemLoader(list(search_path)), cache_size=400)


def render_template_file(path: str, variables: Mapping | None, search_path: Sequence[str] = ()) -> str:
    """Render a template file (the template module). Includes resolve beside the file, then in search_path."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise TemplateError(f"template file not found: {path}")
    dirs = (os.path.dirname(path), *[os.path.abspath(d) for d in search_path])
    env = _file_env(dirs)
    extra = {"template_path": path, "template_fullpath": path,
             "ansible_managed": "Managed by gpufleet provision: local changes will be overwritten"}
    view = _Vars(variables if variables is not None else {}, extra)
    try:
        template = env.get_template(os.path.basename(path))
        _ctx, gen = _run(template, view)
        return "".join(gen)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"{path}:{err.lineno}: template syntax error: {err.message}") from None
    except Exception as err:  # noqa: BLE001
        lineno = _template_lineno(err, path)
        where = f"{path}:{lineno}" if lineno else path
        raise TemplateError(f"{where}: {_wrap(err, os.path.basename(path)).message}") from None


def _template_lineno(err: BaseException, path: str) -> int | None:
    tb = err.__traceback__
    line = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == path or code.co_filename.endswith(os.path.basename(path)):
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None:
        return None
    # Jinja maps generated code lines back through the template's debug info.
    try:
        template = _file_env((os.path.dirname(path),)).get_template(os.path.basename(path))
        return template.get_corresponding_lineno(line)
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------------------ static analysis

GUARD_TESTS = frozenset({"defined", "undefined"})
GUARD_FILTERS = frozenset({"default", "d", "mandatory"})


def _names_in(node: nodes.Node) -> set[str]:
    names = {n.name for n in node.find_all(nodes.Name)}
    if isinstance(node, nodes.Name):
        names.add(node.name)
    return names


def analyse(source: str, *, expression: bool = False) -> tuple[set[str], set[str]]:
    """Static view of a template (or of a bare expression): (undeclared variable names, names guarded by
    ``is defined`` / ``| default``). Raises TemplateError for syntax errors and unknown filters/tests."""
    text = "{{ (" + source + ") }}" if expression else source
    try:
        tree = ENV.parse(text)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"{'expression' if expression else 'template'} syntax error: {err.message} "
                            f"in '{_short(source)}'") from None
    for f in tree.find_all(nodes.Filter):
        if f.name not in ENV.filters:
            raise UnknownName("filter", f.name, ENV.filters)
    for t in tree.find_all(nodes.Test):
        if t.name not in ENV.tests:
            raise UnknownName("test", t.name, ENV.tests)
    undeclared = set(find_undeclared_variables(tree)) - set(ENV.globals)
    guarded: set[str] = set()
    for t in tree.find_all(nodes.Test):
        if t.name in GUARD_TESTS:
            guarded |= _names_in(t.node)
    for f in tree.find_all(nodes.Filter):
        if f.name in GUARD_FILTERS and f.node is not None:
            guarded |= _names_in(f.node)
    return undeclared, guarded


class UnknownName(TemplateError):
    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        super().__init__(f"unknown {kind} '{name}'")
