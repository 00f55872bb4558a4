"""Pure parts of the operations: decisions from recorded probe outputs (no host needed)."""
from __future__ import annotations

import base64
import hashlib

import pytest

from provision.errors import OptionError
from provision.executor import batches, parse_extra_vars, tag_selected
from provision.executor.runner import HostRunner
from provision.hostio import CommandResult
from provision.ops.apt import parse_policy, parse_simulation, version_matches
from provision.ops.apt_repo import dearmor, one_line
from provision.ops.core import (FileState, OpContext, mask_text, normalize, parse_mode, parse_stat, secret_values,
                                write_file_plan)
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
    assert [c.cmd for c in p.commands] == ["chmod 600 -- /x"]
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


# ------------------------------------------------------------------------------------------- plans, driven
# An op's probe, plan and continuations carried out by the executor's real runner against a scripted host: the op
# itself runs nothing (no run() override, no ctx.run), so what ran is exactly the plan's command objects.

class Ran(list):
    stdins: dict


class ScriptedHost:
    """Stands in for the connection pool and its connection: ``answer(cmd)`` -> (rc, stdout, stderr)."""

    def __init__(self, answer):
        self.answer, self.ran = answer, Ran()
        self.ran.stdins = {}    # command index -> stdin

    def acquire(self, host):
        return self

    reconnect = acquire

    def release(self, host):
        pass

    def run(self, cmd, stdin=None, timeout=None, become=False, env=None, **kw):
        if stdin is not None:       # a streamed controller file is read as the connectors read it
            self.ran.stdins[len(self.ran)] = stdin.read() if hasattr(stdin, "read") else stdin
        self.ran.append(cmd)
        return CommandResult(*self.answer(cmd), 0.25)


def drive(module, raw, facts, answer, *, check=False, refreshed=None, search=()):
    """-> (HostResult, commands the host saw). ``refreshed(sections)`` gives the facts a re-read finds."""
    host = ScriptedHost(answer)
    runner = HostRunner("h", host, refresh=lambda conn, secs: facts.update(refreshed(secs) if refreshed else {}),
                        sleep=lambda s: None)
    ctx = OpContext(host="h", check=check, diff=True, facts=facts, runner=runner, search_paths=search)
    spec = registry()[module]
    op, args = spec.impl(), normalize(spec, raw)
    assert not hasattr(op, "run"), f"{module} answers itself instead of planning"
    probe_cmd = op.probe(args, ctx)
    probe = ctx.probe(probe_cmd) if probe_cmd else None
    return runner.execute(op.plan(args, facts, probe, ctx), ctx), host.ran


def no_apt(facts=None, **kw):
    return {"packages": {}, "held_packages": [], "date_epoch": 10_000, "apt_cache_mtime": 0, **(facts or {}), **kw}


def test_apt_updates_a_stale_cache_then_decides_from_the_fresh_facts():
    def answer(cmd):
        return (0, "", "") if " update" in cmd or " install " in cmd else (1, "", f"unexpected {cmd}")

    def refreshed(secs):
        return {"apt_cache_mtime": 10_000} if secs == ("apt_cache",) else {"packages": {"curl": "8.0"}}
    facts = no_apt()
    r, ran = drive("apt", {"name": "curl", "update_cache": True}, facts, answer, refreshed=refreshed)
    assert not r.failed and r.changed, r
    assert r.msg == "cache updated" and r.extra["cache_updated"] is True
    assert "-o DPkg::Lock::Timeout=600 update" in ran[0] and ran[1].endswith(" install -- curl") and len(ran) == 2
    assert r.commands == ["apt-get update", "apt-get install curl"]
    assert r.diff == [{"before_header": "packages", "after_header": "packages", "before": "curl (absent)\n",
                       "after": "curl 8.0\n"}]
    # up to date once the cache is fresh: the update alone is not a change
    r, ran = drive("apt", {"name": "curl", "update_cache": True}, no_apt({"packages": {"curl": "8.0"}}), answer)
    assert not r.changed and r.msg == "cache updated; packages already as wanted" and len(ran) == 1
    r, ran = drive("apt", {"name": "curl", "update_cache": True}, no_apt(), lambda c: (100, "", "E: no net\n"))
    assert r.failed and r.rc == 100 and r.msg == "apt-get update failed: E: no net" and len(ran) == 1


