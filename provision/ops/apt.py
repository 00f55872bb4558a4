"""apt, apt_key (keyrings) and apt_repository.

apt decides from the host's dpkg facts (one dpkg-query for every package, gathered with the play's facts and
refreshed after a change). It waits for the dpkg lock instead of failing (DPkg::Lock::Timeout), runs
non-interactively, pins exact versions (`pkg=1.2`), holds/unholds with apt-mark. A cache update alone is not
counted as a change (so a second run reports 0 changed); check mode predicts the package changes with
`apt-get -s`.
"""
from __future__ import annotations

import base64
import fnmatch
import re
from urllib.parse import urlparse

from provision.ops.core import (Cmd, Op, OpError, Plan, execute_plan, parse_mode, parse_stat, q, stat_probe,
                                write_file_plan)
from provision.ops.spec import ArgSpec, module
from provision.results import HostResult

LOCK_WAIT = 600
APT_GET = ("DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get -y -q "
           f"-o DPkg::Lock::Timeout={LOCK_WAIT} -o Dpkg::Options::=--force-confdef "
           "-o Dpkg::Options::=--force-confold")
STAMP = "/var/lib/apt/periodic/provision-update-stamp"   # when the WHOLE cache was last updated (cache_valid_time)
UPDATE = (f"DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout={LOCK_WAIT} update && "
          f"{{ mkdir -p /var/lib/apt/periodic && touch {STAMP}; }}")


def update_one_source(path: str) -> str:
    """apt-get update of one sources file only (seconds instead of a full update that reaches every mirror)."""
    return (f"DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout={LOCK_WAIT} "
            f"-o Dir::Etc::sourcelist={q(path)} -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 update")


def _apt_mark(action: str, names: list[str]) -> str:
    # apt-mark has no lock timeout option: retry while dpkg is busy
    return (f"for i in $(seq 120); do apt-mark {action} {' '.join(q(n) for n in names)} && exit 0; "
            f"sleep 5; done; exit 1")


def parse_name(spec: str) -> tuple[str, str | None]:
    name, sep, version = str(spec).partition("=")
    return name.strip(), (version.strip() if sep else None)


def version_matches(installed: str | None, want: str | None) -> bool:
    if installed is None:
        return False
    if want is None:
        return True
    return installed == want or fnmatch.fnmatchcase(installed, want)


def parse_policy(text: str) -> dict[str, str | None]:
    """`apt-cache policy a b` -> {name: candidate or None}."""
    out: dict[str, str | None] = {}
    cur = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            cur = line[:-1].split(":")[0]
            out[cur] = None
        elif cur and line.strip().startswith("Candidate:"):
            v = line.split(":", 1)[1].strip()
            out[cur] = None if v in ("(none)", "") else v
    return out


