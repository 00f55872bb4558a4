"""The operation model shared by every module.

An operation decides from its arguments, the host's facts and (where needed) one read-only *probe* command what
must change, and returns a :class:`Plan` (provision/ops/plan.py): command objects plus a diff, or a no-op with a
reason. It holds no connection: the executor's runner carries the plan out, and check mode is the runner running
only what is read-only. Nothing is uploaded and executed on the host per task; file contents travel as the stdin
of one command.

To add a module::

    @module("name", args={...})
    class MyOp(Op):
        facts = ("packages",)          # fact sections it needs (gathered lazily, in one round trip)
        def probe(self, args, ctx): return "read-only shell"   # or None
        def plan(self, args, facts, probe, ctx): return Plan(...)

Modules that run on the controller (debug, set_fact, ...) set ``controller = True`` and answer with
``run(args, ctx) -> HostResult``; they never reach a host.
"""
from __future__ import annotations

import base64
import difflib
import hashlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from provision.hostio import CommandResult
from provision.ops.plan import Cmd, FilePut, Plan  # noqa: F401 - the command objects ops build
from provision.ops.spec import ModuleSpec, check_args

q = shlex.quote
MASK = "********"
# the one list of words that make a name secret (variables, result keys, 'name=value' text in output)
SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "credential", "api[_-]?key",
                "private[_-]?key")
SECRET_NAME = re.compile("(" + "|".join(SECRET_WORDS) + r"|(^|_)pass$|(^|_)key$)", re.I)
_SECRET_ASSIGN = re.compile(
    r"(?P<k>[\w.-]*(?:" + "|".join(SECRET_WORDS) + r")[\w.-]*)"
    r"(?P<sep>\s*[:=]\s*|\s+)(?P<v>\"[^\"]*\"|'[^']*'|\S+)", re.I)


class OpError(Exception):
    """The operation cannot go on (bad argument value found at run time, missing file...): the task fails."""


@dataclass
class OpContext:
    """What an op may know of the task it plans for. It holds no connection: ``runner`` is the executor's, used
    only by :meth:`probe` (a read-only look, often answered from the prefetch) and by the executor itself."""
    host: str
    check: bool = False
    diff: bool = False
    become: bool = False
    become_user: str = "root"
    env: Mapping[str, str] | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    search_paths: tuple[str, ...] = ()   # role dir, playbook dir: for src/template lookups
    no_log: bool = False
    timeout: float | None = None
    log: Callable[[str, str], None] | None = None   # (level, text) for -v output
    runner: Any = None                   # the executor's HostRunner (None for controller-only modules)
    ran: list[str] = field(default_factory=list)
    probe_cache: dict | None = None      # (become, user, cmd) -> (rc, stdout): probes prefetched in one round trip

    def probe(self, cmd: str, *, become: bool | None = None, desc: str | None = None) -> CommandResult:
        """A READ-ONLY command (state check). Answered from the host's prefetched probes when nothing ran on the
        host since they were taken; never invalidates them."""
        b = self.become if become is None else become
        key = (bool(b), self.become_user if b else "", cmd)
        if self.probe_cache is not None and key in self.probe_cache:
            rc, out = self.probe_cache[key]
            if self.log:
                self.log("cmd", f"(prefetched) {desc or cmd}")
            return CommandResult(rc, out, "", 0.0)
        return self.runner.shell(self, cmd, become=b, desc=desc, readonly=True)


class Op:
    """An operation plans (:meth:`plan`); the executor's runner carries the plan out. An op with ``controller =
    True`` (debug, set_fact, assert, fail, meta) instead answers with ``run(args, ctx) -> HostResult`` and never
    reaches a host."""
    facts: tuple = ()          # fact sections this op reads
    raw_args: tuple = ()       # arguments the executor must not template (assert: that, debug: var)
    controller: bool = False

    def probe(self, args: dict, ctx: OpContext) -> str | None:
        return None

    def prefetchable(self, args: dict) -> bool:
        """Whether probe() may run early, batched with the play's other probes (it must be read-only)."""
        return True

    def plan(self, args: dict, facts: Mapping, probe: CommandResult | None, ctx: OpContext) -> Plan:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- arguments

def normalize(spec: ModuleSpec, raw: Mapping[str, Any]) -> dict:
    """A task's rendered arguments checked and coerced by :func:`provision.ops.spec.check_args` (canonical names,
    defaults, types), the validator the loader uses too; OpError naming the argument for the first problem."""
    args, errors = check_args(spec, raw)
    if errors:
        raise OpError(str(errors[0]))
    return args


