"""Pure parts of the operations: decisions from recorded probe outputs (no host needed)."""
from __future__ import annotations

import base64
import hashlib

import pytest

from provision.executor import batches, parse_extra_vars, tag_selected
from provision.errors import OptionError
from provision.ops.apt import dearmor, one_line, parse_policy, parse_simulation, version_matches
from provision.ops.core import FileState, mask_text, parse_mode, parse_stat, secret_values, write_file_plan
from provision.ops.files import edit_lines
from provision.ops.spec import registry
from provision.ops.systemd import parse_show


@pytest.mark.parametrize("text, kwargs, expect", [
    ("a\nb\n", dict(line="c", regexp=None, state="present", insertafter=None, insertbefore=None), "a\nb\nc\n"),
    ("a\nb\n", dict(line="b", regexp=None, state="present", insertafter=None, insertbefore=None), "a\nb\n"),
    ("x=1\ny=2\nx=3\n", dict(line="x=9", regexp="^x=", state="present", insertafter=None, insertbefore=None),
     "x=1\ny=2\nx=9\n"),
    ("a\nb\n", dict(line="c", regexp=None, state="present", insertafter=None, insertbefore="BOF"), "c\na\nb\n"),
    ("a\nb\nz\n", dict(line="c", regexp=None, state="present", insertafter="^b", insertbefore=None),
     "a\nb\nc\nz\n"),
    ("a\nb\nz\n", dict(line="c", regexp=None, state="present", insertafter=None, insertbefore="^z"),
     "a\nb\nc\nz\n"),
    ("a\nsecret=1\nb\n", dict(line=None, regexp="^secret", state="absent", insertafter=None, insertbefore=None),
     "a\nb\n"),
    ("", dict(line="new", regexp=None, state="present", insertafter=None, insertbefore=None), "new\n"),
])
def test_lineinfile_edit(text, kwargs, expect):
    assert edit_lines(text, **kwargs) == expect


def test_stat_probe_parsing_and_write_plan():
    data = b"hello\n"
    out = f"file 644 root root 0 0 {len(data)}\n{hashlib.sha256(data).hexdigest()}\n" \
          f"{base64.b64encode(data).decode()}\n"
    st = parse_stat(out)
    assert (st.kind, st.mode, st.owner, st.content) == ("file", 0o644, "root", data)
    assert write_file_plan("/x", data, st, mode=0o644).noop           # same content and mode: nothing to do
    p = write_file_plan("/x", data, st, mode=0o600)                   # mode only
    assert [c.cmd for c in p.commands] == ["chmod 600 /x"]
    p = write_file_plan("/x", b"other\n", st, mode=None)
    assert p.commands[0].content == b"other\n" and p.diff[0]["before"] == "hello\n"
    assert parse_stat("absent\n").kind == "absent"
    assert parse_stat("directory 755 root root 0 0\n").kind == "directory"
    assert parse_stat("link 777 root root 0 0 /etc/target\n").link_target == "/etc/target"
    assert write_file_plan("/d", b"", FileState("directory"), mode=None).failed


@pytest.mark.parametrize("mode, expect", [(0o644, 0o644), ("0644", 0o644), ("644", 0o644), ("1777", 0o1777),
                                          (None, None)])
def test_parse_mode(mode, expect):
    assert parse_mode(mode) == expect


def test_apt_parsers():
    policy = ("libfoo:\n  Installed: (none)\n  Candidate: 1.2-1\n  Version table:\n"
              "bar:\n  Installed: 2\n  Candidate: (none)\n")
    assert parse_policy(policy) == {"libfoo": "1.2-1", "bar": None}
    sim = ("NOTE: This is only a simulation!\nInst libfoo (1.2-1 repo [amd64])\n"
           "Inst bar [1.0] (1.1 repo [amd64])\nConf libfoo (1.2-1 repo [amd64])\nRemv baz [3]\n")
    assert parse_simulation(sim) == ["libfoo: (absent) -> 1.2-1", "bar: 1.0 -> 1.1", "baz: 3 -> (absent)"]
    assert version_matches("570.1-1", "570.*") and not version_matches(None, None)
    assert version_matches("1.2", None) and not version_matches("1.2", "1.3")


def test_one_line_repo_gets_signed_by():
    line, uri = one_line("deb http://x/y /", "/etc/apt/keyrings/k.gpg")
    assert line == "deb [signed-by=/etc/apt/keyrings/k.gpg] http://x/y /" and uri == "http://x/y"
    line, _ = one_line("deb [arch=amd64] http://x/y stable main", "/k.gpg")
    assert line == "deb [arch=amd64 signed-by=/k.gpg] http://x/y stable main"


def test_dearmor_matches_binary():
    binary = bytes(range(200))
    body = base64.b64encode(binary).decode()
    armored = ("-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: test\n\n" +
               "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) +
               "\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n").encode()
    assert dearmor(armored) == binary
    assert dearmor(binary) == binary


