"""A line-aware YAML loader: every mapping key and sequence item keeps the file and line it came from.

``load(path)`` returns plain-looking data (``dict``/``list`` subclasses :class:`LineDict` / :class:`LineList`) so
loaders can report ``file:line: key: message`` for bad input. Malformed YAML, a missing file and duplicate keys
raise :class:`provision.errors.InputError` with the line from the parser.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from provision.errors import InputError

try:  # the C parser keeps marks too and is ~10x faster
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - libyaml missing
    from yaml import SafeLoader as _BaseLoader


@dataclass(frozen=True)
class SourcePos:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class LineDict(dict):
    """A dict that remembers its own line and the line of each key."""

    __slots__ = ("file", "line", "key_lines")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.file, self.line, self.key_lines = "", 0, {}

    def pos(self, key: Any = None) -> SourcePos:
        return SourcePos(self.file, self.key_lines.get(key, self.line) if key is not None else self.line)


class LineList(list):
    """A list that remembers its own line and the line of each item."""

    __slots__ = ("file", "line", "item_lines")

    def __init__(self, *a):
        super().__init__(*a)
        self.file, self.line, self.item_lines = "", 0, []

    def pos(self, index: int | None = None) -> SourcePos:
        if index is not None and 0 <= index < len(self.item_lines):
            return SourcePos(self.file, self.item_lines[index])
        return SourcePos(self.file, self.line)


def pos_of(container: Any, key: Any = None, default: SourcePos | None = None) -> SourcePos:
    """Position of ``container[key]`` (or of the container) when it was loaded by this module."""
    if isinstance(container, (LineDict, LineList)):
        return container.pos(key)
    return default or SourcePos("<unknown>", 0)


class _Loader(_BaseLoader):
    filename = "<string>"


def _construct_map(loader: _Loader, node: yaml.MappingNode):
    data = LineDict()
    data.file, data.line = loader.filename, node.start_mark.line + 1
    yield data
    explicit = {id(k) for k, _v in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)  # YAML merge keys (<<): merged pairs come first, explicit keys may override them
    merged_keys: set = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise InputError("a mapping key must be a plain value", file=loader.filename,
                             line=key_node.start_mark.line + 1) from None
        line = key_node.start_mark.line + 1
        if key in data.key_lines and key not in merged_keys:
            raise InputError(f"duplicate key (first defined at line {data.key_lines[key]})", file=loader.filename,
                             line=line, key=str(key))
        if id(key_node) in explicit:
            merged_keys.discard(key)
        else:
            merged_keys.add(key)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = line


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):
    data = LineList()
    data.file, data.line = loader.filename, node.start_mark.line + 1
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.item_lines.append(child.start_mark.line + 1)


def _construct_unsafe(loader: _Loader, node):
    # Ansible's !unsafe: the value is used as-is, never templated.
    from provision.templating import Unsafe
    return Unsafe(loader.construct_scalar(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_constructor("!unsafe", _construct_unsafe)


def loads(text: str, filename: str = "<string>") -> Any:
    """Parse YAML text; errors become one-line :class:`InputError` with the parser's line."""
    loader = _Loader(text)
    loader.filename = filename
    try:
        return loader.get_single_data()
    except InputError:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = err.problem or err.context or "malformed YAML"
        if isinstance(err, ConstructorError) and "tag" in str(problem):
            if "'!vault'" in problem:
                problem = "Ansible Vault values (!vault) are not supported; pass secrets through the environment"
            else:
                problem = problem.replace("could not determine a constructor for the tag", "unsupported YAML tag")
        if mark is not None and mark.line < len(lines := text.splitlines()):
            src_line = lines[mark.line]
            if "\t" in src_line[: mark.column + 1] and "cannot start any token" in problem:
                problem += " (a tab: YAML indentation must use spaces)"
        raise InputError(f"malformed YAML: {problem}", file=filename, line=line) from None
    except yaml.YAMLError as err:
        raise InputError(f"malformed YAML: {err}", file=filename) from None
    finally:
        loader.dispose()


def load(path: str, *, what: str = "file") -> Any:
    """Load one YAML file. A missing/unreadable file is bad input naming the path."""
    if not os.path.exists(path):
        raise InputError(f"{what} not found", file=path)
    if os.path.isdir(path):
        raise InputError(f"{what} is a directory, expected a YAML file", file=path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {what}: {err}", file=path) from None
    return loads(text, path)


def plain(value: Any) -> Any:
    """Strip position bookkeeping: LineDict/LineList -> dict/list (recursively)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def describe(value: Any) -> str:
    """'a mapping', 'a list', 'a string'... for "expected X, got Y" messages."""
    for t, name in ((bool, "a boolean"), (dict, "a mapping"), (list, "a list"), (str, "a string"),
                    ((int, float), "a number"), (type(None), "nothing")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def short_repr(value: Any, limit: int = 40) -> str:
    """repr() of a plain value, cut to ``limit`` characters for one-line messages."""
    s = repr(plain(value))
    return s if len(s) <= limit else s[: limit - 3] + "..."
