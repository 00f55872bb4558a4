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
from agent.httpd import Request, Response
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
    body is older than one collection's time (~1 ms on an H200) when its request arrived, next to a scrape
    interval of 15 s or more."""

    def __init__(self, render: Callable[[], bytes], clock: Callable[[], float] = time.monotonic):
        self._render, self._clock = render, clock
        self._cond = threading.Condition()
        self._running = False
        self._generation = 0
        self._result: tuple[bytes | None, float, float] = (None, 0.0, 0.0)   # body, started, finished
        self.collections = 0

    def get(self, arrived: float) -> bytes:
        """The body for a scrape whose request was complete at ``arrived`` (the clock's time)."""
        with self._cond:
            body, started, finished = self._result   # made from `started` to `finished`
            if body is not None and arrived - finished < finished - started:
                return body
            if self._running:
                gen = self._generation
                while self._generation == gen:
                    self._cond.wait()
                if self._result[0] is None:
                    raise ScrapeFailed
                return self._result[0]
            self._running = True
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
        if body is None:
            raise ScrapeFailed
        return body


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

    def __init__(self, registry: Any, auth: BasicAuth):
        from agent.collectors import render_metrics
        self.auth = auth
        self.scrape = SharedScrape(lambda: render_metrics(registry))
        self._heap_release = threading.Lock()  # taken by the first scrape, never given back: the trim runs once

    def _scrape_served(self) -> None:
        """After each /metrics answer: the first one releases start-up's freed memory (release_free_heap), after
        the answer went out, so no scrape waits for it."""
        if self._heap_release.acquire(blocking=False):
            release_free_heap()

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
            return Response(200, body, CONTENT_TYPE, after=self._scrape_served)
        if req.path == "/healthz":
            return Response(200, b"ok\n")
        if req.path == "/":
            return Response(200, LANDING.format(version=__version__).encode(), "text/html; charset=utf-8")
        return Response(404, b"not found\n")
