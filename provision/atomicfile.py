"""Files the controller writes for others to read (the upgrade's state file, Prometheus' discovery targets): a temp
file beside the target, flushed to disk, renamed over it, and the folder synced, so a reader or a crash sees the old
file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (``mode``: the file's mode, else mkstemp's 0600)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
