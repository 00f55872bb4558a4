"""The modules real Ansible roles use (package, stat, get_url, unarchive, include_vars, setup, service_facts,
package_facts, modprobe, kernel_blacklist, blockinfile, replace, apt deb=/dpkg_options), as plans: facts and
recorded probe answers in, command objects out, carried out by the real runner against a scripted host."""
from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest
from test_ops_units import drive, no_apt

from provision.ops.blockinfile import edit_block, edit_replace
from provision.ops.core import OpContext, OpError, normalize
from provision.ops.setup import parse_services
from provision.ops.spec import registry
from provision.ops.stat import parse_stat_result


def stat_line(data: bytes, mode="644") -> str:
    return f"file {mode} root root 0 0 {len(data)}\n{hashlib.sha256(data).hexdigest()}\n" \
           f"{base64.b64encode(data).decode()}\n"


def is_stat(cmd: str) -> bool:
    return cmd.startswith("if [ -L")


# ------------------------------------------------------------------------------------------- names

def test_fqcn_and_legacy_names_resolve_to_the_same_module():
    reg = registry()
    for name in ("ansible.builtin.service", "ansible.builtin.systemd_service", "ansible.legacy.systemd",
                 "ansible.legacy.service", "service", "systemd_service"):
        assert reg[name].name == "systemd", name
    for name in ("package", "stat", "get_url", "unarchive", "include_vars", "setup", "service_facts",
                 "package_facts", "blockinfile", "replace", "modprobe", "apt", "copy", "command"):
        assert reg[f"ansible.legacy.{name}"] is reg[name] is reg[f"ansible.builtin.{name}"], name
    assert reg["community.general.modprobe"] is reg["modprobe"]
    assert "ansible.builtin.community.general.modprobe" not in reg


# ------------------------------------------------------------------------------------------- package

def test_package_dispatches_to_apt_by_the_facts_and_passes_backend_arguments():
    answer = lambda c: (0, "", "")  # noqa: E731
    r, ran = drive("package", {"name": ["curl"], "state": "present", "allow_downgrade": True},
                   no_apt(pkg_mgr="apt"), answer)
    assert r.changed and ran[0].endswith("--allow-downgrades install -- curl")
    r, ran = drive("package", {"name": "curl"}, no_apt({"packages": {"curl": "8"}}, pkg_mgr="apt"), answer)
    assert not r.changed and not ran
    r, ran = drive("package", {"name": "curl"}, no_apt(pkg_mgr="dnf", os_family="RedHat"), answer)
    assert r.failed and "no 'dnf' backend" in r.msg and not ran
    with pytest.raises(Exception, match="use"):
        normalize(registry()["package"], {"name": "x", "usee": "apt"})


# ------------------------------------------------------------------------------------------- stat

def test_stat_result_has_ansible_keys():
    out = ("stat 81a4 0 0 6 1700000000 1700000001 1700000002 42 2049 1\nowner root root\n"
           "source /etc/x\naccess rw\nchecksum f572d396fae9206628714fb2ce00f72e94f2258f\n")
    s = parse_stat_result(out, "/etc/x")
    assert s["exists"] and s["isreg"] and not s["isdir"] and not s["islnk"] and s["mode"] == "0644"
    assert (s["uid"], s["gid"], s["pw_name"], s["size"], s["mtime"]) == (0, 0, "root", 6, 1700000001.0)
    assert s["checksum"] == "f572d396fae9206628714fb2ce00f72e94f2258f" and s["readable"] and not s["executable"]
    link = parse_stat_result("stat a1ff 0 0 5 1 2 3 4 5 1\nowner root root\nsource /etc/x\ntarget x\naccess rw\n",
                             "/etc/l")
    assert link["islnk"] and link["lnk_target"] == "x" and link["lnk_source"] == "/etc/x"
    d = parse_stat_result("stat 41ed 0 0 4096 1 2 3 4 5 2\nowner root root\nsource /d\naccess rwx\n", "/d")
    assert d["isdir"] and d["mode"] == "0755" and "checksum" not in d
    assert parse_stat_result("absent\n", "/nope") == {"exists": False}


def test_stat_is_one_read_only_command_and_never_a_change():
    r, ran = drive("stat", {"path": "/nope"}, {}, lambda c: (0, "absent\n", ""), check=True)
    assert not r.changed and r.extra["stat"] == {"exists": False} and len(ran) == 1
    assert "sha1sum" in ran[0] and "[ ! -L /nope ]" in ran[0]       # a link itself has no checksum (follow: no)
    _, ran = drive("stat", {"path": "/x", "get_checksum": False}, {}, lambda c: (0, "absent\n", ""))
    assert "sum" not in ran[0]


# ------------------------------------------------------------------------------------------- get_url

