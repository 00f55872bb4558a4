"""get_url and unarchive: files that come from a url or an archive, downloaded and unpacked ON THE HOST; fetch: a
host's file copied to the controller.

get_url decides from one stat of ``dest`` (prefetchable): a file that exists is left alone without ``force`` unless
a given checksum differs; otherwise the host downloads (curl, else wget) to a temp file beside ``dest``, checks the
checksum, and renames it over ``dest`` only when the content differs. Check mode downloads nothing ("would
download").

unarchive gets the archive to a work folder on the host (sent from the controller as the stdin of one command, or
downloaded by the host, or already there with ``remote_src``), unpacks it there (tar: compression found by tar
itself; .zip: unzip), and compares every member with ``dest`` (content, and mode/owner/group when given): only a
difference copies the members into ``dest``. This look is read-only for the system, so check mode reports exactly
what would change.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

from provision.ops.core import Cmd, Op, OpError, Plan, attr_cmds, parse_mode, parse_stat, q, stat_probe
from provision.ops.files import find_local
from provision.ops.spec import ArgSpec, module
from provision.ops.stat import ALGORITHMS


def parse_checksum(value: str | None) -> tuple[str, str] | None:
    """Ansible's ``checksum: 'sha256:HEX'`` -> (algorithm, hex); OpError for another form (a checksum url)."""
    if not value:
        return None
    algo, sep, digest = str(value).partition(":")
    algo = algo.strip().lower()
    if not sep or algo not in ALGORITHMS or not digest.strip() or "://" in digest:
        raise OpError(f"checksum {value!r}: give '<algorithm>:<hex digest>' with one of {', '.join(ALGORITHMS)} "
                      "(checksum urls are not supported)")
    return algo, digest.strip().lower()


def download_command(url: str, out: str, *, timeout: int, headers: dict | None = None, validate_certs: bool = True,
                     use_proxy: bool = True, user: str | None = None, password: str | None = None) -> str:
    """Shell downloading ``url`` to the path in shell variable/expression ``out`` (already quoted): curl when the
    host has it, else wget."""
    curl = ["curl", "-fsSL", "--retry", "3", "--connect-timeout", str(timeout)]
    wget = ["wget", "-q", f"--timeout={timeout}"]
    for k, v in (headers or {}).items():
        curl += ["-H", f"{k}: {v}"]
        wget += [f"--header={k}: {v}"]
    if not validate_certs:
        curl.append("-k")
        wget.append("--no-check-certificate")
    if not use_proxy:
        curl += ["--noproxy", "*"]
        wget.append("--no-proxy")
    if user:
        curl += ["-u", f"{user}:{password or ''}"]
        wget += [f"--user={user}", f"--password={password or ''}"]
    c = " ".join(q(x) for x in curl)
    w = " ".join(q(x) for x in wget)
    return (f"if command -v curl >/dev/null 2>&1; then {c} -o {out} -- {q(url)}; "
            f"else {w} -O {out} -- {q(url)}; fi")


def _basename(url: str) -> str:
    name = os.path.basename(urlparse(url).path.rstrip("/"))
    if not name:
        raise OpError(f"{url}: cannot name the file from the url; give dest as a file path")
    return name


