"""The local connector (ansible_connection: local) and the connect() factory."""
from __future__ import annotations

import pytest

from provision.connectors import ConnectOptions, connect
from provision.connectors.base import CommandTimeout, ConnectorError
from provision.executor import PROBE_MARK, ConnectionPool, split_probes
from provision.executor.runner import HostRunner
from provision.ops.core import OpContext
from provision.ops.plan import FilePut


class LocalHost:
    name = "me"
    vars = {"ansible_connection": "local"}
    connection = "local"


def test_local_run_env_stdin_deadline_get(tmp_path):
    c = connect(LocalHost(), ConnectOptions())
    res = c.run('printf "%s" "$GREETING"; cat; echo err >&2; exit 4', stdin=b"-in", env={"GREETING": "hi there"})
    assert (res.rc, res.stdout, res.stderr) == (4, "hi there-in", "err\n")
    with pytest.raises(CommandTimeout):
        c.run("sleep 30", timeout=0.5)
    target = tmp_path / "f.bin"
    target.write_bytes(b"\x00\x01data")
    assert c.get(str(target)) == b"\x00\x01data"


def test_file_put_is_written_by_the_runner(tmp_path):
    """FilePut, the one way to write a file on a host, carried out by the executor's runner."""
    pool = ConnectionPool(1, ConnectOptions())
    runner = HostRunner(LocalHost(), pool)
    ctx = OpContext(host="me", runner=runner)
    try:
        target = tmp_path / "f.bin"
        assert runner.do(ctx, FilePut(str(target), b"\x00\x01data", mode=0o640)).rc == 0
        assert target.read_bytes() == b"\x00\x01data" and oct(target.stat().st_mode & 0o777) == "0o640"
        assert runner.do(ctx, FilePut(str(target), b"new")).rc == 0       # keeps the existing mode
        assert target.read_bytes() == b"new" and oct(target.stat().st_mode & 0o777) == "0o640"
        assert runner.do(ctx, FilePut(str(tmp_path / "missing-dir" / "x"), b"x")).rc != 0
        made = tmp_path / "made" / "x"
        assert runner.do(ctx, FilePut(str(made), b"x", make_parent=True, fsync=True)).rc == 0
        assert made.read_bytes() == b"x"
        assert sorted(p.name for p in tmp_path.rglob(".provision.*")) == []     # no temp file left behind
    finally:
        runner.release()
        pool.close_all()


def test_unknown_connection_kind_is_refused():
    class Weird(LocalHost):
        connection = "winrm"
    with pytest.raises(ConnectorError, match="unknown ansible_connection"):
        connect(Weird(), ConnectOptions())


def test_split_batched_probe_output():
    out = (f"{PROBE_MARK}0\nfile 644\n\n{PROBE_MARK}rc 0\n{PROBE_MARK}1\nno-newline\n{PROBE_MARK}rc 3\n"
           f"{PROBE_MARK}2\n")
    assert split_probes(out, 3) == [(0, "file 644\n"), (3, "no-newline"), (None, "")]


def test_dropping_an_unreachable_host_closes_every_login_of_it():
    """The pool keeps one connection per host and login (remote_user/connection keywords, delegate_to); a host found
    unreachable or rebooted has all of them closed, not only the login of the task that noticed."""
    closed = []

    class Conn:
        def __init__(self, tag):
            self.tag = tag

        def close(self):
            closed.append(self.tag)

    class As(LocalHost):
        def __init__(self, name, user):
            self.name, self.vars = name, {"ansible_connection": "local", "ansible_user": user}

    pool = ConnectionPool(5, ConnectOptions(), factory=lambda host, opts: Conn((host.name, host.vars["ansible_user"])))
    for host in (As("me", "root"), As("me", "ops"), As("other", "root")):
        pool.acquire(host)
        pool.release(host)
    pool.drop(As("me", "root"))
    assert sorted(closed) == [("me", "ops"), ("me", "root")]
    pool.close_all()
    assert ("other", "root") in closed
