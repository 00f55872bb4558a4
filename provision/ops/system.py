"""reboot (boot_id must change, then reconnect), wait_for (port/path), ping: plans the runner carries out."""
from __future__ import annotations

from provision.ops.core import Op, q
from provision.ops.plan import Cmd, Plan, RebootAndWait
from provision.ops.spec import ArgSpec, module


@module("reboot", args={
    "reboot_timeout": ArgSpec("int", default=600), "connect_timeout": ArgSpec("int"),
    "pre_reboot_delay": ArgSpec("int", default=0), "post_reboot_delay": ArgSpec("int", default=0),
    "test_command": ArgSpec("str", default="whoami"), "msg": ArgSpec("str", default="Reboot initiated by provision"),
    "reboot_command": ArgSpec("str"),
})
class Reboot(Op):
    def plan(self, args, facts, probe, ctx) -> Plan:
        timeout = int(args.get("reboot_timeout") or 600)
        reboot = RebootAndWait(command=args.get("reboot_command") or "systemctl reboot || reboot", timeout=timeout,
                               pre_delay=max(int(args.get("pre_reboot_delay") or 0), 0),
                               post_delay=max(int(args.get("post_reboot_delay") or 0), 0),
                               test_command=args.get("test_command") or "whoami")
        return Plan([reboot], msg="would reboot" if ctx.check else "rebooted", extra={"rebooted": not ctx.check},
                    refresh_facts=("boot_id", "kernel"),
                    result=lambda rs: {} if rs[0] is None else   # check mode: nothing ran
                    {"extra": {"rebooted": True, "elapsed": int(rs[0].duration)}})


@module("wait_for", args={
    "host": ArgSpec("str", default="127.0.0.1"), "port": ArgSpec("int"), "path": ArgSpec("path"),
    "state": ArgSpec("str", default="started", choices=("started", "stopped", "present", "absent")),
    "timeout": ArgSpec("int", default=300), "delay": ArgSpec("int", default=0), "sleep": ArgSpec("int", default=1),
    "search_regex": ArgSpec("str"), "msg": ArgSpec("str"),
})
class WaitFor(Op):
    """Runs as one shell loop on the host (read-only, so it also runs in check mode)."""

    def plan(self, args, facts, probe, ctx) -> Plan:
        timeout = int(args.get("timeout") or 300)
        state = args.get("state") or "started"
        if args.get("port"):
            target = f"/dev/tcp/{args.get('host') or '127.0.0.1'}/{int(args['port'])}"
            test = f"timeout 3 bash -c {q(': <' + q(target))} 2>/dev/null"
            ok = test if state in ("started", "present") else f"! {test}"
            what = f"port {args['port']}"
        elif args.get("path"):
            p = q(str(args["path"]))
            if args.get("search_regex") and state in ("started", "present"):
                ok = f"grep -Eq -e {q(args['search_regex'])} -- {p} 2>/dev/null"
            else:
                ok = f"[ -e {p} ]" if state in ("started", "present") else f"[ ! -e {p} ]"
            what = f"path {args['path']}"
        else:
            secs = 0 if ctx.check else timeout
            return Plan([Cmd(f"sleep {secs}", readonly=True, counts=False, timeout=secs + 30)], msg=f"slept {timeout}s")
        script = (f"sleep {int(args.get('delay') or 0)}; end=$(( $(date +%s) + {timeout} )); "
                  f"while ! {ok}; do [ $(date +%s) -ge $end ] && exit 7; sleep {int(args.get('sleep') or 1)}; done")
        failed = args.get("msg") or f"Timeout when waiting for {what} to be {state}"
        return Plan([Cmd(script, timeout=timeout + int(args.get("delay") or 0) + 30, become=False, readonly=True,
                         counts=False, ok_rc=None)],
                    msg=f"{what} is {state}",
                    result=lambda rs: {"extra": {"elapsed": int(rs[0].duration)}} if rs[0].rc == 0 else
                    {"failed": True, "rc": rs[0].rc, "msg": failed})


@module("ping", args={"data": ArgSpec("str", default="pong")})
class Ping(Op):
    def plan(self, args, facts, probe, ctx) -> Plan:
        data = args.get("data") or "pong"

        def result(rs):
            res = rs[0]
            if res.rc != 0 or "pong" not in res.stdout:
                return {"failed": True, "rc": res.rc, "msg": f"ping failed: {res.stderr.strip()}"}
            return {"extra": {"ping": data}, "show": {"ping": data}}
        return Plan([Cmd("echo pong", become=False, readonly=True, counts=False, ok_rc=None)], result=result)


@module("tempfile", args={"state": ArgSpec("str", default="file", choices=("file", "directory")),
                          "path": ArgSpec("path"), "prefix": ArgSpec("str", default="ansible."),
                          "suffix": ArgSpec("str", default="")})
