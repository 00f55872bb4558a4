"""Ansible's common Jinja2 tests (task results, ``version`` through :mod:`provision.versions`, regex, paths), as
:data:`TESTS` for the environment."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from provision.templating.base import TemplateError
from provision.templating.filters import _re_flags
from provision.versions import compare_versions


_VERSION_OPS = {
    "<": lambda c: c < 0, "lt": lambda c: c < 0,
    "<=": lambda c: c <= 0, "le": lambda c: c <= 0,
    ">": lambda c: c > 0, "gt": lambda c: c > 0,
    ">=": lambda c: c >= 0, "ge": lambda c: c >= 0,
    "==": lambda c: c == 0, "=": lambda c: c == 0, "eq": lambda c: c == 0,
    "!=": lambda c: c != 0, "<>": lambda c: c != 0, "ne": lambda c: c != 0,
}


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