def test_get_url_downloads_on_the_host_only_when_needed():
    def host(stat, dl=(0, "changed\n", "")):
        return lambda c: (0, stat, "") if is_stat(c) else dl
    args = {"url": "http://repo/tool", "dest": "/usr/local/bin/tool", "mode": "0755"}
    r, ran = drive("get_url", args, {}, host("absent\n"))
    assert r.changed and len(ran) == 2 and "curl -fsSL" in ran[1] and "-- http://repo/tool" in ran[1]
    assert 'chmod 755 "$t"' in ran[1] and 'mv -f "$t" /usr/local/bin/tool' in ran[1]
    # exists, no force, no checksum: left alone (Ansible's default)
    r, ran = drive("get_url", args, {}, host(stat_line(b"x", "755")))
    assert not r.changed and r.msg == "file already exists" and len(ran) == 1
    # exists with the wanted checksum: nothing; another checksum: downloaded and verified
    data = b"x"
    good = {**args, "checksum": f"sha256:{hashlib.sha256(data).hexdigest()}"}
    r, ran = drive("get_url", good, {}, host(stat_line(data, "755")))
    assert not r.changed and len(ran) == 1
    r, ran = drive("get_url", {**args, "checksum": "sha256:00ff"}, {}, host(stat_line(data, "755")))
    assert r.changed and "sha256sum" in ran[1] and "00ff" in ran[1]
    # force: downloaded, but the same bytes are no change
    r, ran = drive("get_url", {**args, "force": True}, {}, host(stat_line(data, "755"), (0, "unchanged\n", "")))
    assert not r.changed and len(ran) == 2
    # a checksum that does not match fails with Ansible's message; a failed download names the url
    r, _ = drive("get_url", good, {}, host("absent\n", (3, "", "The checksum for /usr/local/bin/tool did not "
                                                              "match\n")))
    assert r.failed and r.msg.startswith("The checksum for")
    r, _ = drive("get_url", args, {}, host("absent\n", (4, "", "curl: (22) 404\n")))
    assert r.failed and r.msg == "cannot download http://repo/tool: curl: (22) 404"


def test_get_url_check_mode_downloads_nothing():
    r, ran = drive("get_url", {"url": "http://repo/tool", "dest": "/t"}, {}, lambda c: (0, "absent\n", ""),
                   check=True)
    assert r.changed and r.msg == "would download http://repo/tool" and len(ran) == 1 and is_stat(ran[0])


def test_get_url_into_a_folder_uses_the_url_file_name_and_bad_checksums_fail_early():
    answers = iter([(0, "directory 755 root root 0 0\n", ""), (0, "absent\n", ""), (0, "changed\n", "")])
    r, ran = drive("get_url", {"url": "http://repo/a/tool.tgz?x=1", "dest": "/opt/"}, {}, lambda c: next(answers))
    assert r.changed and "/opt/tool.tgz" in ran[1] and "mv -f \"$t\" /opt/tool.tgz" in ran[2]
    with pytest.raises(OpError, match="checksum urls are not supported"):    # the task fails, nothing ran
        drive("get_url", {"url": "http://r/t", "dest": "/t", "checksum": "sha256:http://r/SUMS"}, {},
              lambda c: (0, "absent\n", ""))


# ------------------------------------------------------------------------------------------- unarchive

