"""Run a local process with a wall-clock deadline; the whole process group is killed when it runs over."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from provision.connectors.base import CommandResult, CommandTimeout


def run_process(argv: list[str], *, stdin: bytes | None, timeout: float | None, host: str,
                env: dict | None = None) -> tuple[int, bytes, bytes, float]:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(stdin or b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise CommandTimeout(f"{host}: command ran past its {timeout:g}s deadline and was killed")
    return proc.returncode, out, err, time.monotonic() - start


def result(rc: int, out: bytes, err: bytes, duration: float) -> CommandResult:
    return CommandResult(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), duration)
