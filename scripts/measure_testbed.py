#!/usr/bin/env python3
"""Measure the testbed: cold image build (with --cold: a salted recipe, so the shared image is untouched),
bring-up of N hosts on a warm cache, and memory per idle host. Prints one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid

from provision.testbed import HostSpec, Testbed, docker, ensure_image, image_tag, mini_tag


def mem_mib(container: str) -> float:
    text = docker.out(["stats", "--no-stream", "--format", "{{.MemUsage}}", container]).split("/")[0].strip()
    value, unit = float(text[:-3]), text[-3:]
    return value / 1024 if unit == "KiB" else value * 1024 if unit == "GiB" else value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--cold", action="store_true", help="also time a first image build (salted recipe)")
    a = ap.parse_args()
    result = {"cpus": os.cpu_count()}
    if a.cold:
        os.environ["GPUFLEET_IMAGE_SALT"] = uuid.uuid4().hex
        t = time.monotonic()
        ensure_image(log=lambda m: None)
        result["cold_image_build_s"] = round(time.monotonic() - t, 1)
        subprocess.run(["docker", "image", "rm", image_tag(), mini_tag()], capture_output=True)
        del os.environ["GPUFLEET_IMAGE_SALT"]
    ensure_image(log=lambda m: None)
    specs = [HostSpec("h100", ("H100-SXM",) * 8), HostSpec("ws", ("RTX-5090",) * 2, docker=True),
             HostSpec("a100", ("A100-PCIE-80GB",), secure_boot=True)]
    specs += [HostSpec(f"cpu{i}") for i in range(1, max(1, a.hosts - 3) + 1)]
    specs = specs[:a.hosts]
    tb = Testbed(name=f"measure-{uuid.uuid4().hex[:6]}", workdir=f"/tmp/gpufleet-measure-{uuid.uuid4().hex[:6]}")
    try:
        t = time.monotonic()
        tb.up(specs)
        result["warm_bring_up_s"] = round(time.monotonic() - t, 1)
        result["hosts"] = len(specs)
        time.sleep(5)
        mems = [mem_mib(h.container) for h in tb.hosts.values()]
        result["idle_host_mem_mib"] = [round(m, 1) for m in mems]
        result["repo_container_mem_mib"] = round(mem_mib(tb.repo_container), 1)
    finally:
        tb.down()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
