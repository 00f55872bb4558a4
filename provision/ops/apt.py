"""apt, apt_key (keyrings) and apt_repository.

apt decides from the host's dpkg facts (one dpkg-query for every package, gathered with the play's facts and
refreshed after a change). It waits for the dpkg lock instead of failing (DPkg::Lock::Timeout; apt-mark, which has
no such option, is retried by the runner), runs non-interactively, pins exact versions (`pkg=1.2`), holds/unholds
with apt-mark. A cache update alone is not counted as a change (so a second run reports 0 changed); check mode
predicts the package changes with `apt-get -s`. Each step is a plan: update the cache, then read the candidates,
then decide (and in check mode simulate, then show the simulation).
"""
from __future__ import annotations

import base64
import fnmatch
import re
from urllib.parse import urlparse

from provision.ops.core import (Cmd, Op, OpError, Plan, parse_mode, parse_stat, q, sha256, stat_probe,
                                write_file_plan)
from provision.ops.spec import ArgSpec, module

LOCK_WAIT = 600
APT_GET = ("DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get -y -q "
           f"-o DPkg::Lock::Timeout={LOCK_WAIT} -o Dpkg::Options::=--force-confdef "
           "-o Dpkg::Options::=--force-confold")
STAMP = "/var/lib/apt/periodic/provision-update-stamp"   # when the WHOLE cache was last updated (cache_valid_time)
UPDATE = (f"DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout={LOCK_WAIT} update && "
          f"{{ mkdir -p /var/lib/apt/periodic && touch {STAMP}; }}")
UPDATED, WOULD_UPDATE = "cache updated; ", "cache would be updated; "   # apt's message starts so


