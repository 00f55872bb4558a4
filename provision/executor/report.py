"""What the executor shows: results masked (no_log, secret names and values) before any reporter sees them, the
-vv/-vvv command log, the recap's bookkeeping and the retry file."""
from __future__ import annotations

import dataclasses
import os

from provision import templating
from provision.executor.state import HostState
from provision.ops.core import MASK, SECRET_VARS_LIST, is_secret_name, mask_text, secret_values, unified
from provision.results import HostResult

CENSORED = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"


class Reporting:
    """Mixed into :class:`provision.executor.play.Executor` (uses its options, reporter, stats and lock)."""

    def _secrets(self, v) -> list[str]:
        """The values to mask for one host and task (ops/core.py says what is secret): variables named as secrets
        or listed in ``gpufleet_secret_vars``, rendered (a secret built from a template is masked as rendered),
        and the become password."""
        marked = self._render(v.get(SECRET_VARS_LIST) if SECRET_VARS_LIST in v else None, v) or ()
        marked = [marked] if isinstance(marked, str) else marked
        names = [k for k in list(v.keys()) if isinstance(k, str) and k not in v.raw_keys]
        rendered = {k: self._render(v[k], v) for k in names if is_secret_name(k) or k in marked}
        return secret_values(rendered, {k: s for k, s in self.options.connect.__dict__.items()
                                        if k == "become_password" and s}, marked=marked)

    @staticmethod
    def _render(value, v):
        try:
            return templating.render(value, v)
        except Exception:  # noqa: BLE001 - a value that does not render is masked as it is written
            return value

    def _op_logger(self, s, no_log: bool):
        """Progress notes (level 'v') for -v, the command/output log for -vv/-vvv; without -v, nothing to print, so
        nothing is masked either."""
        if self.options.verbosity < 1:
            return lambda lvl, text: None
        return lambda lvl, text: self._log(s.name, lvl, mask_text(text, s.secrets), no_log)

    def _log(self, host: str, level: str, text: str, no_log: bool) -> None:
        if no_log:
            text = "(hidden: no_log)"
        self.reporter.verbose(host, level, text)

    def _masked(self, r: HostResult, secrets: list[str]) -> HostResult:
        if r.no_log:
            return dataclasses.replace(r, msg=CENSORED if r.msg else "", stdout="", stderr="",
                                       diff=[{"before": "", "after": "", "before_header": "(no_log)",
                                              "after_header": "(no_log)"}] if r.diff else [],
                                       commands=[], extra={}, item="(censored)" if r.item is not None else None,
                                       show={"censored": CENSORED} if r.show is not None else None,
                                       results=[self._masked(dataclasses.replace(x, no_log=True), secrets)
                                                for x in r.results])
        m = lambda t: mask_text(t, secrets) if isinstance(t, str) else t  # noqa: E731

        def deep(v):
            if isinstance(v, str):
                return m(v)
            if isinstance(v, dict):
                return {k: (MASK if isinstance(k, str) and is_secret_name(k) and isinstance(x, (str, int))
                            and not isinstance(x, bool) else deep(x)) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [deep(x) for x in v]
            return v
        return dataclasses.replace(
            r, msg=m(r.msg), stdout=m(r.stdout), stderr=m(r.stderr), commands=[m(c) for c in r.commands],
            show=deep(r.show) if r.show is not None else None, item=deep(r.item), extra=deep(r.extra),
            diff=[{**{k: m(x) for k, x in d.items()}, "unified": m(unified(d))} for d in r.diff],
            results=[self._masked(x, secrets) for x in r.results])

    def _report(self, s, task, r: HostResult, secrets, item=False) -> None:
        r.no_log = bool(task.no_log) if task is not None else False
        self.reporter.host_result(self._masked(r, secrets or []), item=item)

    def _record(self, s: HostState, r: HostResult, task, secrets=None, loop_summary=False) -> None:
        with self._lock:
            self.stats.host(s.name).add(r)
            if r.unreachable:
                self.stats.unreachable_hosts.add(s.name)
            elif r.failed and not r.ignored:
                self.stats.failed_hosts.add(s.name)
        if loop_summary:
            self.reporter.loop_done(self._masked(r, secrets or []))
        else:
            self._report(s, task, r, secrets)

    def _write_retry(self, playbook_path: str) -> None:
        bad = sorted(self.stats.failed_hosts | self.stats.unreachable_hosts)
        if not bad or not self.options.retry_files:
            return
        base = os.path.splitext(os.path.basename(playbook_path))[0] + ".retry"
        d = self.options.retry_dir or os.path.dirname(os.path.abspath(playbook_path))
        path = os.path.join(os.path.expanduser(d), base)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("".join(h + "\n" for h in bad))
            self.reporter.info(f"to retry, use: --limit @{path}")
        except OSError as err:
            self.reporter.warning(f"could not write the retry file {path}: {err.strerror}")
