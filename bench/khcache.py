"""Run the gpufleet CLI with proposed fix 1 applied from outside (bench only, engine files untouched): every
paramiko SSHClient shares ONE parsed known_hosts per file instead of parsing the file again per connection.

    python3 -m bench.khcache apply INVENTORY -p PLAYBOOK ...     (same arguments as provision)

Safe only for host_key_checking=yes (nothing is written to the shared object); it exists to measure the effect.
"""
from __future__ import annotations

import os
import sys
import threading

import paramiko

_cache: dict = {}
_lock = threading.Lock()


def _shared_load_host_keys(self, filename):
    key = (filename, os.stat(filename).st_mtime_ns)
    with _lock:
        hk = _cache.get(key)
        if hk is None:
            hk = _cache[key] = paramiko.HostKeys(filename)
    self._host_keys_filename = filename
    self._host_keys = hk


paramiko.SSHClient.load_host_keys = _shared_load_host_keys

if __name__ == "__main__":
    from provision.cli import main
    sys.exit(main(sys.argv[1:]))