def tgz(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("bin/tool")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    p = tmp_path / "files" / "tool.tar.gz"
    p.parent.mkdir()
    p.write_bytes(buf.getvalue())
    return p


def test_unarchive_sends_the_controller_archive_and_copies_only_on_a_difference(tmp_path):
    arch = tgz(tmp_path)
    r, ran = drive("unarchive", {"src": "tool.tar.gz", "dest": "/opt/t"}, {},
                   lambda c: (0, "missing ./bin\nmissing ./bin/tool\n", ""), search=(str(tmp_path),))
    assert r.changed and len(ran) == 3
    assert ran.stdins[0] == arch.read_bytes() and "tar -x -f" in ran[0] and "cat >" in ran[0]
    assert ran[1].startswith("cp -a -- /tmp/.provision-unarchive-") and ran[2].startswith("rm -rf -- ")
    assert r.diff[0]["after"] == "bin\nbin/tool\n"
    r, ran = drive("unarchive", {"src": "tool.tar.gz", "dest": "/opt/t"}, {}, lambda c: (0, "", ""),
                   search=(str(tmp_path),))
    assert not r.changed and len(ran) == 2      # look, clean up
    r, ran = drive("unarchive", {"src": "tool.tar.gz", "dest": "/opt/t"}, {},
                   lambda c: (0, "missing ./bin\n", ""), search=(str(tmp_path),), check=True)
    assert r.changed and len(ran) == 2 and not ran[1].startswith("cp")    # check mode: looked, cleaned up


def test_unarchive_remote_url_zip_creates_and_owner():
    r, ran = drive("unarchive", {"src": "/srv/a.zip", "dest": "/opt", "remote_src": True, "owner": "svc",
                                 "extra_opts": ["-j"]}, {}, lambda c: (0, "owner ./f\n", ""))
    assert "cp -- /srv/a.zip" in ran[0] and "unzip -q -o -j" in ran[0] and "stat -c %U" in ran[0]
    assert "xargs -0 chown svc --" in ran[1]
    _, ran = drive("unarchive", {"src": "https://x/a.tar.xz", "dest": "/opt"}, {}, lambda c: (0, "", ""))
    assert "curl -fsSL" in ran[0] and "-- https://x/a.tar.xz" in ran[0]
    r, ran = drive("unarchive", {"src": "a.tgz", "dest": "/opt", "remote_src": True, "creates": "/opt/bin"}, {},
                   lambda c: (0, "creates-exists\n", ""))
    assert not r.changed and len(ran) == 1 and "since /opt/bin exists" in r.msg
    r, _ = drive("unarchive", {"src": "a.tgz", "dest": "/nope", "remote_src": True}, {},
                 lambda c: (2, "", "dest /nope must be an existing directory\n"))
    assert r.failed and r.msg == "dest /nope must be an existing directory"
    _, ran = drive("unarchive", {"src": "/a.tgz", "dest": "/opt", "remote_src": True}, {}, lambda c: (0, "", ""))
    assert "--no-same-owner" not in ran[0]          # the archive's owners are kept, as Ansible (as root) does
    _, ran = drive("unarchive", {"src": "/a.tgz", "dest": "/opt", "remote_src": True, "group": "gpu"}, {},
                   lambda c: (0, "", ""))
    assert "--no-same-owner" in ran[0]


# ------------------------------------------------------------------------------------------- include_vars

def test_include_vars_reads_the_role_vars_folder_and_names(tmp_path):
    role = tmp_path / "role"
    (role / "vars" / "more").mkdir(parents=True)
    (role / "vars" / "Debian.yml").write_text("docker_packages: [docker.io]\n")
    (role / "vars" / "more" / "b.yml").write_text("b: 2\n")
    (role / "vars" / "a.json").write_text('{"a": 1}')
    spec = registry()["include_vars"]
    op = spec.impl()
    ctx = OpContext(host="h", search_paths=(str(role),))
    r = op.run(normalize(spec, {"_raw_params": "Debian.yml"}), ctx)
    assert not r.failed and r.extra["ansible_facts"] == {"docker_packages": ["docker.io"]}
    r = op.run(normalize(spec, {"dir": "vars", "name": "all_vars"}), ctx)
    assert r.extra["ansible_facts"] == {"all_vars": {"docker_packages": ["docker.io"], "a": 1, "b": 2}}
    r = op.run(normalize(spec, {"dir": "vars", "depth": 1}), ctx)
    assert "b" not in r.extra["ansible_facts"]
    r = op.run(normalize(spec, {"file": "missing.yml"}), ctx)
    assert r.failed and "missing.yml: not found on the controller" in r.msg


# ------------------------------------------------------------------------------------------- facts modules

def test_setup_and_package_facts_re_read_fact_sections_in_check_mode_too():
    seen = []

    def refreshed(secs):
        seen.append(secs)
        return {"distribution": "Debian"}
    facts = {}
    r, ran = drive("setup", {"filter": ["ansible_local"]}, facts, lambda c: (0, "", ""), check=True,
                   refreshed=refreshed)
    assert not r.changed and not r.failed and "local" in seen[0] and "os" in seen[0]
    assert facts["distribution"] == "Debian"
    r, _ = drive("package_facts", {"manager": "auto"}, {}, lambda c: (0, "", ""), refreshed=refreshed)
    assert seen[-1] == ("packages",) and not r.changed
    r, _ = drive("package_facts", {"manager": "rpm"}, {}, lambda c: (0, "", ""))
    assert r.failed


def test_service_facts():
    out = ("docker.service loaded active running Docker\nfoo.service loaded failed failed Foo\n"
           "gone.service not-found inactive dead gone\n@@unit-files@@\ndocker.service enabled enabled\n"
           "bar.service disabled enabled\n")
    s = parse_services(out)
    assert s["docker.service"] == {"name": "docker.service", "state": "running", "status": "enabled",
                                   "source": "systemd"}
    assert s["foo.service"]["state"] == "failed" and s["gone.service"]["state"] == "unknown"
    assert s["bar.service"]["state"] == "stopped" and s["bar.service"]["status"] == "disabled"
    r, ran = drive("service_facts", {}, {}, lambda c: (0, out, ""), check=True)
    assert not r.changed and r.extra["ansible_facts"]["services"] == s and len(ran) == 1


# ------------------------------------------------------------------------------------------- text edits

B, E = "# BEGIN ANSIBLE MANAGED BLOCK", "# END ANSIBLE MANAGED BLOCK"


@pytest.mark.parametrize("text, kw, expect", [
    ("a\n", {}, f"a\n{B}\nx\n{E}\n"),
    (f"a\n{B}\nold\n{E}\nz\n", {}, f"a\n{B}\nx\n{E}\nz\n"),
    ("a\nb\n", {"insertbefore": "BOF"}, f"{B}\nx\n{E}\na\nb\n"),
    ("a\nb\nc\n", {"insertafter": "^a"}, f"a\n{B}\nx\n{E}\nb\nc\n"),
    ("a\nb\nc\n", {"insertbefore": "^c"}, f"a\nb\n{B}\nx\n{E}\nc\n"),
    ("a\nb\n", {"insertafter": "^nomatch"}, f"a\nb\n{B}\nx\n{E}\n"),
    (f"a\n{B}\nold\n{E}\nz\n", {"present": False}, "a\nz\n"),
    (f"a\n{B}\nold\n{E}\nz\n", {"block": ""}, "a\nz\n"),          # an empty block removes it, as Ansible
    ("", {}, f"{B}\nx\n{E}\n"),
])
def test_blockinfile_edit(text, kw, expect):
    kw = {"block": "x", "present": True, **kw}
    assert edit_block(text, kw.pop("block"), begin=B, end=E, **kw) == expect


def test_blockinfile_plan_is_idempotent_and_creates():
    path = "/etc/hosts"
    r, ran = drive("blockinfile", {"path": path, "block": "10.0.0.1 gpu1"}, {},
                   lambda c: (0, stat_line(b"127.0.0.1 localhost\n"), "") if is_stat(c) else (0, "", ""))
    assert r.changed and ran.stdins[1] == f"127.0.0.1 localhost\n{B}\n10.0.0.1 gpu1\n{E}\n".encode()
    done = f"127.0.0.1 localhost\n{B}\n10.0.0.1 gpu1\n{E}\n".encode()
    r, ran = drive("blockinfile", {"path": path, "block": "10.0.0.1 gpu1"}, {}, lambda c: (0, stat_line(done), ""))
    assert not r.changed and len(ran) == 1
    r, _ = drive("blockinfile", {"path": "/new", "block": "x"}, {}, lambda c: (0, "absent\n", ""))
    assert r.failed and "does not exist" in r.msg
    r, ran = drive("blockinfile", {"path": "/new", "block": "x", "create": True, "marker": "## {mark} gpu"}, {},
                   lambda c: (0, "absent\n", "") if is_stat(c) else (0, "", ""))
    assert r.changed and ran.stdins[1] == b"## BEGIN gpu\nx\n## END gpu\n"


def test_replace_edit_and_plan():
    assert edit_replace("a=1\nb=1\n", r"^(\w)=1$", r"\1=2") == ("a=2\nb=2\n", 2)
    assert edit_replace("x=1\n[s]\nx=1\n[t]\nx=1\n", "x=1", "x=2", after=r"\[s\]", before=r"\[t\]")[0] == \
        "x=1\n[s]\nx=2\n[t]\nx=1\n"
    unit = b"[Service]\nExecStart=/usr/bin/dockerd -H fd://\n"
    r, ran = drive("replace", {"path": "/lib/systemd/system/docker.service", "regexp": "^ExecStart=.*$",
                               "replace": "ExecStart=/usr/bin/dockerd"}, {},
                   lambda c: (0, stat_line(unit), "") if is_stat(c) else (0, "", ""), check=True)
    assert r.changed and len(ran) == 1 and "ExecStart=/usr/bin/dockerd\n" in r.diff[0]["after"]


# ------------------------------------------------------------------------------------------- kernel modules

def modprobe_probe(loaded="", builtin="", load="absent\n", options="absent\n"):
    from provision.facts import MARK
    return (f"{MARK} loaded\n{loaded}{MARK} builtin\n{builtin}{MARK} load\n{load}{MARK} options\n{options}"
            f"{MARK} end\n")


def test_modprobe_loads_unloads_and_persists():
    r, ran = drive("modprobe", {"name": "nouveau", "state": "absent"}, {}, lambda c: (0, modprobe_probe(), ""))
    assert not r.changed and len(ran) == 1 and r.msg == "nouveau is not loaded"
    r, ran = drive("modprobe", {"name": "nouveau", "state": "absent"}, {},
                   lambda c: (0, modprobe_probe(loaded="nouveau\nsnd\n"), ""))
    assert r.changed and ran[1] == "modprobe -r -- nouveau"
    r, ran = drive("modprobe", {"name": "nvidia-drm", "params": "modeset=1", "persistent": "present"}, {},
                   lambda c: (0, modprobe_probe(), "") if "@@" in c or "proc/modules" in c else (0, "", ""))
    assert ran[1] == "modprobe -- nvidia-drm modeset=1"
    assert ran.stdins == {2: b"nvidia-drm\n", 3: b"options nvidia-drm modeset=1\n"}
    assert "/etc/modules-load.d/nvidia-drm.conf" in ran[2] and "/etc/modprobe.d/nvidia-drm.conf" in ran[3]
    # loaded (as nvidia_drm) and persisted: nothing to do
    done = modprobe_probe(loaded="nvidia_drm\n", load=stat_line(b"nvidia-drm\n"),
                          options=stat_line(b"options nvidia-drm modeset=1\n"))
    r, ran = drive("modprobe", {"name": "nvidia-drm", "params": "modeset=1", "persistent": "present"}, {},
                   lambda c: (0, done, ""))
    assert not r.changed and len(ran) == 1
    r, ran = drive("modprobe", {"name": "nvidia-drm", "persistent": "absent", "state": "absent"}, {},
                   lambda c: (0, done, ""))
    assert r.changed and ran[1:] == ["modprobe -r -- nvidia-drm", "rm -f -- /etc/modules-load.d/nvidia-drm.conf",
                                     "rm -f -- /etc/modprobe.d/nvidia-drm.conf"]
    r, _ = drive("modprobe", {"name": "ext4", "state": "absent"}, {},
                 lambda c: (0, modprobe_probe(builtin="kernel/fs/ext4/ext4.ko\n"), ""))
    assert r.failed and "built into the kernel" in r.msg


def test_kernel_blacklist_keeps_one_line():
    r, ran = drive("kernel_blacklist", {"name": "nouveau"}, {},
                   lambda c: (0, "absent\n", "") if is_stat(c) else (0, "", ""))
    assert r.changed and ran.stdins[1] == b"blacklist nouveau\n" and "/etc/modprobe.d/blacklist.conf" in ran[1]
    assert ran[1].startswith("mkdir -p /etc/modprobe.d && ")
    r, ran = drive("kernel_blacklist", {"name": "nouveau"}, {}, lambda c: (0, stat_line(b"blacklist nouveau\n"), ""))
    assert not r.changed


# ------------------------------------------------------------------------------------------- apt deb / dpkg_options

def test_apt_deb_from_a_url_installs_only_another_version():
    def host(installed):
        def answer(c):
            if "dpkg-deb -f" in c:
                return 0, "Package: cuda-keyring\nVersion: 1.1-1\n", ""
            return 0, "", ""
        return answer
    url = "https://r/cuda-keyring_1.1-1_all.deb"
    r, ran = drive("apt", {"deb": url}, no_apt(), host(None))
    assert r.changed and ran[0].startswith("curl -fsSL --retry 3 -o /tmp/provision-") and "-- /tmp/" in ran[0]
    assert " install -- /tmp/provision-" in ran[1] and ran[2].startswith("rm -f -- /tmp/provision-")
    assert r.diff == [{"before_header": "packages", "after_header": "packages", "before": "cuda-keyring (absent)\n",
                       "after": "cuda-keyring 1.1-1\n"}]
    r, ran = drive("apt", {"deb": url}, no_apt({"packages": {"cuda-keyring": "1.1-1"}}), host(None))
    assert not r.changed and len(ran) == 2          # read, clean up
    r, ran = drive("apt", {"deb": url}, no_apt(), host(None), check=True)
    assert r.changed and len(ran) == 2 and "install" not in " ".join(ran)
    r, _ = drive("apt", {"deb": "/srv/x.deb"}, no_apt(), lambda c: (2, "", "dpkg-deb: error: not a debian file\n"))
    assert r.failed and r.msg == "cannot read the package /srv/x.deb: dpkg-deb: error: not a debian file"


def test_apt_dpkg_options_replace_the_defaults():
    r, ran = drive("apt", {"name": "x", "dpkg_options": "force-confnew,force-overwrite"}, no_apt(),
                   lambda c: (0, "", ""))
    assert "-o Dpkg::Options::=--force-confnew -o Dpkg::Options::=--force-overwrite " in ran[0]
    assert "force-confold" not in ran[0]
    _, ran = drive("apt", {"name": "x"}, no_apt(), lambda c: (0, "", ""))
    assert "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold " in ran[0]


# ------------------------------------------------------------------------------------------- accounts, ini, deb822

def test_getent_returns_ansible_facts_and_fails_on_a_missing_key():
    r, ran = drive("getent", {"database": "group", "key": "docker", "split": ":"}, {},
                   lambda c: (0, "docker:x:999:alice,bob\n", ""), check=True)
    assert not r.changed and ran == ["getent -- group docker"]
    assert r.extra["ansible_facts"] == {"getent_group": {"docker": ["x", "999", "alice,bob"]}}
    r, _ = drive("getent", {"database": "group", "key": "nope"}, {}, lambda c: (2, "", ""))
    assert r.failed and r.msg == "One or more supplied key could not be found in the database."


def user_probe(entry="", groups="", known="root docker"):
    return lambda c: (0, f"{entry}\n@@groups\n{groups}\n@@all\n{known.replace(' ', chr(10))}\n", "") \
        if c.startswith("getent passwd") else (0, "", "")


def test_user_appends_groups_only_when_missing():
    alice = "alice:x:1000:1000::/home/alice:/bin/bash"
    r, ran = drive("user", {"name": "alice", "groups": "docker", "append": True}, {}, user_probe(alice, "alice"))
    assert r.changed and ran[1] == "usermod -a -G docker -- alice"
    r, ran = drive("user", {"name": "alice", "groups": "docker", "append": True}, {},
                   user_probe(alice, "alice docker"))
    assert not r.changed and len(ran) == 1
    r, ran = drive("user", {"name": "bob", "groups": ["docker"], "shell": "/bin/sh"}, {}, user_probe())
    assert r.changed and ran[1] == "useradd -m -s /bin/sh -G docker -- bob"
    r, _ = drive("user", {"name": "bob", "groups": ["nogroup"]}, {}, user_probe())
    assert r.failed and r.msg == "Group nogroup does not exist"
    r, ran = drive("user", {"name": "alice", "state": "absent"}, {}, user_probe(alice, "alice"))
    assert ran[1] == "userdel -- alice"


def test_group():
    r, ran = drive("group", {"name": "gpu", "system": True}, {},
                   lambda c: (2, "", "") if "getent" in c else (0, "", ""))
    assert r.changed and ran[1] == "groupadd -r -- gpu"
    r, ran = drive("group", {"name": "gpu"}, {}, lambda c: (0, "gpu:x:998:\n", ""))
    assert not r.changed and len(ran) == 1


@pytest.mark.parametrize("text, kw, expect", [
    ("", dict(section="s", option="k", value="v"), "[s]\nk = v\n"),
    ("[s]\nk = old\n\n[t]\nk = x\n", dict(section="s", option="k", value="v"), "[s]\nk = v\n\n[t]\nk = x\n"),
    ("[s]\na = 1\n\n[t]\n", dict(section="s", option="k", value="v", spaces=False), "[s]\na = 1\nk=v\n\n[t]\n"),
    ("top = 1\n[s]\n", dict(section=None, option="top", value="2"), "top = 2\n[s]\n"),
    ("[s]\nk = 1\nk = 2\n", dict(section="s", option="k", value="3"), "[s]\nk = 3\n"),
    ("[s]\nk = 1\n[t]\nx = 1\n", dict(section="s", option="k", value=None, present=False), "[s]\n[t]\nx = 1\n"),
    ("[s]\nk = 1\n[t]\nx = 1\n", dict(section="s", option=None, value=None, present=False), "[t]\nx = 1\n"),
    ("a = 1\n", dict(section="repo", option="enabled", value="0"), "a = 1\n\n[repo]\nenabled = 0\n"),
])
def test_ini_file_edit(text, kw, expect):
    from provision.ops.blockinfile import edit_ini
    kw.setdefault("present", True)
    assert edit_ini(text, kw.pop("section"), kw.pop("option"), kw.pop("value"), **kw) == expect


def test_ini_file_plan_creates_the_file():
    r, ran = drive("ini_file", {"path": "/etc/x.ini", "section": "s", "option": "k", "value": "v"}, {},
                   lambda c: (0, "absent\n", "") if is_stat(c) else (0, "", ""))
    assert r.changed and ran.stdins[1] == b"[s]\nk = v\n"


def test_deb822_repository_fetches_the_key_on_the_host_then_writes_the_sources_file():
    binary = bytes(range(64))
    armored = ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + base64.b64encode(binary).decode()
               + "\n-----END PGP PUBLIC KEY BLOCK-----\n")

    def host(c):
        if is_stat(c):
            return 0, "absent\n", ""
        if "curl" in c:
            return 0, base64.b64encode(armored.encode()).decode(), ""
        return 0, "", ""
    args = {"name": "docker", "types": "deb", "uris": "http://repo/debian", "suites": "bookworm",
            "components": "stable", "signed_by": "http://repo/debian/gpg"}
    r, ran = drive("deb822_repository", args, {}, host)
    assert r.changed and "curl -fsSL --retry 3 http://repo/debian/gpg" in ran[1]
    assert ran.stdins[2] == binary and "/etc/apt/keyrings/docker.gpg" in ran[2]
    assert ran.stdins[4] == (b"Types: deb\nURIs: http://repo/debian\nSuites: bookworm\nComponents: stable\n"
                             b"Signed-By: /etc/apt/keyrings/docker.gpg\n")
    assert "/etc/apt/sources.list.d/docker.sources" in ran[4] and len(ran) == 5     # no apt-get update
    r, ran = drive("deb822_repository", args, {}, host, check=True)
    assert r.changed and not any("mv -f" in c for c in ran)


