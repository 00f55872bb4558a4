"""Summarise py-spy collapsed stacks (``--format raw``): the functions holding the most samples.

    python3 -m bench.profile_summary bench/raw/profiles/gpufleet-rerun-10hosts.txt [--filter provision/] [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import re


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--filter", default="", help="only frames whose text contains this (e.g. provision/)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--idle", action="store_true", help="keep samples of idle threads (waiting)")
    a = ap.parse_args(argv)
    incl: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    total = 0
    for line in open(a.path):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        frames = stack.split(";")
        if not a.idle and re.search(r"\b(wait|select|poll|epoll|_wait_for_tstate_lock|acquire|sleep)\b", frames[-1]):
            continue
        total += n
        seen = set()
        for f in frames:
            if a.filter and a.filter not in f:
                continue
            if f not in seen:
                incl[f] += n
                seen.add(f)
        self_[frames[-1]] += n
    print(f"{total} samples (idle threads {'kept' if a.idle else 'dropped'})\n\ninclusive:")
    for f, n in incl.most_common(a.top):
        print(f"{100 * n / max(total, 1):5.1f}%  {f}")
    print("\nself:")
    for f, n in self_.most_common(a.top):
        print(f"{100 * n / max(total, 1):5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
