"""More modules roles use (find, hostname, timezone, dpkg_selections, raw, pause, authorized_key), as plans: recorded
probe answers in, command objects out, carried out by the real runner against a scripted host."""
from __future__ import annotations

import base64
import hashlib

import pytest
from test_ops_units import drive

from provision.ops.core import OpContext, OpError, normalize
from provision.ops.spec import registry


# ------------------------------------------------------------------------------------------- DeepOps' other modules

def test_find_matches_names_on_the_controller_and_is_read_only():
    out = ("/opt/eb/a.eb|a.eb|644|0|0|root|root|10|1700000000.5|f\n/opt/eb/.h.eb|.h.eb|644|0|0|root|root|1|1.0|f\n"
           "/opt/eb/b.txt|b.txt|600|1000|1000|u|u|5|2.0|f\n")
    r, ran = drive("find", {"paths": "/opt/eb", "patterns": "*.eb"}, {}, lambda c: (0, out, ""), check=True)
    assert not r.changed and r.extra["matched"] == 1 and r.extra["files"][0]["path"] == "/opt/eb/a.eb"
    assert r.extra["files"][0]["mode"] == "0644" and "-maxdepth 1 -type f" in ran[0]
    r, ran = drive("find", {"paths": "/opt/eb", "patterns": "^b", "use_regex": True, "recurse": True,
                            "file_type": "any"}, {}, lambda c: (0, out, ""))
    assert [f["pw_name"] for f in r.extra["files"]] == ["u"] and "-maxdepth" not in ran[0] and "-type" not in ran[0]
    r, _ = drive("find", {"paths": "/opt/eb", "patterns": "*.eb", "hidden": True}, {}, lambda c: (0, out, ""))
    assert r.extra["matched"] == 2


def test_hostname_timezone_dpkg_selections_raw_pause():
    r, ran = drive("hostname", {"name": "gpu1"}, {}, lambda c: (0, "old\nold\n", ""))
    assert r.changed and ran[1] == "hostnamectl set-hostname -- gpu1"
    r, ran = drive("hostname", {"name": "gpu1"}, {}, lambda c: (0, "gpu1\ngpu1\n", ""))
    assert not r.changed and len(ran) == 1
    r, ran = drive("timezone", {"name": "Europe/Paris"}, {}, lambda c: (0, "Etc/UTC\nno\nknown\n", ""))
    assert r.changed and ran[1] == "timedatectl set-timezone -- Europe/Paris"
    r, ran = drive("timezone", {"name": "Europe/Paris", "hwclock": "UTC"}, {},
                   lambda c: (0, "Europe/Paris\nno\nknown\n", ""))
    assert not r.changed and len(ran) == 1
    r, _ = drive("timezone", {"name": "Mars/Olympus"}, {}, lambda c: (0, "Etc/UTC\nno\n", ""))
    assert r.failed and "not in /usr/share/zoneinfo" in r.msg
    r, ran = drive("dpkg_selections", {"name": "docker-ce", "selection": "hold"}, {},
                   lambda c: (0, "docker-ce\t\t\tinstall\n", ""))
    assert r.changed and ran[1] == "echo 'docker-ce hold' | dpkg --set-selections"
    r, ran = drive("dpkg_selections", {"name": "docker-ce", "selection": "hold"}, {},
                   lambda c: (0, "docker-ce\t\t\thold\n", ""))
    assert not r.changed and len(ran) == 1
    assert registry()["raw"] is registry()["shell"]
    spec = registry()["pause"]
    r = spec.impl().run(normalize(spec, {"seconds": 0}), OpContext(host="h"))
    assert not r.failed and r.msg == "Paused for 0 seconds"
    r = spec.impl().run(normalize(spec, {"prompt": "Continue?"}), OpContext(host="h"))
    assert r.failed and "a prompt needs a terminal" in r.msg


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample alice@laptop"


