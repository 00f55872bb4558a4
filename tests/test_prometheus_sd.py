"""`provision inventory --prometheus-sd FILE`: file_sd targets from the inventory, read by a REAL Prometheus."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from test_agent_support import ROOT, RunningAgent, replay

INVENTORY = """\
all:
  children:
    gpu:
      children:
        hopper:
          hosts:
            h1: {ansible_host: 127.0.0.1, gpu_agent_port: PORT1}
            h2: {ansible_host: 127.0.0.1, gpu_agent_port: PORT2, gpu_agent_sd_labels: {rack: r7}}
        blackwell:
          hosts:
            ws1: {ansible_host: 10.0.0.9, gpu_agent_enabled: false}
    lab:
      hosts:
        h1:
"""


def _provision(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from provision.cli import main; sys.exit(main())",
                           *args], capture_output=True, text=True)


def _inventory(tmp_path, port1: int = 10240, port2: int = 10241) -> str:
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY.replace("PORT1", str(port1)).replace("PORT2", str(port2)))
    return str(path)


def test_targets_carry_the_inventory_groups_and_skip_hosts_without_the_agent(tmp_path):
    out = tmp_path / "sd" / "gpufleet.json"
    out.parent.mkdir()
    r = _provision("inventory", _inventory(tmp_path), "--prometheus-sd", str(out))
    assert r.returncode == 0, r.stderr
    groups = json.loads(out.read_text())
    assert [g["targets"] for g in groups] == [["127.0.0.1:10240"], ["127.0.0.1:10241"]]   # ws1: agent disabled
    h1, h2 = (g["labels"] for g in groups)
    assert h1 == {"inventory_host": "h1", "group": "hopper", "groups": ",hopper,lab,gpu,"}
    assert h2["groups"] == ",hopper,gpu," and h2["rack"] == "r7"
    assert oct(out.stat().st_mode & 0o777) == "0o644" and os.listdir(out.parent) == ["gpufleet.json"]


def test_limit_and_https_scheme(tmp_path):
    inv = _inventory(tmp_path)
    text = open(inv).read()
    assert "gpu_agent_port: 10240}" in text
    open(inv, "w").write(text.replace("gpu_agent_port: 10240}", "gpu_agent_port: 10240, gpu_agent_scheme: https}"))
    r = _provision("inventory", inv, "--limit", "h1", "--prometheus-sd", "-")
    assert r.returncode == 0, r.stderr
    (only,) = json.loads(r.stdout)
    assert only["labels"]["__scheme__"] == "https" and only["labels"]["inventory_host"] == "h1"


@pytest.mark.parametrize("bad, key", [
    ("gpu_agent_port: 10241, gpu_agent_sd_labels: {rack: r7}", "gpu_agent_port: 99999"),
    ("gpu_agent_sd_labels: {rack: r7}", "gpu_agent_sd_labels: {__address__: x}"),
    ("gpu_agent_sd_labels: {rack: r7}", "gpu_agent_sd_labels: {rack: r7}, gpu_agent_scheme: ftp"),
])
def test_bad_values_are_one_line_naming_the_host_and_key_and_nothing_is_written(tmp_path, bad, key):
    inv = _inventory(tmp_path)
    text = open(inv).read()
    assert bad in text
    open(inv, "w").write(text.replace(bad, key))
    out = tmp_path / "sd.json"
    r = _provision("inventory", inv, "--prometheus-sd", str(out))
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "host h2" in r.stderr, r.stderr
    assert key.split(":")[0] in r.stderr or key.split(", ")[-1].split(":")[0] in r.stderr
    assert not out.exists()


@pytest.mark.prometheus
def test_a_real_prometheus_scrapes_exactly_the_inventory_hosts_with_their_group_labels(tmp_path):
    from test_agent_prometheus import Prom
    agents = [RunningAgent(replay()), RunningAgent(replay())]
    prom = None
    try:
        sd = tmp_path / "targets.json"
        r = _provision("inventory", _inventory(tmp_path, agents[0].port, agents[1].port), "--prometheus-sd", str(sd))
        assert r.returncode == 0, r.stderr
        prom = Prom([], str(tmp_path), {"file_sd_configs": [{"files": [str(sd)], "refresh_interval": "1s"}]})
        deadline = time.time() + 60
        while len(prom.query('up{job="gpu-agent"} == 1')) < 2 and time.time() < deadline:
            time.sleep(0.5)
        got = {s["metric"]["inventory_host"]: s["metric"] for s in prom.query('up{job="gpu-agent"}')}
        assert set(got) == {"h1", "h2"}
        assert got["h1"]["groups"] == ",hopper,lab,gpu," and got["h2"]["rack"] == "r7"
        assert prom.query('gpufleet_gpu_info{groups=~".*,lab,.*"}')[0]["metric"]["inventory_host"] == "h1"
        # the dashboard's variables: Group, then the instances of that group
        with open(os.path.join(ROOT, "agent", "dashboards", "gpufleet.json")) as f:
            variables = {v["name"]: v["definition"] for v in json.load(f)["templating"]["list"] if "definition" in v}
        assert variables["group"] == "label_values(gpufleet_agent_build_info, group)"
        selector = variables["instance"][len("label_values("):].rsplit(",", 1)[0].replace("$group", "hopper")
        assert {s["metric"]["inventory_host"] for s in prom.query(selector)} == {"h1", "h2"}
    finally:
        if prom is not None:
            prom.stop()
        for a in agents:
            a.stop()

