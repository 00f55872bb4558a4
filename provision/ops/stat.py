"""stat and find: what Ansible's modules return about paths (stat: exists, isdir, isreg, islnk, mode, uid, gid,
pw_name, size, mtime, checksum...; find: the matching files), each from one read-only command (prefetchable, so it
also answers in check mode)."""
from __future__ import annotations

import stat as st

from provision.ops.core import Op, Plan, q
from provision.ops.spec import ArgSpec, module

ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


def stat_command(path: str, *, follow: bool, checksum: str | None) -> str:
    """Read-only shell describing ``path`` in tagged lines (``stat``, ``owner``, ``source``, ``target``,
    ``access``, ``checksum``), or ``absent``. Paths travel quoted; names are the rest of their line."""
    p = q(path)
    L = "-L " if follow else ""
    regular = f"[ -f {p} ]" + ("" if follow else f" && [ ! -L {p} ]")     # a link itself has no checksum
    sums = (f'{regular} && [ -r {p} ] && printf "checksum %s\\n" "$({checksum}sum < {p} | cut -d" " -f1)"; '
            if checksum else "")
    return (f"if [ -e {p} ] || [ -L {p} ]; then "
            f"stat {L}-c 'stat %f %u %g %s %X %Y %Z %i %d %h' -- {p}; stat {L}-c 'owner %U %G' -- {p}; "
            f'printf "source %s\\n" "$(readlink -f -- {p})"; [ -L {p} ] && printf "target %s\\n" "$(readlink -- {p})"; '
            f'a=; [ -r {p} ] && a=r; [ -w {p} ] && a="${{a}}w"; [ -x {p} ] && a="${{a}}x"; echo "access $a"; '
            f"{sums}true; else echo absent; fi")


def parse_stat_result(text: str, path: str) -> dict:
    """The tagged lines of :func:`stat_command` -> Ansible's ``stat`` dictionary."""
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in text.splitlines() if line)
    if "stat" not in lines:
        return {"exists": False}
    raw, uid, gid, size, atime, mtime, ctime, inode, dev, nlink = lines["stat"].split()[:10]
    m = int(raw, 16)
    owner, _, group = lines.get("owner", "").partition(" ")
    access = lines.get("access", "")
    out = {
        "exists": True, "path": path, "mode": f"{st.S_IMODE(m):04o}",
        "isdir": st.S_ISDIR(m), "isreg": st.S_ISREG(m), "islnk": st.S_ISLNK(m), "ischr": st.S_ISCHR(m),
        "isblk": st.S_ISBLK(m), "isfifo": st.S_ISFIFO(m), "issock": st.S_ISSOCK(m),
        "uid": int(uid), "gid": int(gid), "pw_name": owner, "gr_name": group, "size": int(size),
        "atime": float(atime), "mtime": float(mtime), "ctime": float(ctime), "inode": int(inode), "dev": int(dev),
        "nlink": int(nlink), "isuid": bool(m & st.S_ISUID), "isgid": bool(m & st.S_ISGID),
        "readable": "r" in access, "writeable": "w" in access, "executable": "x" in access,
    }
    for who, bits in (("usr", (st.S_IRUSR, st.S_IWUSR, st.S_IXUSR)), ("grp", (st.S_IRGRP, st.S_IWGRP, st.S_IXGRP)),
                      ("oth", (st.S_IROTH, st.S_IWOTH, st.S_IXOTH))):
        for letter, bit in zip("rwx", bits):
            out[f"{letter}{who}"] = bool(m & bit)
    if out["islnk"]:
        out["lnk_source"] = lines.get("source", "")
        out["lnk_target"] = lines.get("target", "")
    if "checksum" in lines:
        out["checksum"] = lines["checksum"].strip()
    return out


