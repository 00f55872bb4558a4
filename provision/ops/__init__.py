"""Operations: facts in, a plan of command objects out (or a no-op with a reason).

:func:`load_all` (called by :func:`provision.ops.spec.registry` on first use) imports every module file of this
package, so a new ``provision/ops/<name>.py`` that decorates its operations with :func:`provision.ops.spec.module`
is picked up without editing this file. Importing the package itself registers nothing (``provision.ops.plan``
is importable from anywhere without pulling in every operation).
"""
from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in ("spec", "plan", "core"):
            importlib.import_module(f"{__name__}.{info.name}")
