"""The runner: the only code that carries out commands on a host.

A :class:`HostRunner` holds one host's connection from the pool for as long as a task (or an upgrade step) needs it,
and carries out the command objects of :mod:`provision.ops.plan`: shell commands (with the dpkg-lock retry), file
puts (:func:`put_command`, the one way to write a file on a host), reboot-and-wait and controller-side steps.
:meth:`HostRunner.execute` runs a whole plan: check mode (only read-only commands run), failures, fact refreshes
and the plan's continuation.
"""
from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import PurePath
from typing import Any, Callable

from provision.hostio import CommandResult, ConnectorError
from provision.ops.plan import Call, Cmd, FilePut, Plan, RebootAndWait
from provision.progress import Meter, MeteredReader, note_lines
from provision.results import HostResult

q = shlex.quote
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
DPKG_LOCK_WAIT = 600.0
_DPKG_LOCKED = re.compile(r"Could not get lock|dpkg frontend lock|lock-frontend|Unable to acquire the dpkg")


def put_command(path: str, mode: int | None, owner: Any = None, group: Any = None, make_parent: bool = False,
                fsync: bool = False, validate: str | None = None) -> str:
    """Shell that writes stdin to ``path`` atomically: a temp file in the same folder gets the content, mode and
    owner, then is renamed over the path. ``mode`` None keeps an existing file's mode and owner (a new file: 0644).
    ``validate`` (a command, %s the temp file) must succeed before the rename, else the path is left as it was."""
    qp = q(path)
    d = q(os.path.dirname(path) or ".")
    if mode is not None:
        chmod = f' && chmod {mode:o} "$t"'
    else:
        chmod = (f' && {{ if [ -e {qp} ]; then chmod --reference={qp} "$t" && {{ chown --reference={qp} "$t" '
                 f'2>/dev/null || true; }}; else chmod 644 "$t"; fi; }}')
    chown = ""
    if owner is not None or group is not None:
        spec = (str(owner) if owner is not None else "") + (f":{group}" if group is not None else "")
        chown = f' && chown -- {q(spec)} "$t"'
    mkdir = f"mkdir -p {d} && " if make_parent else ""
    sync = ' && { sync "$t" 2>/dev/null || true; }' if fsync else ""
    check = " && { " + validate.replace("%s", '"$t"') + "; }" if validate else ""
    return (f'{mkdir}t=$(mktemp {d}/.provision.XXXXXX) && cat > "$t"{chmod}{chown}{check}{sync} && mv -f "$t" {qp} '
            f'|| {{ rc=$?; rm -f "$t"; exit $rc; }}')


