"""Ansible's common Jinja2 filters (``bool`` reads :mod:`provision.truthy`), as :data:`FILTERS` for the
environment."""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

import jinja2
import yaml

from provision.templating.base import TemplateError, Unsafe
from provision.truthy import lenient_bool


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