def update_one_source(path: str) -> str:
    """apt-get update of one sources file only (seconds instead of a full update that reaches every mirror)."""
    return (f"DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout={LOCK_WAIT} "
            f"-o Dir::Etc::sourcelist={q(path)} -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 update")


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

    def probe(self, args, ctx):
        # the candidates of state=latest; with update_cache they are read after the update, by the plan
        return _policy(args) if not args.get("update_cache") else None

    def plan(self, args, facts, probe, ctx) -> Plan:
        """Update the cache when stale (never in check mode), read what the decision needs (candidates for
        state=latest, autoremove's simulation), decide; in check mode simulate the changes for the diff."""
        if not self.cache_stale(args, facts):
            return self.look(args, facts, probe, "", ctx)
        if ctx.check:
            return self.look(args, facts, None, WOULD_UPDATE, ctx)

        def failed(results) -> dict:
            res = results[0]
            if res.rc == 0:
                return {}
            return {"failed": True, "rc": res.rc, "stdout": res.stdout, "stderr": res.stderr,
                    "msg": "apt-get update failed: " + (res.stderr.strip()[-1000:] or res.stdout[-500:])}
        return Plan([Cmd(UPDATE, timeout=1800, counts=False, ok_rc=None, desc="apt-get update")],
                    refresh_facts=("apt_cache",), result=failed,
                    then=lambda fresh, _: self.look(args, fresh, None, UPDATED, ctx))

    def look(self, args, facts, policy, note: str, ctx) -> Plan:
        """The read-only commands the decision needs and the prefetch did not answer, then the decision."""
        reads = []
        if policy is None and _policy(args):
            reads.append(Cmd(_policy(args), readonly=True, counts=False, ok_rc=None))
        if args.get("autoremove"):
            reads.append(Cmd(f"{APT_GET} -s autoremove", become=False, readonly=True, counts=False, ok_rc=None))
        if not reads:
            return self.decide(args, facts, policy, [], note, ctx)

        def then(_facts, results):
            got = list(results)
            pol = policy if policy is not None or not _policy(args) else got.pop(0)
            return self.decide(args, facts, pol, parse_simulation(got[0].stdout) if got else [], note, ctx)
        return Plan(reads, then=then)

    def decide(self, args, facts, policy, autoremove: list[str], note: str, ctx) -> Plan:
        """``autoremove``: what `apt-get -s autoremove` would remove (nothing: no autoremove)."""
        state = {"installed": "present", "removed": "absent"}.get(args.get("state"), args.get("state", "present"))
        pkgs: dict = facts.get("packages", {})
        held = set(facts.get("held_packages", []))
        wanted = [parse_name(n) for n in args.get("name") or []]
        names = [n for n, _ in wanted]
        cmds: list[Cmd] = []
        sims: list[Cmd] = []     # apt-get -s of each apt-get command: check mode's exact prediction
        before, after, hb, ha = [], [], [], []
        hold = args.get("hold")
        updated = {"cache_updated": note == UPDATED}

        def apt_get(opts: str, verb: str, todo: list[str]) -> None:
            line = " ".join(q(t) for t in todo)
            cmds.append(Cmd(f"{APT_GET}{opts} {verb} {line}", timeout=3600, desc=f"apt-get {verb} {' '.join(todo)}"))
            sims.append(Cmd(f"{APT_GET}{opts} -s {verb} {line}", become=False, readonly=True, counts=False,
                            ok_rc=None))
        extra_opts = ""
        if args.get("install_recommends") is not None:
            extra_opts += " --install-recommends" if args["install_recommends"] else " --no-install-recommends"
        if args.get("allow_downgrade"):
            extra_opts += " --allow-downgrades"
        if hold:
            extra_opts += " --allow-change-held-packages"
        if state in ("present", "latest"):
            cand = parse_policy(policy.stdout) if state == "latest" and policy is not None else {}
            todo = []
            for name, ver in wanted:
                cur = pkgs.get(name)
                if state == "latest" and ver is None:
                    c = cand.get(name)
                    if c is None and cur is None:
                        return Plan(failed=True, msg=f"{note}No package matching '{name}' is available",
                                    extra=updated)
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
                apt_get(extra_opts, "install", todo)
        else:
            todo = [n for n in names if n in pkgs]
            if todo:
                apt_get(" --allow-change-held-packages" if set(todo) & held else "",
                        "purge" if args.get("purge") else "remove", todo)
                before += [f"{n} {pkgs[n]}" for n in todo]
                after += [f"{n} (absent)" for n in todo]
        if hold is not None and state != "absent":
            change = [n for n in names if (n in held) != bool(hold)]
            if change:
                verb = "hold" if hold else "unhold"
                cmds.append(Cmd(f"apt-mark {verb} {' '.join(q(n) for n in change)}", dpkg_lock=True,
                                desc=f"apt-mark {verb} {' '.join(change)}"))
                hb = [f"{n} {'held' if n in held else 'not held'}" for n in change]
                ha = [f"{n} {'held' if hold else 'not held'}" for n in change]
        if autoremove:
            cmds.append(Cmd(f"{APT_GET} autoremove", timeout=3600, desc="apt-get autoremove"))
        if not cmds:
            return Plan(noop=note + ("packages already as wanted" if names else "nothing to do"), extra=updated)
        holds = [_hold_diff(hb, ha)] if hb else []
        predicted = ([_pkg_diff(before, after)] if before or after else []) + holds
        msg = note.strip("; ").strip()
        if ctx.check:    # predict the exact package changes (dependencies included) with a simulation
            def simulated(results) -> Plan:
                lines = [x for res in results for x in parse_simulation(res.stdout)] + autoremove
                diff = [{"before_header": "packages", "after_header": "packages (simulated)", "before": "",
                         "after": "".join(x + "\n" for x in lines)}] + holds if lines else predicted
                return Plan(cmds, diff=diff, msg=msg, extra=updated)
            return Plan(sims, then=lambda _facts, results: simulated(results)) if sims else simulated([])
        old = dict(pkgs)

        def done(fresh, _results) -> Plan:   # the diff: what dpkg says changed (else what was predicted)
            b, a = package_changes(old, fresh.get("packages", {}))
            return Plan(diff=[_pkg_diff(b, a)] + holds if b or a else predicted)
        return Plan(cmds, msg=msg, extra=updated, refresh_facts=("packages", "apt_cache"), then=done)


