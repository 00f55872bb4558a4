"""Run a local process with a wall-clock deadline (the whole process group is killed when it runs over), and the
chunked stdin every connector feeds: bytes, a readable binary file object or an iterable of byte chunks, sent in
pieces of at most :data:`STDIN_CHUNK` by a feeder thread, so that a multi-gigabyte stream is never held whole."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import IO, Iterable, Iterator, Union

from provision.connectors.base import CommandResult, CommandTimeout

STDIN_CHUNK = 1 << 20
Stdin = Union[bytes, IO[bytes], Iterable[bytes], None]


def stdin_chunks(stdin: Stdin) -> Iterator[bytes]:
    """The command's stdin in chunks of at most STDIN_CHUNK bytes; a file object is read as it goes."""
    if stdin is None:
        return
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        view = memoryview(stdin)
        for i in range(0, len(view), STDIN_CHUNK):
            yield bytes(view[i:i + STDIN_CHUNK])
        return
    if hasattr(stdin, "read"):
        yield from iter(lambda: stdin.read(STDIN_CHUNK), b"")
        return
    for chunk in stdin:
        yield from stdin_chunks(chunk)


def _feed_pipe(fd: int, stdin: Stdin, proc: subprocess.Popen, failed: list) -> None:
    """Write the chunks to the child's stdin pipe, then close it. A source that fails part-way kills the process
    group: the command must never take a truncated stream for a whole one."""
    pipe = os.fdopen(fd, "wb", buffering=0)
    try:
        for chunk in stdin_chunks(stdin):
            pipe.write(chunk)
    except BrokenPipeError:
        pass                         # the command stopped reading: its rc says why
    except Exception as err:  # noqa: BLE001 - reported by run_process
        failed.append(err)
        try:                         # killed before the pipe closes: the command never sees a clean EOF
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def run_process(argv: list[str], *, stdin: Stdin, timeout: float | None, host: str,
                env: dict | None = None) -> tuple[int, bytes, bytes, float]:
    start = time.monotonic()
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(argv, stdin=read_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=env)
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    failed: list = []
    feeder = threading.Thread(target=_feed_pipe, args=(write_fd, stdin, proc, failed), daemon=True)
    feeder.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise CommandTimeout(f"{host}: command ran past its {timeout:g}s deadline and was killed")
    finally:
        feeder.join(timeout=5)
    if failed:
        return 1, out, err + f"\nstdin failed part-way: {failed[0]}".encode(), time.monotonic() - start
    return proc.returncode, out, err, time.monotonic() - start


def result(rc: int, out: bytes, err: bytes, duration: float) -> CommandResult:
    return CommandResult(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), duration)
