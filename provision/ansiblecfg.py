"""ansible.cfg, found and read as Ansible does, for the settings gpufleet honours.

Which file: the first that exists of ``$ANSIBLE_CONFIG`` (a file, or a directory holding ansible.cfg),
``./ansible.cfg`` (skipped in a world-writable directory, as Ansible does), ``~/.ansible.cfg``,
``/etc/ansible/ansible.cfg``. Only that one file is read (Ansible merges nothing either).

Honoured: ``[defaults]`` inventory (comma list), roles_path (``:`` list; ``$ANSIBLE_ROLES_PATH`` wins; default
Ansible's ``~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles``), forks, remote_user, private_key_file,
host_key_checking, timeout; ``[privilege_escalation]`` become, become_user, become_method (sudo only),
become_ask_pass. Relative paths are relative to the file's directory, ``~`` is expanded. Command-line flags beat
these values; inventory variables (``ansible_user``...) beat both, as in Ansible. A bad value is one line naming
the file, line and key (exit 5). Other keys are ignored, as Ansible ignores keys it does not know.
"""
from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass, field
from typing import Mapping

from provision.errors import OptionError
from provision.truthy import NotABoolean, strict_bool

SYSTEM_CFG = "/etc/ansible/ansible.cfg"
# Ansible's default roles_path (where neither ANSIBLE_ROLES_PATH nor ansible.cfg names one)
DEFAULT_ROLES_PATH = (os.path.expanduser("~/.ansible/roles"), "/usr/share/ansible/roles", "/etc/ansible/roles")


@dataclass(frozen=True)
class AnsibleCfg:
    path: str | None = None                       # the file read (None: none found)
    inventory: tuple[str, ...] = ()
    roles_path: tuple[str, ...] = ()
    forks: int | None = None
    remote_user: str | None = None
    private_key_file: str | None = None
    host_key_checking: bool | None = None
    timeout: float | None = None
    become: bool | None = None
    become_user: str | None = None
    become_method: str | None = None
    become_ask_pass: bool | None = None
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)


def find(env: Mapping[str, str] | None = None, cwd: str | None = None) -> str | None:
    """The ansible.cfg Ansible would read, or None."""
    env = os.environ if env is None else env
    cwd = cwd or os.getcwd()
    candidates = []
    given = env.get("ANSIBLE_CONFIG")
    if given:
        given = os.path.expanduser(given)
        candidates.append(os.path.join(given, "ansible.cfg") if os.path.isdir(given) else given)
    try:
        world_writable = bool(os.stat(cwd).st_mode & stat.S_IWOTH)
    except OSError:
        world_writable = True
    if not world_writable:
        candidates.append(os.path.join(cwd, "ansible.cfg"))
    candidates += [os.path.expanduser("~/.ansible.cfg"), SYSTEM_CFG]
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def _env_paths(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(os.path.abspath(os.path.expanduser(p)) for p in env.get(name, "").split(os.pathsep) if p)


def _key_lines(path: str) -> dict[str, int]:
    """'section.key' -> line number, for error messages (configparser keeps no lines)."""
    out: dict[str, int] = {}
    section = ""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            s = line.strip()
            if s.startswith("[") and s.endswith("]"):
                section = s[1:-1].strip()
            elif s and s[0] not in "#;" and ("=" in s or ":" in s):
                key = s.replace(":", "=", 1).split("=", 1)[0].strip().lower()
                out.setdefault(f"{section}.{key}", n)
    return out


def load(env: Mapping[str, str] | None = None, cwd: str | None = None, path: str | None = None) -> AnsibleCfg:
    """Read the ansible.cfg Ansible would read (or ``path``); no file: an empty AnsibleCfg."""
    env = os.environ if env is None else env
    path = path or find(env, cwd)
    if path is None:
        return AnsibleCfg(roles_path=_env_paths(env, "ANSIBLE_ROLES_PATH") or DEFAULT_ROLES_PATH)
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None, strict=False)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except (OSError, UnicodeDecodeError) as err:
        raise OptionError(f"cannot read ansible.cfg: {err}", file=path) from None
    except configparser.Error as err:
        raise OptionError(f"malformed ansible.cfg: {err.message.splitlines()[0]}", file=path,
                          line=getattr(err, "lineno", None)) from None
    lines = _key_lines(path)
    base = os.path.dirname(os.path.abspath(path))

    def raw(section: str, key: str) -> str | None:
        v = parser.get(section, key, fallback=None)
        return None if v is None or v.strip() == "" else v.strip()

    def bad(section: str, key: str, message: str) -> OptionError:
        return OptionError(message, file=path, line=lines.get(f"{section}.{key}"), key=key)

    def a_path(v: str) -> str:
        v = os.path.expanduser(os.path.expandvars(v))
        return v if os.path.isabs(v) else os.path.normpath(os.path.join(base, v))

    def paths(section: str, key: str, sep: str) -> tuple[str, ...]:
        v = raw(section, key)
        return tuple(a_path(p.strip()) for p in v.split(sep) if p.strip()) if v else ()

    def boolean(section: str, key: str) -> bool | None:
        v = raw(section, key)
        if v is None:
            return None
        try:
            return strict_bool(v)
        except NotABoolean as err:
            raise bad(section, key, err.message) from None

    def number(section: str, key: str, kind=int):
        v = raw(section, key)
        if v is None:
            return None
        try:
            n = kind(v)
        except ValueError:
            raise bad(section, key, f"expected a number, got {v!r}") from None
        if n <= 0:
            raise bad(section, key, f"must be positive, got {v}")
        return n

    method = raw("privilege_escalation", "become_method")
    if method is not None and method != "sudo":
        raise bad("privilege_escalation", "become_method", f"only sudo is supported, got {method!r}")
    key_file = raw("defaults", "private_key_file")
    return AnsibleCfg(
        path=path,
        inventory=paths("defaults", "inventory", ",") or paths("defaults", "hostfile", ","),
        roles_path=_env_paths(env, "ANSIBLE_ROLES_PATH") or paths("defaults", "roles_path", os.pathsep)
        or DEFAULT_ROLES_PATH,
        forks=number("defaults", "forks"),
        remote_user=raw("defaults", "remote_user"),
        private_key_file=a_path(key_file) if key_file else None,
        host_key_checking=boolean("defaults", "host_key_checking"),
        timeout=number("defaults", "timeout", float),
        become=boolean("privilege_escalation", "become"),
        become_user=raw("privilege_escalation", "become_user"),
        become_method=method,
        become_ask_pass=boolean("privilege_escalation", "become_ask_pass"),
        lines=lines)
