"""The one truthy/falsy table (Ansible's spellings): strict parsing names the key, lenient parsing says False for
anything else, and every place that reads a boolean reads it through the table (play keys, inventory, module
arguments, the bool filter, a `when` that renders to a word, GPU host variables)."""
from __future__ import annotations

import textwrap

import pytest

from provision.errors import InputError
from provision.gpu.plan import plan_host
from provision.inventory import load_inventory
from provision.playbook import load_playbook
from provision.templating import evaluate, render
from provision.truthy import FALSE, TRUE, NotABoolean, lenient_bool, strict_bool

TRUE_SPELLINGS = ["y", "yes", "on", "1", "true", "t", 1, 1.0, True]
FALSE_SPELLINGS = ["n", "no", "off", "0", "false", "f", 0, 0.0, False]


def test_the_table_is_ansibles():
    assert TRUE == frozenset(TRUE_SPELLINGS)
    assert FALSE == frozenset(FALSE_SPELLINGS)


@pytest.mark.parametrize("value", TRUE_SPELLINGS + ["YES", " True ", "On", "T", "Y"])
def test_true_spellings(value):
    assert strict_bool(value) is True
    assert lenient_bool(value) is True


@pytest.mark.parametrize("value", FALSE_SPELLINGS + ["NO", " False ", "Off", "F", "N"])
def test_false_spellings(value):
    assert strict_bool(value) is False
    assert lenient_bool(value) is False


@pytest.mark.parametrize("value", ["maybe", "", "2", 2, 0.5, None, [], {}, "yess"])
def test_strict_refuses_anything_else_naming_the_key(value):
    with pytest.raises(NotABoolean) as err:
        strict_bool(value, "update_cache")
    assert str(err.value) == f"update_cache: expected a boolean (true/false), got {value!r}"
    assert lenient_bool(value) is False


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(p)


def test_play_keys_take_every_spelling(tmp_path):
    pb = _write(tmp_path, "pb.yaml", """
        - hosts: all
          become: t
          gather_facts: "off"
          tasks: []
        """)
    (play,) = load_playbook(pb).plays
    assert (play.become, play.gather_facts) == (True, False)
    bad = _write(tmp_path, "bad.yaml", """
        - hosts: all
          become: sure
          tasks: []
        """)
    with pytest.raises(InputError) as err:
        load_playbook(bad)
    assert str(err.value) == f"{bad}:2: become: expected a boolean (true/false), got 'sure'"


def test_inventory_become_takes_every_spelling(tmp_path):
    inv = _write(tmp_path, "inv.yaml", """
        all:
          hosts:
            a: {ansible_become: "T"}
            b: {ansible_become: "f"}
        """)
    hosts = load_inventory(inv).hosts
    assert (hosts["a"].become, hosts["b"].become) == (True, False)


def test_bool_filter_and_rendered_when_read_the_table():
    assert render("{{ 'T' | bool }}", {}) is True
    assert render("{{ 2 | bool }}", {}) is False
    assert evaluate("{{ flag }}", {"flag": "off"}) is False
    assert evaluate("{{ flag }}", {"flag": "y"}) is True
    assert evaluate("{{ flag }}", {"flag": ""}) is False
    assert evaluate("{{ expr }}", {"expr": "1 + 1 == 2"}) is True


def test_gpu_host_switches_read_the_table():
    facts = {"gpu": {"gpus": [], "nvswitches": []}}
    assert plan_host(facts, {"gpufleet_simulated_gpus": "y"}).simulated is True
    assert plan_host(facts, {"gpufleet_simulated_gpus": "nope"}).simulated is False
