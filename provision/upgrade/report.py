"""Live progress (a redrawn status line on a TTY, line events otherwise) and the final report. No decisions here."""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import TextIO

from provision.upgrade import states as S

ORDER = (S.REQUIRED, S.DRAINING, S.UPGRADING, S.REBOOTING, S.VALIDATING, S.RESTORING, S.DONE, S.FAILED, S.SKIPPED)


def fmt_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.start = time.monotonic()
        self.states: dict[str, str] = {}
        self.batch = (0, 0)
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._status_shown = False

    def begin(self, states: dict[str, str]) -> None:
        self.states = dict(states)
        if self.tty and not self.quiet:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _tick(self):
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw()

    def status_line(self) -> str:
        c = Counter(self.states.values())
        parts = [f"{s} {c[s]}" for s in ORDER if c.get(s)]
        bt = f"batch {self.batch[0]}/{self.batch[1]}  " if self.batch[1] else ""
        return f"[{fmt_elapsed(time.monotonic() - self.start)}] {bt}{'  '.join(parts)}  failures {self.failures}"

    def _draw(self):
        if self.quiet:
            return
        self.stream.write("\r\033[K" + self.status_line())
        self.stream.flush()
        self._status_shown = True

    def _line(self, text: str):
        if self.quiet:
            return
        if self.tty and self._status_shown:
            self.stream.write("\r\033[K")
        self.stream.write(f"[{fmt_elapsed(time.monotonic() - self.start)}] {text}\n")
        if self.tty:
            self._draw()
        self.stream.flush()

    # callbacks
    def set_state(self, host: str, state: str) -> None:
        with self._lock:
            self.states[host] = state
            self.failures = sum(1 for v in self.states.values() if v == S.FAILED)

    def set_batch(self, i: int, n: int, hosts: list[str]) -> None:
        with self._lock:
            self.batch = (i, n)
            self._line(f"batch {i}: {', '.join(hosts)}")

    def event(self, host: str, message: str) -> None:
        with self._lock:
            self._line(f"{host}: {message}")

    def note(self, message: str) -> None:
        with self._lock:
            self._line(message)

    def end(self) -> None:
        self._stop.set()
        if self._ticker:
            self._ticker.join(timeout=2)
        with self._lock:
            if self.tty and self._status_shown and not self.quiet:
                self.stream.write("\r\033[K" + self.status_line() + "\n")
                self.stream.flush()


def report_lines(doc: dict, elapsed: float | None = None) -> list[str]:
    """The final report from the state-file document."""
    hosts = [doc["hosts"][n] for n in doc["order"]]
    c = Counter(h["state"] for h in hosts)
    el = f"  elapsed {fmt_elapsed(elapsed)}" if elapsed is not None else ""
    out = [f"UPGRADE REPORT rollout {doc['rollout']}  target {doc['target']}{el}"]
    w = max((len(h["name"]) for h in hosts), default=4)
    for h in hosts:
        st = h["state"]
        if st == S.DONE:
            extra = f"{h.get('from_version')} -> {h.get('target')}"
            if h.get("stopped_containers"):
                extra += f"; restarted {len(h['stopped_containers'])} container(s) it stopped: " + \
                    ", ".join(x["name"] or x["id"][:12] for x in h["stopped_containers"])
            skipped = [f"{k} {v}" for k, v in (h.get("checks") or {}).items() if str(v).startswith("skipped")]
            if skipped:
                extra += "; " + "; ".join(skipped)
        elif st == S.FAILED:
            extra = f"{h.get('error')} [stays in maintenance]"
        elif st == S.SKIPPED:
            extra = h.get("skip_reason") or ""
        elif st == S.REQUIRED:
            extra = "not started" + (f" ({doc['stopped']})" if doc.get("stopped") else "")
        else:
            extra = "interrupted in this state: run again with --resume"
        for n in h.get("notes") or []:
            extra += f"; {n}"
        out.append(f"  {h['name']:<{w}}  {st:<10} {extra}")
    summary = "  ".join(f"{s} {c[s]}" for s in ORDER if c.get(s))
    out.append(f"SUMMARY {summary}")
    undone = [h["name"] for h in hosts if h["state"] not in (S.DONE, S.SKIPPED)]
    if doc.get("stopped"):
        out.append(f"STOPPED: {doc['stopped']}")
    if undone:
        out.append(f"LEFT UNDONE: {', '.join(undone)}")
    return out


def json_report(doc: dict, elapsed: float | None = None) -> dict:
    hosts = [doc["hosts"][n] for n in doc["order"]]
    return {"rollout": doc["rollout"], "target": doc["target"], "elapsed": elapsed, "stopped": doc.get("stopped"),
            "summary": dict(Counter(h["state"] for h in hosts)),
            "left_undone": [h["name"] for h in hosts if h["state"] not in (S.DONE, S.SKIPPED)],
            "hosts": {h["name"]: {k: h.get(k) for k in ("state", "from_version", "target", "error", "skip_reason",
                                                         "stopped_containers", "checks", "notes", "admin_marker",
                                                         "phase", "batch")} for h in hosts}}
