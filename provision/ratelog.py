"""One line per client fault, rate-limited: what a server of the provisioner (the image server, gpu/image_server.py)
says when a peer resets, hangs up mid-answer, sends something that is not TLS or stops answering. A hostile or
broken client must not fill the controller's terminal with tracebacks (50 resets were 1,368 lines): each fault is
one line, at most ``burst`` lines per ``interval`` seconds, and what was held back is counted in the next line."""
from __future__ import annotations

import ssl
import sys
import threading
import time
from typing import Callable

# what a peer can do to a connection: expected on a network, never worth a traceback
PEER_FAULTS = (ConnectionError, TimeoutError, ssl.SSLError, EOFError)


def fault_kind(err: BaseException) -> str:
    if isinstance(err, ConnectionResetError):
        return "reset by the peer"
    if isinstance(err, BrokenPipeError):
        return "closed by the peer mid-answer"
    if isinstance(err, ssl.SSLError):
        return f"TLS: {getattr(err, 'reason', None) or err}"
    if isinstance(err, TimeoutError):
        return "timed out"
    return f"{type(err).__name__}: {err}"


class FaultLog:
    def __init__(self, name: str, *, burst: int = 5, interval: float = 60.0,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.name, self.burst, self.interval, self.clock = name, burst, interval, clock
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._window = -interval
        self._said = 0
        self._held = 0

    def fault(self, peer, err: BaseException) -> None:
        """One client's fault: a line now, or counted for the next line this window allows."""
        who = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        with self._lock:
            now = self.clock()
            if now - self._window >= self.interval:
                self._window, self._said = now, 0
            if self._said >= self.burst:
                self._held += 1
                return
            self._said += 1
            held, self._held = self._held, 0
        more = f" ({held} more not shown)" if held else ""
        self.write(f"[WARNING]: {self.name}: connection from {who}: {fault_kind(err)}{more}")
