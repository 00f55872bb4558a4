"""F11 (issue 15): `environment:` names are POSIX names (file:line error at load, a failed task when a templated
environment renders to a bad one), values are templated when the task runs, and values never go on a command line
(they travel in the first line of the command's stdin, read by the shell before the command)."""
from __future__ import annotations

import pytest

from provision.hostenv import ENV_READER, env_preamble
from test_executor_local import report, run, write


@pytest.fixture
def inv(tmp_path):
    return write(tmp_path, "inv.yaml", "all:\n  hosts:\n    a: {ansible_connection: local}\n")


@pytest.mark.parametrize("key", ["A;touch x", "1ABC", "HF TOKEN", "X-Y", "$PATH", ""])
def test_a_bad_environment_name_is_one_line_at_load(tmp_path, inv, capsys, key):
    pb = write(tmp_path, "pb.yaml", f"""
        - hosts: a
          gather_facts: false
          tasks:
            - command: "true"
              environment:
                OK_NAME: "1"
                "{key}": "2"
        """)
    rc, out = run(capsys, "apply", inv, "-p", pb, "--syntax-check")
    err = out.err.strip()
    assert rc == 4 and len(err.splitlines()) == 1 and f"{pb}:8:" in err and "not a variable name" in err, err


def test_environment_values_are_templated_when_the_task_runs(tmp_path, inv, capsys):
    marker = tmp_path / "ran"
    pb = write(tmp_path, "pb.yaml", f"""
        - hosts: a
          gather_facts: false
          vars:
            word: hello
            proxy_env: {{HTTP_PROXY: "http://proxy:3128", NO_PROXY: "{{{{ word }}}}"}}
            bad_env: {{"A;touch {marker}": "1"}}
          tasks:
            - name: mapping
              shell: 'echo "[$GREETING]"'
              environment: {{GREETING: "{{{{ word }}}} world"}}
            - name: whole string
              shell: 'echo "[$HTTP_PROXY] [$NO_PROXY]"'
              environment: "{{{{ proxy_env if proxy_env is defined else {{}} }}}}"
            - name: bad name after rendering
              shell: "true"
              environment: "{{{{ bad_env }}}}"
              ignore_errors: true
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    tasks = {t["task"]["name"]: t["hosts"]["a"] for p in rep["plays"] for t in p["tasks"]}
    assert tasks["mapping"]["stdout"] == "[hello world]", tasks["mapping"]
    assert tasks["whole string"]["stdout"] == "[http://proxy:3128] [hello]"
    assert tasks["bad name after rendering"]["failed"] and "not a variable name" in tasks["bad name after rendering"][
        "msg"]
    assert not marker.exists()


@pytest.mark.parametrize("value", ["plain", "it's \"quoted\" $HOME `id` \\n", "two\nlines\n\n", "", " lead trail ",
                                   "-x", "\t\r"])
def test_the_preamble_carries_any_value_exactly(value):
    import subprocess
    script = ENV_READER + 'printf %s "$V"; printf "|"; cat'
    res = subprocess.run(["/bin/sh", "-c", script], input=env_preamble({"V": value}) + b"rest of stdin\n",
                         capture_output=True, timeout=10)
    assert res.returncode == 0 and res.stdout == value.encode() + b"|rest of stdin\n", res


def test_the_preamble_refuses_bad_names_and_nul():
    for env in ({"A;B": "1"}, {"A": "x\0y"}):
        with pytest.raises(ValueError):
            env_preamble(env)


def test_environment_values_are_not_on_any_command_line():
    """`ps` shows every local user the command lines: the value must not be in one while the command runs (it was
    in `/bin/sh -c "export NAME='value'; ..."`), and the command still sees it."""
    import subprocess
    import threading
    from provision.connectors.local import LocalConnector
    value = "gf-env-value-4412"
    done = {}
    t = threading.Thread(target=lambda: done.update(r=LocalConnector().run(
        'sleep 1.5; printf %s "$GF_SECRET_ENV"', env={"GF_SECRET_ENV": value})))
    t.start()
    seen = []
    while t.is_alive():
        seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
    t.join()
    assert done["r"].stdout == value and len(seen) > 2
    assert not any(value in s for s in seen)
    assert any("IFS= read -r" in s for s in seen)    # the command did run while ps looked
