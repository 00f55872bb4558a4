"""One argument validator for the loader and the executor (provision.ops.spec.check_args): what the loader accepts
the executor coerces to the same typed values, what it refuses the executor refuses with the same words, and a
templated value is checked once rendered (the task fails naming the argument)."""
from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from provision.cli import main
from provision.errors import InputError
from provision.ops import spec as spec_mod
from provision.ops.core import OpError, normalize
from provision.ops.spec import ArgSpec, check_args, module, registry
from provision.playbook import load_playbook


class _Demo:
    raw_args: tuple = ()


@pytest.fixture
def demo():
    """A module `argdemo` beside the real ones, removed afterwards."""
    registry()
    module("argdemo", args={"force": ArgSpec("bool"), "count": ArgSpec("int", default=1),
                            "ratio": ArgSpec("float"), "names": ArgSpec("list", aliases=("name",)),
                            "state": ArgSpec("str", choices=("present", "absent")),
                            "dest": ArgSpec("path", required=True)})(_Demo)
    yield registry()["argdemo"]
    for n in ("argdemo", "ansible.builtin.argdemo"):
        spec_mod._REGISTRY.pop(n, None)


def _playbook(tmp_path, args: str) -> str:
    p = tmp_path / "pb.yaml"
    p.write_text(textwrap.dedent(f"""
        - hosts: all
          tasks:
            - argdemo: {args}
        """).lstrip("\n"))
    return str(p)


def test_loader_and_executor_coerce_alike(tmp_path, demo):
    pb = _playbook(tmp_path, "{force: 'yes', count: '3', ratio: '1.5', name: 'a, b', dest: /x}")
    (task,) = load_playbook(pb).plays[0].tasks
    assert dict(task.args) == {"force": "yes", "count": "3", "ratio": "1.5", "name": "a, b", "dest": "/x"}
    typed = {"force": True, "count": 3, "ratio": 1.5, "names": ["a", "b"], "dest": "/x"}
    assert normalize(demo, task.args) == typed
    assert check_args(demo, task.args, templated=True) == (typed, [])


@pytest.mark.parametrize("args, key, message", [
    ("{forse: 'yes', dest: /x}", "forse", "unknown argument for module 'argdemo' (did you mean 'force'?)"),
    ("{force: maybe, dest: /x}", "force", "expected a boolean, got a string 'maybe'"),
    ("{count: three, dest: /x}", "count", "expected an integer, got a string 'three'"),
    ("{state: presnt, dest: /x}", "state",
     "invalid value 'presnt' (choices: present, absent) (did you mean 'present'?)"),
    ("{names: [a], name: b, dest: /x}", "name", "argument given twice (as 'names' and 'name')"),
    ("{force: true}", "argdemo", "module 'argdemo' requires argument 'dest'"),
])
def test_loader_and_executor_refuse_alike(tmp_path, demo, args, key, message):
    pb = _playbook(tmp_path, args)
    with pytest.raises(InputError) as err:
        load_playbook(pb)
    assert str(err.value) == f"{pb}:3: {key}: {message}"
    raw = yaml.safe_load(args)
    with pytest.raises(OpError) as run_err:
        normalize(demo, raw)
    assert str(run_err.value) == f"{key}: {message}"


def test_templated_values_are_checked_once_rendered(tmp_path, demo, capsys):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_connection: local}\n")
    pb = tmp_path / "pb.yaml"
    pb.write_text(textwrap.dedent("""
        - hosts: all
          gather_facts: false
          vars: {word: "yes", other: maybe}
          tasks:
            - name: typed
              assert: {that: ["true"], quiet: "{{ word }}"}
            - name: refused
              assert: {that: ["true"], quiet: "{{ other }}"}
              ignore_errors: true
        """).lstrip("\n"))
    load_playbook(str(pb))   # both pass the loader: the values are templates
    capsys.readouterr()
    main(["apply", str(inv), "-p", str(pb), "--json"])
    tasks = {t["task"]["name"]: t["hosts"]["a"] for t in json.loads(capsys.readouterr().out)["plays"][0]["tasks"]}
    assert tasks["typed"]["failed"] is False
    assert tasks["refused"]["failed"] is True
    assert tasks["refused"]["msg"] == "quiet: expected a boolean, got a string 'maybe'"


def test_a_variable_name_with_a_trailing_newline_is_not_a_name():
    """``$`` also matches before a final newline: 'hf\\n' must not pass as a register/set_fact name."""
    from provision.ops.spec import VAR_NAME
    assert VAR_NAME.match("hf_token") and not VAR_NAME.match("hf_token\n") and not VAR_NAME.match("1x")
