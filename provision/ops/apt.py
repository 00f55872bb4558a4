"""apt (apt_key and apt_repository live in ops/apt_repo.py).

apt decides from the host's dpkg facts (one dpkg-query for every package, gathered with the play's facts and
refreshed after a change). It waits for the dpkg lock instead of failing (DPkg::Lock::Timeout; apt-mark, which has
no such option, is retried by the runner), runs non-interactively, pins exact versions (`pkg=1.2`), holds/unholds
with apt-mark. A cache update alone is not counted as a change (so a second run reports 0 changed); check mode
predicts the package changes with `apt-get -s`. Each step is a plan: update the cache, then read the candidates,
then decide (and in check mode simulate, then show the simulation).
"""
from __future__ import annotations

import fnmatch
import re
from hashlib import sha256

from provision.ops.core import Cmd, Op, Plan, q
from provision.ops.spec import ArgSpec, module

LOCK_WAIT = 600
DPKG_OPTIONS = "force-confdef,force-confold"      # Ansible's default dpkg_options


def apt_get_line(dpkg_options: str = DPKG_OPTIONS) -> str:
    """apt-get, non-interactive, waiting for the dpkg lock, with dpkg's options (Ansible's ``dpkg_options``: comma
    separated, without the leading dashes)."""
    opts = "".join(f" -o Dpkg::Options::=--{q(o.strip().lstrip('-'))}" for o in str(dpkg_options).split(",")
                   if o.strip())
    return f"DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get -y -q -o DPkg::Lock::Timeout={LOCK_WAIT}{opts}"


APT_GET = apt_get_line()
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


APT_ARGS = {
    "name": ArgSpec("list", aliases=("pkg", "package")),
    "state": ArgSpec("str", default="present", choices=("present", "absent", "latest", "installed", "removed")),
    "update_cache": ArgSpec("bool", default=False, aliases=("update-cache",)),
    "cache_valid_time": ArgSpec("int", default=0),
    "hold": ArgSpec("bool"),
    "purge": ArgSpec("bool", default=False),
    "install_recommends": ArgSpec("bool", aliases=("install-recommends",)),
    "allow_downgrade": ArgSpec("bool", default=False, aliases=("allow-downgrade", "allow_downgrades")),
    "autoremove": ArgSpec("bool", default=False),
    "deb": ArgSpec("str"),                     # a .deb on the host, or a url the host downloads
    "upgrade": ArgSpec("raw", default="no"),   # no, yes/safe, dist/full
    "dpkg_options": ArgSpec("str", default=DPKG_OPTIONS),
}


