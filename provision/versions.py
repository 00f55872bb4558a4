"""The one version ordering: Debian-ish loose comparison (numbers numerically, letters lexically, numbers after
letters, ``~`` before everything, even the end). Used by the ``version`` Jinja test, the driver
table's minimums and the rolling upgrade's choice of the newest package."""
from __future__ import annotations

import functools
import re
from typing import Any

_PART = re.compile(r"\d+|[A-Za-z]+|~")


def _parts(v: Any) -> list:
    out = []
    for part in _PART.findall(str(v)):
        if part.isdigit():
            out.append((2, int(part), ""))
        elif part == "~":  # Debian: ~ sorts before anything, even the end
            out.append((-1, 0, ""))
        else:
            out.append((1, 0, part))
    return out


def compare_versions(a: Any, b: Any) -> int:
    """-1, 0 or 1 (as Python's LooseVersion: "1.0" < "1.0.0"; Debian's "~" before the end)."""
    ka, kb = _parts(a), _parts(b)
    n = max(len(ka), len(kb))
    ka += [(0, 0, "")] * (n - len(ka))
    kb += [(0, 0, "")] * (n - len(kb))
    return (ka > kb) - (ka < kb)


version_key = functools.cmp_to_key(compare_versions)
"""A sort key: ``sorted(versions, key=version_key)``, ``max(..., key=version_key)``."""


def version_at_least(have: Any, need: Any) -> bool:
    return compare_versions(have, need) >= 0
