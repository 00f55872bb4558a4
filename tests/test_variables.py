"""Variable precedence (role defaults < inventory < facts < play vars < task vars < set_fact < registered < extra
vars), magic variables, and which values are never templated again."""
from __future__ import annotations

import os
from types import MappingProxyType

import pytest

from provision.inventory import load_inventory
from provision.playbook import Play, Task
from provision.templating import OMIT, render
from provision.variables import HostVars, host_variables
from provision.yamlsrc import SourcePos

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL_INV = os.path.join(HERE, "fixtures", "inventories", "small", "hosts.yaml")
POS = SourcePos("site.yaml", 1)


@pytest.fixture(scope="module")
def inv():
    return load_inventory(SMALL_INV)


def make_play(vars_=None, defaults=None, hosts="gpu") -> Play:
    return Play(name="p", hosts=hosts, vars=MappingProxyType(vars_ or {}),
                role_defaults=MappingProxyType(defaults or {}), become=False, become_user=None, gather_facts=True,
                serial=(), max_fail_percentage=None, any_errors_fatal=False, tasks=(), handlers=(), source=POS,
                playbook_dir="/pb")


def make_task(vars_=None, role=None) -> Task:
    return Task(name="t", module="debug", args=MappingProxyType({}), vars=MappingProxyType(vars_ or {}), role=role,
                role_path=f"/pb/roles/{role}" if role else None, source=POS)


LAYERS = ("defaults", "inventory", "facts", "play", "task", "set_fact", "registered", "extra")


def scenario(inv, layers):
    """Define ansible_k in each named layer (its value = the layer's name); return what the task sees."""
    host = inv.hosts["gpu01.lab"]
    if "inventory" in layers:
        host = type(host)(host.name, MappingProxyType({**host.vars, "ansible_k": "inventory"}), host.groups,
                          host.source)
    val = lambda layer: {"ansible_k": layer} if layer in layers else {}  # noqa: E731
    v = host_variables(
        host, make_play(val("play"), val("defaults")), task=make_task(val("task")), inventory=inv,
        facts={"k": "facts"} if "facts" in layers else None, set_facts=val("set_fact"),
        registered=val("registered"), extra_vars=val("extra"))
    return v.get("ansible_k")


@pytest.mark.parametrize("layers,winner", [
    (("defaults",), "defaults"),
    (("defaults", "inventory"), "inventory"),
    (("inventory", "facts"), "facts"),
    (("facts", "play"), "play"),
    (("play", "task"), "task"),
    (("task", "set_fact"), "set_fact"),
    (("set_fact", "registered"), "registered"),
    (("registered", "extra"), "extra"),
    (("defaults", "extra"), "extra"),
    (("defaults", "facts", "task"), "task"),
    (LAYERS, "extra"),
    (LAYERS[:-1], "registered"),
])
def test_precedence(inv, layers, winner):
    assert scenario(inv, layers) == winner


def test_inventory_layers_inside_host_vars(inv):
    v = host_variables(inv.hosts["gpu02.lab"], make_play(), inventory=inv)
    assert (v["level"], v["driver_branch"], v["site"]) == ("host-file", "570", "lab")


def test_magic_vars(inv):
    host = inv.hosts["gpu03.lab"]
    v = host_variables(host, make_play(), task=make_task(role="web"), inventory=inv, check_mode=True,
                       facts={"distribution": "Debian", "ansible_kernel": "6.1"},
                       extra_vars={"inventory_hostname": "nope"})
    assert v["inventory_hostname"] == "gpu03.lab"          # magic vars cannot be overridden
    assert v["inventory_hostname_short"] == "gpu03"
    assert v["group_names"] == ["gpu", "h100"]
    assert v["groups"]["gpu"] == ["gpu01.lab", "gpu02.lab", "gpu03.lab"]
    assert v["groups"]["all"] == list(inv.hosts)
    assert v["play_hosts"] == ["gpu01.lab", "gpu02.lab", "gpu03.lab"]
    assert v["ansible_check_mode"] is True and v["ansible_diff_mode"] is False
    assert v["omit"] == OMIT
    assert (v["ansible_distribution"], v["ansible_kernel"]) == ("Debian", "6.1")
    assert v["ansible_facts"] == {"distribution": "Debian", "ansible_kernel": "6.1"}
    assert (v["role_name"], v["role_path"], v["playbook_dir"]) == ("web", "/pb/roles/web", "/pb")
    assert v["hostvars"]["nasa"]["storage_role"] == "primary"
    assert v["hostvars"]["gpu03.lab"]["ansible_distribution"] == "Debian"
    assert render("{{ hostvars['gpu01.lab'].tier }} {{ groups.h100 | length }}", v) == "gpu 1"
    with pytest.raises(Exception):
        render("{{ hostvars['gpu99'].x }}", v)


def test_play_hosts_given_by_executor(inv):
    v = host_variables(inv.hosts["gpu01.lab"], make_play(), inventory=inv, play_hosts=["gpu01.lab"])
    assert v["ansible_play_batch"] == ["gpu01.lab"]


def test_templated_vars_resolve_and_raw_values_stay(inv):
    v = host_variables(inv.hosts["gpu01.lab"], make_play({"pkg": "nvidia-driver-{{ driver_branch }}"}),
                       task=make_task({"full": "{{ pkg }}={{ ver }}"}), inventory=inv,
                       registered={"out": {"stdout": "{{ not_a_template }}"}}, set_facts={"ver": "1.{{ x }}"},
                       extra_vars={"x_extra": "{{ cuda }}"})
    assert render("{{ pkg }}", v) == "nvidia-driver-550"
    assert render("{{ out.stdout }}", v) == "{{ not_a_template }}"   # command output is never templated
    assert render("{{ ver }}", v) == "1.{{ x }}"                    # set_fact values were rendered when set
    assert render("{{ x_extra }}", v) == "12.6"                     # extra vars are templated, as in Ansible
    assert "out" in v.raw_keys and "pkg" not in v.raw_keys


def test_hostvars_with_facts_by_host(inv):
    hv = HostVars(inv, facts_by_host=lambda name: {"boot_id": name[-5:], "t": "{{ x }}"},
                  extra_vars={"tmpl": "{{ driver_branch }}-{{ inventory_hostname_short }}"})
    assert hv["gpu02.lab"]["ansible_boot_id"] == "2.lab"
    assert hv["gpu02.lab"]["tmpl"] == "570-gpu02"    # rendered in that host's context
    assert hv["gpu01.lab"]["tmpl"] == "550-gpu01"
    assert hv["gpu01.lab"]["ansible_t"] == "{{ x }}"  # facts are never templated
    assert "gpu02.lab" in hv and "nope" not in hv and len(hv) == 6