def parse_mode(mode: Any) -> int | None:
    """0644 (YAML int 420), '0644', '644', '1777' -> int; symbolic modes are refused."""
    if mode is None or mode == "":
        return None
    if isinstance(mode, int):
        return mode
    s = str(mode).strip()
    if re.fullmatch(r"0?[0-7]{3,4}", s) or re.fullmatch(r"0o[0-7]{3,4}", s):
        return int(s.replace("0o", ""), 8)
    raise OpError(f"mode {mode!r}: give an octal mode such as '0644' (symbolic modes are not supported)")


# ------------------------------------------------------------------------------------------- files

MAX_DIFF_BYTES = 256 * 1024


class StatProbe(str):
    """The command :func:`stat_probe` returns: a plain shell command to run as it is, that also says which path it
    describes, so that the prefetch can answer the file probes of a whole play with one ``stat`` and one
    ``sha256sum`` (:func:`stat_batch`)."""
    path: str
    content: bool


def stat_probe(path: str, content: bool = True) -> StatProbe:
    """Read-only shell describing ``path``: kind, mode, owner, group, size, sha256 and (small files) content.
    Few processes (one stat, one sha256sum, one base64): on a busy host each one costs about a millisecond."""
    p = q(path)
    body = f"sha256sum < {p}"  # "HASH  -": parse_stat takes the first word
    if content:
        body += f'; [ "${{_st##* }}" -le {MAX_DIFF_BYTES} ] && base64 -w0 < {p}; echo'
    cmd = StatProbe(f'if [ -L {p} ]; then echo "link $(stat -c "%a %U %G %u %g" -- {p}) $(readlink -- {p})"; '
                    f'elif [ -d {p} ]; then echo "directory $(stat -c "%a %U %G %u %g" -- {p})"; '
                    f'elif [ -e {p} ]; then _st=$(stat -c "%a %U %G %u %g %s" -- {p}); echo "file $_st"; {body}; '
                    f'else echo absent; fi')
    cmd.path, cmd.content = path, content
    return cmd


# no space, quote, '|' or backslash: stat and sha256sum print such a path as it is, and it is safe unquoted
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._@+,=/-]*")
_BATCH_MARK = "@@provision-stat@@"


def stat_batch(probes: list[StatProbe]) -> tuple[str, Callable[[str], dict[StatProbe, str]]] | None:
    """One read-only script answering many stat probes: one ``stat`` and one ``sha256sum`` for every path, one
    ``readlink`` per link, one ``head | base64`` per path whose content is asked for (instead of 2-5 processes per
    probe), and a function from its output to each probe's answer, in :func:`stat_probe`'s own format. Paths with
    unusual characters, and devices, fifos or unreadable files, are left out (probed one by one)."""
    probes = [p for p in probes if _PLAIN_PATH.fullmatch(p.path)]
    paths = list(dict.fromkeys(p.path for p in probes))
    if len(paths) < 2:
        return None
    wanted = list(dict.fromkeys(p.path for p in probes if p.content))
    qs = " ".join(q(p) for p in paths)
    # plain paths: safe unquoted in $_f. Only regular files are hashed (a fifo would block sha256sum)
    script = (f"stat -c '%n|%F|%a %U %G %u %g %s' -- {qs} 2>/dev/null; echo '{_BATCH_MARK}links'; "
              f"_f=; for _p in {qs}; do if [ -L \"$_p\" ]; then printf '%s|%s\\n' \"$_p\" \"$(readlink \"$_p\")\"; "
              f"elif [ -f \"$_p\" ]; then _f=\"$_f $_p\"; fi; done; echo '{_BATCH_MARK}sums'; "
              f"[ -z \"$_f\" ] || sha256sum -- $_f 2>/dev/null; ")
    for i, path in enumerate(wanted):
        script += (f"echo '{_BATCH_MARK}content {i}'; [ -f {q(path)} ] && head -c {MAX_DIFF_BYTES + 1} -- {q(path)}"
                   " | base64 -w0; echo; ")
    script += f"echo '{_BATCH_MARK}end'"

    def answers(out: str) -> dict[StatProbe, str]:
        stats, links, sums, content = {}, {}, {}, {}
        part, key = "stat", None
        for line in out.splitlines():
            if line.startswith(_BATCH_MARK):
                part, _, key = line[len(_BATCH_MARK):].partition(" ")
                if part == "end":
                    break
            elif part == "stat" and line.count("|") == 2:
                path, kind, rest = line.split("|")
                stats[path] = (kind, rest)
            elif part == "links" and "|" in line:
                path, _, target = line.partition("|")
                links[path] = target
            elif part == "sums" and "  " in line:
                digest, _, path = line.partition("  ")
                sums[path] = digest
            elif part == "content" and line:
                content[wanted[int(key)]] = line
        if part != "end":
            return {}   # the script did not finish: probe one by one
        res = {}
        for p in probes:
            if p.path not in stats:
                res[p] = "absent\n"
                continue
            kind, rest = stats[p.path]
            if kind == "symbolic link" and p.path in links:
                res[p] = f"link {rest.rsplit(' ', 1)[0]} {links[p.path]}\n"
            elif kind == "directory":
                res[p] = f"directory {rest.rsplit(' ', 1)[0]}\n"
            elif kind.startswith("regular") and p.path in sums:
                size = int(rest.rsplit(" ", 1)[1])
                text = f"file {rest}\n{sums[p.path]}\n"
                if p.content:
                    text += (content.get(p.path, "") if size <= MAX_DIFF_BYTES else "") + "\n"
                res[p] = text
            # a device, a fifo, an unreadable file: stat_probe itself answers when the task runs
        return res
    return script, answers


