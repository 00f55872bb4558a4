"""Static validation of a loaded playbook against an inventory, before any connection: host patterns resolve, every
template variable is defined somewhere, template syntax and filter/test names are known."""
from __future__ import annotations

from typing import Any, Mapping

from provision.errors import InputError, closest
from provision.playbook.fields import _err
from provision.playbook.models import Playbook
from provision.playbook.module_args import check_module_args
from provision.yamlsrc import SourcePos


MAGIC_VARS = frozenset({
    "inventory_hostname", "inventory_hostname_short", "group_names", "groups", "hostvars", "play_hosts",
    "ansible_play_hosts", "ansible_play_batch", "ansible_play_hosts_all", "ansible_check_mode", "ansible_diff_mode",
    "omit", "item", "ansible_facts", "playbook_dir", "inventory_dir", "inventory_file", "role_name", "role_path",
    "ansible_loop", "ansible_loop_var", "ansible_index_var", "ansible_version", "ansible_run_tags",
    "ansible_skip_tags", "ansible_limit", "ansible_forks", "ansible_verbosity", "vars",
})
# the variables a facts module sets (besides ansible_*): service_facts -> services, package_facts -> packages
FACT_MODULE_VARS = {"service_facts": ("services",), "package_facts": ("packages",)}


def _template_strings(value: Any, path: str):
    """(path, string) for every templated string inside value."""
    from provision.templating import is_template
    if isinstance(value, str):
        if is_template(value):
            yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _template_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _template_strings(v, f"{path}[{i}]")


def _undefined_check(source: str, *, expression: bool, defined: set[str], guarded: set[str], pos: SourcePos,
                     key: str):
    from provision.templating import ENV, TemplateError, UnknownName, analyse
    try:
        names, guards = analyse(source, expression=expression)
    except UnknownName as err:
        raise _err(f"unknown {err.kind} '{err.name}'", pos, key, hint=closest(err.name, err.choices)) from None
    except TemplateError as err:
        raise _err(err.message, pos, key) from None
    for n in sorted(names - guards - guarded):
        if n in defined or n.startswith("ansible_") or n in ENV.globals:
            continue
        raise _err(f"undefined variable '{n}'", pos, key, hint=closest(n, defined))


def _expression_args(module: str) -> frozenset:
    from provision.ops.spec import registry
    spec = registry().get(module)
    return frozenset(getattr(spec.impl, "raw_args", ()) or ()) if spec is not None else frozenset()


def unsupported_tasks(playbook: Playbook, *, strict: bool = False) -> list[str]:
    """One line per task whose module gpufleet lacks (``file:line: module: why; ...``): such a task fails only the
    hosts that reach it. Files that include_tasks/include_role read at run time are listed when they are read.
    ``strict`` (--strict): the first such task is an InputError instead."""
    tasks = [t for play in playbook.plays for t in (*play.tasks, *play.handlers) if t.unsupported]
    if strict and tasks:
        t = tasks[0]
        raise _err(f"{t.unsupported} (--strict)", t.positions.get("module", t.source), t.module)
    return [unsupported_line(t) for t in tasks]


def unsupported_line(task) -> str:
    """The warning (or, with --strict, the error) for a task whose module gpufleet lacks."""
    pos = task.positions.get("module", task.source)
    when = f"its when: {' and '.join(task.when)}" if task.when else "no when: every host"
    return f"{pos.file}:{pos.line}: {task.module}: {task.unsupported}; it fails only the hosts that reach it ({when})"


