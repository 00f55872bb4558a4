"""Resets and broken pipes on the provisioner's own server (the image server hosts pull from): one line each,
rate-limited, never a traceback (issue 15, F13 on the provisioner's side)."""
from __future__ import annotations

import socket
import struct
import time

from provision.gpu.image_server import ImageServer
from provision.ratelog import FaultLog


def _reset(port: int, send: bytes) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if send:
        s.sendall(send)
        time.sleep(0.01)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST on close
    s.close()


def test_fifty_resets_and_junk_handshakes_are_a_few_lines_without_traceback(capsys):
    server = ImageServer("127.0.0.1")
    try:
        capsys.readouterr()
        for i in range(50):
            # a TLS hello cut short, junk that is not TLS, or nothing at all
            hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
            _reset(server.port, (hello, b"GET / HTTP/1.1\r\n\r\n", b"")[i % 3])
        time.sleep(1.0)
        err = capsys.readouterr().err
    finally:
        server.close()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and 1 <= len(lines) <= 5, err
    assert all(ln.startswith("[WARNING]: image server: connection from 127.0.0.1: ") for ln in lines), lines


def test_the_fault_log_counts_what_it_held_back():
    said, now = [], [0.0]
    log = FaultLog("x", burst=2, interval=60, write=said.append, clock=lambda: now[0])
    for _ in range(5):
        log.fault(("10.0.0.1", 1), ConnectionResetError())
    now[0] = 61.0
    log.fault(("10.0.0.1", 1), BrokenPipeError())
    assert said == ["[WARNING]: x: connection from 10.0.0.1: reset by the peer"] * 2 + [
        "[WARNING]: x: connection from 10.0.0.1: closed by the peer mid-answer (3 more not shown)"]
