"""Loading the constructs real Ansible roles use (written here in the same idioms, not copied): FQCN names for
modules and keywords, blocks with rescue/always, dynamic includes that read nothing at load time (a broken
RedHat-only file never fails a Debian run), the names included files define for the static check, role paths,
modules gpufleet lacks (a typo stays an error), with_first_found/with_fileglob and the notify check."""
from __future__ import annotations

import os
import textwrap

import pytest

from provision.errors import InputError
from provision.inventory import load_inventory
from provision.playbook import load_included, load_playbook, validate


def write(base, name, text) -> str:
    p = os.path.join(str(base), name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as fh:
        fh.write(textwrap.dedent(text).lstrip("\n"))
    return p


@pytest.fixture
def inventory(tmp_path):
    return load_inventory(write(tmp_path, "inv.yaml", "all: {hosts: {deb: {ansible_connection: local}}}\n"))


def test_fqcn_names_for_modules_and_keywords(tmp_path):
    write(tmp_path, "more.yml", "- ansible.legacy.command: 'true'\n")
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - ansible.builtin.service: {name: ssh, state: started}
            - ansible.builtin.systemd_service: {name: ssh, enabled: true}
            - ansible.legacy.shell: echo hi
            - ansible.builtin.set_fact: {x: 1}
            - ansible.legacy.debug: msg=hi
            - ansible.builtin.meta: flush_handlers
            - ansible.builtin.import_tasks: more.yml
            - ansible.legacy.include_tasks: more.yml
        """)
    tasks = load_playbook(path).plays[0].tasks
    assert [t.module for t in tasks] == ["systemd", "systemd", "shell", "set_fact", "debug", "meta", "command",
                                         "include_tasks"]
    assert not any(t.unsupported for t in tasks)


def test_unknown_module_typo_is_an_error_an_ansible_module_is_unsupported(tmp_path):
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - comand: ls
        """)
    with pytest.raises(InputError) as e:
        load_playbook(path)
    assert (e.value.line, e.value.key) == (3, "comand") and "did you mean 'command'" in str(e.value)
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - yum: name=kernel-devel
            - community.general.zypper: {name: x}
            - dnf: {name: x}
              loop: [1]
              when: ansible_os_family == 'RedHat'
        """)
    tasks = load_playbook(path).plays[0].tasks
    assert [(t.module, t.unsupported) for t in tasks] == [
        ("yum", "module yum is not supported by gpufleet (RedHat family)"),
        ("zypper", "module community.general.zypper is not supported by gpufleet (Suse family)"),
        ("dnf", "module dnf is not supported by gpufleet (RedHat family)")]


def test_dynamic_include_reads_nothing_at_load_time(tmp_path, inventory):
    write(tmp_path, "setup-RedHat.yml", """
        - name: broken only for RedHat
          yum: {name: x}
          registr: typo
        """)
    write(tmp_path, "setup-Debian.yml", """
        - command: 'true'
          register: deb_done
        - set_fact: {pkg_list: [a]}
        """)
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - include_tasks: "setup-{{ ansible_os_family }}.yml"
            - debug: msg="{{ deb_done.rc }} {{ pkg_list }}"
        """)
    pb = load_playbook(path)          # the RedHat file's typo is not read here
    validate(pb, inventory)           # names the included files define are known to the static check
    inc = pb.plays[0].tasks[0]
    assert set(inc.defines) >= {"deb_done", "pkg_list"}
    assert [t.module for t in load_included(inc, {"file": "setup-Debian.yml"}).tasks] == ["command", "set_fact"]
    with pytest.raises(InputError) as e:   # read for a RedHat host: the error names the file and line
        load_included(inc, {"file": "setup-RedHat.yml"})
    assert (e.value.file, e.value.line, e.value.key) == (str(tmp_path / "setup-RedHat.yml"), 3, "registr")


