"""Operations: facts in, commands out (or a no-op with a reason). Importing this package registers them.

Every module file in this package is imported (pkgutil), so a new ``provision/ops/<name>.py`` that decorates its
operations with :func:`provision.ops.spec.module` is picked up without editing this file.
"""
from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in ("spec",):
        importlib.import_module(f"{__name__}.{_info.name}")
