"""Counts given as ``N`` or ``P%`` and the batch/availability/failure budget (pure)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from provision.errors import OptionError

_COUNT = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Count:
    """``N`` hosts or ``P`` percent of the rollout's hosts."""
    value: int
    percent: bool = False

    def of(self, total: int, *, round_up: bool = True, minimum: int = 0) -> int:
        if not self.percent:
            return max(self.value, minimum)
        exact = self.value * total / 100.0
        n = math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9)
        return max(n, minimum)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_count(text: str, option: str, *, allow_zero: bool = True) -> Count:
    m = _COUNT.match(str(text))
    if not m:
        raise OptionError(f"expected a number of hosts N or a percentage P%, got {text!r}", key=option)
    value, pct = int(m.group(1)), bool(m.group(2))
    if pct and value > 100:
        raise OptionError(f"a percentage must be 0..100, got {text!r}", key=option)
    if value == 0 and not allow_zero:
        raise OptionError(f"must be at least 1 (or 1%), got {text!r}", key=option)
    return Count(value, pct)


@dataclass(frozen=True)
class Budget:
    """Resolved limits for one rollout over ``total`` selected hosts.

    batch: hosts upgrading at once (percent rounds down, at least 1, like Ansible's serial);
    max_unavailable: hosts out of service at once, counting hosts already in maintenance (percent rounds up, at
    least 1, like GPU Operator's maxUnavailable); max_fail: failures tolerated (percent rounds down); the rollout
    starts no new host once failures exceed it.
    """
    total: int
    batch: int
    max_unavailable: int
    max_fail: int

    @classmethod
    def resolve(cls, total: int, batch: Count, max_unavailable: Count, max_fail: Count) -> "Budget":
        return cls(total,
                   batch.of(total, round_up=False, minimum=1),
                   max_unavailable.of(total, round_up=True, minimum=1),
                   max_fail.of(total, round_up=False, minimum=0))

    def exceeded(self, failures: int) -> bool:
        return failures > self.max_fail


def next_batch(pending: Sequence[str], unavailable: Iterable[str], budget: Budget) -> tuple[list[str], str | None]:
    """The next batch from ``pending`` (in order) and, when nothing can start, why.

    ``unavailable`` are hosts out of service right now (maintenance markers, failed hosts, unreachable ones).  A
    pending host that is itself unavailable does not add to the count when it starts.
    """
    out = set(unavailable)
    chosen: list[str] = []
    for host in pending:
        if len(chosen) >= budget.batch:
            break
        if host in out or len(out) + 1 <= budget.max_unavailable:
            chosen.append(host)
            out.add(host)
    if chosen or not pending:
        return chosen, None
    down = sorted(set(unavailable))
    return [], (f"max-unavailable {budget.max_unavailable} reached: {len(down)} host(s) already out of service "
                f"({', '.join(down[:5])}{', ...' if len(down) > 5 else ''})")


def plan_batches(pending: Sequence[str], unavailable: Iterable[str], budget: Budget) -> tuple[list[list[str]], str | None]:
    """All batches assuming every host succeeds (what --check prints), and why the rest cannot start, if so."""
    rest = list(pending)
    down = set(unavailable)
    batches: list[list[str]] = []
    while rest:
        batch, why = next_batch(rest, down, budget)
        if not batch:
            return batches, why
        batches.append(batch)
        rest = [h for h in rest if h not in batch]
        # a successful host leaves maintenance again (unless it was in maintenance before: then it stays out)
    return batches, None
