"""Writing a file through a connector's own ``run``: the same for every connector (nothing uploaded to run)."""
from __future__ import annotations

import os
import shlex

from provision.connectors.base import ConnectorError


def put_command(path: str, mode: int | None) -> str:
    """Shell that writes stdin to ``path`` atomically (temp file in the same folder, then rename)."""
    q = shlex.quote(path)
    d = shlex.quote(os.path.dirname(path) or ".")
    if mode is not None:
        chmod = f' && chmod {mode:o} "$t"'
    else:  # keep an existing file's mode and owner; a new file gets 0644
        chmod = (f' && {{ if [ -e {q} ]; then chmod --reference={q} "$t" && {{ chown --reference={q} "$t" '
                 f'2>/dev/null || true; }}; else chmod 644 "$t"; fi; }}')
    return (f't=$(mktemp {d}/.provision.XXXXXX) && cat > "$t"{chmod} && mv -f "$t" {q} '
            f'|| {{ rc=$?; rm -f "$t"; exit $rc; }}')


class ShellPut:
    """``put`` for any connector whose ``run`` takes stdin: the data goes through a temp file, then a rename."""

    def put(self, path: str, data: bytes, *, mode: int | None = None, become: bool = False,
            become_user: str = "root") -> None:
        res = self.run(put_command(path, mode), stdin=data, become=become, become_user=become_user)
        if res.rc != 0:
            raise ConnectorError(f"{self.host}: cannot write {path}: {res.stderr.strip()}")
