"""Jinja2 templating with Ansible's semantics: StrictUndefined, Ansible's common filters and tests, native values for
a string that is exactly one ``{{ expr }}``, lazily templated variables (``a: "{{ b }}"``), compiled-template caches.

Public API (used by the executor and the modules):

- :func:`render` ``(value, variables) -> Any`` recursive over dicts/lists; dict entries whose value renders to
  :data:`OMIT` (``{{ omit }}``) are dropped.
- :func:`evaluate` ``(expr, variables) -> Any`` for bare expressions (``when``/``changed_when``/``failed_when``/
  ``until``); :func:`conditional` ``(exprs, variables) -> bool`` ANDs a list of them as Ansible does.
- :func:`render_template_file` ``(path, variables, search_path=()) -> str`` for the template module.
- Every failure raises :class:`TemplateError` (the executor reports it as a task failure).

Variables can be any Mapping. If it has a ``raw_keys`` attribute (see provision.variables.VarDict), the values of
those keys (facts, registered results, set_fact values, magic vars) are never templated again — command output
containing ``{{`` stays text, as Ansible's "unsafe" marking does.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Iterable

import jinja2
import yaml
from jinja2 import nodes
from jinja2.meta import find_undeclared_variables

from provision.truthy import NotABoolean, lenient_bool, strict_bool

OMIT = "__omit_place_holder__gpufleet__"


class TemplateError(Exception):
    """A template failed to compile or render (undefined variable, bad filter argument...)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class Unsafe(str):
    """A string that is never templated (YAML ``!unsafe``)."""


# ------------------------------------------------------------------------------------------------ filters

def _plainify(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, (int, float, bool)) else k: _plainify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plainify(v) for v in value]
    if isinstance(value, Unsafe):
        return str(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return str(value)


def _to_json(value, **kw):
    return json.dumps(value, default=_json_default, **kw)


def _to_nice_json(value, indent=4, sort_keys=True, **kw):
    return json.dumps(value, default=_json_default, indent=indent, sort_keys=sort_keys, separators=(",", ": "), **kw)


def _to_yaml(value, **kw):
    kw.setdefault("default_flow_style", None)
    return yaml.safe_dump(_plainify(value), allow_unicode=True, **kw)


def _to_nice_yaml(value, indent=4, **kw):
    return yaml.safe_dump(_plainify(value), indent=indent, allow_unicode=True, default_flow_style=False, **kw)


def _from_json(value):
    try:
        return json.loads(value)
    except (TypeError, ValueError) as err:
        raise TemplateError(f"from_json: {err}") from None


def _from_yaml(value):
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise TemplateError(f"from_yaml: {err}") from None


def _re_flags(ignorecase=False, multiline=False):
    return (re.I if ignorecase else 0) | (re.M if multiline else 0)


def _regex_search(value, regex, *groups, ignorecase=False, multiline=False):
    match = re.search(regex, str(value), _re_flags(ignorecase, multiline))
    if not match:
        return None
    if not groups:
        return match.group()
    out = []
    for g in groups:
        m = re.fullmatch(r"\\g<(\w+)>|\\(\d+)", g)
        if not m:
            raise TemplateError(f"regex_search: unknown group argument {g!r} (use '\\\\1' or '\\\\g<name>')")
        out.append(match.group(m.group(1) or int(m.group(2))))
    return out


def _regex_replace(value="", pattern="", replacement="", ignorecase=False, multiline=False, count=0):
    return re.sub(pattern, replacement, str(value), count=count, flags=_re_flags(ignorecase, multiline))


def _regex_findall(value, regex, ignorecase=False, multiline=False):
    return re.findall(regex, str(value), _re_flags(ignorecase, multiline))


def _mandatory(value, msg=None):
    if isinstance(value, jinja2.Undefined):
        name = getattr(value, "_undefined_name", None)
        raise TemplateError(msg or f"mandatory variable {name!r} not defined")
    return value


def _ternary(value, true_val, false_val, none_val=None):
    if value is None and none_val is not None:
        return none_val
    return true_val if value else false_val


def _merge(a: Any, b: Any, recursive: bool, list_merge: str) -> Any:
    if recursive and isinstance(a, Mapping) and isinstance(b, Mapping):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v, True, list_merge) if k in out else v
        return out
    if isinstance(a, list) and isinstance(b, list):
        if list_merge == "append":
            return a + b
        if list_merge == "prepend":
            return b + a
        if list_merge == "keep":
            return a
    return b


