"""Templating: native values, Ansible filters/tests, lazy variables, omit, errors, template files, static analysis."""
from __future__ import annotations

import pytest

from provision.templating import (OMIT, TemplateError, Unsafe, analyse, conditional, evaluate, render,
                                  render_template_file)
from provision.variables import VarDict
from provision.versions import compare_versions

VARS = {
    "n": 3, "s": "abc", "lst": [1, 2, 2], "d": {"a": 1, "b": {"c": 2}}, "t": True, "none": None,
    "path": "/etc/apt/sources.list.d/cuda.list", "ver": "535.154.05",
    "chain1": "{{ chain2 }}-1", "chain2": "{{ n * 2 }}", "loop_a": "{{ loop_b }}", "loop_b": "{{ loop_a }}",
    "ok": {"rc": 0, "changed": False, "failed": False}, "bad": {"rc": 1, "failed": True, "changed": False},
    "chg": {"changed": True}, "skp": {"skipped": True, "changed": False},
    "json_text": '{"x": [1, 2]}', "omit": OMIT,
}


@pytest.mark.parametrize("template,expected", [
    ("{{ n }}", 3),                              # exactly one expression: native int
    ("{{ lst }}", [1, 2, 2]),                     # native list
    ("{{ t }}", True),
    ("  {{ n }}  ", "  3  "),                   # text around the expression: a string
    ("n={{ n }}", "n=3"),                          # anything around it: a string
    ("{{ n }}{{ n }}", "33"),
    ("{{ chain1 }}", "6-1"),                      # variables templated lazily, recursively
    ("{{ d.b.c }}", 2),
    ("{{ d['b'] }}", {"c": 2}),
    ("plain", "plain"),
    ("{{ missing | default('dflt') }}", "dflt"),
    ("{{ missing | d(5) }}", 5),
    ("{{ none | default('x', true) }}", "x"),
    ("{{ 'yes' | bool }}", True),
    ("{{ 'off' | bool }}", False),
    ("{{ '42' | int + 1 }}", 43),
    ("{{ d | to_json }}", '{"a": 1, "b": {"c": 2}}'),
    ("{{ json_text | from_json }}", {"x": [1, 2]}),
    ("{{ d | to_yaml }}", "a: 1\nb: {c: 2}\n"),
    ("{{ d | to_nice_yaml(indent=2) }}", "a: 1\nb:\n  c: 2\n"),
    ("{{ ver | regex_search('^(\\\\d+)') }}", "535"),
    ("{{ ver | regex_search('^(\\\\d+)\\\\.(\\\\d+)', '\\\\2') }}", ["154"]),
    ("{{ ver | regex_search('x') }}", None),
    ("{{ ver | regex_replace('\\\\.\\\\d+$', '') }}", "535.154"),
    ("{{ lst | join(',') }}", "1,2,2"),
    ("{{ lst | unique | list }}", [1, 2]),
    ("{{ path | basename }}", "cuda.list"),
    ("{{ path | dirname }}", "/etc/apt/sources.list.d"),
    ("{{ 'hi' | b64encode }}", "aGk="),
    ("{{ 'aGk=' | b64decode }}", "hi"),
    ("{{ d | combine({'a': 9}) }}", {"a": 9, "b": {"c": 2}}),
    ("{{ d | combine({'b': {'e': 3}}, recursive=True) }}", {"a": 1, "b": {"c": 2, "e": 3}}),
    ("{{ {'k': 1} | dict2items }}", [{"key": "k", "value": 1}]),
    ("{{ [[1, [2]], 3] | flatten }}", [1, 2, 3]),
    ("{{ [[1, [2]], 3] | flatten(levels=1) }}", [1, [2], 3]),
    ("{{ t | ternary('on', 'off') }}", "on"),
    ("{{ 'a b' | quote }}", "'a b'"),
    ("{{ [1, 2] | union([2, 3]) }}", [1, 2, 3]),
    ("{{ [1, 2] | difference([2]) }}", [1]),
    ("{{ 'a,b' | split(',') }}", ["a", "b"]),
    ("{{ ok is succeeded }}", True),
    ("{{ bad is failed }}", True),
    ("{{ chg is changed }}", True),
    ("{{ skp is skipped }}", True),
    ("{{ ok is changed }}", False),
    ("{{ ver is version('535.129', '>=') }}", True),
    ("{{ ver is version('550', 'lt') }}", True),
    ("{{ '1.10' is version('1.9', '>') }}", True),
    ("{{ 'abc' is match('a') }}", True),
    ("{{ 'abc' is search('c$') }}", True),
    ("{{ missing is defined }}", False),
    ("{{ n is defined }}", True),
    ("{% if n > 2 %}big{% else %}small{% endif %}", "big"),
    ("{{ lookup('env', 'GPUFLEET_TEST_UNSET_VAR') }}", ""),
])
def test_render(template, expected):
    assert render(template, VARS) == expected


def test_render_recurses_and_drops_omit():
    value = {"name": "{{ s }}", "opt": "{{ omit }}", "items": ["{{ n }}", "{{ omit }}", "x"], 5: "{{ t }}"}
    assert render(value, VARS) == {"name": "abc", "items": [3, "x"], 5: True}
    assert render(value, VARS) is not value