def test_systemd_show():
    s = parse_show("LoadState=loaded\nActiveState=active\nUnitFileState=enabled\n")
    assert s == {"LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled"}


def test_masking_by_name_and_by_value():
    secrets = secret_values({"db_password": "hunter2x", "api_token": "tok-123456", "user": "alice",
                             "ansible_ssh_private_key_file": "/home/a/.ssh/id"})
    assert "hunter2x" in secrets and "tok-123456" in secrets and "alice" not in secrets
    assert "/home/a/.ssh/id" not in secrets   # a path is not a secret value
    text = mask_text("user=alice pw hunter2x\nmy_secret: abc\ntoken = xyz\n", secrets)
    assert "hunter2x" not in text and "abc" not in text and "xyz" not in text and "alice" in text


@pytest.mark.parametrize("n, serial, sizes", [
    (5, (), [5]), (5, (2,), [2, 2, 1]), (10, ("30%",), [3, 3, 3, 1]), (6, (1, 2), [1, 2, 2, 1]),
    (3, ("10%",), [1, 1, 1]),
])
def test_serial_batches(n, serial, sizes):
    assert [len(b) for b in batches(list(range(n)), serial)] == sizes


@pytest.mark.parametrize("task_tags, tags, skip, run", [
    ((), (), (), True), (("a",), ("a",), (), True), (("b",), ("a",), (), False), (("always",), ("a",), (), True),
    (("always",), (), ("always",), False), (("never",), (), (), False), (("never", "x"), ("x",), (), True),
    (("a",), (), ("a",), False), ((), ("untagged",), (), True), (("a",), ("tagged",), (), True),
])
def test_tags(task_tags, tags, skip, run):
    assert tag_selected(task_tags, tags, skip) is run


def test_extra_vars(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("a: 1\nb: [x]\n")
    assert parse_extra_vars(["x=1 y='two words'", f"@{f}", '{"z": true}']) == \
        {"x": "1", "y": "two words", "a": 1, "b": ["x"], "z": True}
    with pytest.raises(OptionError):
        parse_extra_vars(["novalue"])
    with pytest.raises(OptionError):
        parse_extra_vars([f"@{tmp_path}/missing.yaml"])


def test_every_builtin_module_is_registered_with_specs():
    reg = registry()
    for name in ("command", "shell", "apt", "apt_key", "apt_repository", "copy", "template", "file", "lineinfile",
                 "systemd", "reboot", "wait_for", "assert", "fail", "set_fact", "debug", "ping", "meta"):
        assert name in reg and f"ansible.builtin.{name}" in reg and reg[name].impl is not None
    assert reg["apt"].args["state"].choices == ("present", "absent", "latest", "installed", "removed")


def test_apt_cache_valid_time_decision():
    from provision.ops.apt import Apt
    now = 1_000_000
    assert not Apt().cache_stale({"update_cache": False}, {"date_epoch": now, "apt_cache_mtime": 0})
    assert Apt().cache_stale({"update_cache": True}, {"date_epoch": now, "apt_cache_mtime": now})
    assert not Apt().cache_stale({"update_cache": True, "cache_valid_time": 3600},
                                 {"date_epoch": now, "apt_cache_mtime": now - 100})
    assert Apt().cache_stale({"update_cache": True, "cache_valid_time": 3600},
                             {"date_epoch": now, "apt_cache_mtime": now - 4000})


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_one_batch_answers_file_probes_as_each_probe_alone_would(tmp_path, shell):
    """The prefetch answers a play's file probes with one stat and one sha256sum: every answer must parse to what
    the probe run alone says, for files, empty and big files, folders, links (dangling too) and absent paths; a
    fifo is left out (hashing it would block), and so is a path the batch cannot quote plainly."""
    import os
    import subprocess
    from provision.ops.core import MAX_DIFF_BYTES, stat_batch, stat_probe
    (tmp_path / "small").write_text("hello\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "big").write_bytes(b"x" * (MAX_DIFF_BYTES + 10))
    (tmp_path / "secret").write_text("s\n")
    os.chmod(tmp_path / "secret", 0o600)
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "small", tmp_path / "link")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "with space").write_text("x\n")
    names = ["small", "empty", "big", "secret", "dir", "link", "dangling", "absent", "fifo", "with space"]
    probes = [stat_probe(str(tmp_path / n), content=c) for n in names for c in (False, True)]

    def sh(cmd: str) -> str:
        return subprocess.run([shell, "-c", cmd], capture_output=True, text=True, timeout=20).stdout

    script, answers = stat_batch(probes)
    got = answers(sh(script))
    left_out = {p.path.rsplit("/", 1)[1] for p in probes if p not in got}
    assert left_out == {"fifo", "with space"}
    for p, text in got.items():
        alone = parse_stat(sh(p))
        assert parse_stat(text) == alone, p.path
        if alone.kind == "file":
            assert len(alone.sha256) == 64
            if p.content:
                assert (alone.content is not None) == (alone.size <= MAX_DIFF_BYTES)
    assert answers("") == {}   # a script that did not finish answers nothing
