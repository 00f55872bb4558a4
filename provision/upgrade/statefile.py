"""The controller's state file for one rollout: JSON, rewritten atomically (tmp + fsync + rename + fsync of the
folder) at every transition, so that a controller killed at any instant leaves either the old or the new file."""
from __future__ import annotations

import copy
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from provision.atomicfile import write_atomic
from provision.upgrade import states as S

FORMAT = 1


@dataclass
class HostRecord:
    name: str
    state: str = S.REQUIRED
    target: str | None = None            # the full upstream version this host goes to
    from_version: str | None = None      # running driver before the rollout (upstream)
    from_packages: dict = field(default_factory=dict)   # package -> Debian version before (for rollback)
    phase: str = "forward"               # forward | rollback
    admin_marker: dict | None = None     # the maintenance marker an admin had put there before we came
    marker_checked: bool = False         # admin_marker is known (set before our marker is written)
    stopped_containers: list = field(default_factory=list)   # [{'id','name'}] stopped by --force
    boot_id_before: str | None = None
    reboot_started: float | None = None
    skip_reason: str | None = None
    error: str | None = None
    checks: dict = field(default_factory=dict)           # validation check -> 'ok' / 'skipped: why' / 'failed: why'
    notes: list = field(default_factory=list)
    history: list = field(default_factory=list)          # [[state, unix_ts], ...]
    batch: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "HostRecord":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class StateFile:
    """Thread-safe holder of the rollout document; ``save()`` is atomic."""

    def __init__(self, path: str, doc: dict):
        self.path = path
        self.doc = doc
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def new(cls, path: str, *, rollout_id: str, controller: str, inventory: str, target: str,
            options: dict, hosts: list[HostRecord]) -> "StateFile":
        doc = {"format": FORMAT, "rollout": rollout_id, "controller": controller, "inventory": inventory,
               "target": target, "options": options, "created": time.time(), "updated": time.time(),
               "order": [h.name for h in hosts], "hosts": {h.name: asdict(h) for h in hosts}, "stopped": None}
        sf = cls(path, doc)
        sf.save()
        return sf

    @classmethod
    def load(cls, path: str) -> "StateFile":
        """Raises OSError (cannot open) or ValueError (not JSON, not UTF-8, not a state file of this format)."""
        with open(path, encoding="utf-8") as fh:
            try:
                doc = json.load(fh)
            except ValueError as err:
                raise ValueError(f"not JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("hosts"), dict) \
                or not isinstance(doc.get("order"), list):
            raise ValueError(f"not a gpufleet upgrade state file (format {FORMAT})")
        return cls(path, doc)

    # ------------------------------------------------------------------ access
    def host(self, name: str) -> HostRecord:
        with self._lock:
            return HostRecord.from_dict(copy.deepcopy(self.doc["hosts"][name]))

    def hosts(self) -> list[HostRecord]:
        with self._lock:
            return [self.host(n) for n in self.doc["order"]]

    def put(self, rec: HostRecord) -> None:
        with self._lock:
            self.doc["hosts"][rec.name] = asdict(rec)
            self.save()

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self.doc[key] = value
            self.save()

    def save(self) -> None:
        with self._lock:
            self.doc["updated"] = time.time()
            atomic_write_json(self.path, self.doc)

    def unfinished(self) -> list[str]:
        with self._lock:
            return [n for n in self.doc["order"] if self.doc["hosts"][n]["state"] not in S.TERMINAL]


def set_aside(path: str, now: float | None = None) -> str:
    """Rename the state file of an earlier rollout to PATH.discarded-YYYYmmddTHHMMSSZ (never over another one) and
    return the new name: starting over (--discard-state) keeps the old record beside the new one."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    dest, n = f"{path}.discarded-{stamp}", 1
    while os.path.exists(dest):
        n += 1
        dest = f"{path}.discarded-{stamp}-{n}"
    os.rename(path, dest)
    return dest


def atomic_write_json(path: str, doc: dict) -> None:
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))