# ------------------------------------------------------------------------------------------- fetch, tempfile, upgrade

def test_fetch_copies_a_host_file_to_the_controller_once(tmp_path):
    data = base64.b64encode(b"fw 1.2\n").decode()
    args = {"src": "/var/log/fw.log", "dest": str(tmp_path / "out")}
    r, ran = drive("fetch", args, {}, lambda c: (0, data, ""), check=True)
    assert r.changed and not (tmp_path / "out").exists() and len(ran) == 1       # check mode writes nothing
    r, _ = drive("fetch", args, {}, lambda c: (0, data, ""))
    local = tmp_path / "out" / "h" / "var" / "log" / "fw.log"
    assert r.changed and local.read_bytes() == b"fw 1.2\n" and r.extra["dest"] == str(local)
    r, _ = drive("fetch", args, {}, lambda c: (0, data, ""))
    assert not r.changed
    r, _ = drive("fetch", {**args, "flat": True, "dest": str(tmp_path) + "/"}, {}, lambda c: (0, data, ""))
    assert (tmp_path / "fw.log").read_bytes() == b"fw 1.2\n"
    r, _ = drive("fetch", args, {}, lambda c: (3, "missing\n", ""))
    assert r.failed and r.msg == "the remote file does not exist: /var/log/fw.log"
    r, _ = drive("fetch", {**args, "fail_on_missing": False}, {}, lambda c: (3, "missing\n", ""))
    assert not r.failed and not r.changed


