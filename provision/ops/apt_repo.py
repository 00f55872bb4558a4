"""apt_key (keyrings) and apt_repository: a key goes to its own keyring file referenced with signed-by, a
repository to its own sources file; both written through write_file_plan like any other file.

A key comes from ``data``, a ``file`` on the controller (air-gapped labs) or a ``url`` the host downloads; check
mode downloads nothing (it says what it would fetch). With ``id`` the key's OpenPGP fingerprints (read from its
packets on the controller, :func:`key_fingerprints`) must end with that id, or the task fails before writing."""
from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlparse

from provision.ops.apt import UPDATE, update_one_source
from provision.ops.core import (Cmd, Op, OpError, Plan, parse_mode, parse_stat, q, sha256, stat_probe,
                                write_file_plan)
from provision.ops.ppa import is_ppa, ppa_plan, ppa_probe
from provision.ops.spec import ArgSpec, module


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


def _packets(data: bytes):
    """(tag, body) of each OpenPGP packet (RFC 4880 section 4.2: old and new formats, partial lengths)."""
    i = 0
    while i < len(data):
        head = data[i]
        if not head & 0x80:
            raise OpError("the key is not OpenPGP data (bad packet header)")
        if head & 0x40:                      # new format
            tag, i, body = head & 0x3F, i + 1, b""
            while True:
                first = data[i]
                if first < 192:
                    n, i = first, i + 1
                elif first < 224:
                    n, i = ((first - 192) << 8) + data[i + 1] + 192, i + 2
                elif first == 255:
                    n, i = int.from_bytes(data[i + 1:i + 5], "big"), i + 5
                else:                        # partial body length: a chunk, then more length octets
                    n = 1 << (first & 0x1F)
                    body, i = body + data[i + 1:i + 1 + n], i + 1 + n
                    continue
                body, i = body + data[i:i + n], i + n
                break
        else:                                # old format
            tag, kind, i = (head >> 2) & 0x0F, head & 3, i + 1
            if kind == 3:
                n = len(data) - i
            else:
                size = (1, 2, 4)[kind]
                n, i = int.from_bytes(data[i:i + size], "big"), i + size
            body, i = data[i:i + n], i + n
        if i > len(data):
            raise OpError("the key is not OpenPGP data (a packet runs past its end)")
        yield tag, body


def key_fingerprints(data: bytes) -> list[str]:
    """Upper-case hex fingerprints of the public keys and subkeys in binary OpenPGP ``data`` (v4: SHA-1 over
    0x99, a 2-octet length and the packet; v5/v6: SHA-256 over 0x9A/0x9B and a 4-octet length)."""
    out = []
    for tag, body in _packets(data):
        if tag not in (6, 14) or not body:
            continue
        version = body[0]
        if version == 4:
            out.append(hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper())
        elif version in (5, 6):
            prefix = b"\x9a" if version == 5 else b"\x9b"
            out.append(hashlib.sha256(prefix + len(body).to_bytes(4, "big") + body).hexdigest().upper())
    return out


def key_id_problem(data: bytes, key_id: str, source: str) -> str | None:
    """None when a fingerprint of the key ends with ``key_id`` (8, 16 or 40+ hex digits, spaces and 0x
    ignored); else why not, in one line."""
    want = re.sub(r"\s+", "", str(key_id)).upper().removeprefix("0X")
    if not re.fullmatch(r"[0-9A-F]{8,64}", want):
        return f"id {key_id!r} is not a key id or fingerprint (hex digits)"
    try:
        prints = key_fingerprints(data)
    except (OpError, IndexError) as err:
        return f"cannot read the key from {source}: {err}"
    if not any(fp.endswith(want) for fp in prints):
        return (f"the key from {source} is not {want}: its fingerprints are {', '.join(prints) or 'none'}; "
                "nothing written")
    return None


def fetch_key(url: str) -> str:
    """Shell that downloads ``url`` on the host and prints it as base64 (the key then travels to the controller,
    which dearmors it and writes it as any other file). Not run in check mode: that downloads nothing."""
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
        if args.get("url") or args.get("id"):    # Ansible's `apt-key add`: trusted for every source, as there
            return f"/etc/apt/trusted.gpg.d/{_repo_filename(str(args.get('url') or args['id']))}.gpg"
        raise OpError("apt_key needs keyring (the destination file) or name")

    def probe(self, args, ctx):
        return stat_probe(self.dest(args), content=False)

    def plan(self, args, facts, probe, ctx) -> Plan:
        dest = self.dest(args)
        st = parse_stat(probe.stdout)
        key_id = args.get("id")
        if args.get("state") == "absent":
            return Plan(noop=f"{dest} is absent") if st.kind == "absent" else \
                Plan([Cmd(f"rm -f {q(dest)}")], diff=[{"before_header": dest, "after_header": dest,
                                                       "before": "keyring present\n", "after": "(absent)\n"}])
        if args.get("url"):
            url = str(args["url"])

            def fetched(results) -> dict:
                res = results[0]
                if res is None:      # check mode: nothing downloaded
                    check = f" and check it is key {key_id}" if key_id else ""
                    return {"changed": st.kind == "absent",
                            "msg": f"would fetch {url}{check} -> {dest} (check mode downloads nothing)"}
                if res.rc == 0 and res.stdout.strip():
                    return {}
                return {"failed": True, "rc": res.rc, "stderr": res.stderr,
                        "msg": f"cannot fetch key {url}: {res.stderr.strip()[-500:]}"}

            def then(_facts, results) -> Plan | None:
                if results[0] is None:
                    return None
                try:
                    data = dearmor(base64.b64decode(results[0].stdout.strip(), validate=True))
                except ValueError:
                    return Plan(failed=True, msg=f"cannot fetch key {url}: the download is not base64")
                problem = key_id_problem(data, key_id, url) if key_id else None
                if problem:
                    return Plan(failed=True, msg=problem)
                plan = self.put(args, dest, data, st)
                for d in plan.diff:
                    if d["after_header"] == dest:
                        d.update(before="old or no keyring\n", after=f"keyring from {url}\n")
                return plan
            return Plan([Cmd(fetch_key(url), timeout=300, desc=f"fetch {url} -> {dest}", counts=False, ok_rc=None)],
                        result=fetched, then=then)
        if args.get("data") is not None:
            data = dearmor(str(args["data"]).encode())
        elif args.get("file"):
            from provision.ops.files import find_local
            with open(find_local(args["file"], ctx, "files"), "rb") as fh:
                data = dearmor(fh.read())
        else:
            raise OpError("apt_key needs url, data or file")
        problem = key_id_problem(data, key_id, args.get("file") or "data") if key_id else None
        if problem:
            return Plan(failed=True, msg=problem)
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
        return ppa_probe(args["repo"]) if is_ppa(args.get("repo")) else stat_probe(self.content(args)[0])

    def plan(self, args, facts, probe, ctx) -> Plan:
        if is_ppa(args.get("repo")):
            return ppa_plan(args, probe, UPDATE)
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
