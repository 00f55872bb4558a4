"""Run options and extra vars: what the CLI hands the executor (checked before any connection)."""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field

from provision.connectors import ConnectOptions
from provision.errors import OptionError


@dataclass
class RunOptions:
    forks: int = 20
    check: bool = False
    diff: bool = False
    tags: tuple = ()
    skip_tags: tuple = ()
    start_at_task: str | None = None
    extra_vars: dict = field(default_factory=dict)
    limit: str | None = None
    become: bool | None = None
    become_user: str | None = None
    connect: ConnectOptions = field(default_factory=ConnectOptions)
    retry_dir: str | None = None
    retry_files: bool = True
    verbosity: int = 0
    prefetch: bool = True        # batch the play's read-only probes into one round trip per host
    force_handlers: bool = False  # --force-handlers: notified handlers run on hosts that failed too
    strict: bool = False         # --strict: a task whose module gpufleet lacks is an error, not a warning


def parse_extra_vars(values: list[str] | None) -> dict:
    """-e key=value [key2=value2], -e @file.yaml, -e '{"json": 1}' (later ones win). Bad input: OptionError."""
    import yaml  # noqa: PLC0415 - only when -e is given
    out: dict = {}
    for raw in values or []:
        raw = raw.strip()
        if not raw:
            continue
        if raw.startswith("@"):
            path = os.path.expanduser(raw[1:])
            try:
                with open(path, encoding="utf-8") as fh:
                    data = yaml.safe_load(fh)
            except OSError as err:
                raise OptionError(f"cannot read extra vars file: {err.strerror}", key="--extra-vars",
                                  file=path) from None
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                raise OptionError(f"invalid YAML: {getattr(err, 'problem', err)}", file=path,
                                  line=mark.line + 1 if mark else None, key="--extra-vars") from None
            if data is None:
                continue
            if not isinstance(data, dict):
                raise OptionError("an extra vars file must hold a mapping", file=path, key="--extra-vars")
            out.update(data)
        elif raw[0] in "{[":
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as err:
                raise OptionError(f"invalid JSON in --extra-vars: {err.msg} at column {err.colno}",
                                  key="--extra-vars") from None
            if not isinstance(data, dict):
                raise OptionError("JSON extra vars must be an object", key="--extra-vars")
            out.update(data)
        else:

            try:
                words = shlex.split(raw)
            except ValueError as err:
                raise OptionError(f"cannot parse {raw!r}: {err}", key="--extra-vars") from None
            for w in words:
                k, sep, v = w.partition("=")
                if not sep or not k.strip():
                    raise OptionError(f"expected key=value, @file or JSON, got {w!r}", key="--extra-vars")
                out[k.strip()] = v
    return out


