"""INI inventories, inventory directories, several sources, host lists, ``host:PORT``, and Ansible's precedence of
group_vars/ files over inline group vars. The files in fixtures/inventories/expected/ are what ``ansible-inventory --list``
printed for the same fixtures (ansible-core 2.19.0.dev0 run from source); `provision inventory --list` must print
the same bytes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from provision.errors import InputError
from provision.inventory import load_inventory, split_port
from provision.inventory.ini import ini_value
from provision.yamlsrc import SourcePos

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INVS = os.path.join(HERE, "fixtures", "inventories")


def write(tmp_path, text: str, name: str) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def cli(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "HOME": cwd}
    env.pop("ANSIBLE_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "provision.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("source", ["ini/hosts.ini", "invdir", "childprec/hosts.yml"])
def test_list_prints_what_ansible_inventory_prints(source):
    path = os.path.join(INVS, source)
    expected = os.path.join(INVS, "expected", source.split("/")[0] + ".json")
    r = cli("inventory", "-i", path, "--list")
    assert r.returncode == 0, r.stderr
    with open(expected) as fh:
        assert r.stdout == fh.read()


def test_graph_in_inventory_order_as_ansible_inventory():
    r = cli("inventory", "-i", os.path.join(INVS, "ini", "hosts.ini"), "--graph")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:4] == ["@all:", "  |--@ungrouped:", "  |  |--bastion", "  |--@h100:"]


@pytest.mark.parametrize("text,value", [
    ("22", 22), ("1.5", 1.5), ("True", True), ("None", None), ("'03'", "03"), ("03", "03"), ("yes", "yes"),
    ("FALSE", "FALSE"), ("[1, 2]", [1, 2]), ("{'a': 1}", {"a": 1}), ("hello world", "hello world"),
    ("8080 # a comment", 8080), ("-5", -5), ("0x10", 16), ("1_000", 1000),
])
def test_ini_values_typed_as_ansible_types_them(text, value):
    assert ini_value(text) == value and type(ini_value(text)) is type(value)


def test_ini_fixture_grammar():
    inv = load_inventory(os.path.join(INVS, "ini", "hosts.ini"))
    assert list(inv.groups["gpu"].hosts) == ["gpu01.lab", "gpu02.lab", "gpu03.lab", "gpu04.lab", "gpu05.lab"]
    assert inv.groups["storage"].hosts == ("nas-a", "nas-b", "nas-c")
    assert inv.groups["ungrouped"].hosts == ("bastion",)
    assert inv.groups["lab"].children == ("gpu", "storage", "later")   # 'later' declared after [lab:children]
    g4, g5 = inv.hosts["gpu04.lab"].vars, inv.hosts["gpu05.lab"].vars
    assert (g4["ansible_port"], g4["slots"], g4["ib"], g4["spare"], g4["tags"]) == (2204, 8, True, None,
                                                                                  ["a100", "nvlink"])
    assert (g5["ansible_port"], g5["serial"], g5["label"]) == (2205, "0042", "two words")
    assert (g5["cuda"], g5["mig"], g5["secure_boot"]) == (12.4, False, "FALSE")   # [gpu:vars] as Ansible's code
    assert inv.hosts["gpu04.lab"].source == SourcePos(inv.path, 7)
    assert inv.hosts["gpu04.lab"].var_sources["slots"] == SourcePos(inv.path, 7)


def test_group_vars_file_beats_deeper_inline_group_var():
    """Issue 14: h100 (a child of gpu) sets driver_branch inline; group_vars/gpu.yml sets it too. Ansible gives
    the group_vars/ file's value (its level 6 beats level 3 whatever the depth); depth decides only within a level."""
    inv = load_inventory(os.path.join(INVS, "childprec", "hosts.yml"))
    assert inv.hosts["gpu02"].vars["driver_branch"] == "535"
    assert inv.hosts["gpu02"].vars["cuda"] == "12.4"
    inv = load_inventory(os.path.join(INVS, "ini", "hosts.ini"))
    assert inv.hosts["gpu03.lab"].vars["driver_branch"] == "535"          # not [h100:vars] 570