class HostRunner:
    """One host's commands, through the executor's connection pool. ``drop()`` forgets a broken connection: the
    next command reopens it in the same pool slot. ``refresh(sections)`` re-reads fact sections."""

    def __init__(self, host, pool, *, refresh: Callable[[Any, tuple], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.host = host
        self.pool = pool
        self._refresh = refresh
        self._conn = None
        self._held = False
        self.sleep = sleep

    # -- the connection -------------------------------------------------------------------------------
    def connection(self):
        if self._conn is None:
            if self._held:
                try:
                    self._conn = self.pool.reconnect(self.host)
                except BaseException:
                    self._held = False
                    self.pool.release(self.host)
                    raise
            else:
                self._conn = self.pool.acquire(self.host)
                self._held = True
        return self._conn

    def drop(self) -> None:
        self._conn = None

    def release(self) -> None:
        if self._held:
            self._held = False
            self._conn = None
            self.pool.release(self.host)

    def refresh(self, sections: tuple) -> None:
        if self._refresh is not None and sections:
            self._refresh(self.connection(), tuple(sections))

    # -- commands -------------------------------------------------------------------------------------
    def shell(self, ctx, cmd: str, *, stdin: bytes | PurePath | None = None, timeout: float | None = None,
              become: bool | None = None, desc: str | None = None, readonly: bool = False) -> CommandResult:
        """One shell command for the op context ``ctx`` (its become, env, log, prefetched probes). A command that
        is not read-only drops the prefetched probes: the host may change."""
        if not readonly and ctx.probe_cache:
            ctx.probe_cache.clear()
        b = ctx.become if become is None else become
        kw = {"become_user": ctx.become_user} if b and ctx.become_user != "root" else {}
        ctx.ran.append(desc or cmd)
        if ctx.log:
            ctx.log("cmd", desc or cmd)
        if isinstance(stdin, PurePath):
            res = self._streamed(ctx, stdin, cmd, timeout=timeout or ctx.timeout, become=b, env=ctx.env, **kw)
        else:
            res = self.connection().run(cmd, stdin=stdin, timeout=timeout or ctx.timeout, become=b, env=ctx.env,
                                        **kw)
        if ctx.log:
            ctx.log("out", f"rc={res.rc} stdout={res.stdout[-2000:]!r} stderr={res.stderr[-2000:]!r}")
        return res

    def _streamed(self, ctx, path: PurePath, cmd: str, **kw) -> CommandResult:
        """``cmd`` with the controller file ``path`` as its stdin, read in chunks as it is sent (constant memory),
        its progress (bytes, rate, ETA) in the -v log every few seconds."""
        with open(path, "rb") as fh:
            meter = Meter(f"{path.name} sent", os.fstat(fh.fileno()).st_size, note_lines(ctx.log))
            res = self.connection().run(cmd, stdin=MeteredReader(fh, meter), **kw)
        meter.finish()
        return res

    def do(self, ctx, c) -> CommandResult:
        """Carry out one command object."""
        if isinstance(c, Cmd):
            return self._cmd(ctx, c)
        if isinstance(c, FilePut):
            return self.shell(ctx, put_command(c.path, c.mode, c.owner, c.group, c.make_parent, c.fsync, c.validate),
                              stdin=c.content, become=c.become, desc=c.shown)
        if isinstance(c, RebootAndWait):
            return self._reboot(ctx, c)
        if isinstance(c, Call):
            if ctx.probe_cache:
                ctx.probe_cache.clear()
            return c.function(self, ctx)
        raise TypeError(f"not a command object: {c!r}")

    def _cmd(self, ctx, c: Cmd) -> CommandResult:
        res = self.shell(ctx, c.cmd, stdin=c.stdin, timeout=c.timeout, become=c.become, desc=c.desc,
                         readonly=c.readonly)
        if c.dpkg_lock:
            deadline = time.monotonic() + DPKG_LOCK_WAIT
            while res.rc != 0 and _DPKG_LOCKED.search(res.stderr + res.stdout) and time.monotonic() < deadline:
                if ctx.log:
                    ctx.log("v", "dpkg is locked by another process: waiting")
                self.sleep(5.0)
                res = self.shell(ctx, c.cmd, stdin=c.stdin, timeout=c.timeout, become=c.become, desc=c.desc,
                                 readonly=c.readonly)
        return res

    def _reboot(self, ctx, c: RebootAndWait) -> CommandResult:
        """Detached reboot (our command returns before the connection dies), then a fresh connection until the boot
        id changed and the test command works."""
        start = time.monotonic()
        before = c.boot_id_before
        if not before:
            before = self.shell(ctx, BOOT_ID, become=False, readonly=True, timeout=c.timeout_cmd).stdout.strip()
            if not before:
                return CommandResult(1, "", "cannot read boot_id before the reboot")
        if c.ask:
            detached = (f"setsid -f sh -c {q(f'sleep {int(c.pre_delay) + 1}; {c.command}')} "
                        "</dev/null >/dev/null 2>&1")
            try:
                self.shell(ctx, f"{c.announce}; {detached}" if c.announce else detached, timeout=c.timeout_cmd,
                           become=c.become, desc=c.shown)
            except ConnectorError:
                pass          # the connection may go before the answer: expected
        self.drop()
        deadline = start + c.timeout
        self.sleep(min(c.pre_delay + 2.0, max(0.0, deadline - time.monotonic())))
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                now = self.shell(ctx, BOOT_ID, become=False, readonly=True, timeout=20).stdout.strip()
                if now and now != before:
                    if c.wait_system:
                        self.shell(ctx, "systemctl is-system-running --wait >/dev/null 2>&1 || true", readonly=True,
                                   timeout=max(5.0, min(120.0, deadline - time.monotonic())))
                    test = self.shell(ctx, c.test_command, timeout=60, readonly=True) if c.test_command else None
                    if test is None or test.rc == 0:
                        self.sleep(max(0.0, c.post_delay))
                        return CommandResult(0, now, "", time.monotonic() - start)
                    last = f"test command failed: {test.stderr.strip()[-200:]}"
                else:
                    last = "boot_id unchanged (not rebooted yet)"
            except (ConnectorError, OSError) as err:
                last = str(err)
            self.drop()
            self.sleep(c.poll)
        return CommandResult(1, "", f"did not come back within {c.timeout:g}s after the reboot ({last[:200]})",
                             time.monotonic() - start)

    # -- plans ----------------------------------------------------------------------------------------
    def execute(self, plan: Plan, ctx) -> HostResult:
        """Carry out ``plan`` and its continuations; check mode runs only the read-only commands."""
        r = HostResult(ctx.host)
        while plan is not None:
            r.msg = plan.msg or r.msg
            r.extra.update(plan.extra)
            if ctx.diff:
                r.diff += list(plan.diff)
            if plan.failed:
                r.failed = True
                return r
            if plan.noop is not None and plan.then is None:
                r.msg = r.msg or plan.noop
                return r
            if ctx.check and plan.skip_in_check:
                r.skipped, r.msg = True, plan.skip_in_check
                return r
            results = self._run_commands(plan, ctx, r)
            if plan.result is not None and not r.failed:
                for k, v in plan.result(results).items():
                    if k == "extra":
                        r.extra.update(v)
                    else:
                        setattr(r, k, v)
            if r.failed or plan.then is None:
                return r
            plan = plan.then(ctx.facts, results)
        return r

    def _run_commands(self, plan: Plan, ctx, r: HostResult) -> list:
        results: list = []
        for c in plan.commands:
            if ctx.check and not c.readonly:
                results.append(None)
                if c.counts:
                    r.commands.append(c.shown)
                continue
            res = self.do(ctx, c)
            results.append(res)
            if not c.readonly:
                r.commands.append(c.shown)
            ok_rc = getattr(c, "ok_rc", (0,))
            if ok_rc is not None and res.rc not in ok_rc:
                r.failed, r.rc = True, res.rc
                r.stdout, r.stderr = res.stdout, res.stderr
                r.msg = (res.stderr.strip() or res.stdout.strip() or f"command failed with rc {res.rc}")[-2000:]
                r.changed = r.changed or (plan.is_change and c is not plan.commands[0])
                return results
        r.changed = r.changed or plan.is_change
        if not ctx.check and plan.refresh_facts and (plan.is_change or any(not c.counts for c in plan.commands)):
            self.refresh(plan.refresh_facts)
        return results
