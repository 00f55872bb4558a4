"""ansible-playbook's command-line habits and ansible.cfg: `apply -i INV PLAYBOOK` and `apply INV PLAYBOOK`,
several -i, host lists, -c, -u, --private-key, --ssh-common-args, --force-handlers, --syntax-check, --list-*,
--version, -e @file; ansible.cfg found in Ansible's order, CLI beats it; bad values: one line, exit 5."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from provision import ansiblecfg
from provision.cli import main
from provision.connectors import ConnectOptions, parse_ssh_args
from provision.errors import InputError


def write(tmp_path, name, text) -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


@pytest.fixture(autouse=True)
def no_user_cfg(tmp_path, monkeypatch):
    """No ansible.cfg from the developer's home or the repository leaks in."""
    for var in ("ANSIBLE_CONFIG", *(v[2] for v in ansiblecfg.SETTINGS.values())):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROVISION_HOST_KEY_CHECKING", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ansiblecfg, "SYSTEM_CFG", str(tmp_path / "etc-ansible.cfg"))


@pytest.fixture
def files(tmp_path):
    inv = write(tmp_path, "inv.ini", f"""
        [gpu]
        a ansible_connection=local
        b ansible_connection=local
        [gpu:vars]
        out={tmp_path}/out
        """)
    pb = write(tmp_path, "site.yml", """
        - hosts: gpu
          name: Configure
          gather_facts: false
          tasks:
            - name: make dir
              file: {path: "{{ out }}", state: directory}
              tags: [setup]
            - name: mark
              copy: {dest: "{{ out }}/{{ inventory_hostname }}", content: "x\\n"}
              notify: handled
              tags: [mark, setup]
            - name: fail on b
              fail: {msg: boom}
              when: inventory_hostname == 'b'
          handlers:
            - name: handled
              copy: {dest: "{{ out }}/{{ inventory_hostname }}.handled", content: "h\\n"}
        """)
    return inv, pb


def run(capsys, *argv):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("form", ["-i INV PB", "INV PB", "INV -p PB", "-i INV -p PB"])
def test_inventory_and_playbook_forms(tmp_path, files, capsys, form):
    inv, pb = files
    argv = form.replace("INV", inv).replace("PB", pb).split()
    rc, out, err = run(capsys, "apply", *argv, "--list-hosts")
    assert rc == 0, err
    assert out == f"\nplaybook: {pb}\n\n  play #1 (gpu): Configure\tTAGS: []\n    pattern: ['gpu']\n" \
                  "    hosts (2):\n      a\n      b\n"


def test_list_tasks_and_tags(files, capsys):
    inv, pb = files
    rc, out, _ = run(capsys, "check", "-i", inv, pb, "--list-tasks", "--tags", "mark")
    assert rc == 0 and out.splitlines()[-2:] == ["    tasks:", "      mark\tTAGS: [mark, setup]"]
    rc, out, _ = run(capsys, "apply", "-i", inv, pb, "--list-tags")
    assert rc == 0 and out.splitlines()[-1] == "      TASK TAGS: [mark, setup]"


def test_syntax_check_needs_no_inventory_and_reports_file_line(tmp_path, files, capsys):
    _, pb = files
    rc, out, _ = run(capsys, "apply", "--syntax-check", "-p", pb)
    assert (rc, out) == (0, f"\nplaybook: {pb}\n")
    bad = write(tmp_path, "bad.yml", "- hosts: all\n  tasks:\n    - name: x\n      debug: {msg: [}\n")
    rc, out, err = run(capsys, "apply", "--syntax-check", "-p", bad)
    assert rc == 4 and f"{bad}:4" in err and len(err.strip().splitlines()) == 1


def test_force_handlers_run_on_failed_hosts(tmp_path, files, capsys):
    inv, pb = files
    rc, _, _ = run(capsys, "apply", "-i", inv, pb, "--no-retry-file")
    assert rc == 2
    assert os.path.exists(tmp_path / "out" / "a.handled") and not os.path.exists(tmp_path / "out" / "b.handled")
    for f in (tmp_path / "out").iterdir():
        f.unlink()
    rc, _, _ = run(capsys, "apply", "-i", inv, pb, "--no-retry-file", "--force-handlers")
    assert rc == 2 and os.path.exists(tmp_path / "out" / "b.handled")


