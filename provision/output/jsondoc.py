"""The ``--json`` reporter: one JSON document at the end, on stdout."""
from __future__ import annotations

import json
import sys
import threading

from provision.output.silent import SilentHooks
from provision.results import HostResult, RunStats


class JsonReporter(SilentHooks):
    """Collects everything and prints one JSON document at the end (stdout); warnings still go to stderr."""

    def __init__(self, out=None, err=None, *, diff: bool = False, **_):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.diff = diff   # as Ansible's json callback: results carry their diff only with --diff
        self.doc: dict = {"plays": [], "stats": {}, "warnings": []}
        self._lock = threading.Lock()
        self._task = None

    def play_start(self, name):
        with self._lock:
            self.doc["plays"].append({"play": {"name": name}, "tasks": []})

    def task_start(self, name, handler=False):
        with self._lock:
            if not self.doc["plays"]:
                self.doc["plays"].append({"play": {"name": "ad-hoc"}, "tasks": []})
            self._task = {"task": {"name": name, "handler": handler}, "hosts": {}}
            self.doc["plays"][-1]["tasks"].append(self._task)

    def warning(self, msg):
        with self._lock:
            self.doc["warnings"].append(msg)
        super().warning(msg)

    def _entry(self, r: HostResult) -> dict:
        d = {"status": r.status, "changed": r.changed, "failed": r.failed, "skipped": r.skipped,
             "unreachable": r.unreachable, "msg": r.msg}
        if r.ignored:
            d["ignored"] = True
        if r.rc is not None:
            d["rc"] = r.rc
        if r.stdout or r.stderr:
            d.update(stdout=r.stdout, stderr=r.stderr)
        if r.diff and self.diff:
            d["diff"] = r.diff
        if r.commands:
            d["commands"] = r.commands
        if r.item is not None:
            d["item"] = r.item
        return d

    def host_result(self, r: HostResult, item=False):
        with self._lock:
            if self._task is None:
                return
            if item:
                self._task["hosts"].setdefault(r.host, {"results": []}).setdefault("results", []) \
                    .append(self._entry(r))
            else:
                self._task["hosts"][r.host] = self._entry(r)

    def loop_done(self, r: HostResult):
        with self._lock:
            if self._task is None:
                return
            prev = self._task["hosts"].get(r.host, {})
            e = self._entry(r)
            e["results"] = prev.get("results", [])
            self._task["hosts"][r.host] = e

    def recap(self, stats: RunStats):
        self.doc["stats"] = {h: c.as_dict() for h, c in sorted(stats.recap.items())}
        print(json.dumps(self.doc, indent=2, default=str), file=self.out, flush=True)
