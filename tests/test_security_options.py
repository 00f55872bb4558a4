"""F12 (issue 15): a user value that starts with '-' is never taken as an option. Every planned command that puts a
user value after a tool's options ends the options with '--' first; the local-connection tests show what a real
chown does with such a value."""
from __future__ import annotations

import shlex

import pytest

from test_executor_local import report, write  # noqa: F401 - shared playbook helpers
from test_ops_units import drive, no_apt

EVIL = "-oDPkg::Pre-Invoke=touch /tmp/pwned"
EVIL_PKG = "-oAPT::Get::Trivial-Only"
SEPARATORS = {"&&", "||", ";", "|", "(", ")", "{", "}", "$(", "`"}
KEYWORDS = {"if", "then", "elif", "else", "do", "while", "until", "!"}


def _simple_commands(cmd: str) -> list[list[str]]:
    """A shell line -> its simple commands (tokens), split at && || ; | and parentheses."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, cur = [], []
    for tok in lex:
        if tok in SEPARATORS or set(tok) <= set("&|;()"):
            if cur:
                out.append(cur)
            cur = []
        elif cur or tok not in KEYWORDS:
            cur.append(tok)
    if cur:
        out.append(cur)
    return out


def assert_value_after_double_dash(commands: list[str], value: str) -> None:
    seen = False
    for cmd in commands:
        for simple in _simple_commands(cmd):
            if value in simple:
                seen = True
                at = simple.index(value)
                if simple[0] in ("[", "test") or simple[at - 1] in ("<", ">", ">>"):
                    continue       # an operand of test, or a redirection: never an option
                assert "--" in simple[:at], f"{value!r} can be read as an option in: {cmd}"
    assert seen, f"{value!r} is in none of {commands}"


def test_systemd_unit_name_after_double_dash():
    show = "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n"
    r, ran = drive("systemd", {"name": "-H evil", "state": "started", "enabled": True, "masked": False},
                   {}, lambda cmd: (0, show, ""))
    assert len(ran) >= 3, ran
    assert_value_after_double_dash(ran, "-H evil")


@pytest.mark.parametrize("state", ["present", "absent", "latest"])
def test_apt_package_names_after_double_dash(state):
    facts = no_apt({"packages": {EVIL_PKG: "1.0"}} if state == "absent" else {})
    r, ran = drive("apt", {"name": EVIL_PKG, "state": state, "hold": state != "absent"}, facts,
                   lambda cmd: (0, f"{EVIL_PKG}:\n  Installed: (none)\n  Candidate: 2.0\n" if "policy" in cmd else "",
                                ""))
    assert_value_after_double_dash(ran, EVIL_PKG)


def test_file_owner_group_and_path_after_double_dash():
    absent = "absent\n"
    r, ran = drive("file", {"path": "-rf", "state": "directory", "owner": "--reference=/etc/shadow", "mode": "0700"},
                   {}, lambda cmd: (0, absent, ""))
    assert_value_after_double_dash(ran, "--reference=/etc/shadow")
    assert_value_after_double_dash(ran, "-rf")


def test_docker_image_values_after_double_dash():
    r, ran = drive("gpu_validate", {"step": "container", "image": "--privileged", "gpu_count": 1}, {},
                   lambda cmd: (0, "GPU 0: x\n", ""))
    assert_value_after_double_dash(ran, "--privileged")
    r, ran = drive("gpu_image", {"image": "--privileged", "check_gpus": False, "source": "pull"}, {},
                   lambda cmd: (1, "", "no such image") if "inspect" in cmd else (0, "", ""))
    assert any("docker pull" in c for c in ran), ran
    assert_value_after_double_dash([c for c in ran if "docker" in c], "--privileged")


def test_wait_for_search_regex_is_a_pattern_not_an_option(tmp_path):
    r, ran = drive("wait_for", {"path": str(tmp_path / "f"), "search_regex": "-v", "timeout": 1}, {},
                   lambda cmd: (0, "", ""))
    assert any(" -e -v -- " in c for c in ran), ran


def test_a_real_chown_is_not_given_an_option_as_owner(tmp_path, capsys):
    """Without '--', `chown --help PATH` prints its help and exits 0: the task 'succeeded' and changed nothing.
    With it, chown says the user is invalid and the task fails: for file, and for copy (the runner's put)."""
    inv = write(tmp_path, "inv.yaml", "all:\n  hosts:\n    a: {ansible_connection: local}\n")
    pb = write(tmp_path, "pb.yaml", f"""
        - hosts: a
          gather_facts: false
          tasks:
            - name: touch
              file: {{path: "{tmp_path}/t", state: touch, owner: "--help"}}
              ignore_errors: true
            - name: copy
              copy: {{dest: "{tmp_path}/c", content: "x\\n", owner: "--help"}}
              ignore_errors: true
        """)
    rc, rep = report(capsys, "apply", inv, "-p", pb)
    tasks = {t["task"]["name"]: t["hosts"]["a"] for p in rep["plays"] for t in p["tasks"]}
    assert tasks["touch"]["failed"] and "--help" in tasks["touch"]["msg"] + tasks["touch"].get("stderr", ""), tasks
    assert tasks["copy"]["failed"], tasks


def test_command_chdir_after_double_dash():
    r, ran = drive("command", {"_raw_params": "pwd", "chdir": "-P"}, {}, lambda cmd: (0, "", ""))
    assert_value_after_double_dash(ran, "-P")