@module("get_url", args={
    "url": ArgSpec("str", required=True), "dest": ArgSpec("path", required=True),
    "mode": ArgSpec("raw"), "owner": ArgSpec("str"), "group": ArgSpec("str"),
    "checksum": ArgSpec("str"), "force": ArgSpec("bool", default=False, aliases=("thirsty",)),
    "timeout": ArgSpec("int", default=10), "headers": ArgSpec("dict"),
    "validate_certs": ArgSpec("bool", default=True), "use_proxy": ArgSpec("bool", default=True),
    "url_username": ArgSpec("str", aliases=("username",)),
    "url_password": ArgSpec("str", aliases=("password",), no_log=True),
    "force_basic_auth": ArgSpec("bool", default=False), "backup": ArgSpec("bool", default=False),
})
class GetUrl(Op):
    def probe(self, args, ctx):
        return stat_probe(str(args["dest"]), content=False)

    def plan(self, args, facts, probe, ctx):
        parse_checksum(args.get("checksum"))        # a bad checksum fails before anything runs
        st = parse_stat(probe.stdout)
        dest = str(args["dest"])
        if st.kind == "directory":      # into the folder, under the url's file name (always fetched, as Ansible)
            dest = dest.rstrip("/") + "/" + _basename(str(args["url"]))
            return Plan([Cmd(stat_probe(dest, content=False), readonly=True, counts=False, ok_rc=None)],
                        then=lambda _f, rs: self.decide(args, dest, parse_stat(rs[0].stdout), ctx, force=True))
        return self.decide(args, dest, st, ctx, force=bool(args.get("force")))

    def decide(self, args, dest, st, ctx, *, force: bool) -> Plan:
        url = str(args["url"])
        want = parse_checksum(args.get("checksum"))
        extra = {"dest": dest, "url": url}
        if st.kind not in ("absent", "file"):
            return Plan(failed=True, msg=f"{dest} is a {st.kind}")
        attrs = self.kept_attrs(args, dest, st)     # mode/owner/group of a file whose content stays
        if st.kind == "file" and not force:
            if want is None:
                return Plan(attrs, extra=extra, msg="file already exists") if attrs else \
                    Plan(noop="file already exists", extra=extra)
            if want[0] == "sha256" and st.sha256 == want[1]:
                return Plan(attrs, extra={**extra, "checksum_dest": st.sha256}, msg="checksum matches") if attrs \
                    else Plan(noop="file already exists with the wanted checksum", extra=extra)
            if want[0] != "sha256":    # another algorithm: the host computes it
                look = Cmd(f"{want[0]}sum < {q(dest)}", readonly=True, counts=False, ok_rc=None)

                def same(_facts, rs):
                    if rs[0] is not None and rs[0].stdout.split()[:1] == [want[1]]:
                        return Plan(attrs, extra=extra) if attrs else Plan(noop="file already exists with the "
                                                                                "wanted checksum", extra=extra)
                    return self.fetch(args, dest, st, ctx, want)
                return Plan([look], then=same)
        return self.fetch(args, dest, st, ctx, want)

    def fetch(self, args, dest, st, ctx, want) -> Plan:
        url, mode = str(args["url"]), parse_mode(args.get("mode"))
        extra = {"dest": dest, "url": url}
        diff = [{"before_header": dest, "after_header": dest,
                 "before": "absent\n" if st.kind == "absent" else f"sha256 {st.sha256}\n",
                 "after": f"downloaded from {url}\n"}]
        if ctx.check:
            return Plan(changed=True, msg=f"would download {url}", extra=extra, diff=diff)
        qd = q(dest)
        get = download_command(url, '"$t"', timeout=int(args.get("timeout") or 10), headers=args.get("headers"),
                               validate_certs=args.get("validate_certs", True) is not False,
                               use_proxy=args.get("use_proxy", True) is not False,
                               user=args.get("url_username"), password=args.get("url_password"))
        verify = ""
        if want:
            verify = (f'got=$({want[0]}sum < "$t" | cut -d" " -f1); [ "$got" = {q(want[1])} ] || '
                      f'{{ echo "The checksum for {dest} did not match {want[1]}; it was $got." >&2; exit 3; }}; ')
        chmod = f'chmod {mode:o} "$t"' if mode is not None else \
            f'{{ if [ -e {qd} ]; then chmod --reference={qd} "$t"; else chmod 644 "$t"; fi; }}'
        own = ""
        if args.get("owner") is not None or args.get("group") is not None:
            spec = (str(args.get("owner") or "")) + (f":{args['group']}" if args.get("group") is not None else "")
            own = f' && chown {q(spec)} -- "$t"'
        backup = f"cp -p -- {qd} {qd}.$(date +%Y%m%d-%H%M%S)~ && " if args.get("backup") else ""
        script = (f't=$(mktemp {q(os.path.dirname(dest) or ".")}/.provision-get_url.XXXXXX) || exit 1; '
                  f'trap \'rm -f "$t"\' EXIT; {{ {get}; }} || exit 4; {verify}'
                  f'if [ -f {qd} ] && cmp -s "$t" {qd}; then echo unchanged; '
                  f'{" ".join(c.cmd + ";" for c in self.kept_attrs(args, dest, st))} exit 0; fi; '
                  f'{chmod}{own} && {backup}mv -f "$t" {qd} && echo changed')

        def result(rs) -> dict:
            res = rs[0]
            if res.rc != 0:
                why = res.stderr.strip()[-1000:] or f"rc {res.rc}"
                return {"failed": True, "rc": res.rc, "msg": why if res.rc == 3 else f"cannot download {url}: {why}"}
            changed = "changed" in res.stdout.split() or bool(self.kept_attrs(args, dest, st))
            return {"changed": changed, "msg": "downloaded" if "changed" in res.stdout.split() else "unchanged"}
        return Plan([Cmd(script, timeout=3600, ok_rc=None, desc=f"download {url} to {dest}")], extra=extra,
                    diff=diff, result=result)

    @staticmethod
    def kept_attrs(args, dest, st) -> list[Cmd]:
        """mode/owner/group of an existing ``dest`` whose content stays."""
        if st.kind != "file":
            return []
        return attr_cmds(dest, parse_mode(args.get("mode")), args.get("owner"), args.get("group"), st)


