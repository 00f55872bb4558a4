"""README command (1), then the newcomer's second run: the testbed's inventory as `provision testbed up` writes it
carries what the demo needs (dev containers on 127.0.0.1, the testbed's key; the stand-in dev image under the
devcontainer role's default name), so `provision apply inventories/testbed.yaml` runs with no -e, and again with 0
changed. One docker-capable host (the demo's ws) keeps it short."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.testbed import HostSpec
from provision.testbed import standin_images as standin

pytestmark = pytest.mark.testbed

ROOT = Path(__file__).resolve().parent.parent


def apply(inventory, tmp):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUFLEET_SECRETS_DIR": str(tmp / "secrets")}
    proc = subprocess.run([sys.executable, "-m", "provision.cli", "apply", str(inventory), "--json",
                           "--no-retry-file", "--connect-timeout", "60"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1500, env=env)
    try:
        return proc, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (rc {proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}") from None


def test_apply_of_the_testbed_inventory_runs_again_with_nothing_changed(testbed_factory, tmp_path):
    standin.ensure_dev()                 # what scripts/demo.sh runs before its apply
    tb = testbed_factory("demo2", [HostSpec("ws", gpus=("RTX-5090",) * 2, docker=True)])
    first_proc, first = apply(tb.inventory_path, tmp_path)      # the inventory exactly as `up` wrote it
    assert first_proc.returncode == 0, first["stats"]
    second_proc, second = apply(tb.inventory_path, tmp_path)
    assert second_proc.returncode == 0 and second["stats"]["ws"]["changed"] == 0, [
        (t["task"]["name"], r.get("msg", "")[:200]) for p in second["plays"] for t in p["tasks"]
        for r in t["hosts"].values() if r.get("changed")]
    rc, out, _ = tb.exec("ws", "docker ps --format '{{.Names}} {{.Image}}'")
    assert rc == 0 and f"gpufleet-dev {standin.DEV_DEFAULT_TAG}" in out
