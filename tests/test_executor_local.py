"""Executor semantics with `local` connection hosts (fast; real shell, real files under tmp_path): loops, register,
when, changed_when/failed_when, until/retries, ignore_errors, set_fact, tags, --start-at-task, handlers and
flush_handlers, any_errors_fatal, extra vars precedence, retry files, template/lineinfile/file/wait_for."""
from __future__ import annotations

import json
import textwrap

import pytest

from provision.cli import main


def write(tmp_path, name, text) -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return str(p)


@pytest.fixture
def inv(tmp_path):
    return write(tmp_path, "inv.yaml", f"""
        all:
          vars:
            out: {tmp_path}/out
          hosts:
            a: {{ansible_connection: local}}
            b: {{ansible_connection: local}}
        """)


def run(capsys, *argv):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def report(capsys, *argv):
    rc, out = run(capsys, *argv, "--json")
    return rc, json.loads(out.out)


def host_status(rep, task, host):
    for play in rep["plays"]:
        for t in play["tasks"]:
            if t["task"]["name"] == task and host in t["hosts"]:
                return t["hosts"][host]
    return None


def test_loop_register_when_changed_failed_when(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          tasks:
            - file: {path: "{{ out }}/{{ inventory_hostname }}", state: directory}
            - name: loop
              copy: {dest: "{{ out }}/{{ inventory_hostname }}/{{ item }}", content: "{{ item }}\\n"}
              loop: [x, y, z]
              when: item != 'z'
              register: looped
            - name: count
              shell: ls {{ out }}/{{ inventory_hostname }} | wc -l
              register: n
              changed_when: false
              failed_when: n.stdout | int != 2
            - name: check register shape
              assert:
                that:
                  - looped.results | length == 3
                  - looped.results[2].skipped
                  - looped.changed
                  - n.rc == 0 and n.stdout_lines == ['2']
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, rep
    assert host_status(rep, "count", "a")["status"] == "ok"
    assert [r["status"] for r in host_status(rep, "loop", "a")["results"]] == ["changed", "changed", "skipped"]
    assert sorted(p.name for p in (tmp_path / "out" / "b").iterdir()) == ["x", "y"]


def test_until_retries_ignore_errors_set_fact_and_extra_vars(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          vars: {greeting: play}
          tasks:
            - name: flaky
              shell: echo x >> {{ out }}-{{ inventory_hostname }}.cnt; wc -l < {{ out }}-{{ inventory_hostname }}.cnt
              register: c
              until: c.stdout | int >= 3
              retries: 5
              delay: 0
            - name: broken but ignored
              command: /bin/false
              ignore_errors: true
            - set_fact: {computed: "{{ c.stdout | int * 10 }}"}
            - name: see
              assert: {that: ["computed | int == 30", "greeting == 'cli'"]}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb, "-e", "greeting=cli")
    assert rc == 0, rep
    assert rep["stats"]["a"]["ignored"] == 1 and rep["stats"]["a"]["failed"] == 0
    assert host_status(rep, "broken but ignored", "a")["ignored"] is True
    assert (tmp_path / "out-a.cnt").read_text().count("x") == 3


def test_handlers_once_in_order_and_flush(tmp_path, inv, capsys):
    log = tmp_path / "handlers.log"
    pb = write(tmp_path, "pb.yaml", f"""
        - hosts: a
          gather_facts: false
          tasks:
            - {{name: t1, command: "true", notify: [second, first]}}
            - {{name: t2, command: "true", notify: first}}
            - {{name: t3, command: "true", notify: first, changed_when: false}}
            - meta: flush_handlers
            - {{name: t4, command: "true", notify: second}}
          handlers:
            - {{name: first, shell: "echo first >> {log}"}}
            - {{name: second, shell: "echo second >> {log}"}}
            - {{name: never, shell: "echo never >> {log}"}}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0
    assert log.read_text().split() == ["first", "second", "second"]


def test_tags_and_start_at_task(tmp_path, inv, capsys):
    log = tmp_path / "tags.log"
    pb = write(tmp_path, "pb.yaml", f"""
        - hosts: a
          gather_facts: false
          tasks:
            - {{name: one, shell: "echo one >> {log}", tags: [x]}}
            - {{name: two, shell: "echo two >> {log}", tags: [y]}}
            - {{name: three, shell: "echo three >> {log}", tags: [always]}}
            - {{name: four, shell: "echo four >> {log}", tags: [never, debug]}}
        """)
    assert run(capsys, "apply", inv, "-p", pb, "--tags", "y")[0] == 0
    assert log.read_text().split() == ["two", "three"]
    log.unlink()
    assert run(capsys, "apply", inv, "-p", pb, "--skip-tags", "x,always", "--tags", "all,debug")[0] == 0
    assert log.read_text().split() == ["two", "four"]
    log.unlink()
    assert run(capsys, "apply", inv, "-p", pb, "--start-at-task", "thr*")[0] == 0
    assert log.read_text().split() == ["three"]


def test_any_errors_fatal_and_retry_file(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: all
          gather_facts: false
          any_errors_fatal: true
          tasks:
            - fail: {msg: stop}
              when: inventory_hostname == 'a'
            - name: after
              copy: {dest: "{{ out }}-{{ inventory_hostname }}", content: "x"}
        """)
    rc, out = run(capsys, "apply", inv, "-p", pb, "--retry-dir", tmp_path / "retry")
    assert rc == 2
    assert not (tmp_path / "out-a").exists() and not (tmp_path / "out-b").exists()
    assert (tmp_path / "retry" / "pb.retry").read_text() == "a\n"
    assert "to retry, use: --limit @" in out.out


def test_template_lineinfile_file_wait_for(tmp_path, inv, capsys):
    write(tmp_path, "templates/app.conf.j2", "name={{ inventory_hostname }}\n{% for p in ports %}port={{ p }}\n"
                                             "{% endfor %}")
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          vars: {ports: [1, 2]}
          tasks:
            - template: {src: app.conf.j2, dest: "{{ out }}.conf", mode: "0600"}
            - lineinfile: {path: "{{ out }}.extra", regexp: "^port=", line: "port=3", create: true}
            - lineinfile: {path: "{{ out }}.extra", line: "first", insertbefore: BOF}
            - file: {path: "{{ out }}.link", state: link, src: "{{ out }}.conf"}
            - wait_for: {path: "{{ out }}.extra", search_regex: "port=3", timeout: 5}
            - name: absent path times out
              wait_for: {path: "{{ out }}.nope", timeout: 1}
              ignore_errors: true
              register: w
            - assert: {that: [w.failed]}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, rep
    assert (tmp_path / "out.conf").read_text() == "name=a\nport=1\nport=2\n"
    assert (tmp_path / "out.extra").read_text() == "first\nport=3\n"
    assert oct((tmp_path / "out.conf").stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "out.link").resolve() == tmp_path / "out.conf"
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rep["stats"]["a"]["changed"] == 0


def test_adhoc_run_and_bad_module_args(tmp_path, inv, capsys):
    rc, out = run(capsys, "run", inv, "b", "-m", "shell", "-a", "echo hi-$((1+1))")
    assert rc == 0 and "b | CHANGED | rc=0 >>\nhi-2" in out.out
    rc, out = run(capsys, "run", inv, "all", "-m", "copy", "-a", "dest=/tmp/x contnt=y")
    assert rc == 5 and "did you mean 'content'" in out.err
    rc, out = run(capsys, "run", inv, "all", "-m", "cpy", "-a", "dest=/tmp/x")
    assert rc == 5 and "did you mean 'copy'" in out.err


def test_forks_zero_is_an_option_error(inv, tmp_path, capsys):
    pb = write(tmp_path, "pb.yaml", "- hosts: all\n  tasks: [{ping: {}}]\n")
    rc, out = run(capsys, "apply", inv, "-p", pb, "-f", "0")
    assert rc == 5 and "--forks" in out.err


def test_secrets_masked_in_output_and_verbose_commands(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          vars: {db_password: hunter2-very-secret, note: plain-value}
          tasks:
            - debug: {msg: "pw is {{ db_password }} / {{ note }}"}
            - debug: {var: db_password}
            - name: hidden
              shell: "echo {{ note }}-nolog"
              no_log: true
            - name: visible
              shell: "echo {{ db_password }}"
        """)
    rc, out = run(capsys, "apply", inv, "-p", pb, "-vvv")
    assert rc == 0
    assert "hunter2-very-secret" not in out.out + out.err
    assert "pw is ******** / plain-value" in out.out and '"db_password": "********"' in out.out
    assert "plain-value-nolog" not in out.out and "(hidden: no_log)" in out.out
    assert "<a> EXEC echo ********" in out.out



def test_a_templated_secret_is_masked_as_rendered(tmp_path, inv, capsys):
    """A secret-named variable built from others is masked by its rendered value (not its template text)."""
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          vars: {base_word: correcthorse, api_token: "{{ base_word }}-battery-staple"}
          tasks:
            - name: visible
              shell: "echo token={{ api_token }} && echo {{ base_word }}-battery-staple"
        """)
    rc, out = run(capsys, "apply", inv, "-p", pb, "-vvv")
    assert rc == 0
    assert "correcthorse-battery-staple" not in out.out + out.err
    assert "<a> EXEC echo token=******** && echo ********" in out.out

def test_role_templates_files_defaults_and_handlers(tmp_path, inv, capsys):
    write(tmp_path, "roles/web/defaults/main.yaml", "port: 8080\n")
    write(tmp_path, "roles/web/templates/web.conf.j2", "port={{ port }}\n")
    write(tmp_path, "roles/web/files/static.txt", "static\n")
    write(tmp_path, "roles/web/tasks/main.yaml", """
        - template: {src: web.conf.j2, dest: "{{ out }}-web.conf"}
          notify: web changed
        - copy: {src: static.txt, dest: "{{ out }}-static.txt"}
        """)
    write(tmp_path, "roles/web/handlers/main.yaml", """
        - name: web changed
          shell: "echo handled >> {{ out }}-handler.log"
        """)
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          roles: [web]
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb, "-e", "port=9090")
    assert rc == 0, rep
    assert (tmp_path / "out-web.conf").read_text() == "port=9090\n"
    assert (tmp_path / "out-static.txt").read_text() == "static\n"
    assert (tmp_path / "out-handler.log").read_text() == "handled\n"