def test_host_list_and_connection_flag(tmp_path, capsys):
    pb = write(tmp_path, "pb.yml", f"""
        - hosts: all
          gather_facts: false
          tasks:
            - copy: {{dest: "{tmp_path}/{{{{ inventory_hostname }}}}", content: "{{{{ ansible_port | default('none') }}}}"}}
        """)
    rc, _, err = run(capsys, "apply", "-i", "h1,h2:2022,", "-c", "local", pb, "--no-retry-file")
    assert rc == 0, err
    assert ((tmp_path / "h1").read_text().strip(), (tmp_path / "h2").read_text().strip()) == ("none", "2022")


def test_several_inventories(tmp_path, capsys):
    a = write(tmp_path, "a.ini", "[gpu]\ngpu01\n")
    b = write(tmp_path, "b.yml", "all:\n  hosts:\n    nas01:\n")
    rc, out, _ = run(capsys, "inventory", "-i", a, "-i", b, "-i", "x1,", "--list")
    data = json.loads(out)
    # as ansible-inventory: x1 is put in ungrouped as read, nas01 (listed under all) when sources are reconciled
    assert rc == 0 and data["ungrouped"] == {"hosts": ["x1", "nas01"]} and data["gpu"] == {"hosts": ["gpu01"]}


def test_extra_vars_from_file(tmp_path, files, capsys):
    inv, _ = files
    ev = write(tmp_path, "ev.json", '{"greeting": "hi"}')
    pb = write(tmp_path, "pb.yml", f"""
        - hosts: a
          gather_facts: false
          tasks:
            - copy: {{dest: "{tmp_path}/greeting", content: "{{{{ greeting }}}}"}}
        """)
    rc, _, err = run(capsys, "apply", "-i", inv, pb, "-e", f"@{ev}")
    assert rc == 0, err
    assert (tmp_path / "greeting").read_text() == "hi"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("provision (gpufleet) ")
    with pytest.raises(SystemExit):
        main(["apply", "--version"])
    assert capsys.readouterr().out.startswith("provision (gpufleet) ")


@pytest.mark.parametrize("argv,message", [
    (["--ssh-common-args", "-o ControlMaster=auto"], "ERROR: --ssh-common-args: -o ControlMaster=auto is not "
                                                     "supported (paramiko honours -o ProxyJump=HOST / -J HOST"),
    (["--ssh-common-args=-A"], "ERROR: --ssh-common-args: '-A' is not supported"),
    (["--become-method", "su"], "ERROR: --become-method: only sudo is supported, got 'su'"),
    (["--private-key", "/nonexistent/key"], "ERROR: /nonexistent/key: --private-key: no such key file"),
    (["-c", "winrm"], "provision apply: error: argument -c/--connection: invalid choice: 'winrm'"),
    (["-f", "0"], "ERROR: --forks: --forks must be at least 1, got 0"),
])
def test_bad_values_one_line_exit_5(files, capsys, argv, message):
    inv, pb = files
    try:
        rc, _, err = run(capsys, "apply", "-i", inv, pb, *argv)
    except SystemExit as e:
        rc, err = e.code, capsys.readouterr().err
    assert rc == 5 and err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_ssh_common_args_parsed():
    assert parse_ssh_args("-o ProxyJump=jump@bastion:2222 -o StrictHostKeyChecking=no "
                          "-oUserKnownHostsFile=/tmp/kh -o Port=2200", "k") == {
        "proxy_jump": "jump@bastion:2222", "host_key_checking": "off", "known_hosts_file": "/tmp/kh", "port": 2200}
    assert parse_ssh_args("-J bastion", "k") == {"proxy_jump": "bastion"}
    with pytest.raises(InputError):
        parse_ssh_args("-o StrictHostKeyChecking=maybe", "k")


# ---------------------------------------------------------------------------------------------- ansible.cfg

CFG = """
    [defaults]
    inventory = inv.ini, extra.yml
    roles_path = roles:/opt/roles
    forks = 7
    remote_user = ops   ; a comment
    private_key_file = ~/.ssh/id_test
    host_key_checking = False
    timeout = 30

    [privilege_escalation]
    become = true
    become_user = admin
    become_method = sudo
    become_ask_pass = no
    """


