"""Playbook loading: plays, tasks, roles (order, defaults, vars, handlers, files), blocks/imports, module argument
checks against the spec registry, and every bad-input case with its exact file:line:key (load_playbook and
validate). Modules are small fakes registered through provision.ops.spec.module (the registry is restored after)."""
from __future__ import annotations

import os
import textwrap

import pytest

from provision.errors import InputError
from provision.inventory import load_inventory
from provision.ops import spec as spec_mod
from provision.ops.spec import ArgSpec, module
from provision.playbook import (Play, Task, find_file, load_included, load_playbook, role_path, search_paths,
                                split_args, validate)
from provision.yamlsrc import SourcePos

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL_INV = os.path.join(HERE, "fixtures", "inventories", "small", "hosts.yaml")
ROLES = os.path.join(HERE, "fixtures", "playbooks", "roles_order")


class _Fake:
    raw_args: tuple = ()


class _Assert(_Fake):
    raw_args = ("that",)


@pytest.fixture(autouse=True)
def fake_modules(monkeypatch):
    """A registry holding only small fake modules (the real operations are another part's work)."""
    saved = dict(spec_mod._REGISTRY)
    spec_mod._REGISTRY.clear()
    monkeypatch.setattr(spec_mod, "registry", lambda: spec_mod._REGISTRY)
    module("apt", args={"name": ArgSpec("list", aliases=("pkg",)),
                        "state": ArgSpec("str", choices=("present", "absent", "latest")),
                        "update_cache": ArgSpec("bool"), "cache_valid_time": ArgSpec("int")})(_Fake)
    cmd = {"_raw_params": ArgSpec("str"), "creates": ArgSpec("path"), "removes": ArgSpec("path"),
           "chdir": ArgSpec("path")}
    module("command", args=cmd, free_form=True)(_Fake)
    module("shell", args=cmd, free_form=True)(_Fake)
    module("copy", args={"dest": ArgSpec("path", required=True), "content": ArgSpec("raw"),
                         "src": ArgSpec("path"), "mode": ArgSpec("raw")})(_Fake)
    module("debug", args={"msg": ArgSpec("raw"), "var": ArgSpec("str")}, runs_on_controller=True)(_Fake)
    module("set_fact", args={"cacheable": ArgSpec("bool")}, free_form=True, runs_on_controller=True)(_Fake)
    module("assert", args={"that": ArgSpec("list", required=True), "fail_msg": ArgSpec("str")})(_Assert)
    module("meta", args={"_raw_params": ArgSpec("str", choices=("flush_handlers", "noop"))}, free_form=True)(_Fake)
    yield
    spec_mod._REGISTRY.clear()
    spec_mod._REGISTRY.update(saved)


