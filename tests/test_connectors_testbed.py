"""Connectors against real sshd hosts: deadlines, concurrent stdout/stderr, put/get, one connection per host,
sudo with a password, ProxyJump through ~/.ssh/config, the reboot module, the docker connection."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.cli import main
from provision.connectors import ConnectOptions, connect
from provision.connectors.base import CommandTimeout, ConnectorError
from provision.executor import ConnectionPool
from provision.executor.runner import HostRunner
from provision.inventory import load_inventory
from provision.ops.core import OpContext
from provision.ops.plan import FilePut
from provision.testbed import HostSpec

pytestmark = pytest.mark.testbed
FIX = Path(__file__).parent / "fixtures" / "engine"


@pytest.fixture(scope="module")
def tb(module_testbed_factory):
    t = module_testbed_factory("conn", [HostSpec("c1"), HostSpec("c2")])
    t.write_inventory()
    return t


@pytest.fixture
def conn(tb):
    inv = load_inventory(str(tb.inventory_path))
    c = connect(inv.hosts["c1"], ConnectOptions())
    yield c
    c.close()


def accepted(tb, host) -> int:
    return int(tb.exec(host, "journalctl -u ssh --no-pager -q | grep -c 'Accepted publickey'")[1].strip() or 0)


def test_big_stdout_and_stderr_together_and_deadline(conn):
    res = conn.run("(yes out | head -c 3000000) & (yes err | head -c 3000000 >&2); wait; exit 3")
    assert res.rc == 3 and len(res.stdout) == 3000000 and len(res.stderr) == 3000000
    with pytest.raises(CommandTimeout):
        conn.run("sleep 60", timeout=1.5)
    assert conn.run("echo still-usable").stdout == "still-usable\n"   # the connection survives a timeout


def test_the_ssh_socket_sends_small_packets_at_once(conn):
    """Nagle's algorithm off (TCP_NODELAY): with it on, each channel open waited ~40 ms for a delayed ACK."""
    import socket
    sock = conn._client.get_transport().sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert [conn.run(f"echo {i}").stdout for i in range(3)] == ["0\n", "1\n", "2\n"]


def test_waiting_for_the_exit_status_after_eof_does_not_spin(conn):
    """The command closes its output, then runs on for a second: paramiko keeps the channel readable from EOF on,
    and a wait on it would burn a core until the exit status arrives."""
    import time
    cpu = time.thread_time()
    res = conn.run("exec >&- 2>&-; sleep 1; exit 4")
    assert res.rc == 4 and res.stdout == ""
    assert time.thread_time() - cpu < 0.25   # the spinning loop took ~1 s of CPU


def test_commands_run_when_the_controller_holds_more_than_1024_file_descriptors(conn):
    """Hundreds of hosts means descriptors above 1024, where select() fails ("filedescriptor out of range")."""
    import os
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) > 1024
        res = conn.run("echo many-fds")     # the channel's own descriptor is now above 1024 too
        assert res.rc == 0 and res.stdout == "many-fds\n"
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_file_put_over_ssh_binary_mode_owner_and_get(tb):
    """FilePut (the one way to write a file on a host) through the runner over real SSH, read back with get."""
    inv = load_inventory(str(tb.inventory_path))
    pool = ConnectionPool(1, ConnectOptions())
    runner = HostRunner(inv.hosts["c1"], pool)
    ctx = OpContext(host="c1", runner=runner)
    try:
        data = bytes(range(256)) * 64
        assert runner.do(ctx, FilePut("/tmp/blob.bin", data, mode=0o600, owner="nobody")).rc == 0
        conn = runner.connection()
        assert conn.get("/tmp/blob.bin") == data
        assert conn.run("stat -c '%a %U' /tmp/blob.bin").stdout.strip() == "600 nobody"
        with pytest.raises(ConnectorError):
            conn.get("/nonexistent/file")
    finally:
        runner.release()
        pool.close_all()