def test_tempfile_and_wait_for_connection():
    r, ran = drive("tempfile", {"state": "directory", "suffix": "fw"}, {}, lambda c: (0, "/tmp/ansible.abcfw\n", ""))
    assert r.changed and ran == ["mktemp -d --tmpdir -- ansible.XXXXXXXXXXfw"]
    assert r.extra["path"] == "/tmp/ansible.abcfw"
    r, ran = drive("tempfile", {}, {}, lambda c: (0, "", ""), check=True)
    assert r.skipped and not ran
    answers = iter([(255, "", "")] + [(0, "", "")] * 3)
    r, ran = drive("wait_for_connection", {"timeout": 30}, {}, lambda c: next(answers), check=True)
    assert not r.failed and not r.changed and ran == ["true", "true"]


def test_apt_upgrade_simulates_first_and_upgrades_only_when_something_would_change():
    sim = "Inst curl [7.88] (8.0 Debian:12)\n"

    def host(out):
        return lambda c: (0, out, "") if " -s " in c else (0, "", "")
    r, ran = drive("apt", {"upgrade": "dist"}, no_apt(), host(sim))
    assert r.changed and "-s dist-upgrade" in ran[0] and ran[1].endswith(" dist-upgrade")
    assert r.diff[0]["before"] == "curl 7.88\n" and r.diff[0]["after"] == "curl 8.0\n"
    r, ran = drive("apt", {"upgrade": True}, no_apt(), host(""))
    assert not r.changed and len(ran) == 1 and "-s upgrade --with-new-pkgs" in ran[0]
    r, ran = drive("apt", {"upgrade": "safe"}, no_apt(), host(sim), check=True)
    assert r.changed and len(ran) == 1 and "curl: 7.88 -> 8.0" in r.diff[0]["after"]
    _, ran = drive("apt", {"upgrade": "no", "name": "x"}, no_apt(), host(""))
    assert not any("upgrade" in c for c in ran)
    with pytest.raises(OpError, match="not one of dist"):
        drive("apt", {"upgrade": "sometimes"}, no_apt(), host(""))