class TempFile(Op):
    """mktemp on the host; its path is the result's ``path``. Not run in check mode (as Ansible's)."""

    def plan(self, args, facts, probe, ctx) -> Plan:
        where = f"-p {q(str(args['path']))}" if args.get("path") else "--tmpdir"
        template = f"{args.get('prefix') or ''}XXXXXXXXXX{args.get('suffix') or ''}"
        cmd = f"mktemp {'-d ' if args.get('state') == 'directory' else ''}{where} -- {q(template)}"
        return Plan([Cmd(cmd, ok_rc=None)], skip_in_check="skipped: tempfile does not run in check mode",
                    result=lambda rs: {"extra": {"path": rs[0].stdout.strip()}} if rs[0].rc == 0 else
                    {"failed": True, "rc": rs[0].rc, "msg": rs[0].stderr.strip()})


@module("wait_for_connection", args={"delay": ArgSpec("int", default=0), "sleep": ArgSpec("int", default=1),
                                     "timeout": ArgSpec("int", default=600),
                                     "connect_timeout": ArgSpec("int", default=5)})
class WaitForConnection(Op):
    """Until a command works on the host (a new connection after each failure), or ``timeout``."""

    def plan(self, args, facts, probe, ctx) -> Plan:
        import time

        from provision.hostio import CommandResult, ConnectorError
        from provision.ops.plan import Call

        def wait(runner, c) -> CommandResult:
            start = time.monotonic()
            runner.sleep(max(0, int(args.get("delay") or 0)))
            last = ""
            while time.monotonic() - start < int(args.get("timeout") or 600):
                try:
                    if runner.shell(c, "true", become=False, readonly=True, timeout=30).rc == 0:
                        return CommandResult(0, "", "", time.monotonic() - start)
                except ConnectorError as err:
                    last = str(err)
                runner.drop()
                runner.sleep(max(1, int(args.get("sleep") or 1)))
            return CommandResult(1, "", f"timed out waiting for connection: {last[:200]}", time.monotonic() - start)
        return Plan([Call(wait, desc="wait for the connection", counts=False, readonly=True)], changed=False,
                    result=lambda rs: {"extra": {"elapsed": int(rs[0].duration)}} if rs[0].rc == 0 else
                    {"failed": True, "msg": rs[0].stderr})


@module("hostname", args={"name": ArgSpec("str", required=True),
                          "use": ArgSpec("str", default="systemd", choices=("systemd", "debian"))})
class Hostname(Op):
    """The static hostname (/etc/hostname) and the running one, through hostnamectl."""

    def probe(self, args, ctx):
        return "cat /etc/hostname 2>/dev/null; hostname"

    def plan(self, args, facts, probe, ctx) -> Plan:
        name = str(args["name"])
        have = (probe.stdout if probe else "").split()
        if have and all(h == name for h in have):
            return Plan(noop=f"hostname is {name}")
        return Plan([Cmd(f"hostnamectl set-hostname -- {q(name)}")], refresh_facts=("hostname",),
                    diff=[{"before_header": "hostname", "after_header": "hostname",
                           "before": f"{have[0] if have else ''}\n", "after": f"{name}\n"}])


@module("timezone", args={"name": ArgSpec("str", required=True), "hwclock": ArgSpec("str", choices=("local", "UTC"))})
class Timezone(Op):
    """The system time zone (and, with hwclock, the RTC's), through timedatectl; the zone must exist in tzdata."""

    def probe(self, args, ctx):
        return ("readlink /etc/localtime | sed 's|.*/zoneinfo/||'; "
                "timedatectl show -p LocalRTC --value 2>/dev/null; "
                f"[ -e /usr/share/zoneinfo/{q(str(args['name']))} ] && echo known")

    def plan(self, args, facts, probe, ctx) -> Plan:
        name = str(args["name"])
        lines = (probe.stdout if probe else "").splitlines()
        if "known" not in lines:
            return Plan(failed=True, msg=f"timezone {name!r} is not in /usr/share/zoneinfo")
        cmds, before, after = [], [], []
        if (lines[0].strip() if lines else "") != name:
            cmds.append(Cmd(f"timedatectl set-timezone -- {q(name)}"))
            before.append(f"name: {lines[0].strip() if lines else ''}")
            after.append(f"name: {name}")
        rtc = args.get("hwclock")
        if rtc and (lines[1:2] != [("yes" if rtc == "local" else "no")]):
            cmds.append(Cmd(f"timedatectl set-local-rtc {'1' if rtc == 'local' else '0'}"))
            before.append(f"hwclock: {'local' if lines[1:2] == ['yes'] else 'UTC'}")
            after.append(f"hwclock: {rtc}")
        if not cmds:
            return Plan(noop=f"timezone is {name}")
        return Plan(cmds, diff=[{"before_header": "timezone", "after_header": "timezone",
                                 "before": "".join(x + "\n" for x in before),
                                 "after": "".join(x + "\n" for x in after)}])
