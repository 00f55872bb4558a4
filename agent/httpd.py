"""gpu-agent's HTTP/1.1 server: a fixed pool of worker threads behind one selector loop, with per-connection
deadlines and a cap on connections.

One thread (the caller of :meth:`BoundedHTTPServer.serve_forever`) accepts connections, does the TLS handshakes
and reads request heads, all non-blocking; a worker gets a connection only once a whole request head is in, so
clients that connect and say nothing, or send a byte a second (slow loris, plain or TLS), never hold a thread.

* request line and headers (and, on a new connection, the TLS handshake) within ``header_timeout`` seconds;
* a keep-alive connection idle for ``idle_timeout`` seconds is closed;
* at most ``max_connections`` connections (and never more than the open-files limit leaves room for): one more
  sheds the oldest idle connection first (a keep-alive one waiting for its next request, or a new one that has
  sent nothing), then the oldest still sending its head; a connection a worker holds is never shed;
* when accept fails for want of file descriptors (EMFILE/ENFILE) and nothing can be shed, the loop stops watching
  the listening socket for a while (5 ms, doubling to 1 s) instead of spinning on it;
* a client that resets or goes away mid-request is one log line, at most one a minute (with the count since).

Requests are GET/HEAD without a body (what a Prometheus scrape sends); ``app(request) -> Response`` answers them
on a worker. An app may also answer without a worker: ``app.ready(request, wake)`` is asked on the loop thread
(plain HTTP, one request in the buffer) and returns a Response it has at hand (sent from the loop when the socket
takes it all; the rest goes to a worker), :data:`LATER` (one is being made: the connection waits, holding no
thread, until ``wake()`` is called, then ``ready`` is asked again), or None (a worker calls ``app``). A shared
/metrics body thus reaches 50 scrapers at once without 50 hand-offs to workers and back.
"""
from __future__ import annotations

import errno
import logging
import queue
import resource
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("gpu-agent")

MAX_HEAD = 16 * 1024                 # request line + headers
WRITE_TIMEOUT = 10.0                 # a client that does not read its answer
RESERVED_FDS = 64                    # NVML, Docker's socket, /proc reads, log files: kept out of the connection cap
PEER_LOG_INTERVAL = 60.0
NEW, IDLE, READING, BUSY = "new", "idle", "reading", "busy"
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
PLAIN_TO_TLS = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]          # names lower-cased
    client: Any
    arrived: float                   # time.monotonic() when the head was complete


@dataclass
class Response:
    code: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None      # run by the worker once the answer is sent
    wire: dict[tuple[str, bool], bytes] = field(default_factory=dict, repr=False, compare=False)

    def encoded(self, server_name: str, method: str, keep: bool) -> bytes:
        """The whole answer (status line, headers, body), made once per (method, keep-alive) and kept: a Response
        shared by many scrapes is encoded once."""
        data = self.wire.get((method, keep))
        if data is None:
            hdr = [f"HTTP/1.1 {self.code} {REASONS.get(self.code, 'Unknown')}", f"Server: {server_name}",
                   f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}"]
            hdr += [f"{k}: {v}" for k, v in self.headers.items()]
            if not keep:
                hdr.append("Connection: close")
            data = ("\r\n".join(hdr) + "\r\n\r\n").encode("latin-1") + (self.body if method != "HEAD" else b"")
            self.wire[(method, keep)] = data
        return data


LATER = object()   # app.ready(): an answer is being made; wake() comes when it is


class _Conn:
    __slots__ = ("sock", "addr", "buf", "state", "since", "deadline", "handshaken")

    def __init__(self, sock: socket.socket, addr: Any, now: float, header_timeout: float, tls: bool):
        self.sock, self.addr, self.buf = sock, addr, b""
        self.state, self.since, self.deadline = NEW, now, now + header_timeout
        self.handshaken = not tls


class PeerErrors:
    """Clients that reset or go away: one log line per ``interval`` seconds, with how many since the last one."""

    def __init__(self, interval: float = PEER_LOG_INTERVAL):
        self.interval, self._next, self._count = interval, 0.0, 0
        self._lock = threading.Lock()

    def note(self, addr: Any, what: str, err: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self._count += 1
            if now < self._next:
                return
            n, self._count, self._next = self._count, 0, now + self.interval
        more = f" ({n - 1} more such since the last report)" if n > 1 else ""
        log.info("client %s went away %s: %s%s", addr[0] if isinstance(addr, tuple) else addr, what,
                 type(err).__name__, more)


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to what the open-files limit leaves after RESERVED_FDS (at least 8)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - RESERVED_FDS))


