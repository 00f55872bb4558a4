"""Merge a JSON object into a JSON file on a host, keeping every key the file already has (Docker's daemon.json).

Pure part: :func:`merge` and :func:`plan_merge` (text before → text after, or None when nothing changes).
Host part: :func:`apply_merge` reads the file over a connector, writes it back only when it changes (atomically,
keeping its mode), and returns a HostResult whose diff shows exactly the change.
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Mapping

from provision.results import HostResult


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


def apply_merge(conn, path: str, patch: Mapping, *, check: bool = False, become: bool = True,
                backup: bool = True, mode: str = "0644") -> HostResult:
    q = shlex.quote(path)
    res = conn.run(f"if [ -e {q} ]; then cat {q}; else echo '@@absent@@'; fi", become=become)
    if res.rc != 0:
        return HostResult(host=conn.host, failed=True, msg=f"cannot read {path}: {res.stderr.strip()}")
    text = "" if res.stdout.strip() == "@@absent@@" else res.stdout
    try:
        before, after = plan_merge(text, patch, path)
    except JsonMergeError as err:
        return HostResult(host=conn.host, failed=True, msg=str(err))
    if after is None:
        return HostResult(host=conn.host, msg=f"{path}: already has every key")
    diff = [{"before": before, "after": after, "before_header": path, "after_header": path}]
    added = sorted(set(json.loads(after)) - set(json.loads(before) if before.strip() else {}))
    msg = f"{path}: merged" + (f" (new keys: {', '.join(added)})" if added else "")
    if check:
        return HostResult(host=conn.host, changed=True, msg=msg, diff=diff)
    tmp = f"{path}.gpufleet-tmp"
    cmds = [f"mkdir -p $(dirname {q})"]
    if backup and text:
        cmds.append(f"cp -p {q} {q}.gpufleet-bak")
    conn.put(tmp, after.encode(), mode=int(mode, 8), become=become)
    cmds.append(f"chmod {mode} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {q}")
    res = conn.run(" && ".join(cmds), become=become)
    if res.rc != 0:
        return HostResult(host=conn.host, failed=True, msg=f"cannot write {path}: {res.stderr.strip()}", diff=diff)
    return HostResult(host=conn.host, changed=True, msg=msg, diff=diff, commands=cmds)