def test_unchanged_second_run_answers_probes_from_one_prefetch(tmp_path, inv, capsys):
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - file: {path: "{{ out }}.d", state: directory}
            - copy: {dest: "{{ out }}.d/one", content: "1\\n"}
            - lineinfile: {path: "{{ out }}.d/two", line: "2", create: true}
            - lineinfile: {path: "{{ out }}.d/two", line: "3", create: true}
            - command: {cmd: "touch {{ out }}.d/three", creates: "{{ out }}.d/three"}
        """)
    assert run(capsys, "apply", inv, "-p", pb)[0] == 0
    rc, out = run(capsys, "apply", inv, "-p", pb, "-vv")
    assert rc == 0 and "changed: [a]" not in out.out
    execs = [line for line in out.out.splitlines() if line.startswith("<a> EXEC")]
    assert execs[0] == "<a> EXEC prefetch 4 read-only probes in one round trip"   # two tasks share one
    assert all("(prefetched)" in line for line in execs[1:]) and len(execs) == 6
    # after a change, later tasks probe live again (the prefetched state is stale)
    (tmp_path / "out.d" / "one").write_text("changed\n")
    rc, out = run(capsys, "apply", inv, "-p", pb, "-vv")
    execs = [line for line in out.out.splitlines() if line.startswith("<a> EXEC")]
    assert "changed: [a]" in out.out
    assert not any("(prefetched)" in line for line in execs[execs.index(
        next(x for x in execs if x.startswith("<a> EXEC write"))):])


def test_facts_the_tasks_read_come_with_the_prefetch_unless_something_ran_before(tmp_path, inv, capsys):
    """apt reads the dpkg and apt-cache facts: they travel in the probes' round trip; a task that ran a command
    before the apt task makes them stale, and then they are gathered when the apt task runs."""
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - file: {path: "{{ out }}.d", state: directory}
            - apt: {name: bash, state: present}
        """)
    assert run(capsys, "apply", inv, "-p", pb)[0] == 0
    rc, out = run(capsys, "apply", inv, "-p", pb, "-vv")
    execs = [line for line in out.out.splitlines() if line.startswith("<a> EXEC")]
    assert rc == 0 and execs[0] == ("<a> EXEC prefetch 1 read-only probes and facts packages, apt_cache in one "
                                    "round trip")
    assert "<a> EXEC (prefetched) facts packages" in execs and len(execs) == 4
    assert "packages already as wanted" in out.out
    pb2 = write(tmp_path, "pb2.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - file: {path: "{{ out }}.d", state: directory}
            - shell: "true"
            - apt: {name: bash, state: present}
        """)
    rc, out = run(capsys, "apply", inv, "-p", pb2, "-vv")
    execs = [line for line in out.out.splitlines() if line.startswith("<a> EXEC")]
    assert rc == 0 and not any("(prefetched) facts" in line for line in execs)
    assert "packages already as wanted" in out.out


def test_default_omit_leaves_the_argument_out(tmp_path, inv, capsys):
    """`mode: "{{ m | default(omit) }}"` must behave as if `mode` were not given (not the placeholder string)."""
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - name: file with an omitted mode
              copy:
                content: "hi\\n"
                dest: "{{ out }}-omit.txt"
                mode: "{{ wanted_mode | default(omit) }}"
            - name: file with a given mode
              copy:
                content: "hi\\n"
                dest: "{{ out }}-given.txt"
                mode: "{{ given_mode | default(omit) }}"
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb, "-e", "given_mode=0600")
    assert rc == 0, rep
    assert host_status(rep, "file with an omitted mode", "a")["changed"]
    assert oct((tmp_path / "out-omit.txt").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "out-given.txt").stat().st_mode & 0o777) == "0o600"


def test_a_modules_skip_reason_is_shown_but_a_false_when_is_not():
    """Validation on simulated GPUs says why it skipped ("skipped (simulated GPU)"); a false `when` stays terse."""
    import io

    from provision.output import TextReporter
    from provision.results import SKIPPED_BY_WHEN, HostResult
    out = io.StringIO()
    rep = TextReporter(out, io.StringIO(), color=False, progress=False)
    rep.host_result(HostResult("gpu1", skipped=True, msg="skipped (simulated GPU): no CUDA device"))
    rep.host_result(HostResult("gpu2", skipped=True, msg=SKIPPED_BY_WHEN))
    lines = out.getvalue().splitlines()
    assert lines == ['skipping: [gpu1] => {"msg": "skipped (simulated GPU): no CUDA device"}', "skipping: [gpu2]"]


def test_json_has_diffs_only_with_diff_and_the_old_content_is_read_for_it(tmp_path, inv, capsys):
    """As Ansible's json callback: no --diff, no diff (and the old content is not read: the checksum decides);
    with --diff the diff shows the old content."""
    (tmp_path / "out-cfg").write_text("old\n")
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - name: cfg
              copy: {dest: "{{ out }}-cfg", content: "{{ text }}\\n"}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb, "-e", "text=new")
    r = host_status(rep, "cfg", "a")
    assert rc == 0 and r["changed"] and "diff" not in r
    assert (tmp_path / "out-cfg").read_text() == "new\n"
    rc, rep = report(capsys, "apply", inv, "-p", pb, "-e", "text=newer", "--diff")
    d = host_status(rep, "cfg", "a")["diff"][0]
    assert rc == 0 and d["before"] == "new\n" and d["after"] == "newer\n"


def test_lineinfile_refuses_a_file_over_the_editing_limit_and_leaves_it_whole(tmp_path, inv, capsys):
    """A file over 256 KiB is not fetched: its content is unknown, not empty (read as empty, the edit would have
    replaced the whole file by the one line)."""
    big = tmp_path / "out-big.conf"
    data = ("x=1\n" * 70000).encode()   # 280 KB
    big.write_bytes(data)
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - name: edit big
              lineinfile: {path: "{{ out }}-big.conf", line: "y=2"}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    r = host_status(rep, "edit big", "a")
    assert rc == 2 and r["failed"] and "larger than the editing limit" in r["msg"]
    assert big.read_bytes() == data


def test_copy_into_a_folder_and_command_results_through_plans(tmp_path, inv, capsys):
    """copy to a folder looks at the file inside it (a read-only command, then the decision); command's rc,
    output and delta come from its plan's result; check mode predicts a `creates` command without running it."""
    write(tmp_path, "files/app.conf", "x=1\n")
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - file: {path: "{{ out }}.d", state: directory}
            - name: into the folder
              copy: {src: app.conf, dest: "{{ out }}.d"}
            - name: raw output
              shell: printf 'a\\n\\n'
              args: {strip_empty_ends: false}
              register: raw
              changed_when: false
              check_mode: false
            - assert: {that: ["raw.stdout == 'a\\n\\n'", "raw.rc == 0", "raw.delta is defined"]}
            - name: once
              command: {cmd: "touch {{ out }}.d/made", creates: "{{ out }}.d/made"}
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb, "--check")
    assert rc == 0, rep
    assert host_status(rep, "once", "a")["status"] == "changed" and not (tmp_path / "out.d" / "made").exists()
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0, rep
    assert host_status(rep, "into the folder", "a")["status"] == "changed"
    assert (tmp_path / "out.d" / "app.conf").read_text() == "x=1\n" and (tmp_path / "out.d" / "made").exists()
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    assert rc == 0 and rep["stats"]["a"]["changed"] == 0, rep


def test_wait_for_host_is_data_not_shell(tmp_path, inv, capsys):
    """wait_for's host goes into bash's /dev/tcp path quoted: a $(...) in it is never run (it was, unquoted)."""
    marker = tmp_path / "ran"
    pb = write(tmp_path, "pb.yaml", f"""
        - hosts: a
          gather_facts: false
          tasks:
            - wait_for: {{host: "127.0.0.1$(touch {marker})", port: 9, timeout: 1}}
              ignore_errors: true
        """)
    rc, out = run(capsys, "apply", inv, "-p", pb, "--limit", "a")
    assert rc == 0 and "Timeout when waiting for port 9" in out.out
    assert not marker.exists()