@dataclass
class FileState:
    kind: str                  # absent, file, directory, link
    mode: int | None = None
    owner: str = ""
    group: str = ""
    uid: str = ""
    gid: str = ""
    size: int = 0
    sha256: str = ""
    content: bytes | None = None   # None when too big to fetch
    link_target: str = ""

    def owner_is(self, want: Any) -> bool:
        return want is None or str(want) in (self.owner, self.uid)

    def group_is(self, want: Any) -> bool:
        return want is None or str(want) in (self.group, self.gid)


def parse_stat(text: str) -> FileState:
    lines = text.splitlines()
    if not lines or lines[0].strip() == "absent":
        return FileState("absent")
    head = lines[0].split()
    kind = head[0]
    st = FileState(kind, int(head[1], 8), head[2], head[3], head[4], head[5])
    if kind == "link":
        st.link_target = lines[0].split(None, 6)[6] if len(head) > 6 else ""
    if kind == "file":
        st.size = int(head[6])
        st.sha256 = lines[1].split()[0] if len(lines) > 1 and lines[1].strip() else ""
        if len(lines) > 2 and (lines[2].strip() or not st.size):   # an empty line for a non-empty file: too big
            try:
                st.content = base64.b64decode(lines[2].strip()) if st.size else b""
            except ValueError:
                st.content = None
        if st.size == 0:
            st.content = b""
    return st


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def file_diff(path: str, before: bytes | None, after: bytes | None, *, before_absent=False,
              after_absent=False) -> dict:
    def show(data, absent):
        if absent:
            return ""
        t = as_text(data)
        return t if t is not None else "(binary or too large to show)\n"
    return {"before_header": path if not before_absent else f"{path} (absent)",
            "after_header": path if not after_absent else f"{path} (absent)",
            "before": show(before, before_absent), "after": show(after, after_absent)}


def owner_cmds(path: str, owner: Any, group: Any, st: FileState | None, *, link: bool = False) -> list[Cmd]:
    cmds = []
    h = "-h " if link else ""
    need_o = owner is not None and not (st and st.owner_is(owner))
    need_g = group is not None and not (st and st.group_is(group))
    if need_o or need_g:
        spec = (str(owner) if need_o else "") + (f":{group}" if need_g else "")
        cmds.append(Cmd(f"chown {h}-- {q(spec)} {q(path)}"))
    return cmds


def attr_cmds(path: str, mode: int | None, owner: Any, group: Any, st: FileState | None, *,
              link: bool = False) -> list[Cmd]:
    """chmod (never of a link itself) and chown of ``path`` where they differ from ``st`` (None: unknown, e.g. a
    path about to be made: every given attribute is set)."""
    cmds = []
    if mode is not None and not link and (st is None or st.mode != mode):
        cmds.append(Cmd(f"chmod {mode:o} -- {q(path)}"))
    return cmds + owner_cmds(path, owner, group, st, link=link)


def write_file_plan(path: str, data: bytes, st: FileState, *, mode: int | None, owner: Any = None,
                    group: Any = None, backup: bool = False, make_parent: bool = False,
                    validate: str | None = None) -> Plan:
    """Commands that make ``path`` hold ``data`` with mode/owner/group; a no-op when it already does. ``validate``
    (Ansible's: a command with %s, the new content's temp file) must succeed before the file is replaced."""
    if st.kind == "directory":
        return Plan(failed=True, msg=f"{path} is a directory")
    if validate and "%s" not in str(validate):
        return Plan(failed=True, msg=f"validate must contain %s: {validate}")
    cmds: list[Cmd] = []
    diffs: list[dict] = []
    same = st.kind == "file" and st.sha256 == sha256(data)
    if not same:
        if backup and st.kind == "file":
            cmds.append(Cmd(f"cp -p -- {q(path)} {q(path)}.$(date +%Y%m%d-%H%M%S)~", desc=f"backup {path}"))
        new_mode = mode if mode is not None else (st.mode if st.kind == "file" else None)
        cmds.append(FilePut(path, data, mode=new_mode, make_parent=make_parent,
                            validate=str(validate) if validate else None))
        diffs.append(file_diff(path, st.content, data, before_absent=st.kind == "absent"))
        after_state = None
    else:
        if mode is not None and st.mode != mode:
            cmds.append(Cmd(f"chmod {mode:o} -- {q(path)}"))
            diffs.append({"before_header": f"{path} mode", "after_header": f"{path} mode",
                          "before": f"{st.mode:04o}\n", "after": f"{mode:04o}\n"})
        after_state = st
    oc = owner_cmds(path, owner, group, after_state)
    if oc and after_state is not None:
        diffs.append({"before_header": f"{path} owner", "after_header": f"{path} owner",
                      "before": f"{st.owner}:{st.group}\n",
                      "after": f"{owner or st.owner}:{group or st.group}\n"})
    cmds += oc
    if not cmds:
        return Plan(noop=f"{path} is up to date", extra={"dest": path, "checksum": st.sha256})
    return Plan(cmds, diff=diffs, extra={"dest": path, "checksum": sha256(data)})