def _combine(*dicts, recursive=False, list_merge="replace"):
    out: dict = {}
    for d in dicts:
        for item in (d if isinstance(d, list) else [d]):
            if not isinstance(item, Mapping):
                raise TemplateError(f"combine expects dictionaries, got {type(item).__name__}")
            for k, v in item.items():
                out[k] = _merge(out[k], v, recursive, list_merge) if k in out else v
    return out


def _dict2items(value, key_name="key", value_name="value"):
    if not isinstance(value, Mapping):
        raise TemplateError(f"dict2items expects a dictionary, got {type(value).__name__}")
    return [{key_name: k, value_name: v} for k, v in value.items()]


def _items2dict(value, key_name="key", value_name="value"):
    return {item[key_name]: item[value_name] for item in value}


def _flatten(value, levels=None, skip_nulls=True):
    out = []
    for item in value:
        if item is None and skip_nulls:
            continue
        if isinstance(item, (list, tuple)) and (levels is None or levels > 0):
            out.extend(_flatten(item, None if levels is None else levels - 1, skip_nulls))
        else:
            out.append(item)
    return out


def _unique_list(seq):
    out = []
    for item in seq:
        if item not in out:
            out.append(item)
    return out


def _b64encode(value, encoding="utf-8"):
    data = value if isinstance(value, bytes) else str(value).encode(encoding)
    return base64.b64encode(data).decode("ascii")


def _b64decode(value, encoding="utf-8"):
    return base64.b64decode(value).decode(encoding)


def _hash(value, algorithm="sha1"):
    try:
        h = hashlib.new(algorithm)
    except ValueError:
        raise TemplateError(f"hash: unknown algorithm {algorithm!r}") from None
    h.update(str(value).encode("utf-8"))
    return h.hexdigest()


def _split(value, sep=None, maxsplit=-1):
    return str(value).split(sep, maxsplit)


FILTERS = {
    "bool": lenient_bool,   # Ansible's bool filter
    "to_json": _to_json,
    "to_nice_json": _to_nice_json,
    "to_yaml": _to_yaml,
    "to_nice_yaml": _to_nice_yaml,
    "from_json": _from_json,
    "from_yaml": _from_yaml,
    "regex_search": _regex_search,
    "regex_replace": _regex_replace,
    "regex_findall": _regex_findall,
    "regex_escape": lambda s: re.escape(str(s)),
    "basename": lambda p: os.path.basename(str(p)),
    "dirname": lambda p: os.path.dirname(str(p)),
    "expanduser": lambda p: os.path.expanduser(str(p)),
    "realpath": lambda p: os.path.realpath(str(p)),
    "splitext": lambda p: list(os.path.splitext(str(p))),
    "path_join": lambda parts: os.path.join(*[str(p) for p in parts]),
    "b64encode": _b64encode,
    "b64decode": _b64decode,
    "mandatory": _mandatory,
    "quote": lambda s: shlex.quote(str(s)),
    "ternary": _ternary,
    "combine": _combine,
    "dict2items": _dict2items,
    "items2dict": _items2dict,
    "flatten": _flatten,
    "union": lambda a, b: _unique_list(list(a) + list(b)),
    "intersect": lambda a, b: _unique_list([x for x in a if x in b]),
    "difference": lambda a, b: _unique_list([x for x in a if x not in b]),
    "symmetric_difference": lambda a, b: _unique_list([x for x in a if x not in b] + [x for x in b if x not in a]),
    "hash": _hash,
    "checksum": lambda v: _hash(v, "sha1"),
    "md5": lambda v: _hash(v, "md5"),
    "sha1": lambda v: _hash(v, "sha1"),
    "split": _split,
    "type_debug": lambda v: type(v).__name__,
    "zip": lambda *seqs: [list(t) for t in zip(*seqs)],
}


# ------------------------------------------------------------------------------------------------ tests