def test_apt_repository_removes_a_ppa_and_refuses_to_add_one():
    r, ran = drive("apt_repository", {"repo": "ppa:graphics-drivers/ppa", "state": "absent"}, {},
                   lambda c: (0, "", ""))
    assert not r.changed and len(ran) == 1 and "ppa\\.launchpad(content)?\\.net/graphics-drivers/ppa/" in ran[0]
    f = "/etc/apt/sources.list.d/graphics-drivers-ubuntu-ppa-jammy.list"
    r, ran = drive("apt_repository", {"repo": "ppa:graphics-drivers/ppa", "state": "absent"}, {},
                   lambda c: (0, f + "\n", "") if c.startswith("grep") else (0, "", ""))
    assert r.changed and ran[1].startswith("sed -i -E ") and ran[1].endswith(f" -- {f}") and " update" in ran[2]
    r, _ = drive("apt_repository", {"repo": "ppa:graphics-drivers/ppa"}, {}, lambda c: (0, "", ""))
    assert r.failed and "adding a PPA needs Launchpad" in r.msg


def test_reboot_in_check_mode_plans_and_runs_nothing():
    r, ran = drive("reboot", {}, {}, lambda c: (0, "", ""), check=True)
    assert r.changed and not r.failed and not ran and r.msg == "would reboot"


