"""Playbooks and roles -> frozen Playbook/Play/Task models, checked against the module specs before any connection.

``load_playbook(path)`` reads Ansible's playbook format (plays with vars, vars_files, roles, pre_tasks, tasks,
post_tasks, handlers, serial...; ``block:`` with rescue/always, static ``import_tasks``/``import_role``/
``import_playbook``, dynamic ``include_tasks``/``include_role`` read per host by ``load_included``) and resolves
each task's module against :func:`provision.ops.spec.registry` (a typo of a module, an unknown argument, wrong
type, missing required argument, a ``notify`` naming no handler: one-line :class:`InputError`; an Ansible module
gpufleet lacks: a task marked ``unsupported``, listed by ``unsupported_tasks``).
``validate(playbook, inventory, extra_vars)`` adds the checks that need the inventory: host patterns and undefined
template variables. See docs/playbooks.md.

The package: :mod:`.models` (the frozen models), :mod:`.loader` (YAML, roles, includes) with :mod:`.tasks` (one
task) and :mod:`.fields` (keywords and their value checks), :mod:`.module_args` (k=v and free-form arguments, the
check against the module's spec) and :mod:`.static` (``validate``).
"""
from __future__ import annotations

from provision.playbook.loader import Included, load_included, load_playbook
from provision.playbook.models import Play, Playbook, Task, find_file, role_path, search_paths
from provision.playbook.module_args import _parse_kv, _split_free_form, check_module_args, split_args
from provision.playbook.static import MAGIC_VARS, unsupported_line, unsupported_tasks, validate

__all__ = ["Included", "MAGIC_VARS", "Play", "Playbook", "Task", "_parse_kv", "_split_free_form", "check_module_args",
           "find_file", "load_included", "load_playbook", "role_path", "search_paths", "split_args",
           "unsupported_line", "unsupported_tasks", "validate"]
