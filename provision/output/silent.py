"""The reporter hooks that only the live text reporter shows, as no-ops (warnings still go to stderr)."""
from __future__ import annotations

import sys


class SilentHooks:
    """The reporter hooks that only the live text reporter shows: no-ops, warnings to stderr.
    Reporters that print one document at the end (``--json``, ad hoc) inherit these."""

    err = None  # None: whatever sys.stderr is when the warning is printed

    def play_start(self, *a):
        pass

    def task_start(self, *a, **k):
        pass

    def warning(self, msg):
        print(f"[WARNING]: {msg}", file=self.err or sys.stderr)

    def info(self, msg):
        pass

    def retry(self, *a):
        pass

    def verbose(self, *a):
        pass

    def progress(self, *a):
        pass

    def progress_done(self):
        pass