def test_apt_key_without_a_keyring_is_trusted_for_every_source_as_apt_key_add():
    r, ran = drive("apt_key", {"url": "https://nvidia.github.io/nvidia-docker/gpgkey"}, {},
                   lambda c: (0, "absent\n", ""), check=True)
    assert r.changed and "/etc/apt/trusted.gpg.d/nvidia.github.io_nvidia-docker_gpgkey.gpg" in ran[0]
    r, ran = drive("apt_key", {"id": "7fa2af80", "state": "absent"}, {}, lambda c: (0, "absent\n", ""))
    assert not r.changed and "/etc/apt/trusted.gpg.d/7fa2af80.gpg" in ran[0]


def test_copy_remote_src_reads_the_host_file_then_writes_dest():
    data = b"[Unit]\n"

    def host(dest_stat):
        return lambda c: (0, stat_line(data), "") if "/lib/x.service" in c and is_stat(c) else \
            (0, dest_stat, "") if is_stat(c) else (0, "", "")
    args = {"src": "/lib/x.service", "dest": "/etc/x.service", "remote_src": True, "mode": "0644"}
    r, ran = drive("copy", args, {}, host("absent\n"))
    assert r.changed and ran.stdins[2] == data and "/etc/x.service" in ran[2]
    r, ran = drive("copy", args, {}, host(stat_line(data)))
    assert not r.changed and len(ran) == 2
    big = f"file 644 root root 0 0 {10 ** 7}\n{'ab' * 32}\n\n"      # too big to carry: the host copies it
    r, ran = drive("copy", args, {}, lambda c: (0, big, "") if "/lib/x.service" in c and is_stat(c) else
                   (0, "absent\n", "") if is_stat(c) else (0, "", ""))
    assert r.changed and ran[2] == "cp -- /lib/x.service /etc/x.service" and ran[3] == "chmod 644 -- /etc/x.service"
    r, _ = drive("copy", {**args, "src": "/nope"}, {}, lambda c: (0, "absent\n", ""))
    assert r.failed and "/nope is absent on the host" in r.msg


