"""Run a local process with a wall-clock deadline (the whole process group is killed when it runs over), and the
chunked stdin every connector feeds: bytes, a readable binary file object or an iterable of byte chunks, sent in
pieces of at most :data:`STDIN_CHUNK` by a feeder thread, so that a multi-gigabyte stream is never held whole."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from typing import IO, Iterable, Iterator, Union

from provision.connectors._become import BECOME_TIMEOUT
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


def _converse(proc: subprocess.Popen, write_fd: int, sudo, deadline: float | None) -> tuple[bool, bytes, bytes]:
    """Before anything is sent: sudo's prompt gets the password, its marker says the command runs
    (provision/connectors/_become.py). -> (started, the command's stdout and stderr read so far)."""
    until = time.monotonic() + BECOME_TIMEOUT
    out, err = [], []
    waiter = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    for fd in streams:
        waiter.register(fd, selectors.EVENT_READ)
    try:
        while not sudo.started:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise subprocess.TimeoutExpired(proc.args, deadline - now)
            if now >= until:
                raise sudo.timed_out()
            ready = waiter.select(min(0.5, until - now))
            if not ready:
                continue
            got = {fd: os.read(fd, 65536) for fd in (k.fd for k, _ in ready)}
            if not any(got.values()):         # end of output: sudo ended before starting the command
                o, e = sudo.leftover()
                out.append(o)
                err.append(e)
                return False, b"".join(out), b"".join(err)
            send, o, e = sudo.step(got.get(proc.stdout.fileno(), b""), got.get(proc.stderr.fileno(), b""))
            out.append(o)
            err.append(e)
            if send:
                os.write(write_fd, send)
        return True, b"".join(out), b"".join(err)
    finally:
        waiter.close()


def run_process(argv: list[str], *, stdin: Stdin, timeout: float | None, host: str,
                env: dict | None = None, sudo=None) -> tuple[int, bytes, bytes, float]:
    """``sudo``: a connectors._become.Sudo whose conversation comes before the stdin is fed (and which says when
    sudo itself is missing, :meth:`Sudo.ended`)."""
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
    early = (b"", b"")
    if sudo is not None:
        try:
            started, *early = _converse(proc, write_fd, sudo, start + timeout if timeout else None)
        except BaseException as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(write_fd)
            proc.communicate()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise CommandTimeout(f"{host}: command ran past its {timeout:g}s deadline and was killed") from None
            raise
        if not started:
            stdin = None                  # sudo ended without starting the command: nothing of ours goes
    failed: list = []
    feeder = threading.Thread(target=_feed_pipe, args=(write_fd, stdin, proc, failed), daemon=True)
    feeder.start()
    try:
        out, err = proc.communicate(timeout=max(0.0, start + timeout - time.monotonic()) if timeout else None)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise CommandTimeout(f"{host}: command ran past its {timeout:g}s deadline and was killed")
    finally:
        feeder.join(timeout=5)
    out, err = early[0] + out, early[1] + err
    if failed:
        return 1, out, err + f"\nstdin failed part-way: {failed[0]}".encode(), time.monotonic() - start
    if sudo is not None:
        sudo.ended(proc.returncode)
    return proc.returncode, out, err, time.monotonic() - start


def result(rc: int, out: bytes, err: bytes, duration: float) -> CommandResult:
    return CommandResult(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), duration)