@pytest.mark.parametrize("expr,expected", [
    ("n > 2", True),
    ("s == 'abc' and t", True),
    ("missing is not defined", True),
    ("ok is succeeded and bad is failed", True),
    ("{{ t }}", True),
    ("{{ n > 5 }}", False),
    (True, True),
    (False, False),
    ("lst | length == 3", True),
])
def test_evaluate(expr, expected):
    assert evaluate(expr, VARS) == expected


def test_conditional_ands_a_list():
    assert conditional(["n > 2", "t"], VARS) is True
    assert conditional(["n > 2", "not t"], VARS) is False
    assert conditional([], VARS) is True
    assert conditional("n == 3", VARS) is True


@pytest.mark.parametrize("template,message", [
    ("{{ missing }}", "'missing' is undefined in '{{ missing }}'"),
    ("x {{ missing }} y", "'missing' is undefined in 'x {{ missing }} y'"),
    ("{{ d.nope }}", "'dict object' has no attribute 'nope' in '{{ d.nope }}'"),
    ("{{ loop_a }}", "recursive loop detected in template for variable 'loop_a'"),
    ("{{ n +}}", "template syntax error: unexpected 'end of print statement' in '{{ n +}}'"),
    ("{{ missing | mandatory }}", "mandatory variable 'missing' not defined"),
    ("{{ missing | mandatory('set missing please') }}", "set missing please"),
    ("{{ n is version('1', 'bogus') }}", "version: invalid operator 'bogus'"),
    ("{{ s is failed }}", "the 'failed' test expects a registered task result, got str"),
    ("{{ 'x' | from_json }}", "from_json: Expecting value"),
    ("{{ lookup('pipe', 'id') }}", "lookup plugin 'pipe' is not supported"),
])
def test_render_errors(template, message):
    with pytest.raises(TemplateError) as e:
        render(template, VARS)
    assert message in e.value.message


def test_evaluate_errors():
    with pytest.raises(TemplateError) as e:
        evaluate("missing == 1", VARS)
    assert "'missing' is undefined" in e.value.message
    with pytest.raises(TemplateError):
        evaluate("n ==", VARS)


def test_unsafe_and_raw_keys_are_not_templated():
    v = VarDict(cmd_out={"stdout": "{{ secret }}"}, text=Unsafe("{{ n }}"), n=1)
    v.raw_keys.add("cmd_out")
    assert render("{{ cmd_out.stdout }}", v) == "{{ secret }}"
    assert render("{{ text }}", v) == "{{ n }}"
    assert render(Unsafe("{{ n }}"), v) == "{{ n }}"


@pytest.mark.parametrize("a,b,sign", [
    ("535.154.05", "535.129.03", 1), ("550", "550.0", -1), ("1.2", "1.10", -1), ("1.0~rc1", "1.0", -1),
    ("2.0a", "2.0", 1), ("12.4", "12.4", 0),
])
def test_compare_versions(a, b, sign):
    assert compare_versions(a, b) == sign


def test_template_file(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "part.j2").write_text("part {{ n }}\n")
    tpl = tmp_path / "main.conf.j2"
    tpl.write_text("# {{ ansible_managed }}\n{% for x in lst %}\nv={{ x }}\n{% endfor %}\n{% include 'part.j2' %}")
    out = render_template_file(str(tpl), VARS, [str(tmp_path / "inc")])
    assert out == ("# Managed by gpufleet provision: local changes will be overwritten\nv=1\nv=2\nv=2\npart 3\n")
    bad = tmp_path / "bad.j2"
    bad.write_text("line1\nline2 {{ nope }}\n")
    with pytest.raises(TemplateError) as e:
        render_template_file(str(bad), VARS)
    assert e.value.message.startswith(f"{bad}:2: ") and "'nope' is undefined" in e.value.message
    bad.write_text("ok\n{% if %}\n")
    with pytest.raises(TemplateError) as e:
        render_template_file(str(bad), VARS)
    assert e.value.message.startswith(f"{bad}:2: template syntax error")
    with pytest.raises(TemplateError):
        render_template_file(str(tmp_path / "none.j2"), VARS)


@pytest.mark.parametrize("source,expression,undeclared,guarded", [
    ("{{ a }} {{ b | default(1) }}", False, {"a", "b"}, {"b"}),
    ("{% for x in xs %}{{ x }}{% endfor %}", False, {"xs"}, set()),
    ("{% set y = 1 %}{{ y }}", False, set(), set()),
    ("a is defined and a.b", True, {"a"}, {"a"}),
    ("lookup('env', 'X') ~ range(3) | string", True, set(), set()),
])
def test_analyse(source, expression, undeclared, guarded):
    assert analyse(source, expression=expression) == (undeclared, guarded)


def test_compiled_templates_are_cached():
    from provision.templating import _compile
    _compile.cache_clear()
    for i in range(50):
        render("{{ n }}-x", {"n": i})
    info = _compile.cache_info()
    assert (info.misses, info.hits) == (1, 49)
