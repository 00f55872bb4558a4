"""Module arguments as a task writes them: ``k=v`` text (split outside quotes and Jinja2 blocks), free-form text
of command-like modules, and the check of a task's arguments against the module's spec (through
:func:`provision.ops.spec.check_args`, the validator the executor runs again once values are rendered)."""
from __future__ import annotations

import re
from typing import Mapping

from provision.playbook.fields import _err
from provision.yamlsrc import SourcePos


FREE_FORM_SPECIAL = ("creates", "removes", "chdir", "executable", "stdin", "warn")

_BLOCK_OPEN = ("if", "for", "macro", "block", "filter", "call", "raw", "with")


def split_args(text: str) -> list[str]:
    """Split ``k=v`` module arguments on spaces outside quotes and outside Jinja2 ``{{ }}``, ``{% %}`` and
    ``{% if %}...{% endif %}`` blocks."""
    tokens, cur, quote, depth, blocks, i = [], "", None, 0, 0, 0
    while i < len(text):
        ch, two = text[i], text[i:i + 2]
        if quote:
            if ch == "\\" and i + 1 < len(text):
                cur += text[i + 1]
                i += 2
                continue
            if ch == quote:
                quote = None
            else:
                cur += ch
        elif two == "{%":
            end = text.find("%}", i + 2)
            if end < 0:
                raise ValueError("unbalanced {% %}")
            words = text[i + 2:end].strip("-+ \t").split()
            word = words[0] if words else ""
            if word.startswith("end"):
                blocks -= 1
            elif word in _BLOCK_OPEN or (word == "set" and "=" not in text[i + 2:end]):
                blocks += 1
            cur += text[i:end + 2]
            i = end + 2
            continue
        elif two == "{{":
            depth += 1
            cur += two
            i += 2
            continue
        elif two == "}}" and depth:
            depth -= 1
            cur += two
            i += 2
            continue
        elif ch in "\"'" and not depth and not blocks:
            quote = ch
        elif ch.isspace() and not depth and not blocks:
            if cur:
                tokens.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if quote or depth or blocks:
        raise ValueError("unbalanced quotes or braces")
    if cur:
        tokens.append(cur)
    return tokens


def _parse_kv(text: str, pos: SourcePos, module: str) -> dict:
    try:
        tokens = split_args(text)
    except ValueError as err:
        raise _err(f"cannot parse arguments: {err}", pos, module) from None
    out = {}
    for tok in tokens:
        if "=" not in tok:
            raise _err(f"module '{module}' takes key=value arguments or a mapping, not free-form text ({tok!r})",
                       pos, module)
        k, v = tok.split("=", 1)
        out[k] = v
    return out


def _split_free_form(text: str, spec) -> dict:
    """Free-form text of a ``free_form`` module -> {'_raw_params': rest, creates/removes/chdir...: value}."""
    special = [a for a in FREE_FORM_SPECIAL if a in spec.args]
    out = {}
    if special:
        rx = re.compile(r"(?:^|\s)(" + "|".join(map(re.escape, special)) + r")=(\"[^\"]*\"|'[^']*'|\S+)")
        for m in rx.finditer(text):
            val = m.group(2)
            if val[:1] in "\"'" and val[-1:] == val[:1]:
                val = val[1:-1]
            out[m.group(1)] = val
        text = rx.sub("", text).strip()
    out = {"_raw_params": text, **out}
    return out


def check_module_args(module: str, args: Mapping, positions: Mapping[str, SourcePos], default: SourcePos):
    """The module's arguments against its ArgSpec (:func:`provision.ops.spec.check_args`, the executor's validator
    too): the first problem as an InputError at the argument's line. Templated values are checked once rendered."""
    from provision.ops.spec import check_args, registry
    errors = check_args(registry()[module], args, templated=True)[1]
    if errors:
        e = errors[0]
        pos = positions.get(f"args.{e.arg}", default) if e.arg is not None else default
        raise _err(e.message, pos, e.key, hint=e.hint)
