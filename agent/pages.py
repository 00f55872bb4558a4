"""gpu-agent's pages: ``/metrics`` (one collection and one rendered body shared by concurrent scrapes),
``/healthz`` and a landing page, behind basic auth when the web config has users. Served by
:class:`agent.httpd.BoundedHTTPServer`.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import Any, Callable

from agent import __version__
from agent.httpd import LATER, Request, Response
from agent.webconfig import AuthBusy, BasicAuth

log = logging.getLogger("gpu-agent")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what agent.collectors.render_metrics writes
LANDING = """<!doctype html><html><head><title>gpu-agent</title></head><body>
<h1>gpu-agent {version}</h1><p>GPU, container and host metrics for Prometheus.</p>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li></ul></body></html>
"""


class ScrapeFailed(Exception):
    pass


class SharedScrape:
    """Scrapes share work: a scrape that arrives while a collection runs waits for it and gets its body
    (single flight), and a body is reused by any scrape whose request arrived before the body was made or less
    than one collection's time after (the request's arrival, not when a worker got to it: 50 scrapes at once
    queue behind each other's answers). 50 scrapers started together thus cost about one collection, not 50; no
    body is older than one collection's time (~1.5 ms on an H200) when its request arrived, next to a scrape
    interval of 15 s or more.

    ``refresh`` > 0 (opt-in, ``metrics_refresh_seconds``): a background thread makes a body every ``refresh``
    seconds and every scrape gets the latest one, as dcgm-exporter serves its last collection: no scrape waits for
    NVML or rendering, and a body is up to ``refresh`` seconds (plus one collection) older than the scrape. A
    scrape finding no body (before the first, or after a failed one) collects as without refresh."""

    def __init__(self, render: Callable[[], bytes], clock: Callable[[], float] = time.monotonic,
                 refresh: float = 0.0):
        self._render, self._clock, self.refresh = render, clock, refresh
        self._cond = threading.Condition()
        self._running = False
        self._generation = 0
        self._result: tuple[bytes | None, float, float] = (None, 0.0, 0.0)   # body, started, finished
        self._waiters: list[Callable[[], None]] = []    # peek's wake-ups for the collection running now
        self._stop = threading.Event()
        self.collections = 0
        if refresh > 0:
            threading.Thread(target=self._refresh_loop, name="metrics-refresh", daemon=True).start()

    def _ready(self, arrived: float) -> bytes | None:  # under self._cond
        body, started, finished = self._result   # made from `started` to `finished`
        if body is not None and (self.refresh > 0 or arrived - finished < finished - started):
            return body
        return None

    def peek(self, arrived: float, wake: Callable[[], None]) -> Any:
        """Without collecting: the body :meth:`get` would give at once, :data:`agent.httpd.LATER` when a running
        collection will give it (``wake()`` is called when it ends), or None (get() has to collect)."""
        with self._cond:
            body = self._ready(arrived)
            if body is not None:
                return body
            if self._running:
                if wake not in self._waiters:
                    self._waiters.append(wake)
                return LATER
            return None

    def get(self, arrived: float) -> bytes:
        """The body for a scrape whose request was complete at ``arrived`` (the clock's time)."""
        with self._cond:
            body = self._ready(arrived)
            if body is not None:
                return body
            if self._running:
                gen = self._generation
                while self._generation == gen:
                    self._cond.wait()
                if self._result[0] is None:
                    raise ScrapeFailed
                return self._result[0]
            self._running = True
        return self._collect()

    def _collect(self) -> bytes:
        """Make a body (the caller set self._running)."""
        started = self._clock()
        body = None
        try:
            body = self._render()
        except Exception:
            log.exception("scrape failed")
        finally:
            with self._cond:
                self._running = False
                self._generation += 1
                self.collections += 1
                self._result = (body, started, self._clock()) if body is not None else (None, 0.0, 0.0)
                self._cond.notify_all()
                waiters, self._waiters = self._waiters, []
            for wake in waiters:
                wake()
        if body is None:
            raise ScrapeFailed
        return body

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                go = not self._running      # a scrape collecting now makes this round's body
                self._running = self._running or go
            if go:
                try:
                    self._collect()
                except ScrapeFailed:
                    pass
            self._stop.wait(self.refresh)

    def close(self) -> None:
        self._stop.set()


def release_free_heap() -> bool:
    """Hand the free pages inside glibc's heaps back to the kernel (``malloc_trim(0)``); False where the C library
    has no malloc_trim (musl). Start-up (imports, NVML's initialisation, the first collection) frees ~10 MiB that
    glibc then keeps in its main heap in about half the starts: measured on the H200 (Python 3.12.3, glibc 2.39),
    RSS was 62.8-63.0 MiB in 4 of 4 starts without a trim and 52.5-52.7 MiB in 4 of 4 with one (bench/agent/
    results/README.md, run 5). A trim after the first scrape makes the RSS the same from one start to the next."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


class AgentPages:
    """``app(request) -> Response`` for the HTTP server."""

    def __init__(self, registry: Any, auth: BasicAuth, refresh: float = 0.0):
        from agent.collectors import render_metrics
        self.auth = auth
        self.scrape = SharedScrape(lambda: render_metrics(registry), refresh=refresh)
        self._heap_release = threading.Lock()  # taken by the first scrape, never given back: the trim runs once
        self._shared: Response | None = None   # the /metrics answer of the last body, encoded once by the server

    def _scrape_served(self) -> None:
        """After each /metrics answer: the first one releases start-up's freed memory (release_free_heap), after
        the answer went out, so no scrape waits for it."""
        if self._heap_release.acquire(blocking=False):
            release_free_heap()

    def _metrics_response(self, body: bytes) -> Response:
        resp = self._shared
        if resp is None or resp.body is not body:
            resp = self._shared = Response(200, body, CONTENT_TYPE)
        return resp

    def ready(self, req: Request, wake: Callable[[], None]) -> Any:
        """For the server's loop thread (agent.httpd): the /metrics answer when a shared body serves this request
        now, LATER when the collection running now will make it, else None (a worker answers: other pages, basic
        auth, which may need a bcrypt, and the first scrape, which releases start-up's memory)."""
        if req.path != "/metrics" or self.auth.users or not self._heap_release.locked():
            return None
        body = self.scrape.peek(req.arrived, wake)
        return body if body is None or body is LATER else self._metrics_response(body)

    def __call__(self, req: Request) -> Response:
        try:
            allowed = self.auth.check(req.headers.get("authorization"))
        except AuthBusy:
            return Response(503, b"busy checking passwords\n", headers={"Retry-After": "1"})
        if not allowed:
            return Response(401, b"Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="gpu-agent"'})
        if req.path == "/metrics":
            try:
                body = self.scrape.get(req.arrived)
            except ScrapeFailed:
                return Response(500, b"collection failed\n")
            if self._heap_release.locked():
                return self._metrics_response(body)
            return Response(200, body, CONTENT_TYPE, after=self._scrape_served)
        if req.path == "/healthz":
            return Response(200, b"ok\n")
        if req.path == "/":
            return Response(200, LANDING.format(version=__version__).encode(), "text/html; charset=utf-8")
        return Response(404, b"not found\n")
