"""Testbed specs from a small YAML file or from ``--host`` flags, with one-line errors naming file, line and key.

File form::

    name: lab                 # optional (the --name flag wins)
    hosts:
      h100:  {gpus: 8xH100-SXM, docker: false, secure_boot: false}
      ws:    {gpus: 2xRTX-5090, docker: true}
      cpu:   {count: 2}       # cpu1, cpu2 (no GPUs)

Flag form: ``--host NAME=GPUS[,docker][,secure-boot][,count=N]`` where GPUS is ``none``, ``H100-SXM``,
``8xH100-SXM`` or ``2xRTX-5090+1xA100-PCIE-80GB``.
"""
from __future__ import annotations

import yaml

from provision.errors import InputError, OptionError
from provision.testbed.core import HOST_RE, HostSpec
from provision.testbed.gpus import parse_gpus

HOST_KEYS = ("gpus", "docker", "secure_boot", "count")
TOP_KEYS = ("name", "hosts")


def _expand(name: str, count: int, make) -> list[HostSpec]:
    if count == 1:
        return [make(name)]
    return [make(f"{name}{i}") for i in range(1, count + 1)]


def _check_name(name: str, **where) -> None:
    if not HOST_RE.match(name) or name == "repo":
        raise InputError(f"host name '{name}' must be lower-case letters, digits and '-' (and not 'repo')",
                         **where)


def _count(value, **where) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise InputError(f"count must be a whole number, got '{value}'", **where) from None
    if count <= 0:
        raise InputError(f"count must be 1 or more, got {count}", **where)
    return count


def parse_host_flag(text: str, default_docker: bool = False) -> list[HostSpec]:
    where = {"file": "--host", "exit_code": 5}
    if "=" not in text:
        raise OptionError(f"expected NAME=GPUS (e.g. h100=8xH100-SXM or cpu=none), got '{text}'", key="--host")
    name, rest = text.split("=", 1)
    name = name.strip()
    _check_name(name, key="--host", exit_code=5)
    parts = [p.strip() for p in rest.split(",")]
    gpu_text, options = parts[0], parts[1:]
    docker, secure_boot, count = default_docker, False, 1
    for opt in options:
        if opt == "docker":
            docker = True
        elif opt in ("secure-boot", "secure_boot"):
            secure_boot = True
        elif opt.startswith("count="):
            count = _count(opt.split("=", 1)[1], key="--host", exit_code=5)
        elif opt:
            raise OptionError(f"unknown host option '{opt}' in '{text}'", key="--host",
                              choices=("docker", "secure-boot", "count=N"), hint=None)
    try:
        gpus = parse_gpus(gpu_text, key="--host")
    except InputError as err:
        raise OptionError(err.message, key="--host", hint=err.hint) from None
    del where
    return _expand(name, count, lambda n: HostSpec(n, gpus, docker, secure_boot))


def _line(node) -> int:
    return node.start_mark.line + 1


def _scalar(node):
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


def load_spec_file(path: str, default_docker: bool = False) -> tuple[str | None, list[HostSpec]]:
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as err:
        raise InputError(f"cannot read spec file: {err.strerror}", file=path, exit_code=5) from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise InputError(f"not valid YAML: {getattr(err, 'problem', err)}", file=path,
                         line=mark.line + 1 if mark else None) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise InputError("expected a mapping with 'hosts:'", file=path, line=_line(root) if root else None)
    name = None
    hosts_node = None
    for k, v in root.value:
        key = k.value
        if key == "name":
            name = str(_scalar(v))
        elif key == "hosts":
            hosts_node = v
        else:
            raise InputError("unknown key", file=path, line=_line(k), key=key, choices=TOP_KEYS)
    if hosts_node is None or not isinstance(hosts_node, yaml.MappingNode) or not hosts_node.value:
        raise InputError("at least one host is needed under 'hosts:'", file=path,
                         line=_line(hosts_node) if hosts_node is not None else _line(root), key="hosts")
    specs: list[HostSpec] = []
    for hk, hv in hosts_node.value:
        hname = str(hk.value)
        _check_name(hname, file=path, line=_line(hk), key=hname)
        fields = {}
        if isinstance(hv, yaml.MappingNode):
            for fk, fv in hv.value:
                if fk.value not in HOST_KEYS:
                    raise InputError("unknown key", file=path, line=_line(fk), key=f"hosts.{hname}.{fk.value}",
                                     choices=[f"hosts.{hname}.{c}" for c in HOST_KEYS])
                fields[fk.value] = (fv, _scalar(fv))
        elif isinstance(hv, yaml.ScalarNode) and hv.value not in ("", "~", "null"):
            fields["gpus"] = (hv, _scalar(hv))      # shorthand:  h100: 8xH100-SXM
        elif not (isinstance(hv, yaml.ScalarNode)):
            raise InputError("expected a mapping of gpus/docker/secure_boot/count", file=path, line=_line(hv),
                             key=f"hosts.{hname}")
        gnode, gval = fields.get("gpus", (hv, None))
        gpus = parse_gpus(gval, file=path, line=_line(gnode), key=f"hosts.{hname}.gpus")
        flags = {}
        for flag in ("docker", "secure_boot"):
            node, val = fields.get(flag, (None, None))
            if node is not None and not isinstance(val, bool):
                raise InputError(f"must be true or false, got '{val}'", file=path, line=_line(node),
                                 key=f"hosts.{hname}.{flag}")
            flags[flag] = bool(val) if node is not None else (default_docker if flag == "docker" else False)
        count = 1
        if "count" in fields:
            cnode, cval = fields["count"]
            count = _count(cval, file=path, line=_line(cnode), key=f"hosts.{hname}.count")
        specs += _expand(hname, count, lambda n: HostSpec(n, gpus, flags["docker"], flags["secure_boot"]))
    seen = set()
    for s in specs:
        if s.name in seen:
            raise InputError(f"host name '{s.name}' is given twice", file=path, key="hosts")
        seen.add(s.name)
    return name, specs
