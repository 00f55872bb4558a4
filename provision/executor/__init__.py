"""The executor: the one engine that connects to hosts and runs every play (see docs/ARCHITECTURE.md).

* :mod:`.options`  RunOptions and -e extra vars
* :mod:`.pool`     at most ``forks`` connections, one per host
* :mod:`.prefetch` a play's read-only probes and facts in one round trip per host
* :mod:`.runner`   carries out plans (shell, file put, reboot-and-wait, controller-side steps) on one host
* :mod:`.play`     plays, batches (serial), tasks in lockstep, handlers, failure budget
* :mod:`.rolling`  the rolling strategy: budgeted batches of per-host work with a hook at every transition
* :mod:`.report`   masking and what the reporters are shown
"""
from provision.executor.options import RunOptions, parse_extra_vars  # noqa: F401
from provision.executor.play import Executor  # noqa: F401
from provision.executor.pool import ConnectionPool  # noqa: F401
from provision.executor.prefetch import PROBE_MARK, split_probes  # noqa: F401
from provision.executor.state import HostState, batches, render_args, tag_selected  # noqa: F401
