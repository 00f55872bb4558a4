"""The per-host upgrade state machine, as an explicit transition table.

    required -> draining -> upgrading -> rebooting -> validating -> restoring -> done
    any non-terminal state --fail--> failed
    validating --rollback--> upgrading   (``--rollback-on-failure``: reinstall the previous version)
    validating --rolled_back--> failed   (the previous version validated again; the host still counts as failed)

Modelled on GPU Operator's upgrade controller (k8s-operator-libs pkg/upgrade): upgrade-required, cordon/wait-for-jobs/
pod-deletion (our ``draining``), driver pod restart (``upgrading`` + ``rebooting``), validation-required,
uncordon-required (``restoring``), upgrade-done / upgrade-failed.  Every state is re-entrant: the step for a state
checks what is already true on the host before it changes anything, so ``--resume`` simply re-runs the step of the
state the state file holds.
"""
from __future__ import annotations

REQUIRED = "required"
DRAINING = "draining"
UPGRADING = "upgrading"
REBOOTING = "rebooting"
VALIDATING = "validating"
RESTORING = "restoring"
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"      # not part of the machine: decided at plan time (already at target, unreachable, locked)

STATES = (REQUIRED, DRAINING, UPGRADING, REBOOTING, VALIDATING, RESTORING, DONE, FAILED)
TERMINAL = frozenset({DONE, FAILED, SKIPPED})
# States in which the host is out of service (counts against --max-unavailable).
IN_FLIGHT = frozenset({DRAINING, UPGRADING, REBOOTING, VALIDATING, RESTORING})

# Events
START = "start"
DRAINED = "drained"
INSTALLED = "installed"
BOOTED = "booted"
VALIDATED = "validated"
RESTORED = "restored"
FAIL = "fail"
ROLLBACK = "rollback"
ROLLED_BACK = "rolled_back"

EVENTS = (START, DRAINED, INSTALLED, BOOTED, VALIDATED, RESTORED, FAIL, ROLLBACK, ROLLED_BACK)

TRANSITIONS: dict[tuple[str, str], str] = {
    (REQUIRED, START): DRAINING,
    (DRAINING, DRAINED): UPGRADING,
    (UPGRADING, INSTALLED): REBOOTING,
    (REBOOTING, BOOTED): VALIDATING,
    (VALIDATING, VALIDATED): RESTORING,
    (VALIDATING, ROLLBACK): UPGRADING,
    (VALIDATING, ROLLED_BACK): FAILED,
    (RESTORING, RESTORED): DONE,
}
for _s in (REQUIRED, DRAINING, UPGRADING, REBOOTING, VALIDATING, RESTORING):
    TRANSITIONS[(_s, FAIL)] = FAILED


class IllegalTransition(ValueError):
    def __init__(self, state: str, event: str):
        super().__init__(f"no transition from {state!r} on {event!r}")
        self.state, self.event = state, event


def transition(state: str, event: str) -> str:
    """The next state, or :class:`IllegalTransition` (the controller never guesses)."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def is_terminal(state: str) -> bool:
    return state in TERMINAL
