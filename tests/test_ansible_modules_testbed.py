"""The modules real Ansible roles use, against a real Debian host (systemd, sshd, the testbed's local apt repository):
each task applied, applied again (no change), and in check mode. What the testbed cannot show: loading a kernel
module (a container shares the machine's kernel and may not load modules; this machine has no /proc/modules), so
modprobe is exercised for unloading what is not loaded and for its persistence files only."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time

import pytest
import yaml

from provision.cli import main
from provision.testbed import HostSpec
from provision.testbed import repo as repomod

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def tb(module_testbed_factory):
    t = module_testbed_factory("ansmods", [HostSpec("a1")])
    t.write_inventory()
    return t


def apply(tb, tmp_path, capsys, tasks: list, *, check=False, facts=False) -> tuple[int, list]:
    pb = tmp_path / f"pb{time.monotonic_ns()}.yaml"
    pb.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": facts, "tasks": tasks}], sort_keys=False))
    argv = ["apply", str(tb.inventory_path), "-p", str(pb), "--json", "--diff", "--no-retry-file"]
    capsys.readouterr()
    rc = main(argv + (["--check"] if check else []))
    rep = json.loads(capsys.readouterr().out)
    return rc, [t["hosts"]["a1"] for t in rep["plays"][0]["tasks"] if "a1" in t["hosts"]]


def statuses(res) -> list[str]:
    return [r["status"] for r in res]


def test_facts_roles_read_and_setup_re_reads_local_facts(tb, tmp_path, capsys):
    tb.exec("a1", "mkdir -p /etc/ansible/facts.d && printf '[general]\\nrack = r12\\n' > "
                  "/etc/ansible/facts.d/site.fact && rm -f /etc/ansible/facts.d/exe.fact")
    exe = "#!/bin/sh\necho '{\"ran\": true}'\n"
    tasks = [
        {"name": "facts", "assert": {"that": [
            "ansible_product_name is string and ansible_product_name | length > 0",
            "ansible_env.HOME == '/root'", "ansible_local.site.general.rack == 'r12'",
            "ansible_local.exe is not defined", "ansible_distribution == 'Debian'", "ansible_os_family == 'Debian'",
            "ansible_pkg_mgr == 'apt'", "ansible_service_mgr == 'systemd'", "ansible_memtotal_mb > 0",
            "ansible_processor_vcpus > 0", "ansible_architecture | length > 0", "ansible_kernel | length > 0",
            "ansible_distribution_major_version == '12'", "ansible_selinux.status == 'disabled'",
            "'lo' in ansible_interfaces and ansible_fqdn | length > 0",
            "ansible_default_ipv4.address is match('[0-9.]+$')",
            "ansible_default_ipv4.interface in ansible_interfaces"]}},
        {"name": "an executable fact", "copy": {"content": exe, "dest": "/etc/ansible/facts.d/exe.fact",
                                                "mode": "0755"}},
        {"name": "re-gather", "setup": {"filter": ["ansible_local"]}},
        {"name": "now seen", "assert": {"that": ["ansible_local.exe.ran"]}},
        {"name": "services", "service_facts": {}},
        {"assert": {"that": ["ansible_facts.services['ssh.service'].state == 'running'"]}},
        {"name": "packages", "package_facts": {"manager": "auto"}},
        {"assert": {"that": ["'openssh-server' in ansible_facts.packages"]}},
    ]
    rc, res = apply(tb, tmp_path, capsys, tasks, facts=True)
    assert rc == 0, res
    assert statuses(res)[1:] == ["ok", "changed", "ok", "ok", "ok", "ok", "ok", "ok"]


def test_stat_blockinfile_get_url(tb, tmp_path, capsys):
    key_url = f"{tb.repo_base_url}/{repomod.TOOLKIT_KEY}"
    rc, key, _ = tb.exec("a1", f"curl -fsS {key_url}")
    assert rc == 0
    sha256 = hashlib.sha256(key.encode()).hexdigest()
    tb.exec("a1", "rm -f /tmp/key.asc /tmp/hn /etc/gpufleet-hosts; printf 'a\\nz\\n' > /etc/gpufleet-hosts")
    tasks = [
        {"name": "block", "blockinfile": {"path": "/etc/gpufleet-hosts", "block": "10.0.0.1 gpu1\n10.0.0.2 gpu2",
                                          "insertafter": "^a"}},
        {"name": "download", "get_url": {"url": key_url, "dest": "/tmp/key.asc", "mode": "0600",
                                         "checksum": f"sha256:{sha256}"}},
        {"name": "file url", "get_url": {"url": "file:///etc/hostname", "dest": "/tmp/hn"}},
        {"name": "stat", "stat": {"path": "/tmp/key.asc"}, "register": "st"},
        {"assert": {"that": ["st.stat.exists and st.stat.isreg and not st.stat.isdir and st.stat.mode == '0600'",
                             "st.stat.pw_name == 'root' and st.stat.uid == 0 and st.stat.size > 100",
                             f"st.stat.checksum == '{hashlib.sha1(key.encode()).hexdigest()}'"]}},
        {"name": "stat missing", "stat": {"path": "/nope"}, "register": "no"},
        {"assert": {"that": ["not no.stat.exists"]}},
    ]
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert rc == 0, res
    assert statuses(res) == ["changed", "changed", "changed", "ok", "ok", "ok", "ok"]
    assert tb.exec("a1", "cat /etc/gpufleet-hosts")[1] == ("a\n# BEGIN ANSIBLE MANAGED BLOCK\n10.0.0.1 gpu1\n"
                                                           "10.0.0.2 gpu2\n# END ANSIBLE MANAGED BLOCK\nz\n")
    assert tb.exec("a1", "stat -c %a /tmp/key.asc; cmp /etc/hostname /tmp/hn && echo same")[1].split() == \
        ["600", "same"]
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert rc == 0 and statuses(res) == ["ok"] * 7, res
    # check mode: nothing downloaded, the block's change predicted, the file untouched
    tb.exec("a1", "rm -f /tmp/key.asc")
    rc, res = apply(tb, tmp_path, capsys, [{**tasks[0], "blockinfile": {**tasks[0]["blockinfile"], "block": "x"}},
                                           tasks[1]], check=True)
    assert rc == 0 and statuses(res) == ["changed", "changed"], res
    assert res[1]["msg"] == f"would download {key_url}"
    assert tb.exec("a1", "test -e /tmp/key.asc")[0] != 0
    assert "10.0.0.2 gpu2" in tb.exec("a1", "cat /etc/gpufleet-hosts")[1]


def test_unarchive_from_the_controller_and_on_the_host(tb, tmp_path, capsys):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("tool/bin/run", b"#!/bin/sh\necho hi\n"), ("tool/README", b"readme\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            t.addfile(info, io.BytesIO(data))
    (tmp_path / "tool.tar.gz").write_bytes(buf.getvalue())
    tb.exec("a1", "rm -rf /opt/u /opt/r && mkdir -p /opt/u /opt/r")
    tasks = [{"name": "from controller", "unarchive": {"src": str(tmp_path / "tool.tar.gz"), "dest": "/opt/u",
                                                       "owner": "nobody"}}]
    rc, res = apply(tb, tmp_path, capsys, tasks, check=True)
    assert rc == 0 and statuses(res) == ["changed"] and tb.exec("a1", "ls /opt/u")[1] == ""
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert rc == 0 and statuses(res) == ["changed"], res
    assert tb.exec("a1", "/opt/u/tool/bin/run; stat -c %U /opt/u/tool/README")[1].split() == ["hi", "nobody"]
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert statuses(res) == ["ok"], res
    tb.exec("a1", "echo changed > /opt/u/tool/README")
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert statuses(res) == ["changed"] and tb.exec("a1", "cat /opt/u/tool/README")[1] == "readme\n"
    # an archive already on the host, and creates
    tb.exec("a1", "tar -C /opt/u -czf /tmp/t.tgz tool")
    remote = [{"unarchive": {"src": "/tmp/t.tgz", "dest": "/opt/r", "remote_src": True,
                             "creates": "/opt/r/tool/README"}}]
    rc, res = apply(tb, tmp_path, capsys, remote)
    assert statuses(res) == ["changed"] and tb.exec("a1", "cat /opt/r/tool/README")[1] == "readme\n"
    rc, res = apply(tb, tmp_path, capsys, remote)
    assert statuses(res) == ["ok"] and "exists" in res[0]["msg"]
    assert tb.exec("a1", "ls -a /tmp | grep -c provision-unarchive")[1].strip() == "0"    # work folders removed


def test_modprobe_blacklist_package_and_apt_deb(tb, tmp_path, capsys):
    deb = (f"{tb.repo_base_url}/{repomod.toolkit_path()}/libnvidia-container1_1.18.0-1_"
           f"{repomod.arch()}.deb")
    tb.exec("a1", "rm -f /etc/modprobe.d/blacklist.conf; dpkg -P libnvidia-container1 >/dev/null 2>&1; true")
    tasks = [
        {"name": "unload nouveau", "modprobe": {"name": "nouveau", "state": "absent", "persistent": "absent"}},
        {"name": "blacklist", "kernel_blacklist": {"name": "nouveau"}},
        {"name": "package", "ansible.builtin.package": {"name": "openssh-server", "state": "present"}},
        {"name": "deb", "apt": {"deb": deb}},
    ]
    rc, res = apply(tb, tmp_path, capsys, tasks, check=True)
    assert rc == 0 and statuses(res) == ["ok", "changed", "ok", "changed"], [r.get("msg") for r in res]
    assert tb.exec("a1", "dpkg-query -W libnvidia-container1")[0] != 0
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert rc == 0 and statuses(res) == ["ok", "changed", "ok", "changed"], [r.get("msg") for r in res]
    assert tb.exec("a1", "cat /etc/modprobe.d/blacklist.conf")[1] == "blacklist nouveau\n"
    assert tb.exec("a1", "dpkg-query -W -f='${Version}' libnvidia-container1")[1] == "1.18.0-1"
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert rc == 0 and statuses(res) == ["ok"] * 4, res


def test_accounts_keys_and_host_settings(tb, tmp_path, capsys):
    tb.exec("a1", "userdel -r gpuuser >/dev/null 2>&1; groupdel gpu >/dev/null 2>&1; true")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyForTests admin@ctl"
    tasks = [
        {"group": {"name": "gpu", "system": True}},
        {"user": {"name": "gpuuser", "groups": ["gpu"], "append": True, "shell": "/bin/bash",
                  "generate_ssh_key": True, "ssh_key_type": "ed25519"}},
        {"authorized_key": {"user": "gpuuser", "key": key}},
        {"getent": {"database": "group", "key": "gpu"}},
        {"assert": {"that": ["'gpuuser' in ansible_facts.getent_group.gpu[2]"]}},
        {"dpkg_selections": {"name": "openssh-server", "selection": "hold"}},
    ]
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert rc == 0 and statuses(res) == ["changed", "changed", "changed", "ok", "ok", "changed"], res
    rc, out, _ = tb.exec("a1", "stat -c '%a %U' /home/gpuuser/.ssh /home/gpuuser/.ssh/authorized_keys "
                               "/home/gpuuser/.ssh/id_ed25519; cat /home/gpuuser/.ssh/authorized_keys; "
                               "dpkg --get-selections openssh-server")
    assert out.split("\n")[:4] == ["700 gpuuser", "600 gpuuser", "600 gpuuser", key], out
    assert out.split()[-1] == "hold"
    rc, res = apply(tb, tmp_path, capsys, tasks)
    assert rc == 0 and "changed" not in statuses(res), res
    tb.exec("a1", "echo openssh-server install | dpkg --set-selections")
