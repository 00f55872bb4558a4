"""Merge a JSON object into a JSON file on a host, keeping every key the file already has (Docker's daemon.json).

Pure: :func:`merge` and :func:`plan_merge` (text before -> text after, or None when nothing changes). The
gpu_docker op reads the file in its probe and writes it back with a FilePut only when it changes.
"""
from __future__ import annotations

import json
from typing import Any, Mapping



class JsonMergeError(ValueError):
    pass


def merge(base: Any, patch: Any) -> Any:
    """Deep merge: objects merge key by key (the patch wins on conflicts), anything else is replaced."""
    if isinstance(base, Mapping) and isinstance(patch, Mapping):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    return patch


def plan_merge(before_text: str | None, patch: Mapping, path: str = "") -> tuple[str, str | None]:
    """(before, after) texts; after is None when the merged document equals the current one."""
    before_text = before_text or ""
    if before_text.strip():
        try:
            current = json.loads(before_text)
        except ValueError as err:
            raise JsonMergeError(f"{path}: not valid JSON ({err}); not touching it") from None
        if not isinstance(current, dict):
            raise JsonMergeError(f"{path}: holds a JSON {type(current).__name__}, not an object; not touching it")
    else:
        current = {}
    merged = merge(current, patch)
    if merged == current and before_text.strip():
        return before_text, None
    return before_text, json.dumps(merged, indent=4, sort_keys=False) + "\n"
