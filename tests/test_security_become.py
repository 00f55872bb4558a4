"""F4 (issue 15): the become password is sent only in answer to sudo's own prompt, a prompt unique to each command,
never to a command that did not ask. The conversation itself (pure), then the local connector against a stand-in
sudo that asks or does not ask (tests/test_connectors_testbed.py has the real sudo, over SSH, with NOPASSWD)."""
from __future__ import annotations

import os
import stat

import pytest

from provision.connectors._become import NEEDS_PASSWORD, Sudo, with_env
from provision.hostio import ConnectorError

PW = "Pa55-become-7731"


def test_the_password_answers_the_prompt_and_stdin_waits_for_the_marker():
    s = Sudo("h", "root", PW)
    assert s.step(b"", b"some lecture\n" + s.prompt[:7]) == (None, b"", b"")      # a prompt cut in two
    assert s.step(b"", s.prompt[7:]) == (PW.encode() + b"\n", b"", b"")
    assert not s.started
    assert s.step(s.marker + b"\nout", b"err") == (None, b"out", b"some lecture\nerr") and s.started
    assert s.step(b"more", b"") == (None, b"more", b"")


def test_without_a_prompt_the_password_is_never_sent():
    s = Sudo("h", "root", PW)
    send, out, err = s.step(s.marker + b"\nhello\n", b"")
    assert (send, out, err) == (None, b"hello\n", b"") and s.started and s.asked == 0


def test_a_second_prompt_is_a_refused_password_and_no_password_is_one_line():
    s = Sudo("h", "dev", PW)
    s.step(b"", s.prompt)
    with pytest.raises(ConnectorError, match="refused the become password"):
        s.step(b"", b"Sorry, try again.\n" + s.prompt)
    nopw = Sudo("h", "root", None)
    with pytest.raises(ConnectorError, match="PROVISION_BECOME_PASS") as err:
        nopw.step(b"", nopw.prompt)
    assert NEEDS_PASSWORD in str(err.value)


def test_each_command_has_its_own_prompt_and_marker():
    a, b = Sudo("h", "root", PW), Sudo("h", "root", PW)
    assert a.prompt != b.prompt and a.marker != b.marker
    assert a.prompt.decode() in a.wrap("id") and PW not in a.wrap("id")


def test_with_env_puts_values_in_stdin_not_the_command():
    cmd, stdin = with_env("env", b"data", {"HF_TOKEN": "hf_secret_value"})
    assert "hf_secret_value" not in cmd and stdin[0].startswith(b"HF_TOKEN=") and stdin[1] == b"data"
    assert with_env("env", None, None) == ("env", None)


# ---- the local connector against a stand-in sudo ------------------------------------------------------------------
FAKE_SUDO = r"""#!/bin/sh
# stand-in sudo: -S -p PROMPT -H -u USER -- /bin/sh -c CMD. The rule file says 'password' (prompt on stderr, read
# one line as the password; wrong: 'Sorry, try again.', twice more) or 'nopasswd-for-nobody' (a NOPASSWD rule for
# -u nobody only: root still needs the password, so 'sudo -n true' fails).
U=root; N=0; P="Password: "
while [ $# -gt 0 ]; do
  case "$1" in -p) P="$2"; shift 2;; -u) U="$2"; shift 2;; -n) N=1; shift;; --) shift; break;; -*) shift;; *) break;;
  esac
done
if [ "$(cat "$SUDO_DIR/rule")" = password ] || [ "$U" != nobody ]; then
  [ $N = 1 ] && { echo "sudo: a password is required" >&2; exit 1; }
  n=0
  while :; do
    printf '%s' "$P" >&2; IFS= read -r pw || exit 1
    [ "$pw" = "$(cat "$SUDO_DIR/password")" ] && break
    n=$((n+1)); echo "Sorry, try again." >&2; [ $n -ge 3 ] && exit 1
  done
fi
exec "$@"
"""


@pytest.fixture
def fake_sudo(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "sudo").write_text(FAKE_SUDO)
    (d / "sudo").chmod(stat.S_IRWXU)
    (tmp_path / "password").write_text(PW)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    monkeypatch.setenv("SUDO_DIR", str(tmp_path))

    def rule(asks: bool):
        (tmp_path / "rule").write_text("password" if asks else "nopasswd-for-nobody")
    return rule


@pytest.mark.parametrize("asks", [True, False])
def test_local_become_sends_the_password_only_when_sudo_asks(fake_sudo, tmp_path, asks):
    from provision.connectors.local import LocalConnector
    fake_sudo(asks)
    c = LocalConnector(become_password=PW)
    res = c.run("cat > " + str(tmp_path / "written"), stdin=b"file content\n", become=True, become_user="nobody")
    assert res.rc == 0, res
    assert (tmp_path / "written").read_bytes() == b"file content\n"      # no password line in the file
    res = c.run("echo \"[$TOKEN]\"; cat", stdin=b"in\n", become=True, become_user="nobody", env={"TOKEN": "t"})
    assert res.rc == 0 and res.stdout == "[t]\nin\n" and PW not in res.stdout + res.stderr, res


def test_local_become_with_a_wrong_or_missing_password(fake_sudo):
    from provision.connectors.local import LocalConnector
    fake_sudo(True)
    with pytest.raises(ConnectorError, match="refused the become password"):
        LocalConnector(become_password="wrong").run("true", become=True, become_user="nobody")
    with pytest.raises(ConnectorError, match="PROVISION_BECOME_PASS"):
        LocalConnector().run("true", become=True, become_user="nobody")
