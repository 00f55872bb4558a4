"""Start gpu-agent with process-level tweaks applied first: a diagnostic for ``bench.py scrape --variant``
(which tweak moves the tail latency or RSS on a GPU host), not a way to run the agent.

    python3 bench/agent/variant.py gc-freeze,thp-off,switch=0.001 -- --web.listen-address 127.0.0.1:PORT ...

  gc-freeze   gc.freeze() once the server is built (start-up objects leave the collector's generations)
  gc-off      gc.disable() (the upper bound of what the cyclic collector costs a scrape)
  thp-off     prctl(PR_SET_THP_DISABLE): no transparent huge pages for this process
  switch=S    sys.setswitchinterval(S) (the GIL hand-over interval, default 0.005 s)
  no-metadata skip the importlib.metadata lookup of nvidia-ml-py's version (build_info says "diagnostic")
  mallocstats=FILE  after 4 s, write sys._debugmallocstats() (Python's arenas), glibc's malloc_stats() (its
              arenas: system bytes against in-use bytes) and /proc/self/smaps to FILE
  mallopt     fix glibc's mmap and trim thresholds at 128 KiB (glibc otherwise raises both after a large free)
  trim=S      glibc malloc_trim(0) once, S seconds after start
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
PR_SET_THP_DISABLE = 41
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def _trim_later(seconds: float) -> None:
    time.sleep(seconds)
    ctypes.CDLL(None).malloc_trim(0)


def _dump_memory(path: str) -> None:
    time.sleep(4)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved = os.dup(2)
    os.dup2(fd, 2)  # _debugmallocstats writes to the C stderr
    try:
        sys._debugmallocstats()
        os.write(2, b"\n==== glibc malloc_stats()\n")
        ctypes.CDLL(None).malloc_stats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with open("/proc/self/smaps") as src:
        os.write(fd, b"\n==== /proc/self/smaps\n" + src.read().encode())
    os.close(fd)


def main() -> int:
    argv = sys.argv[1:]
    sep = argv.index("--") if "--" in argv else len(argv)
    tweaks = [t for t in ",".join(argv[:sep]).split(",") if t]
    from agent import server
    for t in tweaks:
        if t == "thp-off":
            if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
                print(f"variant: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        elif t == "gc-off":
            gc.disable()
        elif t == "no-metadata":
            from agent import collectors
            collectors._BINDING.append("diagnostic")
        elif t.startswith("mallocstats="):
            threading.Thread(target=_dump_memory, args=(t.split("=", 1)[1],), daemon=True).start()
        elif t == "mallopt":
            libc = ctypes.CDLL(None)
            for opt in (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD):
                if libc.mallopt(opt, 128 * 1024) != 1:
                    print(f"variant: mallopt({opt}) failed", file=sys.stderr)
        elif t.startswith("trim="):
            threading.Thread(target=_trim_later, args=(float(t.split("=", 1)[1]),), daemon=True).start()
        elif t.startswith("switch="):
            sys.setswitchinterval(float(t.split("=", 1)[1]))
        elif t == "gc-freeze":
            from agent import httpd
            serve = httpd.BoundedHTTPServer.serve_forever

            def frozen(self, *a, **kw):
                gc.collect()
                gc.freeze()
                return serve(self, *a, **kw)
            httpd.BoundedHTTPServer.serve_forever = frozen
        else:
            raise SystemExit(f"variant: unknown tweak {t!r}")
    return server.main(argv[sep + 1:])


if __name__ == "__main__":
    sys.exit(main())