def test_one_connection_per_host_for_a_whole_run(tb, capsys):
    before = {h: accepted(tb, h) for h in ("c1", "c2")}
    rc = main(["apply", str(tb.inventory_path), "-p", str(FIX / "site.yaml"), "--json"])
    capsys.readouterr()
    assert rc == 0
    after = {h: accepted(tb, h) for h in ("c1", "c2")}
    assert {h: after[h] - before[h] for h in after} == {"c1": 1, "c2": 1}


def make_sudo_user(tb):
    tb.exec("c2", "id dev >/dev/null 2>&1 || useradd -m -s /bin/bash dev; echo 'dev:Pa55-word-xyz' | chpasswd; "
                  "echo 'dev ALL=(ALL) ALL' > /etc/sudoers.d/dev; mkdir -p /home/dev/.ssh; "
                  "cp /root/.ssh/authorized_keys /home/dev/.ssh/; chown -R dev: /home/dev/.ssh")


def test_become_with_password_via_sudo(tb, tmp_path, monkeypatch, capsys):
    make_sudo_user(tb)
    inv = load_inventory(str(tb.inventory_path))
    host = inv.hosts["c2"]

    class AsDev:   # the testbed host, reached as an unprivileged user
        name = "c2"
        vars = {**host.vars, "ansible_user": "dev"}
        connection = "ssh"
        address = host.address
        key_file = host.key_file
        known_hosts_file = host.known_hosts_file

    c = connect(AsDev(), ConnectOptions(become_password="Pa55-word-xyz"))
    try:
        assert c.run("id -u").stdout.strip() != "0"
        res = c.run("id -u; cat", become=True, stdin=b"payload-after-password\n")
        assert res.rc == 0 and res.stdout == "0\npayload-after-password\n"   # password never reaches the command
        assert "Pa55" not in res.stderr
    finally:
        c.close()
    c = connect(AsDev(), ConnectOptions())
    try:
        with pytest.raises(ConnectorError, match="PROVISION_BECOME_PASS"):
            c.run("true", become=True)
    finally:
        c.close()