def _workdir(src: str, dest: str) -> str:
    return "/tmp/.provision-unarchive-" + hashlib.sha256(f"{src}\0{dest}".encode()).hexdigest()[:16]


@module("unarchive", args={
    "src": ArgSpec("str", required=True), "dest": ArgSpec("path", required=True),
    "remote_src": ArgSpec("bool", default=False), "copy": ArgSpec("bool"), "creates": ArgSpec("path"),
    "extra_opts": ArgSpec("list", default=[]), "exclude": ArgSpec("list", default=[]),
    "mode": ArgSpec("raw"), "owner": ArgSpec("str"), "group": ArgSpec("str"),
    "list_files": ArgSpec("bool", default=False), "keep_newer": ArgSpec("bool", default=False),
    "validate_certs": ArgSpec("bool", default=True),
})
class Unarchive(Op):
    def probe(self, args, ctx):
        return f"[ -e {q(str(args['creates']))} ] && echo creates-exists; true" if args.get("creates") else None

    def plan(self, args, facts, probe, ctx):
        src, dest = str(args["src"]), str(args["dest"])
        if probe is not None and "creates-exists" in probe.stdout:
            return Plan(noop=f"skipped, since {args['creates']} exists", extra={"dest": dest, "src": src})
        remote = bool(args.get("remote_src")) or args.get("copy") is False
        work = _workdir(src, dest)
        a, x = f"{work}/archive", f"{work}/x"
        stdin = None
        if "://" in src:
            get = download_command(src, q(a), timeout=30,
                                   validate_certs=args.get("validate_certs", True) is not False)
        elif remote:
            get = f"cp -- {q(src)} {q(a)}"
        else:
            stdin = Path(find_local(src, ctx, "files"))     # streamed in chunks by the runner, never read whole
            get = f"cat > {q(a)}"
        name = urlparse(src).path if "://" in src else src
        opts = " ".join(q(str(o)) for o in args.get("extra_opts") or [])
        excl = " ".join(q(f"--exclude={e}") for e in args.get("exclude") or [])
        if name.lower().endswith(".zip"):
            unpack = f"unzip -q -o {opts} {q(a)} -d {q(x)}" + (" -x " + " ".join(q(str(e)) for e in args["exclude"])
                                                                if args.get("exclude") else "")
        else:
            # the archive's owners are kept (tar's default as root, and Ansible's) unless owner/group is given
            same = " --no-same-owner" if args.get("owner") is not None or args.get("group") is not None else ""
            unpack = f"tar -x -f {q(a)} -C {q(x)}{same} {excl} {opts}"
        mode, owner, group = parse_mode(args.get("mode")), args.get("owner"), args.get("group")
        checks = 'if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo "missing $f"; ' \
                 'elif [ -f "$f" ] && ! cmp -s "$f" "$d"; then echo "differs $f"; '
        if mode is not None:
            checks += f'elif [ "$(stat -c %a "$d")" != {q(format(mode, "o"))} ]; then echo "mode $f"; '
        if owner is not None:
            checks += f'elif [ "$(stat -c %U "$d")" != {q(str(owner))} ]; then echo "owner $f"; '
        if group is not None:
            checks += f'elif [ "$(stat -c %G "$d")" != {q(str(group))} ]; then echo "group $f"; '
        look = (f"[ -d {q(dest)} ] || {{ echo 'dest {dest} must be an existing directory' >&2; exit 2; }}; "
                f"rm -rf {q(work)} && mkdir -p {q(x)} && chmod 700 {q(work)} && {{ {get}; }} || exit 4; "
                f"{unpack} || exit 5; cd {q(x)} && find . -mindepth 1 | while IFS= read -r f; do "
                f'd={q(dest)}/"${{f#./}}"; {checks}fi; done')
        cleanup = Cmd(f"rm -rf -- {q(work)}", readonly=True, counts=False, ok_rc=None)
        extra = {"dest": dest, "src": src}

        def decide(_facts, rs) -> Plan:
            res = rs[0]
            if res.rc != 0:
                why = res.stderr.strip()[-1000:] or f"rc {res.rc}"
                return Plan([cleanup], failed=True, msg=why if res.rc == 2 else f"cannot unpack {src}: {why}")
            todo = [line.split(" ", 1)[1].removeprefix("./") for line in res.stdout.splitlines() if " " in line]
            if not todo:
                return Plan([cleanup], changed=False, msg=f"{dest} already holds {src}", extra=extra)
            # keep_newer: a file of dest newer than the archive's stays (cp -u)
            install = f"cp -a{' -u' if args.get('keep_newer') else ''} -- {q(x)}/. {q(dest)}/"
            fix = []
            if owner is not None or group is not None:
                spec = (str(owner) if owner is not None else "") + (f":{group}" if group is not None else "")
                fix.append(f"chown {q(spec)}")
            if mode is not None:
                fix.append(f"chmod {mode:o}")
            for f in fix:
                install += f" && (cd {q(x)} && find . -mindepth 1 -print0 | (cd {q(dest)} && xargs -0 {f} --))"
            shown = ", ".join(todo[:5]) + (f" and {len(todo) - 5} more" if len(todo) > 5 else "")
            return Plan([Cmd(install, timeout=3600, desc=f"unpack {src} into {dest} ({shown})"), cleanup],
                        extra={**extra, **({"files": todo} if args.get("list_files") else {})},
                        diff=[{"before_header": dest, "after_header": dest, "before": "",
                               "after": "".join(f"{t}\n" for t in todo)}])
        return Plan([Cmd(look, stdin=stdin, timeout=3600, readonly=True, counts=False, ok_rc=None,
                         desc=f"unpack {src} to compare with {dest}")], then=decide)


