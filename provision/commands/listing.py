"""`apply/check --syntax-check | --list-hosts | --list-tasks | --list-tags`: what ansible-playbook prints for
them, from the loaded and checked playbook; no host is contacted."""
from __future__ import annotations

from provision.executor.state import tag_selected


def _play_line(n: int, play) -> str:
    return f"  play #{n} ({play.hosts}): {play.name or play.hosts}\tTAGS: []"


def _task_name(task) -> str:
    return f"{task.role} : {task.name}" if task.role else task.name


def _tags(tags) -> str:
    return "[" + ", ".join(sorted(set(tags))) + "]"


def print_listing(mode: str, playbook, inventory, opts) -> int:
    """Print the listing ``mode`` (an apply option's dest) for ``playbook``; 0."""
    print(f"\nplaybook: {playbook.path}")
    if mode == "syntax_check":
        return 0
    for n, play in enumerate(playbook.plays, 1):
        print()
        print(_play_line(n, play))
        if mode == "list_hosts":
            hosts = [] if inventory is None or "{{" in play.hosts else inventory.limit(
                inventory.select(play.hosts), opts.limit)
            print(f"    pattern: {[play.hosts]}")
            print(f"    hosts ({len(hosts)}):")
            for h in hosts:
                print(f"      {h.name}")
            continue
        tasks = [t for t in play.tasks if tag_selected(t.tags, opts.tags, opts.skip_tags)]
        if mode == "list_tasks":
            print("    tasks:")
            for t in tasks:
                print(f"      {_task_name(t)}\tTAGS: {_tags(t.tags)}")
        else:
            print(f"      TASK TAGS: {_tags(tag for t in tasks for tag in t.tags)}")
    return 0