@module("apt", args=APT_ARGS)
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
        return _policy(args) if not args.get("update_cache") and not args.get("deb") else None

    def plan(self, args, facts, probe, ctx) -> Plan:
        """Update the cache when stale (never in check mode), read what the decision needs (candidates for
        state=latest, autoremove's simulation), decide; in check mode simulate the changes for the diff. ``deb``:
        :meth:`deb`."""
        if args.get("deb"):
            return self.deb(args, ctx)
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
        verb = upgrade_verb(args.get("upgrade"))
        if verb:
            reads.append(Cmd(f"{APT_GET} -s {verb}", become=False, readonly=True, counts=False, ok_rc=None))
        if not reads:
            return self.decide(args, facts, policy, [], note, ctx)

        def then(_facts, results):
            got = list(results)
            pol = policy if policy is not None or not _policy(args) else got.pop(0)
            removes = parse_simulation(got.pop(0).stdout) if args.get("autoremove") else []
            upgrades = parse_simulation(got.pop(0).stdout) if verb else []
            return self.decide(args, facts, pol, removes, note, ctx, upgrades=upgrades)
        return Plan(reads, then=then)

    def decide(self, args, facts, policy, autoremove: list[str], note: str, ctx, upgrades=()) -> Plan:
        """``autoremove``: what `apt-get -s autoremove` would remove (nothing: no autoremove); ``upgrades``: what
        `apt-get -s upgrade` (or dist-upgrade) would change."""
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

        base = apt_get_line(args.get("dpkg_options") or DPKG_OPTIONS)

        def apt_get(opts: str, verb: str, todo: list[str]) -> None:
            line = " ".join(q(t) for t in todo)
            cmds.append(Cmd(f"{base}{opts} {verb} -- {line}", timeout=3600, desc=f"apt-get {verb} {' '.join(todo)}"))
            sims.append(Cmd(f"{base}{opts} -s {verb} -- {line}", become=False, readonly=True, counts=False,
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
                cmds.append(Cmd(f"apt-mark {verb} -- {' '.join(q(n) for n in change)}", dpkg_lock=True,
                                desc=f"apt-mark {verb} {' '.join(change)}"))
                hb = [f"{n} {'held' if n in held else 'not held'}" for n in change]
                ha = [f"{n} {'held' if hold else 'not held'}" for n in change]
        if upgrades:
            verb = upgrade_verb(args.get("upgrade"))
            cmds.append(Cmd(f"{base} {verb}", timeout=3600, desc=f"apt-get {verb}"))
            before += [u.split(" -> ")[0].replace(":", "", 1) for u in upgrades]
            after += [u.split(": ", 1)[0] + " " + u.split(" -> ")[-1] for u in upgrades]
        if autoremove:
            cmds.append(Cmd(f"{APT_GET} autoremove", timeout=3600, desc="apt-get autoremove"))
        if not cmds:
            return Plan(noop=note + ("packages already as wanted" if names else "nothing to do"), extra=updated)
        holds = [_hold_diff(hb, ha)] if hb else []
        predicted = ([_pkg_diff(before, after)] if before or after else []) + holds
        msg = note.strip("; ").strip()
        if ctx.check:    # predict the exact package changes (dependencies included) with a simulation
            def simulated(results) -> Plan:
                lines = [x for res in results for x in parse_simulation(res.stdout)] + list(upgrades) + autoremove
                diff = [{"before_header": "packages", "after_header": "packages (simulated)", "before": "",
                         "after": "".join(x + "\n" for x in lines)}] + holds if lines else predicted
                return Plan(cmds, diff=diff, msg=msg, extra=updated)
            return Plan(sims, then=lambda _facts, results: simulated(results)) if sims else simulated([])
        old = dict(pkgs)

        def done(fresh, _results) -> Plan:   # the diff: what dpkg says changed (else what was predicted)
            b, a = package_changes(old, fresh.get("packages", {}))
            return Plan(diff=[_pkg_diff(b, a)] + holds if b or a else predicted)
        return Plan(cmds, msg=msg, extra=updated, refresh_facts=("packages", "apt_cache"), then=done)

    def deb(self, args, ctx) -> Plan:
        """``deb=``: read the package's name and version from the .deb (a url is first downloaded by the host, in
        check mode too, as Ansible does), then install it with apt-get (dependencies resolved) unless dpkg already
        has that version."""
        src = str(args["deb"])
        url = "://" in src
        path = f"/tmp/provision-{sha256(src.encode()).hexdigest()[:16]}.deb" if url else src
        if not path.startswith("/"):
            path = "./" + path
        fetch = f"curl -fsSL --retry 3 -o {q(path)} {q(src)} && " if url else ""
        read = Cmd(f"{fetch}dpkg-deb -f -- {q(path)} Package Version", readonly=True, counts=False, ok_rc=None,
                   desc=f"read {src}")
        cleanup = [Cmd(f"rm -f -- {q(path)}", readonly=True, counts=False, ok_rc=None)] if url else []

        def decide(facts, results) -> Plan:
            res = results[0]
            fields = dict(line.split(": ", 1) for line in res.stdout.splitlines() if ": " in line)
            name, version = fields.get("Package"), fields.get("Version")
            if res.rc != 0 or not name or not version:
                return Plan(cleanup, failed=True,
                            msg=f"cannot read the package {src}: " + (res.stderr.strip()[-500:] or "not a .deb"))
            cur = facts.get("packages", {}).get(name)
            if cur == version:
                return Plan(cleanup, changed=False, msg=f"{name} {version} is installed")
            base = apt_get_line(args.get("dpkg_options") or DPKG_OPTIONS)
            allow = " --allow-downgrades" if args.get("allow_downgrade") else ""
            install = Cmd(f"{base}{allow} install -- {q(path)}", timeout=3600, desc=f"apt-get install {src}")
            return Plan([install] + cleanup, refresh_facts=("packages",),
                        diff=[_pkg_diff([f"{name} {cur}" if cur else f"{name} (absent)"], [f"{name} {version}"])])
        return Plan([read], then=decide)


def upgrade_verb(value) -> str | None:
    """apt's ``upgrade`` (no, yes/safe, dist/full) -> the apt-get command, or None."""
    from provision.ops.core import OpError
    from provision.truthy import NotABoolean, strict_bool
    text = str(value).strip().lower() if value is not None else "no"
    if text in ("dist", "full"):
        return "dist-upgrade"
    if text == "safe":
        return "upgrade --with-new-pkgs"
    try:
        return "upgrade --with-new-pkgs" if strict_bool(value) else None
    except NotABoolean:
        raise OpError(f"upgrade: {value!r} is not one of dist, full, no, safe, yes") from None


def _policy(args) -> str | None:
    """`apt-cache policy` of the packages whose newest candidate state=latest installs, or None."""
    names = [parse_name(n)[0] for n in args.get("name") or []]
    if args.get("state") != "latest" or not names:
        return None
    return "LANG=C apt-cache policy -- " + " ".join(q(n) for n in names)
