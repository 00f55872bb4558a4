"""ansible.cfg, found and read as Ansible does, for the settings gpufleet honours.

Which file: the first that exists of ``$ANSIBLE_CONFIG`` (a file, or a directory holding ansible.cfg),
``./ansible.cfg`` (skipped in a world-writable directory, as Ansible does), ``~/.ansible.cfg``,
``/etc/ansible/ansible.cfg``. Only that one file is read (Ansible merges nothing either).

Honoured: ``[defaults]`` inventory (comma list), roles_path (``:`` list; ``$ANSIBLE_ROLES_PATH`` wins; default
Ansible's ``~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles``), forks, remote_user, private_key_file,
host_key_checking, timeout; ``[privilege_escalation]`` become, become_user, become_method (sudo only),
become_ask_pass. Relative paths are relative to the file's directory, ``~`` is expanded. Ansible's environment
variables for them (``ANSIBLE_INVENTORY``, ``ANSIBLE_ROLES_PATH``, ``ANSIBLE_FORKS``, ``ANSIBLE_REMOTE_USER``,
``ANSIBLE_PRIVATE_KEY_FILE``, ``ANSIBLE_HOST_KEY_CHECKING``, ``ANSIBLE_TIMEOUT``, ``ANSIBLE_BECOME*``) beat the
file. Command-line flags beat both; inventory variables (``ansible_user``...) beat all of them, as in Ansible. A bad
value is one line naming the file, line and key (exit 5). Other keys are ignored, as Ansible ignores keys it does not
know.
"""
from __future__ import annotations

import configparser
import io
import os
import stat
from dataclasses import dataclass
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


def _key_lines(text: str) -> dict[str, int]:
    """'section.key' -> line number, for error messages (configparser keeps no lines)."""
    out: dict[str, int] = {}
    section = ""
    for n, line in enumerate(io.StringIO(text), 1):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip()
        elif s and s[0] not in "#;" and ("=" in s or ":" in s):
            key = s.replace(":", "=", 1).split("=", 1)[0].strip().lower()
            out.setdefault(f"{section}.{key}", n)
    return out


# field -> (section, key, environment variable, kind). The environment beats the file, as in Ansible.
SETTINGS = {
    "inventory": ("defaults", "inventory", "ANSIBLE_INVENTORY", "paths,"),
    "roles_path": ("defaults", "roles_path", "ANSIBLE_ROLES_PATH", "paths:"),
    "forks": ("defaults", "forks", "ANSIBLE_FORKS", "int"),
    "remote_user": ("defaults", "remote_user", "ANSIBLE_REMOTE_USER", "str"),
    "private_key_file": ("defaults", "private_key_file", "ANSIBLE_PRIVATE_KEY_FILE", "path"),
    "host_key_checking": ("defaults", "host_key_checking", "ANSIBLE_HOST_KEY_CHECKING", "bool"),
    "timeout": ("defaults", "timeout", "ANSIBLE_TIMEOUT", "float"),
    "become": ("privilege_escalation", "become", "ANSIBLE_BECOME", "bool"),
    "become_user": ("privilege_escalation", "become_user", "ANSIBLE_BECOME_USER", "str"),
    "become_method": ("privilege_escalation", "become_method", "ANSIBLE_BECOME_METHOD", "sudo"),
    "become_ask_pass": ("privilege_escalation", "become_ask_pass", "ANSIBLE_BECOME_ASK_PASS", "bool"),
}


def _read(path: str) -> tuple[configparser.ConfigParser, dict[str, int]]:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None, strict=False)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        parser.read_file(io.StringIO(text), source=path)
    except (OSError, UnicodeDecodeError) as err:
        raise OptionError(f"cannot read ansible.cfg: {err}", file=path) from None
    except configparser.Error as err:
        raise OptionError(f"malformed ansible.cfg: {err.message.splitlines()[0]}", file=path,
                          line=getattr(err, "lineno", None)) from None
    return parser, _key_lines(text)


def _value(text: str, kind: str, base: str, where: dict):
    """One setting's text -> its value; ``base``: the folder relative paths start from; ``where``: OptionError
    keywords naming the file/line/key or the environment variable."""
    def a_path(v: str) -> str:
        v = os.path.expanduser(os.path.expandvars(v.strip()))
        return v if os.path.isabs(v) else os.path.normpath(os.path.join(base, v))

    if kind.startswith("paths"):
        return tuple(a_path(p) for p in text.split(kind[-1] if kind[-1] == "," else os.pathsep) if p.strip())
    if kind == "path":
        return a_path(text)
    if kind == "bool":
        try:
            return strict_bool(text)
        except NotABoolean as err:
            raise OptionError(err.message, **where) from None
    if kind in ("int", "float"):
        try:
            n = (int if kind == "int" else float)(text)
        except ValueError:
            raise OptionError(f"expected a number, got {text!r}", **where) from None
        if n <= 0:
            raise OptionError(f"must be positive, got {text}", **where)
        return n
    if kind == "sudo" and text != "sudo":
        raise OptionError(f"only sudo is supported, got {text!r}", **where)
    return text


def load(env: Mapping[str, str] | None = None, cwd: str | None = None, path: str | None = None) -> AnsibleCfg:
    """The settings Ansible would use: its environment variables (``ANSIBLE_FORKS``...), else the ansible.cfg it
    would read (or ``path``), else Ansible's defaults where gpufleet keeps one (roles_path)."""
    env = os.environ if env is None else env
    path = path or find(env, cwd)
    parser, lines = _read(path) if path else (None, {})
    values: dict = {}
    for name, (section, key, var, kind) in SETTINGS.items():
        text, base, where = env.get(var, "").strip(), cwd or os.getcwd(), {"key": var}
        if not text and parser is not None:
            text = (parser.get(section, key, fallback=None) or "").strip()
            if not text and name == "inventory":
                key, text = "hostfile", (parser.get(section, "hostfile", fallback=None) or "").strip()
            base = os.path.dirname(os.path.abspath(path))
            where = {"file": path, "line": lines.get(f"{section}.{key}"), "key": key}
        if text:
            values[name] = _value(text, kind, base, where)
    values.setdefault("roles_path", DEFAULT_ROLES_PATH)
    return AnsibleCfg(path=path, **values)