# ------------------------------------------------------------------------------------------- masking
# What is secret, by what it is, never by its shape (docs/security.md): the values of variables whose NAME says
# secret (SECRET_NAME; a *_file/_path/_dir name holds where a secret is, not the secret), the values of variables the
# user lists in ``gpufleet_secret_vars``, the become password, and everything of a ``no_log`` task (censored whole in
# executor/report.py). A value is masked whatever it starts with; values shorter than SHORT_SECRET characters are
# masked only where they stand alone (not inside a longer word), so that a one-letter password does not blank out
# every 'a' of the output.
SECRET_VARS_LIST = "gpufleet_secret_vars"
SHORT_SECRET = 4
_NOT_SECRET_NAME = re.compile(r"_(file|path|dir)$", re.I)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not _NOT_SECRET_NAME.search(name)


def secret_values(variables: Mapping[str, Any] | None, extra: Mapping[str, Any] | None = None,
                  marked: Any = ()) -> list[str]:
    """Values of variables (and args) whose names say secret, or that ``marked`` (the names in
    ``gpufleet_secret_vars``) lists, to mask in output: every string and number under such a name."""
    marked = {str(m) for m in marked} if isinstance(marked, (list, tuple, set, frozenset)) else set()
    out: list[str] = []

    def walk(name: str, v: Any, secret: bool, depth: int = 0):
        if depth > 4:
            return
        secret = secret or name in marked or is_secret_name(name)
        if isinstance(v, Mapping):
            for k, x in v.items():
                walk(str(k), x, secret, depth + 1)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(name, x, secret, depth + 1)
        elif secret and isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) != "":
            s = str(v)
            out.append(s)
            if q(s) != s:
                out.append(q(s))          # as a planned command shows it
            if "\n" in s:
                out.extend(ln for ln in s.splitlines() if len(ln.strip()) >= 2 * SHORT_SECRET)
    for src in (variables or {}, extra or {}):
        for k in list(src.keys()):
            if k in ("hostvars", "groups", "vars", "ansible_facts", "ansible_local", SECRET_VARS_LIST):
                continue
            try:
                walk(str(k), src[k], False)
            except Exception:  # noqa: BLE001 - lazily templated values may fail to render: skip them
                continue
    return sorted(set(out), key=len, reverse=True)


def _secret_pattern(secrets: tuple[str, ...]) -> re.Pattern | None:
    parts = [re.escape(s) if len(s) >= SHORT_SECRET else rf"(?<!\w){re.escape(s)}(?!\w)"
             for s in sorted(set(secrets), key=len, reverse=True) if s]
    return re.compile("|".join(parts)) if parts else None


_PATTERNS: dict[tuple[str, ...], re.Pattern | None] = {}


def mask_text(text: str, secrets: list[str]) -> str:
    """Every secret value in ``text`` (one pass, longest first, so a mask is never masked again), then the value
    of anything that reads ``password=...`` / ``token: ...``."""
    if not text:
        return text
    key = tuple(secrets)
    if key not in _PATTERNS:
        if len(_PATTERNS) > 256:
            _PATTERNS.clear()
        _PATTERNS[key] = _secret_pattern(key)
    pattern = _PATTERNS[key]
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _SECRET_ASSIGN.sub(lambda m: f"{m.group('k')}{m.group('sep')}{MASK}", text)


def unified(d: dict) -> str:
    before = d.get("before", "")
    after = d.get("after", "")
    if isinstance(before, str) and isinstance(after, str):
        lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                     fromfile=f"before: {d.get('before_header', '')}",
                                     tofile=f"after: {d.get('after_header', '')}")
        text = "".join(x if x.endswith("\n") else x + "\n" for x in lines)
        return text
    return f"--- before\n{before}\n+++ after\n{after}\n"