def test_block_sections_frames_and_inherited_keywords(tmp_path):
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - block:
                - command: a
              rescue:
                - command: b
              always:
                - command: c
              when: x is defined
              become: true
              tags: [t]
        """)
    a, b, c = load_playbook(path).plays[0].tasks
    assert [f.section for t in (a, b, c) for f in t.frames] == ["block", "rescue", "always"]
    assert len({f.id for t in (a, b, c) for f in t.frames}) == 1 and a.frames[0].rescue and a.frames[0].always
    assert all(t.when == ("x is defined",) and t.become and t.tags == ("t",) for t in (a, b, c))


def test_include_role_errors_name_the_file(tmp_path):
    write(tmp_path, "roles/tool/tasks/main.yml", "- command: 'true'\n")
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - include_role: {name: tools}
        """)
    with pytest.raises(InputError) as e:
        load_playbook(path)
    assert (e.value.line, e.value.key) == (3, "include_role") and "did you mean 'tool'" in str(e.value)
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - import_role: {name: tool, tasks_from: missing}
        """)
    with pytest.raises(InputError) as e:
        load_playbook(path)
    assert e.value.key == "tasks_from" and "role 'tool' has no tasks/missing" in str(e.value)


def test_play_remote_user_connection_and_environment_template(tmp_path):
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          remote_user: ubuntu
          connection: local
          environment: "{{ proxy_env | default({}) }}"
          tasks:
            - command: 'true'
              remote_user: root
              delegate_to: "{{ groups['all'][0] }}"
              run_once: true
        """)
    play = load_playbook(path).plays[0]
    t = play.tasks[0]
    assert (play.remote_user, play.connection) == ("ubuntu", "local")
    assert (t.remote_user, t.connection, t.delegate_to, t.run_once) == ("root", "local", "{{ groups['all'][0] }}",
                                                                         True)
    assert t.environment == ("{{ proxy_env | default({}) }}",)


def test_dependency_roles_beside_a_path_role_vars_magic_and_fact_module_names(tmp_path, inventory):
    write(tmp_path, "lib/base/tasks/main.yml", "- command: 'true'\n")
    write(tmp_path, "lib/app/meta/main.yml", "dependencies: [base]\n")
    write(tmp_path, "lib/app/tasks/main.yml", """
        - command: 'true'
          no_log: "{{ hide | default(true) }}"
          when: "'x' in vars"
        - service_facts:
        - debug: msg="{{ services | length }}"
        """)
    path = write(tmp_path, "play/pb.yaml", "- hosts: all\n  roles: [{role: ../lib/app}]\n")
    pb = load_playbook(path)
    base, cmd = pb.plays[0].tasks[:2]
    assert (base.role, cmd.role, cmd.no_log) == ("base", "app", True)
    validate(pb, inventory)


def test_role_entry_keywords_reach_its_tasks(tmp_path):
    write(tmp_path, "roles/r/tasks/main.yml", "- command: 'true'\n")
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          roles:
            - {role: r, remote_user: admin, connection: ssh, ignore_errors: true, become: true, level: 3}
        """)
    t = load_playbook(path).plays[0].tasks[0]
    assert (t.remote_user, t.connection, t.ignore_errors, t.become, dict(t.vars)) == ("admin", "ssh", True, True,
                                                                                     {"level": 3})


def test_action_and_local_action_forms(tmp_path):
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - local_action: command echo hi
            - action: {module: ansible.builtin.copy, dest: /tmp/x, content: y}
            - local_action:
                module: shell
                cmd: date
        """)
    a, b, c = load_playbook(path).plays[0].tasks
    assert (a.module, dict(a.args), a.delegate_to, a.source.line) == ("command", {"_raw_params": "echo hi"},
                                                                     "localhost", 3)
    assert (b.module, dict(b.args)["dest"], b.delegate_to) == ("copy", "/tmp/x", None)
    assert (c.module, c.delegate_to) == ("shell", "localhost")


def test_strategy_free_runs_as_linear_and_debug_is_refused(tmp_path):
    path = write(tmp_path, "pb.yaml", "- hosts: all\n  strategy: free\n  tasks: [{command: 'true'}]\n")
    assert load_playbook(path).plays[0].tasks[0].module == "command"
    path = write(tmp_path, "pb.yaml", "- hosts: all\n  strategy: debug\n")
    with pytest.raises(InputError) as e:
        load_playbook(path)
    assert (e.value.line, e.value.key) == (2, "strategy") and "only linear, free, host_pinned" in str(e.value)


def test_a_block_notify_naming_no_handler_points_at_the_block(tmp_path):
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - notify: restart dockr
              block:
                - command: 'true'
          handlers:
            - {name: restart docker, command: 'true'}
        """)
    with pytest.raises(InputError) as e:
        load_playbook(path)
    assert (e.value.line, e.value.key) == (3, "notify") and "did you mean 'restart docker'" in str(e.value)
