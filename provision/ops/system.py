"""reboot (boot_id must change, then reconnect), wait_for (port/path), ping."""
from __future__ import annotations

import time

from provision.connectors.base import ConnectorError
from provision.ops.core import Op, Plan, execute_plan, q
from provision.ops.spec import ArgSpec, module
from provision.results import HostResult

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


@module("reboot", args={
    "reboot_timeout": ArgSpec("int", default=600), "connect_timeout": ArgSpec("int"),
    "pre_reboot_delay": ArgSpec("int", default=0), "post_reboot_delay": ArgSpec("int", default=0),
    "test_command": ArgSpec("str", default="whoami"), "msg": ArgSpec("str", default="Reboot initiated by provision"),
    "reboot_command": ArgSpec("str"),
})
class Reboot(Op):
    def run(self, args, ctx) -> HostResult:
        if ctx.check:
            return HostResult(ctx.host, changed=True, msg="would reboot", commands=["reboot"])
        start = time.monotonic()
        before = ctx.run(BOOT_ID, become=False).stdout.strip()
        if not before:
            return HostResult(ctx.host, failed=True, msg="cannot read boot_id before the reboot")
        delay = max(int(args.get("pre_reboot_delay") or 0), 0)
        cmd = args.get("reboot_command") or "systemctl reboot || reboot"
        # detached, so our command returns before the connection dies
        ctx.run(f"nohup sh -c {q(f'sleep {delay + 1}; {cmd}')} >/dev/null 2>&1 &", timeout=30)
        deadline = start + int(args.get("reboot_timeout") or 600)
        time.sleep(delay + 2)
        last_err = "no answer"
        while time.monotonic() < deadline:
            try:
                conn = ctx.reconnect()
                ctx.conn = conn
                now = conn.run(BOOT_ID, timeout=20).stdout.strip()
                if now and now != before:
                    test = ctx.run(args.get("test_command") or "whoami", timeout=60)
                    if test.rc == 0:
                        time.sleep(max(int(args.get("post_reboot_delay") or 0), 0))
                        if ctx.refresh:
                            ctx.refresh(("boot_id", "kernel"))
                        return HostResult(ctx.host, changed=True, msg="rebooted",
                                          extra={"rebooted": True, "elapsed": int(time.monotonic() - start)})
                    last_err = f"test command failed: {test.stderr.strip()[-200:]}"
                else:
                    last_err = "boot_id unchanged (not rebooted yet)"
            except (ConnectorError, OSError) as err:
                last_err = str(err)
            time.sleep(2)
        return HostResult(ctx.host, failed=True, msg=f"reboot did not finish within {args.get('reboot_timeout')}s: "
                                                     f"{last_err}", extra={"rebooted": False})


@module("wait_for", args={
    "host": ArgSpec("str", default="127.0.0.1"), "port": ArgSpec("int"), "path": ArgSpec("path"),
    "state": ArgSpec("str", default="started", choices=("started", "stopped", "present", "absent")),
    "timeout": ArgSpec("int", default=300), "delay": ArgSpec("int", default=0), "sleep": ArgSpec("int", default=1),
    "search_regex": ArgSpec("str"), "msg": ArgSpec("str"),
})
class WaitFor(Op):
    """Runs as one shell loop on the host (read-only, so it also runs in check mode)."""

    def run(self, args, ctx) -> HostResult:
        timeout = int(args.get("timeout") or 300)
        state = args.get("state") or "started"
        if args.get("port"):
            test = f"timeout 3 bash -c {q(': </dev/tcp/' + str(args.get('host') or '127.0.0.1') + '/' + str(args['port']))} 2>/dev/null"
            ok = test if state in ("started", "present") else f"! {test}"
            what = f"port {args['port']}"
        elif args.get("path"):
            p = q(str(args["path"]))
            if args.get("search_regex") and state in ("started", "present"):
                ok = f"grep -Eq {q(args['search_regex'])} {p} 2>/dev/null"
            else:
                ok = f"[ -e {p} ]" if state in ("started", "present") else f"[ ! -e {p} ]"
            what = f"path {args['path']}"
        else:
            time.sleep(timeout if not ctx.check else 0)
            return HostResult(ctx.host, msg=f"slept {timeout}s")
        script = (f"sleep {int(args.get('delay') or 0)}; end=$(( $(date +%s) + {timeout} )); "
                  f"while ! {ok}; do [ $(date +%s) -ge $end ] && exit 7; sleep {int(args.get('sleep') or 1)}; done")
        res = ctx.run(script, timeout=timeout + int(args.get("delay") or 0) + 30, become=False, readonly=True)
        if res.rc == 0:
            return HostResult(ctx.host, msg=f"{what} is {state}", extra={"elapsed": int(res.duration)})
        return HostResult(ctx.host, failed=True, rc=res.rc,
                          msg=args.get("msg") or f"Timeout when waiting for {what} to be {state}")


@module("ping", args={"data": ArgSpec("str", default="pong")})
class Ping(Op):
    def run(self, args, ctx) -> HostResult:
        res = ctx.run("echo pong", become=False, readonly=True)
        if res.rc != 0 or "pong" not in res.stdout:
            return HostResult(ctx.host, failed=True, rc=res.rc, msg=f"ping failed: {res.stderr.strip()}")
        return HostResult(ctx.host, extra={"ping": args.get("data") or "pong"},
                          show={"ping": args.get("data") or "pong"})


_ = Plan, execute_plan
