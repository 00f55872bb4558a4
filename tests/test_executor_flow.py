"""The flow of a play beyond one task on one host, with `local` connection hosts (real shell, files under tmp_path):
block/rescue/always, dynamic include_tasks/include_role (per host, with loops, tasks_from/vars_from/defaults_from,
path-style roles), run_once, delegate_to, modules gpufleet lacks (fail only the hosts that reach them; --strict),
with_first_found/first_found and with_fileglob/fileglob, remote_user/connection keywords, FQCN names and the
magic variables roles read (ansible_version, ansible_play_hosts/batch, ansible_run_tags)."""
from __future__ import annotations

import os

import test_executor_local
from test_executor_local import host_status, report, run, write

from provision.errors import InputError
from provision.inventory import load_inventory
from provision.playbook import load_playbook, validate


inv = test_executor_local.inv   # the fixture: hosts a and b with the local connection, `out` a path under tmp_path


def stats(rep, host):
    return rep["stats"][host]


def failures(rep) -> list:
    """(task, host, msg) of every failed result: the message an assertion shows."""
    return [(t["task"]["name"], h, r.get("msg")) for p in rep["plays"] for t in p["tasks"]
            for h, r in t["hosts"].items() if r.get("failed")]


def test_block_rescue_always_per_host(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - name: guarded
              become: false
              block:
                - name: may fail
                  command: "{{ 'false' if inventory_hostname == 'a' else 'true' }}"
                - name: after failure
                  command: touch {{ out }}-after-{{ inventory_hostname }}
              rescue:
                - name: rescue
                  copy:
                    dest: "{{ out }}-rescued-{{ inventory_hostname }}"
                    content: "{{ ansible_failed_task.name }} rc={{ ansible_failed_result.rc }}"
              always:
                - name: always
                  command: touch {{ out }}-always-{{ inventory_hostname }}
            - name: next
              command: touch {{ out }}-next-{{ inventory_hostname }}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, failures(rep)
    out = str(tmp_path / "out")
    assert open(f"{out}-rescued-a").read() == "may fail rc=1"
    assert not os.path.exists(f"{out}-rescued-b") and not os.path.exists(f"{out}-after-a")
    assert all(os.path.exists(f"{out}-{w}-{h}") for w in ("always", "next") for h in "ab")
    assert os.path.exists(f"{out}-after-b")
    assert (stats(rep, "a")["failed"], stats(rep, "a")["rescued"]) == (0, 1)
    assert host_status(rep, "rescue", "b") is None


def test_block_without_rescue_runs_always_then_fails(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - block:
                - block:
                    - name: boom
                      command: "false"
                  always:
                    - name: inner always
                      command: touch {{ out }}-inner
              rescue:
                - name: outer rescue
                  command: touch {{ out }}-outer
            - block:
                - name: boom again
                  fail: {msg: no}
              always:
                - name: last always
                  command: touch {{ out }}-last
            - name: never
              command: touch {{ out }}-never
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    out = str(tmp_path / "out")
    assert os.path.exists(f"{out}-inner") and os.path.exists(f"{out}-outer") and os.path.exists(f"{out}-last")
    assert not os.path.exists(f"{out}-never")
    assert rc == 2 and stats(rep, "a")["failed"] == 2   # boom (caught only by an always, then rescued), boom again


def test_include_tasks_per_host_unsupported_module_in_skipped_branch(tmp_path, inv, capsys):
    write(tmp_path, "setup-RedHat.yml", """
        - name: rpm only
          yum: {name: kernel-devel}
        """)
    write(tmp_path, "setup-Debian.yml", """
        - name: deb
          command: touch {{ out }}-deb-{{ inventory_hostname }}-{{ item | default('x') }}
        """)
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          vars: {fam: {a: Debian, b: RedHat}}
          tasks:
            - name: by family
              ansible.builtin.include_tasks: "setup-{{ fam[inventory_hostname] }}.yml"
            - include_tasks: setup-Debian.yml
              loop: [1, 2]
              when: inventory_hostname == 'a'
            - name: RedHat only, never for a Debian host
              ansible.legacy.dnf: {name: x}
              when: fam[inventory_hostname] == 'RedHat'
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    out = str(tmp_path / "out")
    assert rc == 2
    assert [os.path.exists(f"{out}-deb-a-{i}") for i in ("x", 1, 2)] == [True, True, True]
    assert stats(rep, "a")["failed"] == 0
    r = host_status(rep, "rpm only", "b")
    assert r["failed"] and "module yum is not supported by gpufleet (RedHat family)" in r["msg"]
    assert host_status(rep, "rpm only", "a") is None


def test_unsupported_modules_are_warnings_then_strict_errors(tmp_path):
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - name: rpm
              yum: {name: x}
              when: ansible_os_family == 'RedHat'
        """)
    inv_path = write(tmp_path, "inv.yaml", "all: {hosts: {a: {ansible_connection: local}}}\n")
    pb, inventory = load_playbook(path), load_inventory(inv_path)
    assert validate(pb, inventory) == [
        f"{path}:5: yum: module yum is not supported by gpufleet (RedHat family); it fails only the hosts that "
        "reach it (its when: ansible_os_family == 'RedHat')"]
    try:
        validate(pb, inventory, strict=True)
        raise AssertionError("strict accepted an unsupported module")
    except InputError as err:
        assert (err.line, err.key) == (5, "yum") and "(--strict)" in str(err)


def test_include_role_tasks_from_vars_from_defaults_from_and_path_roles(tmp_path, inv, capsys):
    r = tmp_path / "lib" / "roles" / "tool"
    write(r, "tasks/main.yml", "- command: touch {{ out }}-main-{{ greeting }}\n")
    write(r, "tasks/extra.yaml", "- command: touch {{ out }}-extra-{{ greeting }}-{{ level }}\n  notify: done\n")
    write(r, "defaults/main.yml", "greeting: hello\nlevel: low\n")
    write(r, "defaults/other.yml", "greeting: hi\nlevel: mid\n")
    write(r, "vars/high.yml", "level: high\n")
    write(r, "handlers/main.yml", "- name: done\n  command: touch {{ out }}-handler\n")
    pb = write(tmp_path, "play/pb.yaml", """
        - hosts: a
          gather_facts: false
          roles:
            - role: ../lib/roles/tool
          tasks:
            - include_role:
                name: ../lib/roles/tool
                tasks_from: extra
                defaults_from: other
                vars_from: high
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, failures(rep)
    out = str(tmp_path / "out")
    assert all(os.path.exists(p) for p in (f"{out}-main-hello", f"{out}-extra-hi-high", f"{out}-handler"))


def test_run_once_and_delegate_to(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - name: once
              shell: echo {{ inventory_hostname }} >> {{ out }}-once
              register: first
              run_once: true
            - name: facts for all
              set_fact: {leader: "{{ inventory_hostname }}"}
              run_once: true
            - name: on b for a
              shell: echo "{{ inventory_hostname }}" > {{ out }}-delegated-{{ inventory_hostname }}
              delegate_to: b
              when: inventory_hostname == 'a'
            - name: to the implicit localhost
              command: touch {{ out }}-local-{{ inventory_hostname }}
              delegate_to: localhost
            - assert:
                that:
                  - first.rc == 0
                  - leader == 'a'
                  - ansible_version.major == 2 and ansible_version.full is version('2.9', '>=')
                  - ansible_play_hosts == ['a', 'b'] and ansible_play_batch == ['a', 'b']
                  - ansible_run_tags == ['all']
                  - "'out' in vars and vars['out'] == out"
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, failures(rep)
    out = str(tmp_path / "out")
    assert open(f"{out}-once").read() == "a\n"
    assert open(f"{out}-delegated-a").read() == "a\n"
    assert os.path.exists(f"{out}-local-a") and os.path.exists(f"{out}-local-b")
    assert host_status(rep, "once", "b") is None


def test_run_once_failure_fails_every_host(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - command: "false"
              run_once: true
            - name: never
              command: touch {{ out }}-never-{{ inventory_hostname }}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 2 and not list(tmp_path.glob("out-never-*"))


def test_first_found_and_fileglob_search_role_and_playbook_dirs(tmp_path, inv, capsys):
    r = tmp_path / "roles" / "pick"
    write(r, "vars/Debian.yml", "picked: debian\n")
    write(r, "files/conf.d/one.conf", "1\n")
    write(r, "files/conf.d/two.conf", "2\n")
    write(tmp_path, "files/top.txt", "top\n")
    write(r, "tasks/main.yml", """
        - name: with_first_found
          set_fact: {found: "{{ item | basename }}"}
          with_first_found:
            - "{{ os_family }}.yml"
            - default.yml
          vars: {os_family: RedHat}
        - set_fact:
            found2: "{{ lookup('first_found', ['nope.txt', 'conf.d/two.conf']) | basename }}"
            globbed: "{{ query('fileglob', 'conf.d/*.conf') | map('basename') | list }}"
            top: "{{ lookup('ansible.builtin.first_found', 'top.txt', skip=True) | basename }}"
        - name: with_fileglob
          command: touch {{ out }}-{{ item | basename }}
          with_fileglob: ["conf.d/*.conf"]
        """)
    write(r, "files/default.yml", "picked: default\n")   # set_fact's with_first_found searches files/
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          roles: [pick]
          tasks:
            - assert:
                that:
                  - found == 'default.yml'
                  - found2 == 'two.conf'
                  - globbed == ['one.conf', 'two.conf']
                  - top == 'top.txt'
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, failures(rep)
    assert os.path.exists(str(tmp_path / "out-one.conf")) and os.path.exists(str(tmp_path / "out-two.conf"))
    # include_vars' with_first_found searches vars/ (Ansible's subdir from the action's name)
    from provision.templating.lookups import file_lookup
    assert file_lookup("first_found", ["Debian.yml"], str(r), str(tmp_path), "vars") == [str(r / "vars/Debian.yml")]
    assert file_lookup("first_found", [{"files": ["x.yml"], "skip": True}], str(r), None, "vars") == []


def test_remote_user_and_connection_keywords(tmp_path, capsys):
    inv_path = write(tmp_path, "inv.yaml", f"""
        all:
          vars: {{out: {tmp_path}/out}}
          hosts:
            nowhere: {{ansible_host: 192.0.2.1}}
        """)
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          connection: local
          remote_user: deploy
          gather_facts: true
          tasks:
            - command: touch {{ out }}-{{ inventory_hostname }}
        """)
    rc, rep = report(capsys, "apply", inv_path, "-p", pb)
    assert rc == 0, failures(rep)
    assert os.path.exists(str(tmp_path / "out-nowhere"))


def test_templated_environment_string_is_accepted(tmp_path):
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          environment: "{{ proxy_env if proxy_env is defined else {} }}"
          tasks:
            - command: env
              environment: {A: b}
        """)
    t = load_playbook(path).plays[0].tasks[0]
    assert t.environment == ("{{ proxy_env if proxy_env is defined else {} }}", {"A": "b"})


def test_notify_naming_no_handler_is_caught_at_load_in_roles_and_includes(tmp_path):
    write(tmp_path, "roles/r/tasks/main.yml", "- command: 'true'\n  notify: restart thing\n")
    write(tmp_path, "roles/r/handlers/main.yml", "- name: restart other\n  command: 'true'\n")
    path = write(tmp_path, "pb.yaml", "- hosts: all\n  roles: [r]\n")
    try:
        load_playbook(path)
        raise AssertionError("a notify naming no handler loaded")
    except InputError as err:
        assert (err.file, err.line, err.key) == (str(tmp_path / "roles/r/tasks/main.yml"), 2, "notify")
        assert "no handler named 'restart thing'" in str(err) and "restart other" in str(err)


def test_remote_user_fills_in_what_the_inventory_leaves_unset_one_connection_per_login(tmp_path):
    from provision.connectors.local import LocalConnector
    from provision.executor import Executor, RunOptions
    from provision.output.jsondoc import JsonReporter
    opened = []

    def factory(host, options):
        opened.append((host.name, host.vars.get("ansible_user")))
        return LocalConnector(host.name)
    inv_path = write(tmp_path, "inv.yaml", """
        all:
          hosts:
            free: {}
            pinned: {ansible_user: carol}
        """)
    path = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          remote_user: alice
          tasks:
            - command: "true"
            - command: "true"
              remote_user: bob
        - hosts: all
          gather_facts: false
          remote_user: alice
          tasks:
            - command: "true"
        """)
    ex = Executor(load_inventory(inv_path), RunOptions(forks=4), JsonReporter(), connector_factory=factory)
    assert ex.run_playbook(load_playbook(path)).exit_code() == 0
    assert sorted(set(opened)) == [("free", "alice"), ("free", "bob"), ("pinned", "carol")]
    assert opened.count(("free", "alice")) == 1 and opened.count(("pinned", "carol")) == 1


def test_apply_lists_unsupported_modules_up_front_and_strict_refuses(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - name: rpm
              rpm_key: {key: x}
              when: false
            - command: "true"
        """)
    rc, out = run(capsys, "apply", inv, "-p", pb)
    assert rc == 0 and "rpm_key: module rpm_key is not supported by gpufleet (RedHat family)" in out.err
    assert "skipping: [a]" in out.out or "skipped" in out.out
    rc, out = run(capsys, "apply", inv, "-p", pb, "--strict")
    assert rc == 4 and f"{pb}:6: rpm_key: module rpm_key is not supported by gpufleet (RedHat family) (--strict)" \
        in out.err and not list(tmp_path.glob("out*"))


def test_templated_ignore_errors_and_block_notify(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - name: tolerated in check mode only
              command: "false"
              ignore_errors: "{{ inventory_hostname == 'a' }}"
            - name: notifying block
              notify: done
              block:
                - command: "true"
          handlers:
            - name: done
              command: touch {{ out }}-handled-{{ inventory_hostname }}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 2
    assert host_status(rep, "tolerated in check mode only", "a")["ignored"] is True
    assert stats(rep, "b")["failed"] == 1
    assert os.path.exists(str(tmp_path / "out-handled-a")) and not os.path.exists(str(tmp_path / "out-handled-b"))


def test_delegate_facts_and_include_apply(tmp_path, inv, capsys):
    write(tmp_path, "sub.yml", """
        - name: tagged by apply
          command: touch {{ out }}-sub-{{ inventory_hostname }}-{{ level }}
        """)
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - name: give b a fact
              set_fact: {from_a: yes}
              delegate_to: b
              delegate_facts: true
              when: inventory_hostname == 'a'
            - include_tasks:
                file: sub.yml
                apply: {tags: [sub], vars: {level: 2}}
              tags: [sub]
            - assert:
                that: (from_a is defined) == (inventory_hostname == 'b')
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb, "--tags", "sub,all")
    assert rc == 0, failures(rep)
    assert os.path.exists(str(tmp_path / "out-sub-a-2")) and os.path.exists(str(tmp_path / "out-sub-b-2"))
    rc, rep = report(capsys, "apply", inv, "-p", pb, "--skip-tags", "sub")
    assert rc == 0, failures(rep)
    assert host_status(rep, "tagged by apply", "a") is None


def test_syntax_check_warns_of_unsupported_modules_and_strict_refuses(tmp_path, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          tasks:
            - yum_repository: {name: cuda, baseurl: http://x}
              when: ansible_os_family == 'RedHat'
        """)
    rc, out = run(capsys, "apply", "-p", pb, "--syntax-check")
    assert rc == 0 and "[WARNING]: " in out.err and "yum_repository is not supported by gpufleet" in out.err
    rc, out = run(capsys, "apply", "-p", pb, "--syntax-check", "--strict")
    assert rc == 4 and f"{pb}:4: yum_repository:" in out.err


def test_play_batch_and_play_hosts_with_serial(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          serial: 1
          tasks:
            - copy:
                dest: "{{ out }}-{{ inventory_hostname }}"
                content: "{{ ansible_play_batch | join(',') }}/{{ ansible_play_hosts | join(',') }}"
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, failures(rep)
    assert [open(str(tmp_path / f"out-{h}")).read() for h in "ab"] == ["a/a,b", "b/a,b"]


def test_hostvars_of_another_host_hold_its_registered_results_and_facts(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - name: token on the first host
              shell: echo token-{{ inventory_hostname }}
              register: join
              run_once: true
            - set_fact: {mine: "{{ inventory_hostname }}-fact"}
            - copy:
                dest: "{{ out }}-{{ inventory_hostname }}"
                content: "{{ hostvars['a'].join.stdout }} {{ hostvars['b'].mine }}"
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, failures(rep)
    assert [open(str(tmp_path / f"out-{h}")).read() for h in "ab"] == ["token-a b-fact"] * 2
