"""The prefetch: a play's read-only probes and the fact sections its tasks read, in ONE round trip per host.

A task later uses a prefetched answer only if nothing ran on the host in between (the probe cache is cleared by
any change: see :meth:`provision.ops.core.OpContext.probe`)."""
from __future__ import annotations

from provision import facts as factmod
from provision.executor.state import render_args, tag_selected, task_matches
from provision.hostio import ConnectorError, Unreachable
from provision.ops.core import OpContext, StatProbe, normalize, stat_batch
from provision.ops.spec import registry

PROBE_MARK = "@@provision-probe@@"
FACT_KEY = "@fact"   # probe-cache key (FACT_KEY, section): a fact section prefetched with the probes


def split_probes(output: str, n: int) -> list[tuple[int | None, str]]:
    """Output of the batched probe script -> [(rc, stdout)] per probe (rc None when a section is missing)."""
    out: list[tuple[int | None, str]] = []
    for i in range(n):
        start_tag = f"{PROBE_MARK}{i}\n"
        a = output.find(start_tag)
        if a < 0:
            out.append((None, ""))
            continue
        a += len(start_tag)
        b = output.find(f"\n{PROBE_MARK}rc ", a)
        if b < 0:
            out.append((None, ""))
            continue
        rest = output[b + len(PROBE_MARK) + 4:].split("\n", 1)[0]
        out.append((int(rest) if rest.strip().lstrip("-").isdigit() else None, output[a:b]))
    return out


def prefetch(ex, s, play) -> None:
    """Run the read-only probes of the play's tasks, and the fact sections those tasks read, in ONE round trip
    per host (per become setting). A task later uses a probe's answer, or a prefetched fact, only if nothing
    ran on the host in between (OpContext.probe; both live in the probe cache that any change clears)."""
    s.probe_cache = {}
    login = (getattr(play, "remote_user", None), getattr(play, "connection", None))
    if "{{" in f"{login[0] or ''}{login[1] or ''}":
        return   # a templated login is known only when a task renders it
    started = ex._started
    groups: dict[tuple, list[str]] = {}
    facts: list[str] = []
    reg = registry()
    for task in play.tasks:
        if not started:
            if not task_matches(task, ex.options.start_at_task):
                continue
            started = True
        spec = reg.get(task.module)
        if (spec is None or task.delegate_to or task.unsupported     # another host, or nothing to probe
                or (task.remote_user, task.connection) != login
                or spec.runs_on_controller or not isinstance(spec.impl, type)
                or getattr(spec.impl, "controller", False)
                or not tag_selected(task.tags, ex.options.tags, ex.options.skip_tags)):
            continue
        facts += [f for f in getattr(spec.impl, "facts", ()) if f in factmod.FACTS and f not in s.gathered
                  and f not in facts]
        if task.loop is not None:
            continue
        try:
            op = spec.impl()
            v = ex._vars(s, play, task)
            raw = set(getattr(op, "raw_args", ()))
            args = normalize(spec, render_args(task.args, raw, v))
            if not op.prefetchable(args):
                continue
            ctx = OpContext(host=s.name, check=ex._check_for(task), diff=ex.options.diff, vars=v,
                            facts=s.facts)
            cmd = op.probe(args, ctx)
        except Exception:  # noqa: BLE001 - args that depend on later results: probed when the task runs
            continue
        if cmd:
            b, u = ex._become(s, task, play)
            group = groups.setdefault((b, u if b else ""), [])
            if cmd not in group:
                group.append(cmd)
    # the facts travel with the probes run as the connecting user (as gathering runs them), else with the first
    # become group's
    fact_group = (False, "") if (False, "") in groups else next(iter(groups), None)
    if fact_group is None or sum(len(c) for c in groups.values()) + (1 if facts else 0) < 2:
        return   # nothing to save: one round trip either way
    host = ex.runner(s, play).host   # as the play logs in (remote_user / connection keywords)
    try:
        conn = ex.pool.acquire(host)
    except Unreachable:
        return   # the first task reports it
    try:
        for (b, u), cmds in groups.items():
            with_facts = facts if (b, u) == fact_group else []
            if len(cmds) + (1 if with_facts else 0) < 2:
                continue
            script = factmod.script(with_facts) if with_facts else ""
            # the file probes are answered together: one stat and one sha256sum for all of them (a probe the
            # batch leaves unanswered, a fifo say, runs alone when its task does)
            files = [c for c in cmds if isinstance(c, StatProbe)]
            batch = stat_batch(files)
            alone = [c for c in cmds if c not in files] if batch else list(cmds)
            sections = alone + ([batch[0]] if batch else [])
            script += "".join(f"printf '%s\\n' '{PROBE_MARK}{i}'; ( {c} ) 2>/dev/null; "
                              f"printf '\\n{PROBE_MARK}rc %s\\n' $?\n" for i, c in enumerate(sections))
            kw = {"become_user": u} if b and u != "root" else {}
            ex._log(s.name, "cmd", f"prefetch {len(cmds)} read-only probes"
                      + (f" and facts {', '.join(with_facts)}" if with_facts else "") + " in one round trip",
                      False)
            res = conn.run(script, become=b, **kw)
            for name, parsed in factmod.parse_each(res.stdout, with_facts).items():
                s.probe_cache[(FACT_KEY, name)] = parsed
            answers = split_probes(res.stdout, len(sections))
            if batch and answers[-1][0] is not None:
                for c, text in batch[1](answers[-1][1]).items():
                    s.probe_cache[(b, u, c)] = (0, text)
            for c, (rc, out) in zip(alone, answers):
                if rc is not None:
                    s.probe_cache[(b, u, c)] = (rc, out)
    except ConnectorError:
        s.probe_cache = {}
    finally:
        ex.pool.release(host)

