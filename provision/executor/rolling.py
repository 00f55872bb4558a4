"""The rolling strategy: per-host work in budgeted batches, on the executor's workers and connection pool.

A strategy (the driver upgrade's :class:`provision.upgrade.rollout.Rollout`) decides; the executor runs. It asks
``strategy.next_batch()`` for the hosts to start (or nothing, with the reason it stops), runs
``strategy.run_host(host, runner, ctx)`` for each of them at once, at most ``forks`` at a time, lets every host in
flight finish, and calls ``strategy.batch_done(batch)``. The strategy's own hooks (its state file) see every
transition; nothing here knows of states.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol

from provision.ops.core import OpContext


class Strategy(Protocol):
    def next_batch(self) -> tuple[list[str], str | None]: ...

    def run_host(self, host: Any, runner: Any, ctx: OpContext) -> Any: ...

    def batch_done(self, batch: list[str]) -> None: ...


class Rolling:
    """Mixed into :class:`provision.executor.play.Executor` (uses its inventory, options, pool and states)."""

    def host_become(self, host, *, default: bool = False) -> tuple[bool, str]:
        """-b / --become-user, else the host's ansible_become / ansible_become_user, else ``default``."""
        become = self.options.become
        if become is None:
            become = getattr(host, "become", None)
        if become is None:
            become = default
        user = self.options.become_user or getattr(host, "become_user", None) or "root"
        return bool(become), user

    def map_hosts(self, hosts: list, fn: Callable[[Any, Any, OpContext], Any], *,
                  become_default: Callable[[Any], bool] = lambda h: False) -> dict[str, Any]:
        """``fn(host, runner, ctx)`` for every host, at most ``forks`` at once; {host name: what fn returned}.
        Each host's runner gives its connection back to the pool when fn returns."""
        def one(h):
            s = self._state(h)
            become, user = self.host_become(h, default=become_default(h))
            runner = self.runner(s)
            ctx = OpContext(host=h.name, become=become, become_user=user, facts=s.facts,
                            log=self._op_logger(s, False), runner=runner)
            try:
                return fn(h, runner, ctx)
            finally:
                runner.release()
        with ThreadPoolExecutor(max_workers=max(1, min(self.options.forks, len(hosts) or 1)),
                                thread_name_prefix="fork") as workers:
            results = list(workers.map(one, hosts))
        return {h.name: r for h, r in zip(hosts, results)}

    def run_rolling(self, hosts: dict[str, Any], strategy: Strategy, *,
                    become_default: Callable[[Any], bool] = lambda h: False) -> str | None:
        """Batches until the strategy has none left; returns why it stopped early (None: all went)."""
        try:
            while True:
                batch, why = strategy.next_batch()
                if not batch:
                    return why
                self.map_hosts([hosts[n] for n in batch], strategy.run_host, become_default=become_default)
                strategy.batch_done(batch)
        finally:
            self.pool.close_all()