def test_cfg_read_as_ansible_reads_it(tmp_path):
    path = write(tmp_path, "ansible.cfg", CFG)
    cfg = ansiblecfg.load()
    assert cfg.path == path
    assert cfg.inventory == (str(tmp_path / "inv.ini"), str(tmp_path / "extra.yml"))
    assert cfg.roles_path == (str(tmp_path / "roles"), "/opt/roles")
    assert (cfg.forks, cfg.remote_user, cfg.host_key_checking, cfg.timeout) == (7, "ops", False, 30.0)
    assert cfg.private_key_file == os.path.join(str(tmp_path / "home"), ".ssh", "id_test")
    assert (cfg.become, cfg.become_user, cfg.become_method, cfg.become_ask_pass) == (True, "admin", "sudo", False)


def test_cfg_search_order(tmp_path, monkeypatch):
    home = write(tmp_path, "home/.ansible.cfg", "[defaults]\nforks = 3\n")
    assert ansiblecfg.find() == home
    cwd = write(tmp_path, "ansible.cfg", "[defaults]\nforks = 4\n")
    assert ansiblecfg.find() == cwd                                   # ./ansible.cfg before ~/.ansible.cfg
    env = write(tmp_path, "conf/ansible.cfg", "[defaults]\nforks = 5\n")
    monkeypatch.setenv("ANSIBLE_CONFIG", str(tmp_path / "conf"))
    assert ansiblecfg.find() == env and ansiblecfg.load().forks == 5   # ANSIBLE_CONFIG first (a directory too)


@pytest.mark.parametrize("text,message", [
    ("[defaults]\nforks = many\n", "ansible.cfg:2: forks: expected a number, got 'many'"),
    ("[defaults]\nhost_key_checking = perhaps\n", "ansible.cfg:2: host_key_checking: expected a boolean"),
    ("[privilege_escalation]\n\nbecome_method = su\n", "ansible.cfg:3: become_method: only sudo is supported, "
                                                       "got 'su'"),
])
def test_cfg_bad_values(tmp_path, capsys, files, text, message):
    write(tmp_path, "ansible.cfg", text)
    inv, pb = files
    rc, _, err = run(capsys, "apply", "-i", inv, pb, "--list-hosts")
    assert rc == 5 and message in err and len(err.strip().splitlines()) == 1


def test_cfg_gives_defaults_and_cli_wins(tmp_path, files, capsys):
    from provision.commands.apply import run_options
    from provision.cli import build_parser
    inv, pb = files
    write(tmp_path, "ansible.cfg", CFG.replace("~/.ssh/id_test", pb))   # an existing file as the key
    args = build_parser().parse_args(["apply", "-i", inv, pb])
    opts = run_options(args)
    assert (opts.forks, opts.become, opts.become_user) == (7, True, "admin")
    c: ConnectOptions = opts.connect
    assert (c.remote_user, c.private_key, c.host_key_checking, c.connect_timeout) == ("ops", pb, "off", 30.0)
    args = build_parser().parse_args(["apply", "-i", inv, pb, "-f", "2", "-u", "me", "--host-key-checking", "yes",
                                      "-T", "5", "--become-user", "root"])
    opts = run_options(args)
    assert (opts.forks, opts.connect.remote_user, opts.connect.host_key_checking, opts.connect.connect_timeout,
            opts.become_user) == (2, "me", "yes", 5.0, "root")


def test_cfg_inventory_and_playbook_positional(tmp_path, files, capsys):
    inv, pb = files
    write(tmp_path, "ansible.cfg", "[defaults]\ninventory = inv.ini\n")
    rc, out, err = run(capsys, "apply", pb, "--list-hosts")          # `ansible-playbook site.yml`
    assert rc == 0, err
    assert out.splitlines()[-2:] == ["      a", "      b"]
    rc, out, _ = run(capsys, "inventory", "--list")
    assert rc == 0 and json.loads(out)["gpu"] == {"hosts": ["a", "b"]}