def test_user_force_and_move_home():
    alice = "alice:x:1000:1000::/home/alice:/bin/bash"
    _, ran = drive("user", {"name": "alice", "state": "absent", "force": True, "remove": True}, {},
                   user_probe(alice, "alice"))
    assert ran[1] == "userdel -r -f -- alice"
    _, ran = drive("user", {"name": "alice", "home": "/data/alice", "move_home": True}, {}, user_probe(alice, "alice"))
    assert ran[1] == "usermod -d /data/alice -m -- alice"



def test_validate_travels_with_the_write_and_needs_percent_s():
    r, ran = drive("lineinfile", {"path": "/etc/sudoers.d/x", "line": "u ALL=(ALL) ALL", "create": True,
                                  "validate": "visudo -cf %s"}, {},
                   lambda c: (0, "absent\n", "") if is_stat(c) else (0, "", ""))
    assert r.changed and '&& { visudo -cf "$t"; } && mv -f "$t" /etc/sudoers.d/x' in ran[1]
    r, ran = drive("copy", {"content": "x", "dest": "/etc/x", "validate": "visudo -c"}, {},
                   lambda c: (0, "absent\n", ""))
    assert r.failed and r.msg == "validate must contain %s: visudo -c" and len(ran) == 1


def test_unarchive_keep_newer_and_include_vars_hash_behaviour():
    _, ran = drive("unarchive", {"src": "/a.tgz", "dest": "/opt", "remote_src": True, "keep_newer": True}, {},
                   lambda c: (0, "differs ./f\n", ""))
    assert ran[1].startswith("cp -a -u -- ")
    with pytest.raises(OpError, match="choices: replace"):
        normalize(registry()["include_vars"], {"file": "x.yml", "hash_behaviour": "merge"})