def test_apt_check_mode_runs_only_simulations_and_shows_them():
    sims = {"-s install -- curl": "Inst libcurl4 (8.0 Debian)\nInst curl (8.0 Debian)\n",
            "-s autoremove": "Remv oldlib [1.0]\n"}

    def answer(cmd):
        return next(((0, out, "") for k, out in sims.items() if cmd.endswith(k)), (1, "", f"ran {cmd}"))
    r, ran = drive("apt", {"name": "curl", "update_cache": True, "autoremove": True}, no_apt(), answer, check=True)
    assert all(" -s " in c for c in ran) and len(ran) == 2, ran    # autoremove simulated once, never run
    assert r.changed and not r.failed and r.msg == "cache would be updated"
    assert r.commands == ["apt-get install curl", "apt-get autoremove"]
    assert r.diff[0]["after_header"] == "packages (simulated)"
    assert r.diff[0]["after"] == "libcurl4: (absent) -> 8.0\ncurl: (absent) -> 8.0\noldlib: 1.0 -> (absent)\n"


def test_apt_mark_is_retried_by_the_runner_while_dpkg_is_locked():
    answers = iter([(100, "", "E: Could not get lock /var/lib/dpkg/lock-frontend\n"), (0, "curl set on hold.\n", "")])
    r, ran = drive("apt", {"name": "curl", "hold": True}, no_apt({"packages": {"curl": "8.0"}}),
                   lambda cmd: next(answers))
    assert ran == ["apt-mark hold -- curl", "apt-mark hold -- curl"] and r.changed and not r.failed
    assert r.diff == [{"before_header": "package holds", "after_header": "package holds",
                       "before": "curl not held\n", "after": "curl held\n"}]


def test_apt_latest_reads_candidates_from_the_prefetchable_probe_or_after_the_update():
    from provision.ops.apt import Apt
    assert Apt().probe({"name": ["curl"], "state": "latest"}, None) == "LANG=C apt-cache policy -- curl"
    assert Apt().probe({"name": ["curl"], "state": "latest", "update_cache": True}, None) is None
    assert Apt().probe({"name": ["curl"]}, None) is None
    policy = "curl:\n  Installed: 7.0\n  Candidate: 8.0\n"

    def answer(cmd):
        return (0, policy if "policy" in cmd else "", "")
    r, ran = drive("apt", {"name": "curl", "state": "latest", "update_cache": True},
                   no_apt({"packages": {"curl": "7.0"}}), answer)
    assert [c.split()[-2:] for c in ran] == [["/var/lib/apt/periodic/provision-update-stamp;", "}"],
                                             ["--", "curl"], ["--", "curl"]], ran
    assert ran[1].endswith(" policy -- curl") and ran[2].endswith(" install -- curl"), ran
    r, ran = drive("apt", {"name": "nope", "state": "latest"}, no_apt(),
                   lambda c: (0, "nope:\n  Candidate: (none)\n", ""))
    assert r.failed and r.msg == "No package matching 'nope' is available"


def test_command_result_comes_from_the_plan():
    r, ran = drive("shell", {"_raw_params": "do-it"}, {}, lambda c: (3, "out\n\n", "err\n"))
    assert ran == ["do-it"] and r.failed and r.changed and r.rc == 3
    assert (r.stdout, r.stderr, r.msg) == ("out", "err", "non-zero return code")
    assert r.extra == {"cmd": "do-it", "delta": "0.250"} and r.duration == 0.25 and r.commands == ["do-it"]
    r, _ = drive("shell", {"_raw_params": "do-it", "strip_empty_ends": False}, {}, lambda c: (0, "out\n\n", ""))
    assert not r.failed and r.stdout == "out\n\n" and r.msg == ""
    r, ran = drive("command", {"_raw_params": "touch /x", "creates": "/x"}, {}, lambda c: (0, "", ""), check=True)
    assert ran == ["[ -e /x ] && echo creates-exists; true"] and r.changed
    assert r.msg == "Command would have run if not in check mode" and r.commands == ["touch /x"]
    r, ran = drive("command", {"_raw_params": "touch /x"}, {}, lambda c: (0, "", ""), check=True)
    assert ran == [] and r.skipped