def test_group_vars_order_by_depth_within_files(tmp_path):
    path = write(tmp_path, """
        all:
          children:
            gpu:
              children:
                h100:
                  hosts: {h: }
    """, "inv.yml")
    write(tmp_path, "v: gpu\n", "group_vars/gpu.yml")
    write(tmp_path, "v: h100\n", "group_vars/h100.yml")
    write(tmp_path, "v: all\nw: all\n", "group_vars/all.yml")
    write(tmp_path, "w: inline-host\n", "host_vars/h.yml")
    inv = load_inventory(path)
    assert (inv.hosts["h"].vars["v"], inv.hosts["h"].vars["w"]) == ("h100", "inline-host")


def test_playbook_group_vars_beat_inventory_group_vars(tmp_path):
    path = write(tmp_path, "[gpu]\nh x=inline\n", "inv/hosts")
    write(tmp_path, "x: inv-file\ny: inv-file\n", "inv/group_vars/gpu.yml")
    write(tmp_path, "y: play-file\n", "pb/group_vars/gpu.yml")
    write(tmp_path, "z: play-host\n", "pb/host_vars/h.yml")
    inv = load_inventory(path, playbook_dir=str(tmp_path / "pb"))
    # the host's inline var beats every group_vars/ file; a playbook's group_vars/ beat the inventory's
    assert dict(inv.hosts["h"].vars) == {"x": "inline", "y": "play-file", "z": "play-host"}


def test_yaml_host_port_key(tmp_path):
    inv = load_inventory(write(tmp_path, """
        all:
          hosts:
            host.example.com:5309:
            web[01:02].lab:2200: {role: web}
            other:2222: {ansible_port: 2300}
            "[fe80::1]:2201":
            fe80::2:
    """, "inv.yml"))
    assert inv.hosts["host.example.com"].vars["ansible_port"] == 5309
    assert inv.hosts["web02.lab"].port == 2200
    assert inv.hosts["other"].vars["ansible_port"] == 2300      # an explicit ansible_port wins, as in Ansible
    assert inv.hosts["fe80::1"].port == 2201 and "fe80::2" in inv.hosts


def test_split_port_errors():
    with pytest.raises(InputError) as e:
        split_port("gpu01:", SourcePos("f.ini", 3))
    assert str(e.value) == "f.ini:3: gpu01:: host 'gpu01:' ends in ':' (a ':' is followed by a port number)"


def test_several_sources_and_host_lists(tmp_path):
    a = write(tmp_path, "[gpu]\ngpu01 x=1\n", "a.ini")
    b = write(tmp_path, "all:\n  children:\n    gpu:\n      hosts:\n        gpu02:\n", "b.yml")
    inv = load_inventory([a, b, "h1,h2:2022,"])
    assert inv.groups["gpu"].hosts == ("gpu01", "gpu02")
    assert inv.groups["ungrouped"].hosts == ("h1", "h2")
    assert inv.hosts["h2"].port == 2022 and inv.sources == (a, b, "h1,h2:2022,")


def test_directory_ignores_what_ansible_ignores(tmp_path):
    shutil.copytree(os.path.join(INVS, "invdir"), tmp_path / "inv")
    for name in ("site.retry", "notes.txt", "old.bak", "hosts~", ".hidden.yml", "ansible.cfg"):
        (tmp_path / "inv" / name).write_text("[gpu]\nignored01\n")
    inv = load_inventory(str(tmp_path / "inv"))
    assert list(inv.hosts) == ["gpu01", "gpu02", "nas01"]          # README.md and the files above skipped
    assert inv.hosts["gpu01"].vars["driver_branch"] == "570"         # the later file overrides the earlier one
    assert inv.hosts["nas01"].vars["site"] == "lab"                  # group_vars/ inside the directory


def test_ini_content_in_a_yml_file_is_ini(tmp_path):
    inv = load_inventory(write(tmp_path, "[gpu]\ngpu01\n[gpu:vars]\nx=1\n", "hosts.yml"))
    assert inv.hosts["gpu01"].vars["x"] == 1


