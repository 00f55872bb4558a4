"""gpu-agent's HTTP server under a hostile network (issue 15, F1 and the resets of F13) and scrapes that share
one collection (issue 16, item 4). Real sockets on loopback, real TLS with certificates made here; the agent runs
as its own process where its threads are counted."""
from __future__ import annotations

import errno
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import requests

import test_agent_server
from test_agent_server import NONE
from test_agent_support import FIXTURE, ROOT, RunningAgent, free_port, replay

UNIT = os.path.join(ROOT, "agent", "packaging", "gpu-agent.service")
pki = test_agent_server.pki   # the fixture: a CA, a server and a client certificate


def _tasks_max() -> int:
    with open(UNIT) as f:
        return int(re.search(r"^TasksMax=(\d+)$", f.read(), re.M).group(1))


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^Threads:\s+(\d+)$", f.read(), re.M).group(1))


class AgentProcess:
    """python -m agent.server replaying the H100 recording, as its own process (its threads are its own)."""

    def __init__(self, tmp_path, web_text: str = "", config_text: str = ""):
        self.port = free_port()
        args = [sys.executable, "-m", "agent.server", "--web.listen-address", f"127.0.0.1:{self.port}",
                "--no-collector.docker", "--replay", FIXTURE]
        if web_text:
            (tmp_path / "web.yml").write_text(web_text)
            args += ["--web.config.file", str(tmp_path / "web.yml")]
        cfg = "maintenance_file: /nonexistent/m\nupgrade_state_file: /nonexistent/u\n" + config_text
        (tmp_path / "agent.yml").write_text(cfg)
        args += ["--config.file", str(tmp_path / "agent.yml")]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read().decode()
                time.sleep(0.05)
        raise AssertionError("the agent did not listen")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.stderr.read().decode()


def _tls_web(pki) -> str:
    return f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {pki['key']}\n"


