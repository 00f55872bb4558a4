"""user, group and getent: accounts decided from getent's answers (one read-only probe), changed with the shadow
utilities (useradd/usermod/userdel, groupadd/groupdel); getent returns ``ansible_facts.getent_<database>`` as
Ansible's does."""
from __future__ import annotations

from provision.ops.core import Cmd, Op, OpError, Plan, q
from provision.ops.spec import ArgSpec, module

_SPLIT = {"passwd": ":", "group": ":", "shadow": ":", "gshadow": ":"}


def parse_getent(text: str, split: str | None) -> dict:
    """getent's lines -> {key: [the other fields]} (split on ``split``, else on whitespace)."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(split) if split else line.split()
        out[fields[0]] = fields[1:]
    return out


@module("getent", args={"database": ArgSpec("str", required=True), "key": ArgSpec("str"),
                        "split": ArgSpec("str"), "fail_key": ArgSpec("bool", default=True),
                        "service": ArgSpec("str")})
class Getent(Op):
    """Read-only: runs in check mode too, never a change."""

    def plan(self, args, facts, probe, ctx):
        db = str(args["database"])
        cmd = "getent" + (f" -s {q(args['service'])}" if args.get("service") else "") + f" -- {q(db)}"
        if args.get("key"):
            cmd += f" {q(str(args['key']))}"

        def result(rs) -> dict:
            res = rs[0]
            if res.rc == 2 and args.get("key") and args.get("fail_key", True):
                return {"failed": True, "rc": 2, "msg": "One or more supplied key could not be found in the database."}
            if res.rc not in (0, 2):
                return {"failed": True, "rc": res.rc, "msg": res.stderr.strip() or f"getent failed (rc {res.rc})"}
            split = args.get("split") or _SPLIT.get(db)
            return {"extra": {"ansible_facts": {f"getent_{db}": parse_getent(res.stdout, split)}}}
        return Plan([Cmd(cmd, readonly=True, counts=False, ok_rc=None)], changed=False, result=result)


@module("user", args={
    "name": ArgSpec("str", required=True, aliases=("user",)),
    "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "groups": ArgSpec("list"), "append": ArgSpec("bool", default=False), "group": ArgSpec("str"),
    "shell": ArgSpec("str"), "home": ArgSpec("path"), "create_home": ArgSpec("bool", default=True,
                                                                            aliases=("createhome",)),
    "system": ArgSpec("bool", default=False), "uid": ArgSpec("int"), "comment": ArgSpec("str"),
    "password": ArgSpec("str", no_log=True), "remove": ArgSpec("bool", default=False),
    "update_password": ArgSpec("str", default="always", choices=("always", "on_create")),
    "force": ArgSpec("bool", default=False), "move_home": ArgSpec("bool", default=False),
    "generate_ssh_key": ArgSpec("bool", default=False), "ssh_key_type": ArgSpec("str", default="rsa"),
    "ssh_key_bits": ArgSpec("int"), "ssh_key_file": ArgSpec("path"), "ssh_key_comment": ArgSpec("str"),
    "ssh_key_passphrase": ArgSpec("str", no_log=True),
})
class User(Op):
    def probe(self, args, ctx):
        n = q(str(args["name"]))
        return (f"getent passwd -- {n}; echo @@groups; id -Gn -- {n} 2>/dev/null; echo @@all; "
                f"getent group | cut -d: -f1; echo @@key; {self.key_path(args)} && [ -e \"$k\" ] && echo exists; "
                f"echo @@shadow; getent shadow -- {n} | cut -d: -f2")

    @staticmethod
    def key_path(args) -> str:
        """Shell setting $k to the ssh key file (relative to the user's home, as Ansible's ssh_key_file)."""
        f = str(args.get("ssh_key_file") or f".ssh/id_{args.get('ssh_key_type') or 'rsa'}")
        if f.startswith("/"):
            return f"k={q(f)}"
        return f"h=$(getent passwd -- {q(str(args['name']))} | cut -d: -f6) && [ -n \"$h\" ] && k=\"$h\"/{q(f)}"

    def plan(self, args, facts, probe, ctx):
        """The account (:meth:`account`), then its password (a crypted hash, as Ansible's: sent to chpasswd -e on
        stdin, never on a command line) and its ssh key, each only when needed."""
        plan = self.account(args, probe)
        if plan.failed or args.get("state") == "absent":
            return plan
        out = probe.stdout if probe else ""
        new = not out.partition("@@groups")[0].strip()
        key_part, _, shadow = out.partition("@@key")[2].partition("@@shadow")
        more, diff = [], list(plan.diff)
        password = args.get("password")
        if password is not None and (new or args.get("update_password", "always") == "always" and
                                     shadow.strip() != str(password)):
            more.append(Cmd("chpasswd -e", stdin=f"{args['name']}:{password}\n".encode(),
                            desc=f"set the password of {args['name']}"))
            diff.append(_diff(f"user {args['name']} password", "(old)" if not new else "(none)", "(new)"))
        if args.get("generate_ssh_key") and "exists" not in key_part.split():
            more.append(self.keygen(args, ctx))
        if not more:
            return plan
        return Plan(plan.commands + more, diff=diff, extra=plan.extra, msg=plan.msg)

    def keygen(self, args, ctx) -> Cmd:
        if args.get("ssh_key_passphrase"):
            raise OpError("ssh_key_passphrase is not supported (ssh-keygen takes it on its command line, which the "
                          "host's process list shows); generate the key without one")
        bits = f" -b {int(args['ssh_key_bits'])}" if args.get("ssh_key_bits") else ""
        comment = args.get("ssh_key_comment") or f"ansible-generated on {ctx.host}"
        gen = (f"{self.key_path(args)} && [ -e \"$k\" ] || {{ install -d -m 700 -o {q(str(args['name']))} "
               f"-g \"$(id -g -- {q(str(args['name']))})\" -- \"$(dirname \"$k\")\" && "
               f"ssh-keygen -q -t {q(str(args.get('ssh_key_type') or 'rsa'))}{bits} "
               f"-N '' -C {q(str(comment))} -f \"$k\" && "
               f"chown -- {q(str(args['name']))}: \"$k\" \"$k.pub\"; }}")
        return Cmd(gen, desc=f"ssh-keygen for {args['name']}")

    def account(self, args, probe) -> Plan:
        name = str(args["name"])
        head, _, rest = (probe.stdout if probe else "").partition("@@groups")
        have, _, known = rest.partition("@@all")
        known = known.partition("@@key")[0]
        entry = head.strip().split(":") if head.strip() else None
        extra = {"name": name}
        if args.get("state") == "absent":
            if entry is None:
                return Plan(noop=f"user {name} does not exist", extra=extra)
            flags = (" -r" if args.get("remove") else "") + (" -f" if args.get("force") else "")
            return Plan([Cmd(f"userdel{flags} -- {q(name)}")], extra=extra,
                        diff=[_diff(f"user {name}", "present", "absent")])
        groups = [str(g) for g in args.get("groups") or []]
        missing = [g for g in groups if g not in known.split()]
        if missing:
            return Plan(failed=True, msg=f"Group {missing[0]} does not exist")
        opts = []
        if args.get("shell") and (entry is None or entry[6:7] != [args["shell"]]):
            opts += ["-s", str(args["shell"])]
        if args.get("home") and (entry is None or entry[5:6] != [str(args["home"])]):
            opts += ["-d", str(args["home"])] + (["-m"] if entry is not None and args.get("move_home") else [])
        if args.get("comment") is not None and (entry is None or entry[4:5] != [str(args["comment"])]):
            opts += ["-c", str(args["comment"])]
        if args.get("uid") is not None and (entry is None or entry[2:3] != [str(args["uid"])]):
            opts += ["-u", str(args["uid"])]
        want_group = str(args.get("group") or "")
        if want_group and (entry is None or want_group not in (entry[3], (have.split() or [""])[0])):
            opts += ["-g", str(args["group"])]
        current = set(have.split()[1:]) if entry is not None else set()   # the first is the primary group
        if groups and entry is None:
            opts += ["-G", ",".join(groups)]
        elif groups and (set(groups) - current or (not args.get("append") and current - set(groups))):
            opts += (["-a"] if args.get("append") else []) + ["-G", ",".join(groups)]
        if entry is None:
            opts = (["-r"] if args.get("system") else []) + (["-m"] if args.get("create_home", True) else ["-M"]) + opts
            return Plan([Cmd("useradd " + " ".join(q(o) for o in opts + ["--", name]))], extra=extra,
                        diff=[_diff(f"user {name}", "absent", "present" + _shown(opts))])
        if not opts:
            return Plan(noop=f"user {name} is as wanted", extra=extra)
        return Plan([Cmd("usermod " + " ".join(q(o) for o in opts + ["--", name]))], extra=extra,
                    diff=[_diff(f"user {name}", ":".join(entry) + (f" groups {','.join(sorted(current))}"
                                                                    if groups else ""), _shown(opts).strip())])


def _shown(opts: list[str]) -> str:
    return (" " + " ".join(opts)) if opts else ""


def _diff(header: str, before: str, after: str) -> dict:
    return {"before_header": header, "after_header": header, "before": before + "\n", "after": after + "\n"}


@module("group", args={"name": ArgSpec("str", required=True),
                       "state": ArgSpec("str", default="present", choices=("present", "absent")),
                       "gid": ArgSpec("int"), "system": ArgSpec("bool", default=False)})
class Group(Op):
    def probe(self, args, ctx):
        return f"getent group -- {q(str(args['name']))}"

    def plan(self, args, facts, probe, ctx):
        name = str(args["name"])
        entry = probe.stdout.strip().split(":") if probe and probe.stdout.strip() else None
        if args.get("state") == "absent":
            return Plan([Cmd(f"groupdel -- {q(name)}")], diff=[_diff(f"group {name}", "present", "absent")]) \
                if entry else Plan(noop=f"group {name} does not exist")
        gid = args.get("gid")
        if entry is None:
            opts = (["-r"] if args.get("system") else []) + (["-g", str(gid)] if gid is not None else [])
            return Plan([Cmd("groupadd " + " ".join(q(o) for o in opts + ["--", name]))],
                        diff=[_diff(f"group {name}", "absent", "present" + _shown(opts))])
        if gid is not None and entry[2:3] != [str(gid)]:
            return Plan([Cmd(f"groupmod -g {int(gid)} -- {q(name)}")],
                        diff=[_diff(f"group {name}", f"gid {entry[2]}", f"gid {gid}")])
        return Plan(noop=f"group {name} is as wanted")


def key_blob(line: str) -> str | None:
    """The base64 part of an authorized_keys line (options and comment around it ignored), or None."""
    words = line.split()
    for i, w in enumerate(words):
        if (w.startswith(("ssh-", "ecdsa-", "sk-")) or w in ("ssh-rsa", "ssh-dss")) and i + 1 < len(words):
            return words[i + 1]
    return None


def edit_keys(text: str, keys: list[str], *, present: bool, exclusive: bool, options: str | None) -> str:
    """authorized_key's decision: each wanted key line kept once (a line holding the same key is replaced when its
    options or comment differ), or removed; ``exclusive`` drops every other key."""
    wanted = [f"{options} {k}" if options else k for k in keys]
    blobs = {key_blob(k): w for k, w in zip(keys, wanted) if key_blob(k)}
    out, seen = [], set()
    for line in text.splitlines():
        blob = key_blob(line)
        if blob in blobs:
            if present and blob not in seen:
                out.append(blobs[blob])
                seen.add(blob)
            continue
        if exclusive and blob is not None:
            continue
        out.append(line)
    if present:
        out += [w for b, w in blobs.items() if b not in seen]
    return "".join(x + "\n" for x in out)


@module("authorized_key", aliases=("ansible.posix.authorized_key",), args={
    "user": ArgSpec("str", required=True), "key": ArgSpec("str", required=True), "path": ArgSpec("path"),
    "state": ArgSpec("str", default="present", choices=("present", "absent")),
    "manage_dir": ArgSpec("bool", default=True), "exclusive": ArgSpec("bool", default=False),
    "key_options": ArgSpec("str"), "comment": ArgSpec("str"), "follow": ArgSpec("bool", default=False),
})
class AuthorizedKey(Op):
    """Keys in the user's authorized_keys (~USER/.ssh/authorized_keys unless path): the user's home and ids come
    from getent, then one look at the folder and the file; the file is written 0600 and owned by the user, the
    folder (manage_dir) made 0700. Keys are given as text (one or more lines); a url is not fetched."""

    def probe(self, args, ctx):
        return f"getent passwd -- {q(str(args['user']))}"

    def plan(self, args, facts, probe, ctx):
        from provision.facts import section_script, split_sections
        from provision.ops.core import parse_stat, stat_probe, write_file_plan
        user = str(args["user"])
        entry = probe.stdout.strip().split(":") if probe and probe.stdout.strip() else None
        if entry is None or len(entry) < 6:
            return Plan(failed=True, msg=f"Failed to lookup user {user}")
        key = str(args["key"])
        if "://" in key.split("\n")[0] and not key_blob(key):
            return Plan(failed=True, msg="authorized_key: give the key text (a url is not fetched; use the url "
                                         "lookup on the controller)")
        path = str(args.get("path") or f"{entry[5].rstrip('/')}/.ssh/authorized_keys")
        folder = path.rsplit("/", 1)[0] or "/"
        keys = [k.strip() + (f" {args['comment']}" if args.get("comment") else "") for k in key.splitlines()
                if k.strip() and not k.strip().startswith("#")]

        def decide(_facts, rs) -> Plan:
            sections = split_sections(rs[0].stdout)
            d, st = parse_stat(sections.get("dir", "absent\n")), parse_stat(sections.get("file", "absent\n"))
            before = (st.content or b"").decode("utf-8", "replace") if st.kind == "file" else ""
            after = edit_keys(before, keys, present=args.get("state") == "present",
                              exclusive=bool(args.get("exclusive")), options=args.get("key_options"))
            if st.kind == "absent" and not after:
                return Plan(noop=f"{path}: no key to remove")
            plan = write_file_plan(path, after.encode(), st, mode=0o600, owner=entry[2], group=entry[3])
            if d.kind == "absent":
                if not args.get("manage_dir", True):
                    return Plan(failed=True, msg=f"{folder} does not exist (manage_dir is off)")
                plan.commands.insert(0, Cmd(f"install -d -m 700 -o {entry[2]} -g {entry[3]} -- {q(folder)}"))
            if plan.noop:
                plan.noop = f"{path}: keys as wanted"
            return plan
        look = section_script([("dir", stat_probe(folder, content=False)), ("file", stat_probe(path))])
        return Plan([Cmd(look, readonly=True, counts=False, ok_rc=None)], then=decide)
