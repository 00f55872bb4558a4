"""Progress of a long transfer to one host (bytes, rate, ETA), as lines for the -v log, at most one every few
seconds. Pure: the clock and the line's destination are given; reporters print the line as it comes."""
from __future__ import annotations

import threading
import time
from typing import Callable

EVERY = 5.0


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def progress_line(what: str, done: int, total: int | None, elapsed: float) -> str:
    """'what: 1.2 GB of 2.1 GB (57%), 98.0 MB/s, ETA 9s' (no total: no percentage and no ETA)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{what}: {human_bytes(done)}"
    if total:
        text += f" of {human_bytes(total)} ({100 * done / total:.0f}%)"
    text += f", {human_bytes(rate)}/s"
    if total and rate > 0 and done < total:
        text += f", ETA {(total - done) / rate:.0f}s"
    return text


def note_lines(log) -> Callable[[str], None]:
    """Where a meter's lines go: an op context's log at level 'v' (shown from -v on), or nowhere."""
    return (lambda line: log("v", line)) if log else (lambda line: None)


class Meter:
    """Counts bytes as they go (from any thread) and emits a progress line at most every ``every`` seconds, and
    once more at the end (``finish``) when a line was emitted before (a short transfer stays quiet)."""

    def __init__(self, what: str, total: int | None, emit: Callable[[str], None], *, every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.emit, self.every, self.clock = what, total, emit, every, clock
        self.done = 0
        self.start = clock()
        self._last = self.start
        self._shown = False
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = self.clock()
            if now - self._last < self.every:
                return
            self._last, self._shown = now, True
            line = progress_line(self.what, self.done, self.total, now - self.start)
        self.emit(line)

    def finish(self) -> None:
        with self._lock:
            if not self._shown:
                return
            line = progress_line(self.what, self.done, self.total, self.clock() - self.start) + " (done)"
        self.emit(line)


class MeteredReader:
    """A binary file read through a :class:`Meter` (the connectors read it in chunks as they send it)."""

    def __init__(self, fh, meter: Meter):
        self.fh, self.meter = fh, meter

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.meter.add(len(data))
        return data
