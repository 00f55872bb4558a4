"""Streamed stdin in the connectors: bytes, a file object or an iterable of chunks, fed in pieces of at most
1 MiB, never read whole; a source that fails part-way fails the command (never a truncated stream taken whole)."""
from __future__ import annotations

import hashlib
import io

from provision.connectors._proc import STDIN_CHUNK, stdin_chunks
from provision.connectors.local import LocalConnector


class CountingReader(io.RawIOBase):
    """A file that records the largest read asked of it and can fail after ``fail_after`` reads."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self.buf, self.largest, self.reads, self.fail_after = io.BytesIO(data), 0, 0, fail_after

    def read(self, n=-1):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise OSError("disk went away")
        self.largest = max(self.largest, n)
        return self.buf.read(n)


def test_chunks_of_bytes_files_and_iterables_are_bounded():
    data = bytes(range(256)) * (3 * STDIN_CHUNK // 256 + 7)
    for source in (data, io.BytesIO(data), [data[:5], data[5:]]):
        chunks = list(stdin_chunks(source))
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) <= STDIN_CHUNK
    assert list(stdin_chunks(None)) == []


def test_local_command_reads_a_file_object_in_chunks():
    data = bytes(range(256)) * (5 * STDIN_CHUNK // 256)
    reader = CountingReader(data)
    res = LocalConnector().run("sha256sum", stdin=reader)
    assert res.rc == 0 and res.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert 0 < reader.largest <= STDIN_CHUNK and reader.reads > 5


def test_a_source_failing_part_way_fails_the_command():
    reader = CountingReader(b"x" * (4 * STDIN_CHUNK), fail_after=2)
    res = LocalConnector().run("cat >/dev/null; echo whole", stdin=reader)
    assert res.rc != 0 and "whole" not in res.stdout and "disk went away" in res.stderr


def test_a_command_that_stops_reading_keeps_its_own_result():
    res = LocalConnector().run("head -c 10 >/dev/null; echo done", stdin=io.BytesIO(b"y" * (3 * STDIN_CHUNK)))
    assert (res.rc, res.stdout) == (0, "done\n")