_VERSION_OPS = {
    "<": lambda c: c < 0, "lt": lambda c: c < 0,
    "<=": lambda c: c <= 0, "le": lambda c: c <= 0,
    ">": lambda c: c > 0, "gt": lambda c: c > 0,
    ">=": lambda c: c >= 0, "ge": lambda c: c >= 0,
    "==": lambda c: c == 0, "=": lambda c: c == 0, "eq": lambda c: c == 0,
    "!=": lambda c: c != 0, "<>": lambda c: c != 0, "ne": lambda c: c != 0,
}


def _version_key(v: Any) -> list:
    """Loose version ordering (Debian-ish): numbers compare numerically, letters lexically, numbers > letters."""
    out = []
    for part in re.findall(r"\d+|[A-Za-z]+|~", str(v)):
        if part.isdigit():
            out.append((2, int(part), ""))
        elif part == "~":  # Debian: ~ sorts before anything, even the end
            out.append((-1, 0, ""))
        else:
            out.append((1, 0, part))
    return out


def compare_versions(a: Any, b: Any) -> int:
    ka, kb = _version_key(a), _version_key(b)
    n = max(len(ka), len(kb))
    ka += [(0, 0, "")] * (n - len(ka))
    kb += [(0, 0, "")] * (n - len(kb))
    return (ka > kb) - (ka < kb)


def _version_test(value, version, operator="eq", strict=False, version_type=None):
    op = _VERSION_OPS.get(operator)
    if op is None:
        raise TemplateError(f"version: invalid operator {operator!r} (use one of {', '.join(sorted(_VERSION_OPS))})")
    if value is None or str(value) == "":
        raise TemplateError("version: input version value cannot be empty")
    return op(compare_versions(value, version))


def _result_flag(result: Any, flag: str, test: str) -> bool:
    if isinstance(result, Mapping):
        return bool(result.get(flag, False))
    if hasattr(result, flag):
        return bool(getattr(result, flag))
    raise TemplateError(f"the '{test}' test expects a registered task result, got {type(result).__name__}")


def _failed(result):
    return _result_flag(result, "failed", "failed")


TESTS = {
    "failed": _failed, "failure": _failed,
    "succeeded": lambda r: not _result_flag(r, "failed", "succeeded"),
    "success": lambda r: not _result_flag(r, "failed", "success"),
    "changed": lambda r: _result_flag(r, "changed", "changed"),
    "change": lambda r: _result_flag(r, "changed", "change"),
    "skipped": lambda r: _result_flag(r, "skipped", "skipped"),
    "skip": lambda r: _result_flag(r, "skipped", "skip"),
    "unreachable": lambda r: _result_flag(r, "unreachable", "unreachable"),
    "version": _version_test,
    "version_compare": _version_test,
    "match": lambda v, p, ignorecase=False, multiline=False: re.match(p, str(v), _re_flags(ignorecase, multiline))
    is not None,
    "search": lambda v, p, ignorecase=False, multiline=False: re.search(p, str(v), _re_flags(ignorecase, multiline))
    is not None,
    "regex": lambda v, p, ignorecase=False, multiline=False, match_type="search":
        getattr(re, match_type)(p, str(v), _re_flags(ignorecase, multiline)) is not None,
    "truthy": lambda v: bool(v),
    "falsy": lambda v: not bool(v),
    "contains": lambda seq, v: v in seq,
    "subset": lambda a, b: all(x in b for x in a),
    "superset": lambda a, b: all(x in a for x in b),
    "abs": lambda p: os.path.isabs(str(p)),
    "exists": lambda p: os.path.exists(os.path.expanduser(str(p))),
    "file": lambda p: os.path.isfile(str(p)),
    "directory": lambda p: os.path.isdir(str(p)),
    "link": lambda p: os.path.islink(str(p)),
}


# ------------------------------------------------------------------------------------------------ globals

def _lookup(name, *terms, **kw):
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
            raise TemplateError(f"lookup plugin {name!r} is not supported (supported: env, file, items, list)")
    if name in ("items", "list"):
        return out
    return ",".join(str(x) for x in out) if not kw.get("wantlist") else out


def _query(name, *terms, **kw):
    kw["wantlist"] = True
    res = _lookup(name, *terms, **kw)
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