def write(tmp_path, text: str, name: str = "site.yaml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


@pytest.fixture(scope="module")
def inventory():
    return load_inventory(SMALL_INV)


# ------------------------------------------------------------------------------------------------ good input

def test_roles_loading_order_and_fields():
    pb = load_playbook(os.path.join(ROLES, "site.yaml"))
    (play,) = pb.plays
    assert [(t.name, t.role) for t in play.tasks] == [
        ("pre", None), ("base task", "base"), ("common task", "common"), ("web task", "web"), ("main", None),
        ("imported", None), ("post", None)]
    assert play.roles == ("base", "common", "web")
    assert [(h.name, h.role) for h in play.handlers] == [("common handler", "common"), ("restart", "web"),
                                                         ("play handler", None)]
    assert play.handlers[1].handler_names == ("restart", "web : restart")
    assert play.handlers[1].listen == ("restart web",)
    # role defaults merged in role order; play vars + vars_files (vars_files win)
    assert dict(play.role_defaults) == {"base_only": 1, "common_pkg": "curl", "web_port": 81, "web_user": "www"}
    assert dict(play.vars) == {"from_play": "play", "shared": "vars_file"}
    web = play.tasks[3]
    # role vars < role params, in the task's vars; role tags inherited
    assert dict(web.vars) == {"web_user": "www-data", "web_port": 8080}
    assert web.tags == ("web",)
    assert web.notify == ("web : restart",)
    assert web.source == SourcePos(os.path.join(ROLES, "roles", "web", "tasks", "main.yaml"), 1)
    assert role_path(web) == os.path.join(ROLES, "roles", "web")
    assert role_path(play.tasks[4]) is None
    assert find_file(web, "templates", "web.conf.j2") == os.path.join(ROLES, "roles", "web", "templates",
                                                                       "web.conf.j2")
    assert find_file(web, "files", "static.txt") == os.path.join(ROLES, "roles", "web", "files", "static.txt")
    assert search_paths(play.tasks[4], "files") == [os.path.join(ROLES, "files"), ROLES]
    assert (play.become, play.serial, play.max_fail_percentage, play.gather_facts) == (True, (1, "50%"), 0.0, True)
    assert play.tasks[0].args == {"msg": "pre"}
    assert isinstance(play, Play) and isinstance(web, Task)


def test_playbook_validates_against_inventory(inventory):
    pb = load_playbook(os.path.join(ROLES, "site.yaml"))
    validate(pb, inventory, {})


def test_task_fields(tmp_path):
    path = write(tmp_path, """
        - hosts: all
          gather_facts: no
          environment: {LANG: C}
          tags: base
          tasks:
            - name: t
              command: /bin/true creates=/etc/x chdir="/tmp/a b"
              when: [a is defined, "b | bool"]
              loop: "{{ things }}"
              loop_control: {loop_var: thing, index_var: idx, label: "{{ thing }}"}
              register: out
              notify: [h1]
              tags: [x, "y,z"]
              become: yes
              become_user: root
              ignore_errors: true
              changed_when: false
              failed_when: out.rc > 1
              until: out is succeeded
              retries: 5
              delay: 0.5
              no_log: true
              environment: {PATH: /bin, N: 3}
              vars: {v: 1}
              check_mode: false
            - apt: name=curl,git state=present
            - set_fact: a=1 b="{{ x }}"
            - debug:
              args: {msg: hi}
            - block:
                - shell: echo {{ a }}
              when: c
              become: false
              vars: {w: 2}
            - with_items: [[1, 2], 3]
              debug: msg="{{ item }}"
            - with_dict: {a: 1}
              debug: msg="{{ item.key }}"
          handlers:
            - name: h1
              debug: msg=h
    """)
    (play,) = load_playbook(path).plays
    t = play.tasks[0]
    assert t.module == "command"
    assert dict(t.args) == {"_raw_params": "/bin/true", "creates": "/etc/x", "chdir": "/tmp/a b"}
    assert t.when == ("a is defined", "b | bool")
    assert (t.loop, t.loop_var, t.index_var, t.loop_label) == ("{{ things }}", "thing", "idx", "{{ thing }}")
    assert (t.register, t.notify, t.tags) == ("out", ("h1",), ("base", "x", "y", "z"))
    assert (t.become, t.become_user, t.ignore_errors, t.no_log, t.check_mode) == (True, "root", True, True, False)
    assert (t.changed_when, t.failed_when, t.until, t.retries, t.delay) == (("False",), ("out.rc > 1",),
                                                                           "out is succeeded", 5, 0.5)
    assert dict(t.environment) == {"LANG": "C", "PATH": "/bin", "N": "3"}
    assert dict(t.vars) == {"v": 1}
    assert t.source.line == 6 and t.positions["when"].line == 8
    assert play.gather_facts is False and play.name == "all"
    assert dict(play.tasks[1].args) == {"name": "curl,git", "state": "present"}
    assert play.tasks[1].name == "apt"
    assert dict(play.tasks[2].args) == {"a": "1", "b": "{{ x }}"}
    assert dict(play.tasks[3].args) == {"msg": "hi"}
    blk = play.tasks[4]
    assert (blk.module, blk.when, blk.become, dict(blk.vars), blk.tags) == ("shell", ("c",), False, {"w": 2},
                                                                           ("base",))
    assert play.tasks[5].loop == [1, 2, 3]
    assert play.tasks[6].loop == [{"key": "a", "value": 1}]


def test_import_playbook_and_include_role(tmp_path):
    os.makedirs(tmp_path / "roles" / "r" / "tasks")
    (tmp_path / "roles" / "r" / "tasks" / "main.yml").write_text("- debug: msg=r\n")
    write(tmp_path, "- hosts: gpu\n  tasks:\n    - include_role: {name: r}\n      when: x\n", "other.yaml")
    path = write(tmp_path, "- import_playbook: other.yaml\n- hosts: all\n  tasks: []\n")
    pb = load_playbook(path)
    assert [p.hosts for p in pb.plays] == ["gpu", "all"]
    inc = pb.plays[0].tasks[0]   # include_role is dynamic (as Ansible's): its role is read when the task runs
    assert (inc.module, inc.when, dict(inc.args)) == ("include_role", ("x",), {"name": "r"})
    got = load_included(inc, inc.args)
    assert [(t.role, t.module, t.when) for t in got.tasks] == [("r", "debug", ())]


@pytest.mark.parametrize("text,expected", [
    ("a=1 b=2", ["a=1", "b=2"]),
    ("msg='hello world' x=\"a b\"", ["msg=hello world", "x=a b"]),
    ("name={{ pkgs | join(',') }} state=present", ["name={{ pkgs | join(',') }}", "state=present"]),
    ("x={% if a %}1 2{% endif %}", ["x={% if a %}1 2{% endif %}"]),
])
def test_split_args(text, expected):
    assert split_args(text) == expected


def test_guarded_and_defined_names_pass_validate(inventory, tmp_path):
    path = write(tmp_path, """
        - hosts: gpu
          vars: {pkgs: [a], nested: "{{ driver_branch }}-{{ pkgs | length }}"}
          tasks:
            - debug: msg="{{ maybe | default('x') }} {{ inventory_hostname }} {{ hostvars[inventory_hostname].cuda }}"
            - debug: msg="{{ opt }}"
              when: opt is defined
            - set_fact: {made: 1}
            - debug: msg="{{ made }} {{ ansible_distribution }} {{ ansible_facts.kernel }} {{ item }}"
              loop: "{{ pkgs }}"
            - command: echo {{ out.stdout }}
              register: out
            - debug: var=never_defined
            - assert: {that: ["made == 1", "extra_thing"]}
            - debug: msg="{{ g }}"
              loop: "{{ groups['gpu'] }}"
              loop_control: {loop_var: g}
            - debug: msg="{% for x in pkgs %}{{ x }}{% endfor %} {{ omit }} {{ lookup('env', 'HOME') }}"
    """)
    validate(load_playbook(path), inventory, {"extra_thing": True})


# ------------------------------------------------------------------------------------------------ bad input

LOAD_BAD = [
    ("malformed YAML", """
        - hosts: all
          tasks:
            - debug: msg=x
             bad: indent
     """, 4, None, "malformed YAML"),
    ("tab indentation", "- hosts: all\n  tasks:\n\t- debug: msg=x\n", 3, None,
     "malformed YAML: found character that cannot start any token (a tab: YAML indentation must use spaces)"),
    ("vault value", """
        - hosts: all
          vars:
            pw: !vault |
              $ANSIBLE_VAULT;1.1;AES256
     """, 3, None, "Ansible Vault values (!vault) are not supported"),
    ("not a list", """
        hosts: all
     """, 1, None, "a playbook must be a list of plays, got a mapping"),
    ("task list instead of playbook", """
        - name: x
          apt: {name: curl}
     """, 1, "hosts", "this looks like a task, not a play"),
    ("unknown play key", """
        - hosts: all
          gather_fact: no
     """, 2, "gather_fact", "unknown play key (did you mean 'gather_facts'?)"),
    ("unknown task key", """
        - hosts: all
          tasks:
            - name: x
              apt: {name: curl}
              registr: out
     """, 5, "registr", "unknown task key (did you mean 'register'?)"),
    ("unknown module", """
        - hosts: all
          tasks:
            - name: x
              aptt: {name: curl}
     """, 4, "aptt", "unknown module (did you mean 'apt'?)"),
    ("unknown argument", """
        - hosts: all
          tasks:
            - apt:
                name: curl
                stat: present
     """, 5, "stat", "unknown argument for module 'apt' (did you mean 'state'?)"),
    ("bad choice", """
        - hosts: all
          tasks:
            - apt: {name: curl, state: presnt}
     """, 3, "state", "invalid value 'presnt' (choices: present, absent, latest) (did you mean 'present'?)"),
    ("wrong argument type", """
        - hosts: all
          tasks:
            - apt:
                name: curl
                cache_valid_time: soon
     """, 5, "cache_valid_time", "expected an integer, got a string 'soon'"),
    ("wrong argument type (mapping for a list)", """
        - hosts: all
          tasks:
            - apt:
                name: {a: 1}
     """, 4, "name", "expected a list, got a mapping {'a': 1}"),
    ("missing required argument", """
        - hosts: all
          tasks:
            - copy:
                content: hi
     """, 3, "copy", "module 'copy' requires argument 'dest'"),
    ("free-form text to a key=value module", """
        - hosts: all
          tasks:
            - apt: curl
     """, 3, "apt", "module 'apt' takes key=value arguments or a mapping, not free-form text ('curl')"),
    ("two modules in a task", """
        - hosts: all
          tasks:
            - apt: {name: curl}
              copy: {dest: /x}
     """, 4, "copy", "a task runs one module, found 2: apt, copy"),
    ("task without module", """
        - hosts: all
          tasks:
            - name: nothing
              when: x
     """, 3, "nothing", "task has no module"),
    ("serial: 0", """
        - hosts: all
          serial: 0
     """, 2, "serial", "serial must be at least 1, got 0"),
    ("serial: [a]", """
        - hosts: all
          serial:
            - 1
            - a
     """, 4, "serial", "expected a number of hosts, a percentage like '30%' or a list of them, got 'a'"),
    ("serial: 0%", """
        - hosts: all
          serial: 0%
     """, 2, "serial", "serial percentage must be between 1% and 100%, got '0%'"),
    ("become: maybe", """
        - hosts: all
          tasks:
            - apt: {name: curl}
              become: maybe
     """, 4, "become", "expected a boolean (true/false), got 'maybe'"),
    ("play become: maybe", """
        - hosts: all
          become: maybe
     """, 2, "become", "expected a boolean (true/false), got 'maybe'"),
    ("max_fail_percentage above 100", """
        - hosts: all
          max_fail_percentage: 150
     """, 2, "max_fail_percentage", "must be between 0 and 100, got 150"),
    ("max_fail_percentage not a number", """
        - hosts: all
          max_fail_percentage: some
     """, 2, "max_fail_percentage", "expected a number, got 'some'"),
    ("retries not an integer", """
        - hosts: all
          tasks:
            - apt: {name: curl}
              until: x
              retries: many
     """, 5, "retries", "expected an integer, got 'many'"),
    ("notify names no handler", """
        - hosts: all
          tasks:
            - apt: {name: curl}
              notify: restart sshd
          handlers:
            - name: restart ssh
              command: systemctl restart ssh
     """, 4, "notify", "no handler named 'restart sshd' in this play (did you mean 'restart ssh'?)"),
    ("listen on a task", """
        - hosts: all
          tasks:
            - apt: {name: curl}
              listen: x
     """, 4, "listen", "'listen' is only valid on handlers"),
    ("role not found", """
        - hosts: all
          roles:
            - webb
     """, 3, "roles", "role 'webb' not found in {dir}/roles (did you mean 'web'?)"),
    ("vars_files missing", """
        - hosts: all
          vars_files:
            - vars/none.yaml
     """, 3, "vars_files", "vars file not found: vars/none.yaml"),
    ("loop over a mapping", """
        - hosts: all
          tasks:
            - debug: msg=x
              loop: {a: 1}
     """, 4, "loop", "loop expects a list, got a mapping (use '| dict2items')"),
    ("rescue not a list", """
        - hosts: all
          tasks:
            - block:
                - debug: msg=x
              rescue: {debug: msg=y}
     """, 5, "rescue", "rescue must be a list of tasks, got a mapping"),
    ("unknown connection", """
        - hosts: all
          tasks:
            - debug: msg=x
              connection: locla
     """, 4, "connection", "unknown connection 'locla' (ssh, paramiko, smart, local, docker) (did you mean 'local'?)"),
    ("duplicate key", """
        - hosts: all
          tasks:
            - apt: {name: curl}
              when: a
              when: b
     """, 5, "when", "duplicate key (first defined at line 4)"),
    ("bad loop_control key", """
        - hosts: all
          tasks:
            - debug: msg=x
              loop: [1]
              loop_control: {loopvar: y}
     """, 5, "loopvar", "unknown loop_control key (did you mean 'loop_var'?)"),
    ("register not a name", """
        - hosts: all
          tasks:
            - debug: msg=x
              register: my-result
     """, 4, "register", "expected a variable name (letters, digits, _), got 'my-result'"),
    ("meta choice", """
        - hosts: all
          tasks:
            - meta: flush_handler
     """, 3, "_raw_params", "invalid value 'flush_handler' (choices: flush_handlers, noop) "
                            "(did you mean 'flush_handlers'?)"),
    ("when not a string", """
        - hosts: all
          tasks:
            - debug: msg=x
              when: {a: 1}
     """, 4, "when", "expected a condition (a string or a list of strings), got a mapping"),
]


@pytest.mark.parametrize("why,text,line,key,message", LOAD_BAD, ids=[b[0] for b in LOAD_BAD])
def test_bad_playbook(tmp_path, why, text, line, key, message):
    os.makedirs(tmp_path / "roles" / "web" / "tasks")
    path = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_playbook(path)
    err = e.value
    assert (err.file, err.line, err.key, err.exit_code) == (path, line, key, 4), str(err)
    assert message.replace("{dir}", str(tmp_path)) in str(err)
    assert "\n" not in str(err)


VALIDATE_BAD = [
    ("undefined variable in args", """
        - hosts: gpu
          tasks:
            - apt:
                name: "{{ driver_brnch }}"
     """, 4, "name", "undefined variable 'driver_brnch' (did you mean 'driver_branch'?)"),
    ("undefined variable in when", """
        - hosts: gpu
          tasks:
            - debug: msg=x
              when: cudaa == '12.6'
     """, 4, "when", "undefined variable 'cudaa' (did you mean 'cuda'?)"),
    ("undefined variable in loop", """
        - hosts: all
          tasks:
            - debug: msg=x
              loop: "{{ packages }}"
     """, 4, "loop", "undefined variable 'packages'"),
    ("undefined in nested args", """
        - hosts: all
          tasks:
            - copy:
                dest: /etc/x
                content:
                  a: ["{{ nope }}"]
     """, 5, "content.a[0]", "undefined variable 'nope'"),
    ("undefined in play vars", """
        - hosts: all
          vars:
            a: 1
            b: "{{ c }}"
     """, 4, "b", "undefined variable 'c'"),
    ("undefined in assert that", """
        - hosts: all
          tasks:
            - assert:
                that:
                  - ntp == 'x'
                  - ntpp == 'y'
     """, 4, "that[1]", "undefined variable 'ntpp' (did you mean 'ntp'?)"),
    ("host var only on other hosts is unknown here", """
        - hosts: storage
          tasks:
            - debug: msg="{{ driver_branch }}"
     """, 3, "msg", "undefined variable 'driver_branch'"),
    ("unknown filter", """
        - hosts: all
          tasks:
            - debug: msg="{{ ntp | to_jsn }}"
     """, 3, "msg", "unknown filter 'to_jsn' (did you mean 'to_json'?)"),
    ("unknown test", """
        - hosts: all
          tasks:
            - debug: msg=x
              when: ntp is defind
     """, 4, "when", "unknown test 'defind' (did you mean 'defined'?)"),
    ("template syntax error", """
        - hosts: all
          tasks:
            - debug:
                msg: "{{ ntp }"
     """, 4, "msg", "template syntax error"),
    ("hosts pattern unknown", """
        - hosts: gpus
          tasks: []
     """, 1, "hosts", "no host or group named 'gpus' in {inv} (did you mean 'gpu'?)"),
]


@pytest.mark.parametrize("why,text,line,key,message", VALIDATE_BAD, ids=[b[0] for b in VALIDATE_BAD])
def test_validate_bad(tmp_path, inventory, why, text, line, key, message):
    path = write(tmp_path, text)
    pb = load_playbook(path)
    with pytest.raises(InputError) as e:
        validate(pb, inventory, {})
    err = e.value
    assert (err.file, err.line, err.key, err.exit_code) == (path, line, key, 4), str(err)
    assert message.replace("{inv}", SMALL_INV) in str(err)


def test_extra_vars_define_names(tmp_path, inventory):
    pb = load_playbook(write(tmp_path, "- hosts: all\n  tasks:\n    - debug: msg='{{ release }}'\n"))
    with pytest.raises(InputError):
        validate(pb, inventory, {})
    validate(pb, inventory, {"release": "1"})


def test_validate_rechecks_module_args_against_the_registry(tmp_path, inventory):
    pb = load_playbook(write(tmp_path, "- hosts: all\n  tasks:\n    - apt:\n        update_cache: true\n"))
    validate(pb, inventory, {})
    module("apt", args={"name": ArgSpec("list")})(_Fake)     # the spec changed: update_cache is gone
    with pytest.raises(InputError) as e:
        validate(pb, inventory, {})
    assert str(e.value) == f"{pb.path}:4: update_cache: unknown argument for module 'apt'"


def test_missing_playbook(tmp_path):
    missing = str(tmp_path / "none.yaml")
    with pytest.raises(InputError) as e:
        load_playbook(missing)
    assert str(e.value) == f"{missing}: playbook not found"
