"""Check mode needs no network: the agent's wheelhouse (pip downloads its dependencies on the controller) is not
built in check mode; the bundle id alone says whether the host has it."""
from __future__ import annotations

from provision.gpu import agentpkg
from tests.test_ops_units import drive


def test_check_mode_builds_no_agent_wheelhouse(monkeypatch, tmp_path):
    def no_build(*a, **kw):
        raise AssertionError("check mode built the wheelhouse (pip would download)")
    monkeypatch.setattr(agentpkg, "build_wheelhouse", no_build)
    _, bundle = agentpkg.bundle_id("3.12.3", "x86_64")

    def host(have):
        return lambda cmd: (0, f"3.12.3 x86_64\n{have}\n", "") if cmd.startswith("python3 -c") else (0, "", "")
    r, ran = drive("gpu_agent_install", {"cache": str(tmp_path)}, {}, host(""), check=True)
    assert not r.failed and r.changed and r.msg == f"would install agent bundle {bundle} (have none)"
    assert len(ran) == 1                       # the probe only
    r, _ = drive("gpu_agent_install", {"cache": str(tmp_path)}, {}, host(bundle), check=True)
    assert not r.changed and r.msg == f"agent bundle {bundle} already installed in {agentpkg.VENV}"
    assert agentpkg.bundle_id("3.12.3", "aarch64")[0] == "manylinux2014_aarch64"