def _open_idle(port: int, n: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


# a TLS record header and the start of a ClientHello: a handshake that never ends (slow loris over TLS)
TLS_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_300_idle_connections_do_not_stop_a_scrape_under_the_units_tasks_max(tmp_path, pki, mode):
    """F1: a thread per connection, under the unit's TasksMax=64: ~60 idle connections made every scrape fail
    ("can't start new thread"). 300 idle connections (half silent, half slow loris) and a scrape still answers,
    with the agent's threads under the unit's TasksMax."""
    a = AgentProcess(tmp_path, _tls_web(pki) if mode == "tls" else "")
    socks = []
    try:
        loris = TLS_START if mode == "tls" else b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-a: "
        socks = _open_idle(a.port, 150) + _open_idle(a.port, 150, loris)
        time.sleep(0.5)
        assert _threads(a.proc.pid) <= _tasks_max()
        if mode == "tls":
            r = requests.get(f"https://127.0.0.1:{a.port}/metrics", verify=pki["ca"], timeout=10)
        else:
            r = requests.get(f"http://127.0.0.1:{a.port}/metrics", timeout=10)
        assert r.status_code == 200 and 'gpufleet_gpu_up{gpu="0"} 1.0' in r.text
        assert _threads(a.proc.pid) <= _tasks_max()
    finally:
        for s in socks:
            s.close()
        err = a.stop()
    assert "Traceback" not in err and "can't start new thread" not in err


def _closed_within(s: socket.socket, seconds: float, drip: bytes = b"") -> bool:
    """True if the server closes ``s`` within ``seconds`` (reading, and sending ``drip`` a byte at a time)."""
    end = time.monotonic() + seconds
    s.settimeout(0.2)
    i = 0
    while time.monotonic() < end:
        try:
            if drip:
                s.send(drip[i % len(drip):i % len(drip) + 1])
                i += 1
            if s.recv(4096) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


@pytest.mark.parametrize("mode", ["plain", "tls"])
def test_slow_loris_is_closed_at_the_header_deadline(pki, tmp_path, mode):
    """F1: request line and headers (and the TLS handshake) within header_timeout_seconds; a client sending a byte
    every 0.2 s was still connected after 44 s (TLS) or forever (plain HTTP)."""
    from test_agent_server import _web
    web = _web(tmp_path, _tls_web(pki)) if mode == "tls" else None
    a = RunningAgent(replay(), web=web, header_timeout_seconds=1.0, **NONE)
    try:
        s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        drip = TLS_START + b"\x00" * 600 if mode == "tls" else b"GET /metrics HTTP/1.1\r\n" + b"X-a: b\r\n" * 100
        assert _closed_within(s, 8, drip)
        s.close()
        s = socket.create_connection(("127.0.0.1", a.port), timeout=5)   # and one that says nothing at all
        assert _closed_within(s, 8)
        s.close()
    finally:
        a.stop()


def _get(s: socket.socket, path: str = "/healthz") -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return _get_answer(s)


def _get_answer(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    a = RunningAgent(replay(), idle_timeout_seconds=0.5, **NONE)
    try:
        s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        assert _get(s).startswith(b"HTTP/1.1 200")
        assert _get(s, "/metrics").startswith(b"HTTP/1.1 200")    # kept alive between requests
        assert _closed_within(s, 8)
        s.close()
    finally:
        a.stop()


def _open_now(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def test_connection_cap_sheds_the_oldest_idle_connection_first():
    a = RunningAgent(replay(), max_connections=8, **NONE)
    socks = []
    try:
        for _ in range(8):   # 8 keep-alive connections, idle in this order
            s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
            assert _get(s).startswith(b"HTTP/1.1 200")
            socks.append(s)
        new = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        assert _get(new, "/metrics").startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        assert [_open_now(s) for s in socks] == [False] + [True] * 7
        assert _get(socks[1]).startswith(b"HTTP/1.1 200")    # now socks[2] is the oldest idle one
        newer = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        assert _get(newer).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        assert [_open_now(s) for s in socks[1:]] == [True, False] + [True] * 5 and _open_now(new)
        socks += [new, newer]
    finally:
        for s in socks:
            s.close()
        a.stop()


class _OutOfFiles:
    """A listening socket whose accept fails with EMFILE while ``fail`` is set (as at the open-files limit)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.fail, self.calls = sock, True, 0

    def accept(self):
        self.calls += 1
        if self.fail:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_accept_backs_off_at_the_open_files_limit_instead_of_spinning():
    """F1: at the open-files limit the accept loop spun at 98% of a core; it now waits 5 ms, doubling to 1 s, and
    accepts again once it can."""
    from agent.httpd import BoundedHTTPServer, Response
    srv = BoundedHTTPServer(("127.0.0.1", 0), lambda req: Response(200, b"ok\n"))
    fake = srv.socket = _OutOfFiles(srv.socket)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        port = srv.server_address[1]
        c = socket.create_connection(("127.0.0.1", port), timeout=5)   # waits in the backlog: always readable
        time.sleep(1.0)
        assert 1 <= fake.calls <= 20, fake.calls
        fake.fail = False
        assert _get(c).startswith(b"HTTP/1.1 200")
        c.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_clients_that_reset_are_one_log_line_not_tracebacks(caplog, capfd):
    """F13: each client that reset after its request wrote a traceback (50 resets: 1,368 lines)."""
    a = RunningAgent(replay(gpus=8), **NONE)
    try:
        with caplog.at_level(logging.INFO, logger="gpu-agent"):
            for _ in range(50):
                s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                s.close()   # RST, before the answer is read
            time.sleep(0.5)
            assert requests.get(a.url + "/metrics", timeout=5).status_code == 200
    finally:
        a.stop()
    out, err = capfd.readouterr()
    records = [r for r in caplog.records if r.levelno >= logging.INFO and "went away" in r.getMessage()]
    assert len(records) <= 1 and not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in err + out and "Traceback" not in caplog.text


def test_the_default_listen_address_is_loopback():
    from agent.server import Config, _parser
    assert Config().listen_address == "127.0.0.1:10240"
    assert "127.0.0.1:10240" in _parser().format_help()


# ------------------------------------------------------------------------------------------------ shared scrapes
def test_scrapes_during_a_collection_wait_for_it_and_share_its_body():
    """Issue 16 item 4: a scrape that arrives while a collection runs gets that collection's body."""
    from agent.pages import SharedScrape
    started, release, calls = threading.Event(), threading.Event(), []

    def render():
        calls.append(1)
        started.set()
        release.wait(10)
        return f"body {len(calls)}".encode()
    shared = SharedScrape(render)
    bodies = []
    lead = threading.Thread(target=lambda: bodies.append(shared.get(time.monotonic())))
    lead.start()
    assert started.wait(5)
    rest = [threading.Thread(target=lambda: bodies.append(shared.get(time.monotonic()))) for _ in range(19)]
    for t in rest:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in [lead, *rest]:
        t.join(10)
    assert bodies == [b"body 1"] * 20 and len(calls) == 1


def test_a_shared_body_is_never_older_than_one_collection_for_a_lone_scraper():
    from agent.pages import SharedScrape
    now = [100.0]
    n = [0]

    def render():
        n[0] += 1
        now[0] += 0.002          # a collection takes 2 ms
        return str(n[0]).encode()
    shared = SharedScrape(render, clock=lambda: now[0])
    assert shared.get(now[0]) == b"1"          # made from 100.000 to 100.002
    now[0] += 0.001
    assert shared.get(now[0]) == b"1"          # made 1 ms ago, within one collection's time: reused
    assert shared.get(99.0) == b"1"            # asked before that collection started: reused
    now[0] += 0.0015
    assert shared.get(100.0035) == b"1"        # asked 1.5 ms after it was made, answered later: reused
    assert shared.get(now[0]) == b"2"          # 2.5 ms old when asked: a new collection
    assert shared.collections == 2


def test_concurrent_http_scrapes_share_collections(monkeypatch):
    """50 scrapes at once over HTTP cost far fewer than 50 collections, and all get the same, whole body."""
    a = RunningAgent(replay(gpus=8, latency=True), **NONE)
    try:
        assert requests.get(a.url + "/metrics", timeout=5).status_code == 200
        before = a.srv.app.scrape.collections
        barrier, bodies = threading.Barrier(50), []

        def scrape():
            s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
            barrier.wait()
            bodies.append(_get(s, "/metrics").partition(b"\r\n\r\n")[2])
            s.close()
        ts = [threading.Thread(target=scrape) for _ in range(50)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert len(bodies) == 50 and all(b'gpufleet_gpu_up{gpu="7"} 1.0' in b for b in bodies)
        assert a.srv.app.scrape.collections - before < 40   # without sharing: 50
    finally:
        a.stop()


# ------------------------------------------------------------------------------------------------ answers from the loop
class _ParkingApp:
    """An app whose /metrics answer is "being made" (agent.httpd.LATER) until the test makes it; /block holds the
    server's only worker."""

    def __init__(self, body: bytes = b"shared body\n"):
        from agent.httpd import LATER
        self.LATER, self.body, self.made = LATER, body, False
        self.wakes, self.calls = [], []
        self.unblock = threading.Event()

    def ready(self, req, wake):
        from agent.httpd import Response
        if req.path != "/metrics":
            return None
        if not self.made:
            self.wakes.append(wake)
            return self.LATER
        return Response(200, self.body)

    def __call__(self, req):
        from agent.httpd import Response
        self.calls.append(req.path)
        if req.path == "/block":
            self.unblock.wait(30)
        return Response(200, b"from a worker\n")


def _serve(app, **kw):
    from agent.httpd import BoundedHTTPServer
    srv = BoundedHTTPServer(("127.0.0.1", 0), app, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_scrapes_waiting_for_a_shared_body_are_answered_by_the_loop_while_every_worker_is_busy():
    """Issue 16 item 4: 20 scrapes that arrive while the body is being made hold no worker, and get the body from
    the server's loop once it is made, though the only worker is still busy."""
    app = _ParkingApp()
    srv = _serve(app, workers=1)
    port = srv.server_address[1]
    try:
        blocker = socket.create_connection(("127.0.0.1", port), timeout=10)
        blocker.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(200):
            if app.calls:
                break
            time.sleep(0.01)
        assert app.calls == ["/block"]      # the only worker is held
        scrapers = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        for s in scrapers:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(500):
            if len(app.wakes) == 20:
                break
            time.sleep(0.01)
        assert len(app.wakes) == 20
        app.made = True
        app.wakes[0]()                       # the collection ended
        answers = [_get_answer(s) for s in scrapers]
        assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") and a.endswith(b"\r\n\r\nshared body\n") for a in answers)
        assert app.calls == ["/block"] and not app.unblock.is_set()
        # keep-alive: the connection serves its next request too
        assert _get(scrapers[0], "/metrics").endswith(b"shared body\n")
        for s in scrapers + [blocker]:
            s.close()
    finally:
        app.unblock.set()
        srv.shutdown()
        srv.server_close()


def test_an_answer_larger_than_the_socket_buffer_is_finished_by_a_worker():
    """The loop sends what the socket takes without blocking; a worker sends the rest; the client gets it whole."""
    big = bytes(range(256)) * (64 * 1024)        # 16 MiB: more than a loopback socket's buffers hold
    app = _ParkingApp(big)
    app.made = True
    srv = _serve(app, workers=1)
    tails = []
    send_bytes = srv._send_bytes
    srv._send_bytes = lambda c, data: tails.append(len(data)) or send_bytes(c, data)
    try:
        s = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _get_answer(s)
        assert answer.partition(b"\r\n\r\n")[2] == big
        assert len(tails) == 1 and 0 < tails[0] < len(big)   # the loop sent a part, a worker the rest
        assert _get(s, "/healthz").endswith(b"from a worker\n")   # and the connection goes on
        s.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_background_refreshed_body_serves_every_scrape_without_collecting():
    """metrics_refresh_seconds (opt-in): scrapes get the latest background body, however late they come."""
    from agent.pages import SharedScrape
    made = threading.Event()
    n = [0]

    def render():
        n[0] += 1
        made.set()
        return f"body {n[0]}".encode()
    shared = SharedScrape(render, refresh=3600)
    try:
        assert made.wait(5)
        assert [shared.get(time.monotonic() + 60 * k) for k in range(5)] == [b"body 1"] * 5
        assert shared.peek(time.monotonic() + 600, lambda: None) == b"body 1" and shared.collections == 1
    finally:
        shared.close()
    without = SharedScrape(render)
    assert without.get(time.monotonic()) == b"body 2" and without.get(time.monotonic() + 60) == b"body 3"


def test_metrics_refresh_is_stated_in_the_body():
    a = RunningAgent(replay(gpus=1), metrics_refresh_seconds=5.0, **NONE)
    try:
        body = requests.get(a.url + "/metrics", timeout=5).text
        assert "\ngpufleet_agent_metrics_refresh_seconds 5.0\n" in body
        assert a.srv.app.scrape.refresh == 5.0
    finally:
        a.srv.app.scrape.close()
        a.stop()
    a = RunningAgent(replay(gpus=1), **NONE)
    try:
        assert "\ngpufleet_agent_metrics_refresh_seconds 0.0\n" in requests.get(a.url + "/metrics", timeout=5).text
    finally:
        a.stop()