def _policy(args) -> str | None:
    """`apt-cache policy` of the packages whose newest candidate state=latest installs, or None."""
    names = [parse_name(n)[0] for n in args.get("name") or []]
    if args.get("state") != "latest" or not names:
        return None
    return "LANG=C apt-cache policy " + " ".join(q(n) for n in names)


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


def fetch_key(url: str) -> str:
    """Read-only shell that downloads ``url`` on the host and prints it as base64 (the key then travels to the
    controller, which dearmors it and writes it as any other file)."""
    return (f't=$(mktemp) && trap \'rm -f "$t"\' EXIT && curl -fsSL --retry 3 {q(url)} -o "$t" && '
            'base64 -w0 < "$t"')


@module("apt_key", aliases=("keyring",), args={
    "url": ArgSpec("str"), "data": ArgSpec("str"), "file": ArgSpec("path"),
    "keyring": ArgSpec("path", aliases=("dest",)), "name": ArgSpec("str"), "id": ArgSpec("str"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")), "mode": ArgSpec("raw"),
})
class AptKey(Op):
    """Keys go to a keyring file (/etc/apt/keyrings/NAME.gpg by default) referenced with signed-by, never to the
    deprecated global trusted.gpg. ASCII armor is dearmored. A key from a url is downloaded by the host."""

    def dest(self, args) -> str:
        if args.get("keyring"):
            return str(args["keyring"])
        if args.get("name"):
            return f"/etc/apt/keyrings/{args['name']}.gpg"
        raise OpError("apt_key needs keyring (the destination file) or name")

    def probe(self, args, ctx):
        return stat_probe(self.dest(args), content=False)

    def plan(self, args, facts, probe, ctx) -> Plan:
        dest = self.dest(args)
        st = parse_stat(probe.stdout)
        if args.get("state") == "absent":
            return Plan(noop=f"{dest} is absent") if st.kind == "absent" else \
                Plan([Cmd(f"rm -f {q(dest)}")], diff=[{"before_header": dest, "after_header": dest,
                                                       "before": "keyring present\n", "after": "(absent)\n"}])
        if args.get("url"):
            url = str(args["url"])

            def fetched(results) -> dict:
                res = results[0]
                if res.rc == 0 and res.stdout.strip():
                    return {}
                return {"failed": True, "rc": res.rc, "stderr": res.stderr,
                        "msg": f"cannot fetch key {url}: {res.stderr.strip()[-500:]}"}

            def then(_facts, results) -> Plan:
                try:
                    data = base64.b64decode(results[0].stdout.strip(), validate=True)
                except ValueError:
                    return Plan(failed=True, msg=f"cannot fetch key {url}: the download is not base64")
                plan = self.put(args, dest, dearmor(data), st)
                for d in plan.diff:
                    if d["after_header"] == dest:
                        d.update(before="old or no keyring\n", after=f"keyring from {url}\n")
                return plan
            return Plan([Cmd(fetch_key(url), timeout=300, desc=f"fetch {url} -> {dest}", readonly=True,
                             counts=False, ok_rc=None)], result=fetched, then=then)
        if args.get("data") is not None:
            data = dearmor(str(args["data"]).encode())
        elif args.get("file"):
            from provision.ops.files import find_local
            with open(find_local(args["file"], ctx, "files"), "rb") as fh:
                data = dearmor(fh.read())
        else:
            raise OpError("apt_key needs url, data or file")
        return self.put(args, dest, data, st)

    def put(self, args, dest: str, data: bytes, st) -> Plan:
        plan = write_file_plan(dest, data, st, mode=parse_mode(args.get("mode")) or 0o644, make_parent=True)
        for d in plan.diff:   # keys are binary: show a fingerprint-like summary, not bytes (a mode diff stays)
            if d["after_header"] == dest:
                d.update(before="(absent)\n" if st.kind == "absent" else f"sha256 {st.sha256}\n",
                         after=f"sha256 {sha256(data)}\n")
        return plan


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

    def plan(self, args, facts, probe, ctx) -> Plan:
        path, text, _ = self.content(args)
        st = parse_stat(probe.stdout)
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
        return plan