@module("fetch", args={
    "src": ArgSpec("path", required=True), "dest": ArgSpec("path", required=True),
    "flat": ArgSpec("bool", default=False), "fail_on_missing": ArgSpec("bool", default=True),
    "validate_checksum": ArgSpec("bool", default=True),
})
class Fetch(Op):
    """A file of the host copied to the controller: ``dest/HOST/SRC`` (``flat``: ``dest`` itself, or ``dest``
    + the file's name when it ends in /). The host sends it base64-encoded in one read-only command; the controller
    writes it only when its bytes differ (never in check mode)."""

    def plan(self, args, facts, probe, ctx):
        src = str(args["src"])
        dest = str(args["dest"])
        if args.get("flat"):
            local = dest + os.path.basename(src) if dest.endswith("/") else dest
        else:
            local = os.path.join(dest, ctx.host, src.lstrip("/"))
        read = Cmd(f"if [ -f {q(src)} ]; then base64 -w0 < {q(src)}; else echo missing; exit 3; fi",
                   readonly=True, counts=False, ok_rc=None, desc=f"read {src}")

        def result(rs) -> dict:
            import base64
            res = rs[0]
            if res.rc == 3:
                if args.get("fail_on_missing", True):
                    return {"failed": True, "msg": f"the remote file does not exist: {src}"}
                return {"changed": False, "msg": f"the remote file does not exist, not transferring: {src}"}
            if res.rc != 0:
                return {"failed": True, "rc": res.rc, "msg": f"cannot read {src}: {res.stderr.strip()[-500:]}"}
            data = base64.b64decode(res.stdout.strip() or b"")
            extra = {"dest": local, "checksum": hashlib.sha1(data).hexdigest()}
            try:
                with open(local, "rb") as fh:
                    if fh.read() == data:
                        return {"changed": False, "extra": extra}
            except OSError:
                pass
            if not ctx.check:
                os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
                with open(local + ".part", "wb") as fh:
                    fh.write(data)
                os.replace(local + ".part", local)
            return {"changed": True, "extra": extra}
        return Plan([read], result=result)