def test_systemd_looks_at_the_unit_after_the_daemon_reload():
    from provision.ops.systemd import Systemd
    show = "LoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\n"

    def answer(cmd):
        return (0, show if cmd.startswith("systemctl show") else "", "")
    args = {"name": "docker", "state": "started", "daemon_reload": True}
    assert Systemd().probe(args, OpContext("h")) is None     # a probe reads only: the reload is the plan's
    r, ran = drive("systemd", args, {}, answer)
    assert [c.split()[:2] for c in ran] == [["systemctl", "daemon-reload"], ["systemctl", "show"],
                                            ["systemctl", "start"]] and r.changed
    r, ran = drive("systemd", args, {}, answer, check=True)
    assert len(ran) == 1 and ran[0].startswith("systemctl show --property=") and ran[0].endswith(" -- docker")
    assert r.changed
    r, ran = drive("systemd", {"name": "docker", "state": "started"}, {}, lambda c: (1, "", "Failed to connect\n"))
    assert r.failed and r.rc == 1 and r.msg == "systemctl show failed: Failed to connect" and len(ran) == 1


def test_copy_into_a_folder_looks_at_the_file_inside_then_writes_it(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "app.conf").write_text("x=1\n")
    stats = {"/etc/app": "directory 755 root root 0 0\n", "/etc/app/app.conf": "absent\n"}

    def answer(cmd):
        return next(((0, out, "") for p, out in stats.items() if cmd.startswith(f"if [ -L {p} ];")), (0, "", ""))
    r, ran = drive("copy", {"src": "app.conf", "dest": "/etc/app"}, {}, answer, search=(str(tmp_path),))
    assert len(ran) == 3 and "mv -f \"$t\" /etc/app/app.conf" in ran[2] and r.changed, ran
    assert ran.stdins == {2: b"x=1\n"}
    assert r.extra["dest"] == "/etc/app/app.conf"


def test_apt_key_from_a_url_is_fetched_by_the_host_and_written_as_a_file():
    binary = bytes(range(120))
    armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + base64.b64encode(binary).decode() + \
        "\n-----END PGP PUBLIC KEY BLOCK-----\n"
    fetched = base64.b64encode(armored.encode()).decode()
    dest = "/usr/share/keyrings/k.gpg"

    def host(stat):
        return lambda cmd: (0, stat, "") if cmd.startswith("if [ -L") else (0, fetched, "") if "curl" in cmd \
            else (0, "", "")
    args = {"url": "http://repo/key.asc", "keyring": dest}
    r, ran = drive("apt_key", args, {}, host("absent\n"))
    assert r.changed and "curl -fsSL --retry 3 http://repo/key.asc" in ran[1] and len(ran) == 3
    assert ran[2].startswith("mkdir -p /usr/share/keyrings && ")   # the folder comes with the one write
    assert "mv -f \"$t\" /usr/share/keyrings/k.gpg" in ran[2]
    assert ran.stdins == {2: binary}      # dearmored on the controller
    assert r.diff[0]["before"] == "old or no keyring\n" and r.diff[0]["after"] == "keyring from http://repo/key.asc\n"
    same = f"file 644 root root 0 0 {len(binary)}\n{hashlib.sha256(binary).hexdigest()}\n"
    r, ran = drive("apt_key", args, {}, host(same))
    assert not r.changed and r.msg == f"{dest} is up to date" and len(ran) == 2
    r, ran = drive("apt_key", args, {}, host(same), check=True)      # check mode downloads nothing
    assert not r.changed and len(ran) == 1 and not any("curl" in c for c in ran)
    assert r.msg == f"would fetch http://repo/key.asc -> {dest} (check mode downloads nothing)"
    r, _ = drive("apt_key", args, {}, lambda c: (22, "", "curl: (22) 404\n") if "curl" in c else (0, "absent\n", ""))
    assert r.failed and r.rc == 22 and r.msg == "cannot fetch key http://repo/key.asc: curl: (22) 404"


def test_apt_repository_writes_the_list_and_updates_that_source_only():
    r, ran = drive("apt_repository", {"repo": "deb http://x/y /", "filename": "y"}, {},
                   lambda c: (0, "absent\n", "") if c.startswith("if [ -L") else (0, "", ""))
    assert r.changed and r.commands == ["write /etc/apt/sources.list.d/y.list (17 bytes, mode 0644)",
                                        "apt-get update (/etc/apt/sources.list.d/y.list only)"]
    assert "Dir::Etc::sourcelist=/etc/apt/sources.list.d/y.list" in ran[2]