BAD = [
    ("[gpu:hosts_]\nh\n", 1, "hosts_", "section [gpu:hosts_] has an unknown type (valid: children, vars)"),
    ("[gpu:vars]\nx=1\n", 1, "gpu", "section [gpu:vars] is for a group declared nowhere (add [gpu] or "
                                    "[gpu:children])"),
    ("[lab:children]\ngpu\n", 2, "gpu", "section [lab:children] names group 'gpu', which is declared nowhere "
                                        "(add [gpu])"),
    ("[gpu]\nh1 x=1 oops\n", 2, "h1", "expected key=value after the host name, got 'oops'"),
    ("[gpu]\nh1:\n", 2, "h1:", "host 'h1:' ends in ':' (a ':' is followed by a port number)"),
    ("[gpu]\n[bad group]\n", 2, None, "invalid section header '[bad group]'"),
    ("[gpu]\nh1 x='unterminated\n", 2, None, "cannot split the host line: No closing quotation"),
    ("[gpu]\ngpu[3:1]\n", 2, "gpu[3:1]", "bad host range '[3:1]' in 'gpu[3:1]': start is after end"),
    ("[gpu]\nh1 x=1\n[gpu]\nh1 x=2\n", 4, "x", "host 'h1' sets it to 2 here but to 1 at {path}:2"),
    ("[gpu]\nh1\n[gpu:vars]\nansible_ssh_common_args=-o ControlPersist=60s\n", 4, "ansible_ssh_common_args",
     "host 'h1': -o ControlPersist=60s is not supported (paramiko honours -o ProxyJump=HOST / -J HOST"),
]


@pytest.mark.parametrize("text,line,key,message", BAD, ids=[b[3][:40] for b in BAD])
def test_bad_ini(tmp_path, text, line, key, message):
    path = write(tmp_path, text, "hosts.ini")
    with pytest.raises(InputError) as e:
        load_inventory(path)
    err = e.value
    assert (err.file, err.line, err.key, err.exit_code) == (path, line, key, 4)
    assert message.replace("{path}", path) in str(err) and "\n" not in str(err)


def test_ini_looking_yml_reports_ini_error_and_yaml_reports_yaml(tmp_path):
    path = write(tmp_path, "[gpu]\nh1 x=1 oops\n", "hosts.yml")
    with pytest.raises(InputError) as e:
        load_inventory(path)
    assert "malformed YAML" not in str(e.value) and e.value.line == 2
    path = write(tmp_path, "all:\n  hosts:\n    h1: {a: [}\n", "inv.yml")
    with pytest.raises(InputError) as e:
        load_inventory(path)
    assert "malformed YAML" in str(e.value) and e.value.line == 3


def test_inventory_script_refused(tmp_path):
    path = write(tmp_path, "#!/bin/sh\necho '{}'\n", "inv.sh")
    os.chmod(path, 0o755)
    with pytest.raises(InputError) as e:
        load_inventory(path)
    assert "inventory scripts are not supported" in str(e.value)


def test_the_ini_example_in_the_docs_loads(tmp_path):
    import re
    with open(os.path.join(ROOT, "docs", "inventory.md")) as fh:
        text = re.search(r"```ini\n(.*?)```", fh.read(), re.S).group(1)
    inv = load_inventory(write(tmp_path, text, "hosts.ini"))
    assert inv.groups["ungrouped"].hosts == ("bastion",) and inv.hosts["gpu17.lab"].port == 2217
    assert inv.groups["lab"].children == ("gpu", "storage") and len(inv.groups["gpu"].hosts) == 17


def test_inventory_playbook_dir_reads_the_playbooks_group_vars(tmp_path):
    """As `ansible-inventory --playbook-dir`: the playbook's group_vars/ beat the inventory's (levels 7 > 6)."""
    inv = write(tmp_path, "[gpu]\nh x=1\n", "inv/hosts")
    write(tmp_path, "y: inv\nz: inv\n", "inv/group_vars/gpu.yml")
    write(tmp_path, "y: play\n", "pb/group_vars/gpu.yml")
    r = cli("inventory", "-i", inv, "--host", "h", "--playbook-dir", str(tmp_path / "pb"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"x": 1, "y": "play", "z": "inv"}
    r = cli("inventory", "-i", inv, "--list", "--playbook-dir", str(tmp_path / "nope"))
    assert (r.returncode, r.stderr.strip()) == (5, f"ERROR: {tmp_path / 'nope'}: --playbook-dir: no such directory")