def test_cfg_roles_path_finds_roles(tmp_path, files, capsys, monkeypatch):
    inv, _ = files
    write(tmp_path, "shared/roles/gpu_base/tasks/main.yml", "- name: base task\n  debug: {msg: hi}\n")
    write(tmp_path, "ansible.cfg", "[defaults]\nroles_path = shared/roles\n")
    pb = write(tmp_path, "pbs/site.yml", "- hosts: gpu\n  gather_facts: false\n  roles: [gpu_base]\n")
    rc, out, err = run(capsys, "apply", "-i", inv, pb, "--list-tasks")
    assert rc == 0, err
    assert out.splitlines()[-1] == "      gpu_base : base task\tTAGS: []"
    monkeypatch.setenv("ANSIBLE_ROLES_PATH", str(tmp_path / "elsewhere"))    # the environment beats ansible.cfg
    rc, _, err = run(capsys, "apply", "-i", inv, pb, "--list-tasks")
    assert rc == 4 and "role 'gpu_base' not found" in err


@pytest.mark.parametrize("form", ["-i INV gpu", "INV gpu"])
def test_run_and_ping_take_the_inventory_either_way(files, capsys, form):
    inv, _ = files
    rc, out, err = run(capsys, "run", *form.replace("INV", inv).split(), "-m", "command", "-a", "true")
    assert rc == 0, err
    assert out.count("| CHANGED =>") == 2
    rc, out, err = run(capsys, "ping", "-i", "h1,h2,", "-c", "local")
    assert rc == 0 and out.count("SUCCESS") == 2, err


def test_ansible_environment_beats_cfg_and_cli_beats_both(tmp_path, files, capsys, monkeypatch):
    from provision.cli import build_parser
    from provision.commands.apply import run_options
    inv, pb = files
    write(tmp_path, "ansible.cfg", "[defaults]\nforks = 7\nhost_key_checking = True\n")
    monkeypatch.setenv("ANSIBLE_FORKS", "9")
    monkeypatch.setenv("ANSIBLE_HOST_KEY_CHECKING", "False")
    monkeypatch.setenv("ANSIBLE_INVENTORY", "inv.ini")
    opts = run_options(build_parser().parse_args(["apply", pb]))
    assert (opts.forks, opts.connect.host_key_checking) == (9, "off")
    assert ansiblecfg.load().inventory == (inv,)
    assert run_options(build_parser().parse_args(["apply", "-f", "3", pb])).forks == 3
    monkeypatch.setenv("ANSIBLE_FORKS", "lots")
    rc, _, err = run(capsys, "apply", "-i", inv, pb)
    assert (rc, err.strip()) == (5, "ERROR: ANSIBLE_FORKS: expected a number, got 'lots'")


def test_connect_takes_cli_defaults_and_the_inventory_wins(monkeypatch, tmp_path):
    """What reaches the SSH connector: -u/--private-key/-c/--ssh-common-args where the inventory says nothing,
    the inventory's own values (ansible_ssh_common_args too) where it does. No connection is opened."""
    import provision.connectors.ssh as ssh
    from provision.connectors import connect
    from provision.inventory import load_inventory
    seen = {}
    monkeypatch.setattr(ssh, "SSHConnector", lambda name, **kw: seen.setdefault(name, kw))
    inv = load_inventory(write(tmp_path, "inv.ini", """
        plain
        own ansible_user=me ansible_port=2200 ansible_ssh_private_key_file=/k/own "ansible_ssh_common_args='-J jump2 -o StrictHostKeyChecking=accept-new'"
        loc ansible_connection=local
        """))
    opts = ConnectOptions(remote_user="ops", private_key="/k/cli", proxy_jump="jump1", port=2022,
                          known_hosts_file="/kh", host_key_checking="yes", connection="ssh")
    for h in ("plain", "own"):
        connect(inv.hosts[h], opts)
    assert {k: seen["plain"][k] for k in ("user", "port", "key_files", "proxy_jump", "known_hosts_file",
                                          "host_key_checking")} == {
        "user": "ops", "port": 2022, "key_files": ["/k/cli"], "proxy_jump": "jump1", "known_hosts_file": "/kh",
        "host_key_checking": "yes"}
    assert {k: seen["own"][k] for k in ("user", "port", "key_files", "proxy_jump", "host_key_checking")} == {
        "user": "me", "port": 2200, "key_files": ["/k/own"], "proxy_jump": "jump2", "host_key_checking": "accept-new"}
    assert type(connect(inv.hosts["loc"], opts)).__name__ == "LocalConnector"
    assert type(connect(inv.hosts["plain"], ConnectOptions(connection="local"))).__name__ == "LocalConnector"
