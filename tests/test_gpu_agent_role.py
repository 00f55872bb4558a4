"""The gpu_agent role installs the packaged agent config with the listen address from gpu_agent_listen_address
(issue 16: the agent alone listens on 127.0.0.1; Prometheus scrapes the address the role asks for), and checks
/metrics on that address. The role's own tasks, rendered by the provisioner's templating."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from provision.templating import render

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "playbooks" / "roles" / "gpu_agent"
PACKAGED = ROOT / "agent" / "packaging" / "gpu-agent.yaml"


def _task(name_start: str) -> dict:
    block = yaml.safe_load((ROLE / "tasks" / "main.yaml").read_text())[0]["block"]
    return next(t for t in block if t["name"].startswith(name_start))


def _vars(**over) -> dict:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yaml").read_text())
    v = {**defaults, "gpu_agent_config_src": str(PACKAGED), **over}
    v["gpu_agent_listen_address"] = render(v["gpu_agent_listen_address"], v)
    return v


@pytest.mark.parametrize("over, listen", [
    ({}, ":10240"),                                                       # the default: every address
    ({"gpu_agent_port": 10300}, ":10300"),
    ({"gpu_agent_listen_address": "10.0.5.21:10240"}, "10.0.5.21:10240"),  # the scrape network's address
])
def test_installed_config_listens_on_gpu_agent_listen_address(over, listen):
    v = _vars(**over)
    task = _task("Agent config (")
    assert "src" not in task["copy"]
    text = render(task["copy"]["content"], v)
    installed, packaged = yaml.safe_load(text), yaml.safe_load(PACKAGED.read_text())
    assert installed["listen_address"] == listen
    assert {k: x for k, x in installed.items() if k != "listen_address"} == \
        {k: x for k, x in packaged.items() if k != "listen_address"}       # every other setting as packaged
    assert text.endswith("\n") and text.count("listen_address:") == PACKAGED.read_text().count("listen_address:")


@pytest.mark.parametrize("listen, url", [
    (":10240", "http://127.0.0.1:10240/metrics"),
    ("0.0.0.0:10241", "http://127.0.0.1:10241/metrics"),
    ("10.0.5.21:10240", "http://10.0.5.21:10240/metrics"),
    ("[fd00::5]:10240", "http://[fd00::5]:10240/metrics"),
])
def test_metrics_check_asks_the_address_the_agent_listens_on(listen, url):
    task = _task("The agent's /metrics answers")
    v = _vars(gpu_agent_listen_address=listen)
    v["gpu_agent_check_host"] = render(task["vars"]["gpu_agent_check_host"], v)
    assert render(task["vars"]["gpu_agent_check_url"], v).strip() == url
    assert "{{ gpu_agent_check_url }}" in task["command"]