def test_proxyjump_from_ssh_config(tb, tmp_path, capsys):
    c1, c2 = tb.hosts["c1"], tb.hosts["c2"]
    pub = (tb.workdir / "hosts" / "c2" / "ssh_host_ed25519_key.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(tb.known_hosts_path.read_text() + f"c2 {pub[0]} {pub[1]}\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host behind-c1\n  HostName c2\n  Port 22\n  User root\n  IdentityFile {tb.key_path}\n"
                   f"  ProxyJump root@127.0.0.1:{c1.port}\n")
    inv = tmp_path / "inv.yaml"
    inv.write_text(f"all:\n  hosts:\n    inner:\n      ansible_host: behind-c1\n"
                   f"      ansible_ssh_known_hosts_file: {known}\n")
    rc = main(["run", str(inv), "all", "-m", "command", "-a", "hostname", "-F", str(cfg), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["inner"]["stdout"] == "c2"
    assert c2.port != 22   # it really went through c1 (c2's published port was not used)


def test_reboot_module_survives_restart(tb, capsys):
    before = tb.boot_id("c1")
    rc = main(["apply", str(tb.inventory_path), "-p", str(FIX / "reboot.yaml"), "--limit", "c1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    after = tb.boot_id("c1")
    assert after != before
    tasks = {t["task"]["name"]: t["hosts"]["c1"] for t in report["plays"][0]["tasks"]}
    assert tasks["reboot the host"]["status"] == "changed"
    assert tasks["still works afterwards"]["status"] == "ok"


def test_docker_connection(tb, tmp_path, capsys):
    inv = tmp_path / "inv.yaml"
    inv.write_text(f"all:\n  hosts:\n    viadocker:\n      ansible_connection: docker\n"
                   f"      ansible_host: {tb.container('c2')}\n")
    rc = main(["run", str(inv), "all", "-m", "shell", "-a", "hostname; echo e >&2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["viadocker"]["stdout"] == "c2" and out["viadocker"]["stderr"] == "e"


def test_cli_become_password_from_environment_never_shown(tb, tmp_path, monkeypatch, capsys):
    import yaml
    make_sudo_user(tb)
    inv = yaml.safe_load(Path(tb.inventory_path).read_text())
    for group in inv["all"]["children"].values():
        for hv in group["hosts"].values():
            if hv:
                hv["ansible_user"] = "dev"
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(inv))
    monkeypatch.setenv("PROVISION_BECOME_PASS", "Pa55-word-xyz")
    capsys.readouterr()
    rc = main(["run", str(path), "c2", "-m", "shell", "-a", "id -u; whoami", "-b", "-vvv"])
    out = capsys.readouterr()
    assert rc == 0 and "0\nroot" in out.out
    assert "Pa55-word-xyz" not in out.out + out.err
    monkeypatch.delenv("PROVISION_BECOME_PASS")
    rc = main(["run", str(path), "c2", "-m", "shell", "-a", "id -u", "-b"])
    out = capsys.readouterr()
    assert rc == 2 and "PROVISION_BECOME_PASS" in out.out


APP_RULE = "/etc/sudoers.d/dev-appuser"


def test_become_password_goes_only_to_sudos_prompt_never_to_a_nopasswd_command(tb):
    """F4 (issue 15) with the real sudo: 'dev' needs its password to become root, but a NOPASSWD rule lets it become
    'appuser'. Before, the password mode was decided once per connection and every become command got the password
    line before its stdin: as appuser (no prompt) it landed in the command's stdin, and a copy wrote it into the
    file. Now it goes only in answer to sudo's own prompt; no file and no stdin ever holds it."""
    make_sudo_user(tb)
    tb.exec("c2", f"id appuser >/dev/null 2>&1 || useradd -m appuser; echo 'dev ALL=(appuser) NOPASSWD: ALL' "
                  f"> {APP_RULE}; chmod 0440 {APP_RULE}; rm -rf /tmp/f4; mkdir -m 0777 /tmp/f4")
    inv = load_inventory(str(tb.inventory_path))
    host = inv.hosts["c2"]
    dev = type("AsDev", (), {"name": "c2", "vars": {**host.vars, "ansible_user": "dev"}, "connection": "ssh",
                             "address": host.address, "key_file": host.key_file,
                             "known_hosts_file": host.known_hosts_file})()
    pool = ConnectionPool(1, ConnectOptions(become_password="Pa55-word-xyz"))
    runner = HostRunner(dev, pool)
    try:
        conn = runner.connection()
        assert conn.run("id -u", become=True).stdout.strip() == "0"           # root: sudo asked, password sent
        as_app = OpContext(host="c2", runner=runner, become=True, become_user="appuser")
        assert runner.do(as_app, FilePut("/tmp/f4/copied", b"file content\n", mode=0o644)).rc == 0
        res = conn.run("cat; id -un", stdin=b"stdin only\n", become=True, become_user="appuser")
        assert (res.rc, res.stdout) == (0, "stdin only\nappuser\n"), res
        seen = conn.run("cat > /tmp/f4/stdin-seen", become=True, become_user="appuser")
        assert seen.rc == 0
        res = conn.run("env", become=True, become_user="appuser", env={"F4_VAR": "env value"})
        assert "F4_VAR=env value" in res.stdout
        assert conn.run("id -u; cat", stdin=b"after the password\n", become=True).stdout == "0\nafter the password\n"
    finally:
        runner.release()
        pool.close_all()
    assert tb.exec("c2", "cat /tmp/f4/copied")[1] == "file content\n"
    assert tb.exec("c2", "stat -c %U /tmp/f4/copied")[1].strip() == "appuser"
    assert tb.exec("c2", "cat /tmp/f4/stdin-seen")[1] == ""
    leaked = tb.exec("c2", "grep -rlF Pa55-word-xyz /tmp /var/tmp /home /root 2>/dev/null || true")[1]
    assert leaked.strip() == "", leaked
    c = connect(dev, ConnectOptions(become_password="not-the-password"))
    try:
        with pytest.raises(ConnectorError, match="refused the become password"):
            c.run("true", become=True)
        assert c.run("id -un", become=True, become_user="appuser").stdout == "appuser\n"   # no prompt: no password
    finally:
        c.close()
        tb.exec("c2", f"rm -f {APP_RULE}")