def validate(playbook: Playbook, inventory, extra_vars: Mapping | None = None, *, strict: bool = False) -> list[str]:
    """Static checks before any connection: host patterns resolve in the inventory, every template variable is
    defined somewhere (inventory vars of the targeted hosts, play vars, role defaults, extra vars, registered
    names, set_fact keys, loop vars, facts, magic vars), template syntax and filter/test names. Returns the
    warnings (tasks whose module gpufleet lacks); ``strict`` makes the first of them an error."""
    from provision.ops.spec import registry
    from provision.templating import TemplateError, analyse, render
    extra_vars = dict(extra_vars or {})
    for play in playbook.plays:
        ppos = play.positions.get("hosts", play.source)
        pattern = play.hosts
        try:
            if "{{" in pattern:
                pattern = render(pattern, {**play.vars, **extra_vars})
            hosts = inventory.select(str(pattern)) if inventory is not None else []
        except TemplateError as err:
            raise _err(err.message, ppos, "hosts") from None
        except InputError as err:
            if err.file:
                raise
            raise _err(err.message, ppos, "hosts", hint=err.hint) from None

        defined: set[str] = set(MAGIC_VARS) | set(extra_vars) | set(play.vars) | set(play.role_defaults)
        for h in hosts:
            defined.update(h.vars)
        for t in (*play.tasks, *play.handlers):
            defined.update(t.defines)   # what include_tasks/include_role/include_vars files may define
            defined.update(FACT_MODULE_VARS.get(t.module, ()))
            if t.register:
                defined.add(t.register)
            if t.module == "set_fact":
                defined.update(k for k in t.args if k != "cacheable")
            defined.update(t.vars)   # role vars are visible play-wide in Ansible

        for k, v in list(play.vars.items()) + list(play.role_defaults.items()):
            for path, s in _template_strings(v, k):
                pos = play.positions.get(f"vars.{k}", play.source)
                _undefined_check(s, expression=False, defined=defined, guarded=set(), pos=pos, key=path)

        reg = registry()
        for t in (*play.tasks, *play.handlers):
            mpos = t.positions.get("module", t.source)
            if t.unsupported or t.include is not None:
                continue
            if t.module not in reg:   # the registry may have changed since load_playbook
                raise _err("unknown module", mpos, t.module, hint=closest(t.module, reg))
            check_module_args(t.module, t.args, t.positions, mpos)

        for t in (*play.tasks, *play.handlers):
            tdefined = defined | {t.loop_var} | ({t.index_var} if t.index_var else set())
            guarded: set[str] = set()
            for cond in t.when:
                if "{{" not in cond:
                    try:
                        guarded |= analyse(cond, expression=True)[1]
                    except TemplateError:
                        pass
            checks: list[tuple[str, Any, bool, SourcePos]] = []
            expr_args = _expression_args(t.module)
            for k, v in (t.args.items() if not t.unsupported else ()):   # never run here: only when is checked
                apos = t.positions.get(f"args.{k}", t.source)
                if t.module == "debug" and k == "var":
                    continue     # debug prints "VARIABLE IS NOT DEFINED!" itself, as Ansible does
                if k in expr_args:   # e.g. assert's `that`: bare expressions
                    for i, c in enumerate(v if isinstance(v, list) else [v]):
                        if isinstance(c, str) and c.strip():
                            checks.append((k if not isinstance(v, list) else f"{k}[{i}]", c, "{{" not in c, apos))
                    continue
                checks.append((k, v, False, apos))
            for key, conds in (("when", t.when), ("changed_when", t.changed_when), ("failed_when", t.failed_when),
                               ("until", (t.until,) if t.until else ())):
                for c in conds or ():
                    checks.append((key, c, "{{" not in c, t.positions.get(key, t.source)))
            if t.loop is not None:
                checks.append(("loop", t.loop, False, t.positions.get("loop", t.source)))
            if t.delegate_to:
                checks.append(("delegate_to", t.delegate_to, False, t.positions.get("delegate_to", t.source)))
            for k, v in t.vars.items():
                checks.append((f"vars.{k}", v, False, t.positions.get("vars", t.source)))
            env = t.environment.items() if isinstance(t.environment, Mapping) else enumerate(t.environment)
            for k, v in env:
                checks.append((f"environment.{k}", v, False, t.positions.get("environment", t.source)))
            if t.loop_label:
                checks.append(("loop_control.label", t.loop_label, False, t.positions.get("loop_control", t.source)))
            for key, value, is_expr, pos in checks:
                if is_expr:
                    _undefined_check(value, expression=True, defined=tdefined, guarded=guarded, pos=pos, key=key)
                    continue
                for path, s in _template_strings(value, key):
                    _undefined_check(s, expression=False, defined=tdefined, guarded=guarded, pos=pos, key=path)
    return unsupported_tasks(playbook, strict=strict)