def parse_simulation(text: str) -> list[str]:
    """`apt-get -s` lines 'Inst pkg [old] (new ...)' / 'Remv pkg [ver]' -> ['pkg: old -> new', ...]."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(Inst|Remv|Purg) (\S+)(?: \[([^\]]+)\])?(?: \((\S+))?", line)
        if not m:
            continue
        kind, name, old, new = m.groups()
        if kind == "Inst":
            out.append(f"{name}: {old or '(absent)'} -> {new}")
        else:
            out.append(f"{name}: {old or 'installed'} -> (absent)")
    return out


def _pkg_diff(before: list[str], after: list[str]) -> dict:
    return {"before_header": "packages", "after_header": "packages",
            "before": "".join(x + "\n" for x in before), "after": "".join(x + "\n" for x in after)}


def _hold_diff(before: list[str], after: list[str]) -> dict:
    return {**_pkg_diff(before, after), "before_header": "package holds", "after_header": "package holds"}


def package_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    before, after = [], []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            before.append(f"{name} {old[name]}" if name in old else f"{name} (absent)")
            after.append(f"{name} {new[name]}" if name in new else f"{name} (absent)")
    return before, after


@module("apt", args={
    "name": ArgSpec("list", aliases=("pkg", "package")),
    "state": ArgSpec("str", default="present", choices=("present", "absent", "latest", "installed", "removed")),
    "update_cache": ArgSpec("bool", default=False, aliases=("update-cache",)),
    "cache_valid_time": ArgSpec("int", default=0),
    "hold": ArgSpec("bool"),
    "purge": ArgSpec("bool", default=False),
    "install_recommends": ArgSpec("bool", aliases=("install-recommends",)),
    "allow_downgrade": ArgSpec("bool", default=False, aliases=("allow-downgrade", "allow_downgrades")),
    "autoremove": ArgSpec("bool", default=False),
})
class Apt(Op):
    facts = ("packages", "apt_cache")

    def cache_stale(self, args, facts) -> bool:
        if not args.get("update_cache"):
            return False
        valid = int(args.get("cache_valid_time") or 0)
        if valid <= 0:
            return True
        return facts.get("date_epoch", 0) - facts.get("apt_cache_mtime", 0) > valid

    def plan(self, args, facts, probe, ctx) -> Plan:
        state = {"installed": "present", "removed": "absent"}.get(args.get("state"), args.get("state", "present"))
        pkgs: dict = facts.get("packages", {})
        held = set(facts.get("held_packages", []))
        wanted = [parse_name(n) for n in args.get("name") or []]
        names = [n for n, _ in wanted]
        cmds: list[Cmd] = []
        before, after, hb, ha = [], [], [], []
        hold = args.get("hold")
        extra_opts = ""
        if args.get("install_recommends") is not None:
            extra_opts += " --install-recommends" if args["install_recommends"] else " --no-install-recommends"
        if args.get("allow_downgrade"):
            extra_opts += " --allow-downgrades"
        if hold:
            extra_opts += " --allow-change-held-packages"
        if state in ("present", "latest"):
            cand = {}
            if state == "latest" and names:
                cand = parse_policy(ctx.probe("LANG=C apt-cache policy " + " ".join(q(n) for n in names)).stdout)
            todo = []
            for name, ver in wanted:
                cur = pkgs.get(name)
                if state == "latest" and ver is None:
                    c = cand.get(name)
                    if c is None and cur is None:
                        return Plan(failed=True, msg=f"No package matching '{name}' is available")
                    if cur is not None and (c is None or c == cur):
                        continue
                    todo.append(name)
                    before.append(f"{name} {cur}" if cur else f"{name} (absent)")
                    after.append(f"{name} {c}")
                elif not version_matches(cur, ver):
                    todo.append(f"{name}={ver}" if ver else name)
                    before.append(f"{name} {cur}" if cur else f"{name} (absent)")
                    after.append(f"{name} {ver or '(candidate)'}")
            if todo:
                cmds.append(Cmd(f"{APT_GET}{extra_opts} install {' '.join(q(t) for t in todo)}", timeout=3600,
                                desc=f"apt-get install {' '.join(todo)}"))
        else:
            todo = [n for n in names if n in pkgs]
            if todo:
                verb = "purge" if args.get("purge") else "remove"
                cmds.append(Cmd(f"{APT_GET}{' --allow-change-held-packages' if set(todo) & held else ''} {verb} "
                                f"{' '.join(q(t) for t in todo)}", timeout=3600,
                                desc=f"apt-get {verb} {' '.join(todo)}"))
                before += [f"{n} {pkgs[n]}" for n in todo]
                after += [f"{n} (absent)" for n in todo]
        if hold is not None and state != "absent":
            change = [n for n in names if (n in held) != bool(hold)]
            if change:
                cmds.append(Cmd(_apt_mark("hold" if hold else "unhold", change),
                                desc=f"apt-mark {'hold' if hold else 'unhold'} {' '.join(change)}"))
                hb = [f"{n} {'held' if n in held else 'not held'}" for n in change]
                ha = [f"{n} {'held' if hold else 'not held'}" for n in change]
        if args.get("autoremove"):
            sim = ctx.run(f"{APT_GET} -s autoremove", become=False).stdout
            if parse_simulation(sim):
                cmds.append(Cmd(f"{APT_GET} autoremove", desc="apt-get autoremove"))
        if not cmds:
            return Plan(noop="packages already as wanted" if names else "nothing to do")
        diff = ([_pkg_diff(before, after)] if before or after else []) + ([_hold_diff(hb, ha)] if hb else [])
        return Plan(cmds, diff=diff, refresh_facts=("packages", "apt_cache"))

    def run(self, args, ctx) -> HostResult:
        facts = ctx.facts
        updated = False
        if self.cache_stale(args, facts):
            if ctx.check:
                pass   # reported in msg; never run in check mode
            else:
                res = ctx.run(UPDATE, timeout=1800)
                if res.rc != 0:
                    return HostResult(ctx.host, failed=True, rc=res.rc, stdout=res.stdout, stderr=res.stderr,
                                      msg="apt-get update failed: " + (res.stderr.strip()[-1000:] or res.stdout[-500:]))
                updated = True
                if ctx.refresh:
                    ctx.refresh(("apt_cache",))
        plan = self.plan(args, ctx.facts, None, ctx)
        note = "cache updated; " if updated else ("cache would be updated; " if ctx.check and
                                                   self.cache_stale(args, facts) else "")
        if ctx.check and plan.commands and not plan.failed:
            # predict the exact package changes (dependencies included) with a simulation
            sims = [c.cmd.replace(" install ", " -s install ", 1).replace(" remove ", " -s remove ", 1)
                    .replace(" purge ", " -s purge ", 1) for c in plan.commands if c.cmd.startswith("DEBIAN")]
            lines = []
            for s in sims:
                lines += parse_simulation(ctx.run(s, become=False).stdout)
            if lines:
                holds = [d for d in plan.diff if d.get("before_header") == "package holds"]
                plan.diff = [{"before_header": "packages", "after_header": "packages (simulated)",
                              "before": "", "after": "".join(x + "\n" for x in lines)}] + holds
        before_pkgs = dict(ctx.facts.get("packages", {}))
        r = execute_plan(plan, ctx)
        r.msg = (note + (r.msg or "")).strip("; ").strip()
        r.extra["cache_updated"] = updated
        if r.changed and not ctx.check and ctx.diff:
            b, a = package_changes(before_pkgs, ctx.facts.get("packages", {}))
            if b or a:
                r.diff = [_pkg_diff(b, a)] + [d for d in r.diff if d.get("before_header") == "package holds"]
        return r


# ----------------------------------------------------------------------------------------- keys and repos

def dearmor(data: bytes) -> bytes:
    """An ASCII-armored OpenPGP block -> its binary form (what `gpg --dearmor` writes); binary passes through."""
    text = data.decode("ascii", "replace")
    if "-----BEGIN PGP" not in text:
        return data
    body, started, in_headers = [], False, False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN PGP"):
            started, in_headers = True, True
            continue
        if not started:
            continue
        if line.startswith("-----END PGP"):
            break
        if in_headers:
            if not line:
                in_headers = False
            elif ":" in line:
                continue
            else:
                in_headers = False
                body.append(line)
            continue
        if line.startswith("="):
            continue   # CRC24 checksum line
        body.append(line)
    try:
        return base64.b64decode("".join(body))
    except ValueError as err:
        raise OpError(f"the key is not valid ASCII armor: {err}") from None


_KEY_SCRIPT = r"""set -e
t=$(mktemp); trap 'rm -f "$t" "$t.g"' EXIT
curl -fsSL --retry 3 {url} -o "$t"
if grep -q -- '-----BEGIN PGP' "$t"; then gpg --dearmor < "$t" > "$t.g"; mv "$t.g" "$t"; fi
if [ -f {dest} ] && cmp -s "$t" {dest}; then echo KEY-SAME; exit 0; fi
echo KEY-DIFFERENT
{install}
"""


@module("apt_key", aliases=("keyring",), args={
    "url": ArgSpec("str"), "data": ArgSpec("str"), "file": ArgSpec("path"),
    "keyring": ArgSpec("path", aliases=("dest",)), "name": ArgSpec("str"), "id": ArgSpec("str"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")), "mode": ArgSpec("raw"),
})
class AptKey(Op):
    """Keys go to a keyring file (/etc/apt/keyrings/NAME.gpg by default) referenced with signed-by, never to the
    deprecated global trusted.gpg. ASCII armor is dearmored."""

    def dest(self, args) -> str:
        if args.get("keyring"):
            return str(args["keyring"])
        if args.get("name"):
            return f"/etc/apt/keyrings/{args['name']}.gpg"
        raise OpError("apt_key needs keyring (the destination file) or name")

    def probe(self, args, ctx):
        if args.get("url") or not (args.get("keyring") or args.get("name")):
            return None   # a url is fetched and compared on the host by the task itself
        return stat_probe(self.dest(args), content=False)

    def run(self, args, ctx) -> HostResult:
        dest = self.dest(args)
        mode = parse_mode(args.get("mode")) or 0o644
        if args.get("state") == "absent":
            st = parse_stat(ctx.probe(stat_probe(dest, content=False)).stdout)
            plan = Plan(noop=f"{dest} is absent") if st.kind == "absent" else \
                Plan([Cmd(f"rm -f {q(dest)}")], diff=[{"before_header": dest, "after_header": dest,
                                                       "before": "keyring present\n", "after": "(absent)\n"}])
            return execute_plan(plan, ctx)
        if args.get("url"):
            install = "true" if ctx.check else (f"mkdir -p {q(dest.rsplit('/', 1)[0] or '/')} && "
                                                f"install -m {mode:o} \"$t\" {q(dest)}")
            script = _KEY_SCRIPT.format(url=q(str(args["url"])), dest=q(dest), install=install)
            # installs only when the key differs, and then reports a change: safe to keep prefetched probes
            res = ctx.run(script, timeout=300, desc=f"fetch {args['url']} -> {dest}", readonly=True)
            if res.rc != 0 or "KEY-" not in res.stdout:
                return HostResult(ctx.host, failed=True, rc=res.rc, stderr=res.stderr,
                                  msg=f"cannot fetch key {args['url']}: {res.stderr.strip()[-500:]}")
            changed = "KEY-DIFFERENT" in res.stdout
            diff = [{"before_header": dest, "after_header": dest, "before": "old or no keyring\n",
                     "after": f"keyring from {args['url']}\n"}] if changed and ctx.diff else []
            return HostResult(ctx.host, changed=changed, diff=diff, extra={"dest": dest},
                              msg="" if changed else f"{dest} is up to date")
        if args.get("data") is not None:
            data = dearmor(str(args["data"]).encode())
        elif args.get("file"):
            from provision.ops.files import find_local
            with open(find_local(args["file"], ctx, "files"), "rb") as fh:
                data = dearmor(fh.read())
        else:
            raise OpError("apt_key needs url, data or file")
        st = parse_stat(ctx.probe(stat_probe(dest, content=False)).stdout)
        plan = write_file_plan(dest, data, st, mode=mode, make_parent=True)
        for d in plan.diff:   # keys are binary: show a fingerprint-like summary, not bytes
            d.update(before="(absent)\n" if st.kind == "absent" else f"sha256 {st.sha256}\n",
                     after=f"sha256 {__import__('hashlib').sha256(data).hexdigest()}\n")
        return execute_plan(plan, ctx)


def _repo_filename(uri: str) -> str:
    u = urlparse(uri)
    name = (u.netloc + u.path).strip("/")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "repo"


def one_line(repo: str, signed_by: str | None) -> tuple[str, str]:
    """Normalise a one-line repo; add [signed-by=...] when asked. Returns (line, uri)."""
    parts = repo.split()
    if not parts or parts[0] not in ("deb", "deb-src"):
        raise OpError(f"repo {repo!r} must start with 'deb' or 'deb-src'")
    opts = []
    rest = parts[1:]
    if rest and rest[0].startswith("["):
        j = next(i for i, x in enumerate(rest) if x.endswith("]"))
        opts = " ".join(rest[:j + 1])[1:-1].split()
        rest = rest[j + 1:]
    if signed_by and not any(o.startswith("signed-by=") for o in opts):
        opts.append(f"signed-by={signed_by}")
    if not rest:
        raise OpError(f"repo {repo!r} has no URI")
    line = " ".join([parts[0]] + ([f"[{' '.join(opts)}]"] if opts else []) + rest)
    return line, rest[0]


@module("apt_repository", args={
    "repo": ArgSpec("str"), "filename": ArgSpec("str"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "update_cache": ArgSpec("bool", default=True, aliases=("update-cache",)),
    "signed_by": ArgSpec("str"), "format": ArgSpec("str", choices=("one-line", "deb822")),
    "types": ArgSpec("list"), "uris": ArgSpec("list"), "suites": ArgSpec("list"), "components": ArgSpec("list"),
    "architectures": ArgSpec("list"), "mode": ArgSpec("raw"),
})
class AptRepository(Op):
    facts = ("apt_cache",)

    def content(self, args) -> tuple[str, str, str]:
        """-> (path, text, uri)"""
        fmt = args.get("format") or ("deb822" if args.get("uris") else "one-line")
        if fmt == "deb822":
            uris = args.get("uris") or []
            if not uris or not args.get("suites"):
                raise OpError("deb822 repositories need uris and suites")
            lines = [f"Types: {' '.join(args.get('types') or ['deb'])}", f"URIs: {' '.join(uris)}",
                     f"Suites: {' '.join(args['suites'])}"]
            if args.get("components"):
                lines.append(f"Components: {' '.join(args['components'])}")
            if args.get("architectures"):
                lines.append(f"Architectures: {' '.join(args['architectures'])}")
            if args.get("signed_by"):
                lines.append(f"Signed-By: {args['signed_by']}")
            uri = uris[0]
            name = args.get("filename") or _repo_filename(uri)
            return f"/etc/apt/sources.list.d/{name}.sources", "\n".join(lines) + "\n", uri
        if not args.get("repo"):
            raise OpError("apt_repository needs repo (one-line) or uris/suites (deb822)")
        line, uri = one_line(str(args["repo"]), args.get("signed_by"))
        name = args.get("filename") or _repo_filename(uri)
        return f"/etc/apt/sources.list.d/{name}.list", line + "\n", uri

    def probe(self, args, ctx):
        return stat_probe(self.content(args)[0])

    def run(self, args, ctx) -> HostResult:
        path, text, _ = self.content(args)
        st = parse_stat(ctx.probe(stat_probe(path)).stdout)
        if args.get("state") == "absent":
            plan = Plan(noop=f"{path} is absent") if st.kind == "absent" else Plan(
                [Cmd(f"rm -f {q(path)}")], diff=[{"before_header": path, "after_header": path,
                                                  "before": (st.content or b"").decode(errors="replace"),
                                                  "after": ""}])
        else:
            plan = write_file_plan(path, text.encode(), st, mode=parse_mode(args.get("mode")) or 0o644)
        if plan.commands and args.get("update_cache", True):
            if args.get("state") == "absent":
                plan.commands.append(Cmd(UPDATE, timeout=1800, counts=False, desc="apt-get update"))
            else:
                plan.commands.append(Cmd(update_one_source(path), timeout=600, counts=False,
                                         desc=f"apt-get update ({path} only)"))
        return execute_plan(plan, ctx)
