"""The live text reporter: Ansible's lines per task and host, diffs, the PLAY RECAP; colour and a progress line
only on a TTY."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

from provision.ops.core import unified
from provision.results import SKIPPED_BY_WHEN, HostResult, RunStats


_COLORS = {"ok": "32", "changed": "33", "failed": "31", "unreachable": "1;31", "skipped": "36", "warn": "35",
           "recap": "1", "ignored": "36", "verbose": "34"}


def _stars(title: str) -> str:
    return title + " " + "*" * max(3, 79 - len(title))


def _brief(r: HostResult, verbose: bool) -> dict:
    d: dict = {"changed": r.changed}
    if r.msg:
        d["msg"] = r.msg
    if r.unreachable:
        d["unreachable"] = True
    if r.rc is not None and (r.failed or verbose):
        d["rc"] = r.rc
    if r.stderr and (r.failed or verbose):
        d["stderr"] = r.stderr[-4000:]
    if r.stdout and (r.failed or verbose):
        d["stdout"] = r.stdout[-4000:]
    if verbose:
        for k, v in r.extra.items():
            if k not in d and k != "status":
                d[k] = v
    return d


class TextReporter:
    def __init__(self, out=None, err=None, *, verbosity: int = 0, color: bool | None = None, diff: bool = False,
                 progress: bool | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.verbosity = verbosity
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.color = (tty and not os.environ.get("NO_COLOR")) if color is None else color
        etty = hasattr(self.err, "isatty") and self.err.isatty()
        self.show_progress = etty if progress is None else progress
        self.diff = diff
        self._lock = threading.RLock()
        self._task_start = 0.0
        self._progress_shown = False

    # -- helpers ----------------------------------------------------------------------------------------
    def _c(self, kind: str, text: str) -> str:
        return f"\033[{_COLORS[kind]}m{text}\033[0m" if self.color else text

    def _line(self, text: str = "", stream=None) -> None:
        with self._lock:
            self._clear_progress()
            print(text, file=stream or self.out, flush=True)

    def _clear_progress(self) -> None:
        if self._progress_shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self._progress_shown = False

    # -- events -----------------------------------------------------------------------------------------
    def play_start(self, name: str) -> None:
        self._line()
        self._line(_stars(f"PLAY [{name}]"))

    def task_start(self, name: str, handler: bool = False) -> None:
        self._task_start = time.monotonic()
        self._line()
        self._line(_stars(f"{'RUNNING HANDLER' if handler else 'TASK'} [{name}]"))

    def warning(self, msg: str) -> None:
        self._line(self._c("warn", f"[WARNING]: {msg}"), self.err)

    def info(self, msg: str) -> None:
        self._line(msg)

    def retry(self, host: str, task: str, left: int) -> None:
        self._line(self._c("warn", f"FAILED - RETRYING: [{host}]: {task} ({left} retries left)."))

    def verbose(self, host: str, level: str, text: str) -> None:
        need = {"v": 1, "cmd": 2}.get(level, 3)
        if self.verbosity >= need:
            prefix = "<{}> {}".format(host, {"cmd": "EXEC", "v": "NOTE"}.get(level, "OUT "))
            self._line(self._c("verbose", f"{prefix} {text}"))

    def progress(self, done: int, total: int, name: str) -> None:
        if not self.show_progress or time.monotonic() - self._task_start < 1.0:
            return
        with self._lock:
            self.err.write(f"\r\033[K  [{name}] {done}/{total} hosts done, "
                           f"{time.monotonic() - self._task_start:.0f}s")
            self.err.flush()
            self._progress_shown = True

    def progress_done(self) -> None:
        with self._lock:
            self._clear_progress()

    def _diffs(self, r: HostResult) -> None:
        if not self.diff:
            return
        for d in r.diff:
            text = d.get("unified") or unified(d)   # diffed before masking, so a changed secret still shows
            if text:
                for line in text.rstrip("\n").splitlines():
                    kind = "changed" if line.startswith("+") else "failed" if line.startswith("-") else None
                    self._line(self._c(kind, line) if kind else line)

    def host_result(self, r: HostResult, item: bool = False) -> None:
        with self._lock:
            self._diffs(r)
            item_s = f" => (item={_item(r.item)})" if item else ""
            v = self.verbosity >= 1
            if r.unreachable:
                self._line(self._c("unreachable", f"fatal: [{r.host}]: UNREACHABLE! => "
                                                  f"{json.dumps(_brief(r, v), default=str)}"))
            elif r.failed:
                label = f"failed: [{r.host}]{(' (item=' + _item(r.item) + ')') if item else ''}" if item else \
                    f"fatal: [{r.host}]: FAILED!"
                self._line(self._c("failed", f"{label} => {json.dumps(_brief(r, True), default=str)}"))
                if r.ignored:
                    self._line(self._c("ignored", "...ignoring"))
            elif r.skipped:
                # a module's own reason (e.g. "skipped (simulated GPU)") is worth a line; a false `when` is not
                why = f' => {json.dumps({"msg": r.msg})}' if r.msg and r.msg != SKIPPED_BY_WHEN else ""
                self._line(self._c("skipped", f"skipping: [{r.host}]{item_s}{why}"))
            else:
                kind = "changed" if r.changed else "ok"
                extra = ""
                if r.show is not None:
                    extra = " => " + json.dumps(r.show, default=str)
                elif v and (r.msg or r.stdout or r.stderr or r.rc is not None):
                    extra = " => " + json.dumps(_brief(r, True), default=str)
                self._line(self._c(kind, f"{kind}: [{r.host}]{item_s}{extra}"))

    def loop_done(self, r: HostResult) -> None:
        if r.failed and r.ignored:
            self._line(self._c("ignored", "...ignoring"))
        elif r.unreachable and not r.results:
            self.host_result(r)
        elif not r.results:
            self.host_result(r)

    def recap(self, stats: RunStats) -> None:
        self._line()
        self._line(_stars("PLAY RECAP"))
        for host in sorted(stats.recap):
            c = stats.recap[host]
            kind = "unreachable" if c.unreachable else "failed" if c.failed else "changed" if c.changed else "ok"
            name = self._c(kind, f"{host:<26}")
            cols = [f"ok={c.ok:<4}", f"changed={c.changed:<4}", f"unreachable={c.unreachable:<4}",
                    f"failed={c.failed:<4}", f"skipped={c.skipped:<4}", f"rescued={c.rescued:<4}",
                    f"ignored={c.ignored:<4}"]
            self._line(f"{name} : " + " ".join(cols).rstrip())
        self._line()


def _item(item) -> str:
    if isinstance(item, (dict, list)):
        return json.dumps(item, default=str)
    return str(item)