@module("stat", args={
    "path": ArgSpec("path", required=True, aliases=("dest", "name")),
    "follow": ArgSpec("bool", default=False),
    "get_checksum": ArgSpec("bool", default=True),
    "checksum_algorithm": ArgSpec("str", default="sha1", choices=ALGORITHMS,
                                  aliases=("checksum", "checksum_algo")),
    "get_mime": ArgSpec("bool", default=True, aliases=("mime", "mime_type", "mime-type")),
    "get_attributes": ArgSpec("bool", default=True, aliases=("attr", "attributes")),
})
class Stat(Op):
    """Never a change; runs in check mode. ``get_mime`` and ``get_attributes`` are accepted and not reported."""

    def probe(self, args, ctx):
        algo = args.get("checksum_algorithm") or "sha1"
        return stat_command(str(args["path"]), follow=bool(args.get("follow")),
                            checksum=algo if args.get("get_checksum", True) else None)

    def plan(self, args, facts, probe, ctx):
        return Plan(noop="", extra={"stat": parse_stat_result(probe.stdout if probe else "", str(args["path"]))})


_FIND_TYPES = {"file": "f", "directory": "d", "link": "l", "any": None}


@module("find", args={
    "paths": ArgSpec("list", required=True, aliases=("name", "path")), "patterns": ArgSpec("list", default=["*"],
                                                                                        aliases=("pattern",)),
    "excludes": ArgSpec("list", aliases=("exclude",)), "use_regex": ArgSpec("bool", default=False),
    "file_type": ArgSpec("str", default="file", choices=tuple(_FIND_TYPES)), "recurse": ArgSpec("bool", default=False),
    "depth": ArgSpec("int"), "hidden": ArgSpec("bool", default=False), "follow": ArgSpec("bool", default=False),
    "contains": ArgSpec("str"),
})
class Find(Op):
    """Read-only (runs in check mode, never a change): ``files`` holds a stat-like dict per match (path, mode,
    uid, gid, pw_name, gr_name, size, mtime, isdir, isreg, islnk), ``matched`` their count. Patterns match the file
    name: shell globs, or Python regular expressions with ``use_regex`` (matched on the controller)."""

    def probe(self, args, ctx):
        depth = "" if args.get("recurse") else " -maxdepth 1"
        if args.get("recurse") and args.get("depth"):
            depth = f" -maxdepth {int(args['depth'])}"
        kind = _FIND_TYPES[args.get("file_type") or "file"]
        test = f" -type {kind}" if kind else ""
        if args.get("contains") and kind == "f":
            test += f" -exec grep -qE {q(str(args['contains']))} {{}} \\;"
        paths = " ".join(q(str(p)) for p in args["paths"])
        return (f"find {'-L ' if args.get('follow') else ''}{paths} -mindepth 1{depth}{test} "
                "-printf '%p|%f|%m|%U|%G|%u|%g|%s|%T@|%y\\n' 2>/dev/null; true")

    def plan(self, args, facts, probe, ctx):
        import fnmatch
        import re
        pats, excl = [str(p) for p in args.get("patterns") or ["*"]], [str(p) for p in args.get("excludes") or []]

        def matches(name: str, patterns: list[str]) -> bool:
            if args.get("use_regex"):
                return any(re.search(p, name) for p in patterns)
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)
        files = []
        for line in (probe.stdout if probe else "").splitlines():
            f = line.split("|")
            if len(f) != 10 or (f[1].startswith(".") and not args.get("hidden")):
                continue
            if not matches(f[1], pats) or (excl and matches(f[1], excl)):
                continue
            files.append({"path": f[0], "mode": f"{int(f[2], 8):04o}", "uid": int(f[3]), "gid": int(f[4]),
                          "pw_name": f[5], "gr_name": f[6], "size": int(f[7]), "mtime": float(f[8]),
                          "isdir": f[9] == "d", "isreg": f[9] == "f", "islnk": f[9] == "l"})
        return Plan(noop="", extra={"files": files, "matched": len(files), "examined": len(files)})