@pytest.mark.parametrize("text, kw, expect", [
    ("", {}, f"{KEY}\n"),
    (f"{KEY}\n", {}, f"{KEY}\n"),
    ("ssh-rsa AAAAother bob\n", {}, f"ssh-rsa AAAAother bob\n{KEY}\n"),
    ("ssh-rsa AAAAother bob\n", {"exclusive": True}, f"{KEY}\n"),
    (f"# c\n{KEY.replace('alice@laptop', 'old')}\n", {}, f"# c\n{KEY}\n"),              # same key, new comment
    (f"{KEY}\nssh-rsa AAAAother bob\n", {"present": False}, "ssh-rsa AAAAother bob\n"),
    ("", {"options": 'from="10.0.0.0/8"'}, f'from="10.0.0.0/8" {KEY}\n'),
])
def test_authorized_key_edit(text, kw, expect):
    from provision.ops.users import edit_keys
    kw = {"present": True, "exclusive": False, "options": None, **kw}
    assert edit_keys(text, [KEY], **kw) == expect


def test_authorized_key_plan_makes_the_folder_and_owns_the_file():
    from provision.facts import MARK

    def host(dir_state, file_state):
        def answer(c):
            if c.startswith("getent"):
                return 0, "alice:x:1000:1000::/home/alice:/bin/bash\n", ""
            if c.startswith("echo"):
                return 0, f"{MARK} dir\n{dir_state}{MARK} file\n{file_state}{MARK} end\n", ""
            return 0, "", ""
        return answer
    r, ran = drive("authorized_key", {"user": "alice", "key": KEY}, {}, host("absent\n", "absent\n"))
    assert r.changed and ran[2] == "install -d -m 700 -o 1000 -g 1000 -- /home/alice/.ssh"
    assert ran.stdins[3] == f"{KEY}\n".encode() and 'chmod 600 "$t"' in ran[3]
    assert ran[4].startswith("chown") and " 1000:1000 " in ran[4]
    done = f"file 600 alice alice 1000 1000 {len(KEY) + 1}\n{hashlib.sha256((KEY + chr(10)).encode()).hexdigest()}\n" \
           f"{base64.b64encode((KEY + chr(10)).encode()).decode()}\n"
    r, ran = drive("authorized_key", {"user": "alice", "key": KEY}, {},
                   host("directory 700 alice alice 1000 1000\n", done))
    assert not r.changed and len(ran) == 2
    r, _ = drive("authorized_key", {"user": "nobody2", "key": KEY}, {}, lambda c: (2, "", ""))
    assert r.failed and r.msg == "Failed to lookup user nobody2"


def test_user_generate_ssh_key_only_when_the_key_file_is_missing():
    base = "alice:x:1000:1000::/home/alice:/bin/bash\n@@groups\nalice\n@@all\nalice\n@@key\n"
    args = {"name": "alice", "generate_ssh_key": True, "ssh_key_bits": 4096}
    r, ran = drive("user", args, {}, lambda c: (0, base, ""))
    assert r.changed and len(ran) == 2 and "ssh-keygen -q -t rsa -b 4096 -N '' -C 'ansible-generated on h'" in ran[1]
    assert '[ -e "$k" ] ||' in ran[1] and 'k="$h"/.ssh/id_rsa' in ran[1]
    r, ran = drive("user", args, {}, lambda c: (0, base + "exists\n", ""))
    assert not r.changed and len(ran) == 1


def test_user_password_goes_to_chpasswd_on_stdin_only_when_it_differs():
    h = "$6$salt$hash"
    base = "alice:x:1000:1000::/home/alice:/bin/bash\n@@groups\nalice\n@@all\nalice\n@@key\n@@shadow\n"
    r, ran = drive("user", {"name": "alice", "password": h}, {}, lambda c: (0, base + "$6$old$x\n", ""))
    assert r.changed and ran[1] == "chpasswd -e" and ran.stdins[1] == f"alice:{h}\n".encode()
    assert h not in "".join(r.diff[0].values()) and h not in " ".join(r.commands)
    r, ran = drive("user", {"name": "alice", "password": h}, {}, lambda c: (0, base + h + "\n", ""))
    assert not r.changed and len(ran) == 1
    r, ran = drive("user", {"name": "alice", "password": h, "update_password": "on_create"}, {},
                   lambda c: (0, base + "$6$old$x\n", ""))
    assert not r.changed
    with pytest.raises(OpError, match="ssh_key_passphrase is not supported"):
        drive("user", {"name": "alice", "generate_ssh_key": True, "ssh_key_passphrase": "pw"}, {},
              lambda c: (0, base, ""))
