"""Inventory: Ansible's YAML format, ranges, children, precedence, group_vars/host_vars, patterns, --list/--graph,
and every bad-input case with its exact line (API and `python3 -m provision.cli inventory` exit codes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from provision.errors import InputError
from provision.inventory import expand_hostname, load_inventory, split_pattern
from provision.yamlsrc import SourcePos

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SMALL = os.path.join(HERE, "fixtures", "inventories", "small")
SMALL_INV = os.path.join(SMALL, "hosts.yaml")


def write(tmp_path, text: str, name: str = "inv.yaml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provision.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def small():
    return load_inventory(SMALL_INV)


# ------------------------------------------------------------------------------------------------ ranges

@pytest.mark.parametrize("pattern,expected", [
    ("gpu[01:03].lab", ["gpu01.lab", "gpu02.lab", "gpu03.lab"]),
    ("gpu[1:3]", ["gpu1", "gpu2", "gpu3"]),
    ("gpu[8:11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
    ("gpu[08:11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),
    ("node[a:c]", ["nodea", "nodeb", "nodec"]),
    ("n[1:9:4]", ["n1", "n5", "n9"]),
    ("r[1:2]-g[a:b]", ["r1-ga", "r1-gb", "r2-ga", "r2-gb"]),
    ("[:2]x", ["0x", "1x", "2x"]),
    ("plain.host", ["plain.host"]),
])
def test_host_ranges(pattern, expected):
    assert expand_hostname(pattern, SourcePos("f", 1)) == expected


# ------------------------------------------------------------------------------------------------ structure

def test_groups_children_and_membership(small):
    assert list(small.hosts) == ["bastion", "gpu01.lab", "gpu02.lab", "gpu03.lab", "nasa", "nasb"]
    assert small.groups["gpu"].children == ("h100",)
    assert small.groups["gpu"].hosts == ("gpu01.lab", "gpu02.lab", "gpu03.lab")
    assert small.groups["ungrouped"].hosts == ("bastion",)
    assert small.groups["all"].children == ("ungrouped", "gpu", "storage")
    assert small.hosts["gpu03.lab"].groups == ("all", "gpu", "h100")
    assert small.hosts["bastion"].groups == ("all", "ungrouped")
    assert small.hosts["gpu01.lab"].source == SourcePos(SMALL_INV, 18)


def test_connection_properties(small):
    b, g3, g1 = small.hosts["bastion"], small.hosts["gpu03.lab"], small.hosts["gpu01.lab"]
    assert (b.address, b.port, b.connection, b.user) == ("127.0.0.1", 22, "local", None)
    assert (g3.address, g3.port, g3.connection, g3.user) == ("gpu03.lab", 2203, "ssh", "ops")
    assert g1.key_file is None and g1.known_hosts_file is None
    # ansible_python_interpreter is accepted and changes nothing about the connection
    assert small.hosts["nasa"].connection == "ssh" and small.hosts["nasa"].port == 22


def test_models_are_read_only(small):
    with pytest.raises(TypeError):
        small.hosts["gpu01.lab"].vars["x"] = 1
    with pytest.raises(Exception):
        small.hosts["gpu01.lab"].name = "x"
    assert {small.hosts["gpu01.lab"]: 1}  # hashable (executor keys results by host)


@pytest.mark.parametrize("host,var,expected", [
    ("bastion", "level", "all-file"),      # group_vars/all.yaml overrides inline all vars
    ("gpu01.lab", "tier", "gpu"),          # child group beats all
    ("gpu03.lab", "tier", "h100"),         # grandchild beats parent
    ("gpu01.lab", "level", "all-file"),    # group_vars/all.yaml beats inline vars of any group (Ansible's 4 > 3)
    ("gpu03.lab", "level", "all-file"),
    ("gpu02.lab", "level", "host-file"),   # host_vars file beats every group
    ("gpu01.lab", "driver_branch", "550"),  # group_vars/gpu/ (directory) beats inline group vars
    ("gpu02.lab", "driver_branch", "570"),
    ("gpu01.lab", "cuda", "12.6"),         # later file of a group_vars directory wins
    ("nasa", "storage_role", "primary"),   # host_vars/NAME/ directory form
    ("nasb", "storage_role", None),
    ("gpu03.lab", "site", "lab"),
])
def test_small_precedence(small, host, var, expected):
    assert small.hosts[host].vars.get(var) == expected


PRECEDENCE = [
    ("same depth: alphabetical, later name wins", """
        all:
          children:
            alpha: {hosts: {h: }, vars: {v: alpha}}
            beta: {hosts: {h: }, vars: {v: beta}}
     """, "beta"),
    ("ansible_group_priority beats the name", """
        all:
          children:
            alpha: {hosts: {h: }, vars: {v: alpha, ansible_group_priority: 10}}
            beta: {hosts: {h: }, vars: {v: beta}}
     """, "alpha"),
    ("deeper group beats shallower whatever the name", """
        all:
          children:
            zeta: {hosts: {h: }, vars: {v: zeta}}
            parent:
              children:
                aaa: {hosts: {h: }, vars: {v: aaa}}
     """, "aaa"),
    ("host beats groups", """
        all:
          vars: {v: all}
          children:
            g: {hosts: {h: {v: host}}, vars: {v: g}}
     """, "host"),
    ("all is lowest", """
        all:
          vars: {v: all}
          children:
            g: {hosts: {h: }, vars: {v: g}}
     """, "g"),
    ("top-level groups are children of all", """
        all:
          vars: {v: all}
        g:
          hosts: {h: }
          vars: {v: g}
     """, "g"),
    ("same host, same value in two groups is fine", """
        all:
          children:
            a: {hosts: {h: {v: same}}}
            b: {hosts: {h: {v: same}}}
     """, "same"),
]


@pytest.mark.parametrize("why,text,expected", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence(tmp_path, why, text, expected):
    inv = load_inventory(write(tmp_path, text))
    assert inv.hosts["h"].vars["v"] == expected


def test_var_files_without_extension(tmp_path):
    path = write(tmp_path, "all:\n  children:\n    gpu:\n      hosts:\n        gpu01.lab:\n")
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "gpu01.lab").write_text("a: 1\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "gpu").write_text("b: 2\n")
    (tmp_path / "group_vars" / "gpu.txt").write_text("b: 3\n")   # other extensions are ignored
    assert dict(load_inventory(path).hosts["gpu01.lab"].vars) == {"a": 1, "b": 2}


def test_yaml_anchors_and_merge_keys(tmp_path):
    inv = load_inventory(write(tmp_path, """
        all:
          vars:
            common: &c {a: 1, b: 2}
          children:
            g:
              vars:
                <<: *c
                b: 3
              hosts:
                h:
    """))
    assert (inv.hosts["h"].vars["a"], inv.hosts["h"].vars["b"]) == (1, 3)   # explicit keys override merged ones


def test_priority_key_not_leaked_and_group_defined_twice_merges(tmp_path):
    inv = load_inventory(write(tmp_path, """
        all:
          children:
            a:
              hosts: {h1: }
              vars: {ansible_group_priority: 5, x: 1}
            b:
              children:
                a:
                  hosts: {h2: }
                  vars: {y: 2}
    """))
    assert inv.groups["a"].hosts == ("h1", "h2")
    assert inv.groups["a"].parents == ("all", "b")
    assert dict(inv.hosts["h2"].vars) == {"x": 1, "y": 2}
    assert inv.groups["a"].priority == 5


def test_empty_inventory_and_warnings(tmp_path):
    inv = load_inventory(write(tmp_path, "# nothing\n"))
    assert list(inv.hosts) == [] and set(inv.groups) == {"all", "ungrouped"}
    path = write(tmp_path, "all:\n  hosts:\n    h:\n      ansible_prot: 22\n", "w/inv.yaml")
    os.makedirs(tmp_path / "w" / "group_vars")
    (tmp_path / "w" / "group_vars" / "gpus.yaml").write_text("x: 1\n")
    inv = load_inventory(path)
    assert any("ansible_prot" in w and "ansible_port" in w for w in inv.warnings)
    assert any("gpus" in w for w in inv.warnings)


# ------------------------------------------------------------------------------------------------ patterns

@pytest.mark.parametrize("pattern,expected", [
    ("all", ["bastion", "gpu01.lab", "gpu02.lab", "gpu03.lab", "nasa", "nasb"]),
    ("*", ["bastion", "gpu01.lab", "gpu02.lab", "gpu03.lab", "nasa", "nasb"]),
    ("gpu", ["gpu01.lab", "gpu02.lab", "gpu03.lab"]),
    ("h100", ["gpu03.lab"]),
    ("gpu02.lab", ["gpu02.lab"]),
    ("gpu:!h100", ["gpu01.lab", "gpu02.lab"]),
    ("gpu:&h100", ["gpu03.lab"]),
    ("storage:bastion", ["bastion", "nasa", "nasb"]),   # inventory order, not pattern order
    ("nasb,gpu01.lab", ["gpu01.lab", "nasb"]),
    ("gpu0*", ["gpu01.lab", "gpu02.lab", "gpu03.lab"]),
    ("*.lab:!gpu01.lab", ["gpu02.lab", "gpu03.lab"]),
    ("~nas[ab]", ["nasa", "nasb"]),
    ("~^gpu0[12]", ["gpu01.lab", "gpu02.lab"]),
    ("!gpu", ["bastion", "nasa", "nasb"]),
    ("gpu[0]", ["gpu01.lab"]),
    ("gpu[1:2]", ["gpu02.lab", "gpu03.lab"]),
    ("ungrouped", ["bastion"]),
    ("gpu, storage ,!nasb", ["gpu01.lab", "gpu02.lab", "gpu03.lab", "nasa"]),
])
def test_select(small, pattern, expected):
    assert [h.name for h in small.select(pattern)] == expected


def test_select_retry_file(small, tmp_path):
    retry = tmp_path / "site.retry"
    retry.write_text("gpu03.lab\nnasa\n")
    assert [h.name for h in small.select(f"@{retry}")] == ["gpu03.lab", "nasa"]
    retry.write_text("gpu03.lab\ngpu9.lab\n")
    with pytest.raises(InputError) as e:
        small.select(f"@{retry}")
    assert str(e.value) == f"{retry}:2: hosts: host 'gpu9.lab' is not in {SMALL_INV} (did you mean 'gpu03.lab'?)"


@pytest.mark.parametrize("pattern,message", [
    ("gpx", f"--limit: no host or group named 'gpx' in {SMALL_INV} (did you mean 'gpu'?)"),
    ("gpu:!h10", f"--limit: no host or group named 'h10' in {SMALL_INV} (did you mean 'h100'?)"),
    ("zz*", "--limit: pattern 'zz*' matches no host or group"),
    ("~(", "--limit: invalid regular expression '(': missing ), unterminated subpattern at position 0"),
    ("gpu[7]", "--limit: subscript [7] out of range: 'gpu' has 3 hosts"),
    ("@/nonexistent/x.retry", "--limit: cannot read retry file '/nonexistent/x.retry': No such file or directory"),
])
def test_limit_errors_exit_5(small, pattern, message):
    with pytest.raises(InputError) as e:
        small.limit(list(small.hosts.values()), pattern)
    assert str(e.value) == message
    assert e.value.exit_code == 5


def test_limit_restricts(small):
    hosts = small.select("gpu")
    assert [h.name for h in small.limit(hosts, "gpu02.lab:nasa")] == ["gpu02.lab"]
    assert small.limit(hosts, None) == hosts


@pytest.mark.parametrize("pattern,terms", [
    ("a:b:&c:!d", ["a", "b", "&c", "!d"]),
    ("a,b:c", ["a", "b:c"]),
    ("gpu[1:2]:x", ["gpu[1:2]", "x"]),
    ("~a:b", ["~a:b"]),
])
def test_split_pattern(pattern, terms):
    assert split_pattern(pattern) == terms


# ------------------------------------------------------------------------------------------------ bad input

BAD = [
    ("malformed YAML", """
        all:
          hosts:
            a: [1, 2
          vars: {}
     """, 4, None, "malformed YAML"),
    ("unknown group key", """
        all:
          childern:
            gpu:
     """, 2, "childern", "unknown key in group 'all' (valid: hosts, children, vars) (did you mean 'children'?)"),
    ("hosts as a list", """
        all:
          children:
            gpu:
              hosts:
                - gpu01
     """, 4, "hosts", "hosts must be a mapping of host names (write 'host:' not '- host')"),
    ("vars not a mapping", """
        all:
          vars: [a, b]
     """, 2, "vars", "vars must be a mapping, got a list"),
    ("wrong type: port", """
        all:
          hosts:
            h1:
              ansible_port: twenty-two
     """, 4, "ansible_port", "host 'h1': expected a port number 1-65535, got 'twenty-two'"),
    ("wrong type: become", """
        all:
          vars:
            ansible_become: maybe
          hosts:
            h1:
     """, 3, "ansible_become", "host 'h1': expected a boolean (true/false), got 'maybe'"),
    ("wrong type: ansible_host list", """
        all:
          hosts:
            h1: {ansible_host: [10.0.0.1, 10.0.0.2]}
     """, 3, "ansible_host", "host 'h1': expected a non-empty string, got ['10.0.0.1', '10.0.0.2']"),
    ("unknown connection", """
        all:
          hosts:
            h1:
              ansible_connection: sssh
     """, 4, "ansible_connection", "host 'h1': unsupported connection 'sssh' (supported: ssh, local, docker) "
                                   "(did you mean 'ssh'?)"),
    ("group cycle", """
        all:
          children:
            a:
              children:
                b:
            b:
              children:
                a:
     """, 8, "a", "group cycle: a -> b -> a"),
    ("group is its own child", """
        all:
          children:
            a:
              children:
                a:
     """, 5, "a", "group cycle: 'a' is listed as its own child"),
    ("all as a child", """
        all:
          children:
            a:
              children:
                all:
     """, 5, "all", "group cycle: 'all' cannot be a child of 'a'"),
    ("conflicting host definitions", """
        all:
          children:
            a:
              hosts:
                gpu01:
                  ansible_host: 10.0.0.1
            b:
              hosts:
                gpu01:
                  ansible_host: 10.0.0.2
     """, 10, "ansible_host", "host 'gpu01' sets it to '10.0.0.2' here but to '10.0.0.1' at {path}:6"),
    ("conflicting group definitions", """
        all:
          children:
            a:
              vars: {port: 1}
            b:
              children:
                a:
                  vars: {port: 2}
     """, 8, "port", "group 'a' sets it to 2 here but to 1 at {path}:4"),
    ("bad range", """
        all:
          hosts:
            gpu[05:01]:
     """, 3, "gpu[05:01]", "bad host range '[05:01]' in 'gpu[05:01]': start is after end"),
    ("bad range widths", """
        all:
          hosts:
            gpu[01:100]:
     """, 3, "gpu[01:100]", "bad host range '[01:100]' in 'gpu[01:100]': zero-padded start and end must have "
                           "the same length"),
    ("duplicate key", """
        all:
          hosts:
            h1:
            h1:
     """, 4, "h1", "duplicate key (first defined at line 3)"),
    ("not a mapping", """
        - all
     """, 1, None, "an inventory must be a YAML mapping of groups (all: {hosts:, children:, vars:}) or an INI "
                   "file ([group] lines)"),
    ("inventory plugin", """
        # dynamic inventory
        plugin: amazon.aws.aws_ec2
     """, 2, "plugin", "inventory plugins are not supported (amazon.aws.aws_ec2); write a static YAML inventory"),
    ("group body not a mapping", """
        all:
          children:
            gpu: [a]
     """, 3, "gpu", "group 'gpu' must be a mapping with hosts/children/vars, got a list"),
    ("priority not an integer", """
        all:
          children:
            g:
              hosts: {h: }
              vars: {ansible_group_priority: high}
     """, 5, "ansible_group_priority", "expected an integer, got 'high'"),
]


@pytest.mark.parametrize("why,text,line,key,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inventory(tmp_path, why, text, line, key, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_inventory(path)
    err = e.value
    assert (err.file, err.line, err.key, err.exit_code) == (path, line, key, 4)
    assert message.replace("{path}", path) in str(err)
    assert "\n" not in str(err)
    # same through the CLI: one line on stderr, exit 4, nothing on stdout
    r = cli("inventory", "-i", path, "--list")
    assert r.returncode == 4, r.stderr
    assert r.stdout == ""
    assert r.stderr.strip() == f"ERROR: {err}"


def test_group_vars_file_errors(tmp_path):
    path = write(tmp_path, "all:\n  hosts:\n    h1:\n")
    gv = tmp_path / "group_vars"
    gv.mkdir()
    (gv / "all.yaml").write_text("a: 1\nb: [\n")
    with pytest.raises(InputError) as e:
        load_inventory(path)
    assert (e.value.file, e.value.line) == (str(gv / "all.yaml"), 3)
    (gv / "all.yaml").write_text("- just\n- a list\n")
    with pytest.raises(InputError) as e:
        load_inventory(path)
    assert str(e.value) == f"{gv / 'all.yaml'}:1: group_vars file must be a mapping of variables, got a list"


def test_missing_inventory(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(InputError) as e:
        load_inventory(missing)
    assert str(e.value) == f"{missing}: inventory not found"
    r = cli("inventory", "-i", missing, "--list")
    assert (r.returncode, r.stderr.strip()) == (4, f"ERROR: {missing}: inventory not found")


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_list_prints_what_ansible_inventory_prints():
    """expected-list.json is `ansible-inventory -i hosts.yaml --list` (ansible-core 2.19.0.dev0), byte for byte."""
    r = cli("inventory", "-i", SMALL_INV, "--list")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(SMALL, "expected-list.json")) as fh:
        assert r.stdout == fh.read()


def test_cli_graph_prints_what_ansible_inventory_prints():
    """expected-graph.txt is `ansible-inventory -i hosts.yaml --graph` (ansible-core 2.19.0.dev0)."""
    r = cli("inventory", SMALL_INV, "--graph")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(SMALL, "expected-graph.txt")) as fh:
        assert r.stdout == fh.read()
    r = cli("inventory", SMALL_INV, "--graph", "gpu")
    assert r.stdout.splitlines() == ["@gpu:", "  |--@h100:", "  |  |--gpu03.lab", "  |--gpu01.lab", "  |--gpu02.lab",
                                     "  |--gpu03.lab"]


def test_cli_host_and_limit():
    r = cli("inventory", "-i", SMALL_INV, "--host", "gpu03.lab")
    assert r.returncode == 0 and json.loads(r.stdout)["ansible_port"] == 2203
    r = cli("inventory", "-i", SMALL_INV, "--list", "--limit", "gpu:!h100")
    data = json.loads(r.stdout)
    assert sorted(data["_meta"]["hostvars"]) == ["gpu01.lab", "gpu02.lab"]
    assert data["gpu"] == {"children": ["h100"], "hosts": ["gpu01.lab", "gpu02.lab"]}
    assert "h100" not in data and "storage" not in data


@pytest.mark.parametrize("args,code,message", [
    (["--list", "--limit", "gpx"], 5, f"ERROR: --limit: no host or group named 'gpx' in {SMALL_INV} "
                                      "(did you mean 'gpu'?)"),
    (["--host", "gpu4.lab"], 5, f"ERROR: --host: no host named 'gpu4.lab' in {SMALL_INV} "
                                "(did you mean 'gpu03.lab'?)"),
    (["--graph", "gpus"], 5, f"ERROR: --graph: no group named 'gpus' in {SMALL_INV} (did you mean 'gpu'?)"),
])
def test_cli_option_errors(args, code, message):
    r = cli("inventory", "-i", SMALL_INV, *args)
    assert (r.returncode, r.stderr.strip(), r.stdout) == (code, message, "")


def test_cli_needs_a_mode():
    r = cli("inventory", "-i", SMALL_INV)
    assert r.returncode == 5 and "one of the arguments --list --graph --host --prometheus-sd is required" in r.stderr