class BoundedHTTPServer:
    request_queue_size = 128   # listen backlog: a burst of 50 scrapers overflowed 5 (dropped SYNs, 1 s retries)

    def __init__(self, addr: tuple[str, int], app: Callable[[Request], Response], *,
                 ssl_ctx: ssl.SSLContext | None = None, workers: int = 4, max_connections: int = 256,
                 header_timeout: float = 5.0, idle_timeout: float = 90.0, server_name: str = "gpu-agent"):
        self.app, self.ssl_ctx, self.server_name = app, ssl_ctx, server_name
        self.header_timeout, self.idle_timeout = header_timeout, idle_timeout
        self.max_connections = connection_cap(max_connections)
        self.peer_errors = PeerErrors()
        self.socket = self._listen(addr)
        self.server_address = self.socket.getsockname()
        self._workers_n = workers
        self._conns: dict[int, _Conn] = {}           # fd -> connection; the loop thread's alone
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # (conn, keep) back from the workers
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._backoff = 0.0
        self._accept_paused_until = 0.0
        self._ready = getattr(app, "ready", None)
        self._parked: list[tuple[_Conn, float]] = []  # (conn, arrived) waiting for an answer being made (LATER)
        self._parked_woken = False

    def _listen(self, addr: tuple[str, int]) -> socket.socket:
        host, port = addr
        families = [socket.AF_INET6] if ":" in host else [socket.AF_INET]
        if not host:  # ":PORT": every address, IPv6 and IPv4, where the host has IPv6
            host, families = "::", ([socket.AF_INET6, socket.AF_INET] if socket.has_ipv6 else [socket.AF_INET])
        for i, fam in enumerate(families):
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6 and host == "::":
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((host if fam == socket.AF_INET6 or host != "::" else "", port))
                s.listen(self.request_queue_size)
                s.setblocking(False)
                return s
            except OSError:
                s.close()
                if i == len(families) - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------ life cycle
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        workers = [threading.Thread(target=self._work, name=f"http-{i}", daemon=True)
                   for i in range(self._workers_n)]
        for w in workers:
            w.start()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.socket, selectors.EVENT_READ, None)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            self._loop(poll_interval)
        finally:
            for _ in workers:
                self._jobs.put(None)
            for c in list(self._conns.values()):
                if c.state != BUSY:
                    self._close(c)
            for c, _ in self._parked:
                self._close(c)
            self.sel.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait for it."""
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()
        for c in list(self._conns.values()):  # keep-alive connections end with the server
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _wake(self) -> None:
        """Wake the loop; one byte for any number of workers done before it looks (a burst of 50 answers)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------ the loop
    def _loop(self, poll_interval: float) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = min(poll_interval, max(0.0, next_sweep - now))
            if self._accept_paused_until:
                timeout = min(timeout, max(0.0, self._accept_paused_until - now))
            for key, mask in self.sel.select(timeout):
                if key.fileobj is self.socket:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    self._drain_wake()
                else:
                    try:
                        self._readable(key.data)
                    except Exception:  # never lose the loop to one connection
                        log.exception("connection from %s", key.data.addr)
                        self._close(key.data)
            self._take_back()
            if self._parked_woken:
                self._unpark()
            now = time.monotonic()
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self.sel.register(self.socket, selectors.EVENT_READ, None)
            if now >= next_sweep:
                next_sweep = now + min(0.25, self.header_timeout / 4)
                for c in [c for c in self._conns.values() if c.state != BUSY and c.deadline <= now]:
                    log.debug("closing %s connection from %s: deadline passed", c.state, c.addr)
                    self._close(c)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        # after the bytes are read (a byte sent in between would be lost with the flag left set) and before
        # _take_back reads the queue: a worker done after this sends a new byte
        self._wake_pending = False

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, then back to the other sockets
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and self._shed():
                    continue
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self._pause_accept(e)
                return
            self._backoff = 0.0
            if len(self._conns) >= self.max_connections and not self._shed():
                sock.close()  # every connection is with a worker: nothing to shed
                continue
            sock.setblocking(False)
            try:  # one write per answer, but no Nagle wait behind a previous small one
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            c = _Conn(sock, addr, time.monotonic(), self.header_timeout, self.ssl_ctx is not None)
            self._conns[sock.fileno()] = c
            self.sel.register(sock, selectors.EVENT_READ, c)

    def _pause_accept(self, err: OSError) -> None:
        self._backoff = min(1.0, self._backoff * 2 or 0.005)
        if self._backoff == 0.005:  # once an episode: it ends with the next connection accepted
            log.warning("accept failed (%s): backing off (5 ms, doubling to 1 s)", err.strerror or err)
        self.sel.unregister(self.socket)
        self._accept_paused_until = time.monotonic() + self._backoff

    def _shed(self) -> bool:
        """Close the oldest idle connection (else the oldest still sending its head); False if none."""
        cands = [c for c in self._conns.values() if c.state != BUSY]
        if not cands:
            return False
        victim = min(cands, key=lambda c: (c.state not in (IDLE, NEW), c.since))
        log.debug("connection cap %d reached: closing the %s connection from %s", self.max_connections,
                  victim.state, victim.addr)
        self._close(victim)
        return True

    def _close(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        if fd >= 0:
            if self._conns.get(fd) is c:
                del self._conns[fd]
            if c.state != BUSY:
                try:
                    self.sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
        try:
            c.sock.close()
        except OSError:
            pass

    def _readable(self, c: _Conn) -> None:
        try:
            if not c.handshaken and not self._handshake(c):
                return
            while True:
                try:
                    data = c.sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    break
                if not data:
                    if c.buf.strip():
                        self.peer_errors.note(c.addr, "before the end of its request", EOFError())
                    self._close(c)
                    return
                c.buf += data
                if b"\r\n\r\n" in c.buf or len(c.buf) > MAX_HEAD:
                    break
                if not (isinstance(c.sock, ssl.SSLSocket) and c.sock.pending()):
                    break   # a plain socket: the selector says when more came; TLS: bytes held in the TLS layer
        except ssl.SSLWantReadError:  # the handshake waits for the client
            self.sel.modify(c.sock, selectors.EVENT_READ, c)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            return
        except (ssl.SSLError, OSError) as e:
            if isinstance(e, (ConnectionResetError, BrokenPipeError)) and c.buf.strip():
                self.peer_errors.note(c.addr, "while sending its request", e)
            else:
                log.debug("connection from %s: %s", c.addr, e)
            self._close(c)
            return
        self._got(c)

    def _got(self, c: _Conn) -> None:
        """After bytes came in (or a worker gave the connection back): dispatch a whole head, or wait for more."""
        now = time.monotonic()
        stripped = c.buf.lstrip(b"\r\n")
        if b"\r\n\r\n" in stripped or len(stripped) > MAX_HEAD:
            c.buf = stripped
            if c.state != BUSY:
                self.sel.unregister(c.sock)
            c.state = BUSY
            if self._ready is None or not self._answer_here(c, now):
                self._jobs.put((c, now, b"", False))
            return
        if c.state == BUSY:
            self.sel.register(c.sock, selectors.EVENT_READ, c)
            c.state, c.since, c.deadline = IDLE, now, now + self.idle_timeout
        if stripped and c.state == IDLE:  # the first bytes of the next request: its head is due soon
            c.state, c.deadline = READING, now + self.header_timeout
        elif stripped and c.state == NEW:
            c.state = READING

    def _handshake(self, c: _Conn) -> bool:
        if isinstance(c.sock, ssl.SSLSocket):
            c.sock.do_handshake()  # SSLWant* propagate to _readable
        else:
            first = c.sock.recv(1, socket.MSG_PEEK)
            if not first:
                self._close(c)
                return False
            if first != b"\x16":  # not a TLS handshake: a plain HTTP request to the TLS port
                try:
                    c.sock.recv(MAX_HEAD)   # read what came (closing on unread bytes would reset, losing the 400)
                    c.sock.send(PLAIN_TO_TLS)
                    c.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._close(c)
                return False
            self.sel.unregister(c.sock)
            c.sock = self.ssl_ctx.wrap_socket(c.sock, server_side=True, do_handshake_on_connect=False)
            self.sel.register(c.sock, selectors.EVENT_READ, c)
            c.sock.do_handshake()
        c.handshaken = True
        self.sel.modify(c.sock, selectors.EVENT_READ, c)
        return True

    def _take_back(self) -> None:
        while True:
            try:
                c, keep = self._done.get_nowait()
            except queue.Empty:
                return
            if not keep or self._stop.is_set():
                self._close(c)
            elif c.buf or (isinstance(c.sock, ssl.SSLSocket) and c.sock.pending()):
                self._readable_after_work(c)
            else:
                self._got(c)

    # ------------------------------------------------------------------------------------------ answers from the loop
    def _answer_here(self, c: _Conn, arrived: float) -> bool:
        """Answer c's request on the loop thread if the app has its answer at hand, or park c until it has (True);
        False: a worker answers it. Only a plain socket holding exactly one request."""
        head, sep, rest = c.buf.partition(b"\r\n\r\n")
        if not sep or rest or isinstance(c.sock, ssl.SSLSocket):
            return False
        req = _parse(head, c.addr, arrived)
        if not isinstance(req, Request):
            return False
        resp = self._ready(req, self._wake_parked)  # type: ignore[misc]
        if resp is None:
            return False
        if resp is LATER:
            self._parked.append((c, arrived))
            return True
        keep = _keep_alive(head, req)
        data = resp.encoded(self.server_name, req.method, keep)
        c.buf = b""
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.peer_errors.note(c.addr, "before its answer was sent", e)
            self._close(c)
            return True
        if sent < len(data):     # the socket's buffer is full: a worker sends the rest, blocking
            self._jobs.put((c, arrived, data[sent:], keep))
            return True
        if keep:
            self._got(c)         # BUSY -> IDLE: registered again for the next request
        else:
            self._close(c)
        return True

    def _wake_parked(self) -> None:
        """app.ready's wake(): an answer parked connections wait for is made (called from any thread)."""
        self._parked_woken = True
        self._wake()

    def _unpark(self) -> None:
        self._parked_woken = False
        parked, self._parked = self._parked, []
        for c, arrived in parked:
            try:
                if not self._answer_here(c, arrived):
                    self._jobs.put((c, arrived, b"", False))
            except Exception:  # never lose the loop to one connection
                log.exception("connection from %s", c.addr)
                self._close(c)

    def _readable_after_work(self, c: _Conn) -> None:
        """A pipelined request (bytes already read, or held inside the TLS layer): go on as if they had arrived."""
        self.sel.register(c.sock, selectors.EVENT_READ, c)
        now = time.monotonic()
        c.state, c.since, c.deadline = READING, now, now + self.header_timeout
        self._readable(c)

    # ------------------------------------------------------------------------------------------ workers
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            c, arrived, tail, keep_after = job
            keep = False
            try:   # a request to answer, or the rest of an answer the loop began sending
                keep = self._send_bytes(c, tail) and keep_after if tail else self._serve(c, arrived)
            except Exception:  # never lose a worker
                log.exception("request from %s failed", c.addr)
            self._done.put((c, keep))
            self._wake()

    def _serve(self, c: _Conn, arrived: float) -> bool:
        """Answer the request at the front of c.buf; True to keep the connection."""
        head, sep, rest = c.buf.partition(b"\r\n\r\n")
        c.buf = rest
        req = _parse(head, c.addr, arrived) if sep else None
        if req is None:
            self._send(c, Response(431 if not sep else 400, b"bad request\n"), "GET", False)
            return False
        if isinstance(req, Response):
            self._send(c, req, "GET", False)
            return False
        keep = _keep_alive(head, req)
        try:
            resp = self.app(req)
        except Exception:
            log.exception("answering %s %s failed", req.method, req.path)
            resp, keep = Response(500, b"internal error\n"), False
        ok = self._send(c, resp, req.method, keep)
        if ok and resp.after is not None:
            resp.after()
        return ok and keep

    def _send(self, c: _Conn, resp: Response, method: str, keep: bool) -> bool:
        return self._send_bytes(c, resp.encoded(self.server_name, method, keep))

    def _send_bytes(self, c: _Conn, data: bytes) -> bool:
        try:
            if not isinstance(c.sock, ssl.SSLSocket):  # most answers fit the socket buffer: no blocking mode needed
                try:
                    data = data[c.sock.send(data):]
                except BlockingIOError:
                    pass
            if data:
                c.sock.settimeout(WRITE_TIMEOUT)
                c.sock.sendall(data)
                c.sock.setblocking(False)
            return True
        except (ConnectionResetError, BrokenPipeError, socket.timeout, ssl.SSLError) as e:
            self.peer_errors.note(c.addr, "before its answer was sent", e)
        except OSError as e:
            log.debug("writing to %s: %s", c.addr, e)
        return False


def _keep_alive(head: bytes, req: Request) -> bool:
    version = head.split(b"\r\n", 1)[0].rsplit(b" ", 1)[-1]
    return version == b"HTTP/1.1" and req.headers.get("connection", "").lower() != "close"


def _parse(head: bytes, addr: Any, arrived: float) -> Request | Response | None:
    """A request head -> Request; a Response to send (and close) when it cannot be served; None if malformed."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return Response(505, b"HTTP/1.x only\n") if version.startswith("HTTP/") else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        return Response(405, b"GET or HEAD\n", headers={"Allow": "GET, HEAD"})
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        return Response(413, b"no request body expected\n")
    return Request(method, target.split("?", 1)[0], headers, addr, arrived)


__all__ = ["BoundedHTTPServer", "LATER", "PeerErrors", "Request", "Response", "connection_cap"]
