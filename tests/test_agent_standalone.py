"""The agent stands alone: it imports nothing from the provisioner, and ships as its own ``gpufleet-agent`` wheel
holding agent/ only and depending on its four libraries only."""
from __future__ import annotations

import ast
import email.parser
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from provision.gpu import agentpkg

ROOT = Path(__file__).resolve().parents[1]


def _provision_imports(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in
              ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        else:
            continue
        found += [f"{where}:{node.lineno}: {n}" for n in names
                  if n == "provision" or n.startswith("provision.")]
    return found


def test_agent_imports_nothing_from_provision():
    files = sorted(p for p in (ROOT / "agent").rglob("*.py") if "__pycache__" not in p.parts)
    assert files, "no agent sources found"
    assert [hit for p in files for hit in _provision_imports(p.read_text(encoding="utf-8"),
                                                             str(p.relative_to(ROOT)))] == []


def test_the_import_scan_sees_every_form_of_import():
    """The scan itself: each way of reaching provision is caught (else the test above proves nothing)."""
    src = ("import provision\nfrom provision.errors import InputError\nimport provision.cli as c\n"
           "__import__('provision.gpu')\nimport importlib\nimportlib.import_module('provision')\n"
           "from agent import errors\nimport provisioning_other\n")
    hits = _provision_imports(src, "probe.py")
    assert [h.split(": ")[1] for h in hits] == ["provision", "provision.errors", "provision.cli", "provision.gpu",
                                               "provision"]


def test_packaged_config_and_unit_name_the_shared_host_files():
    """agent/packaging/ cannot import agent.hostpaths: its config must name the same files (they are the
    defaults), and its unit must let the agent read their folders."""
    import yaml

    from agent import hostpaths
    from agent.server import Config
    packaged = yaml.safe_load((ROOT / "agent" / "packaging" / "gpu-agent.yaml").read_text())
    assert (packaged["maintenance_file"], packaged["upgrade_state_file"]) == \
        (hostpaths.MAINTENANCE_MARKER, hostpaths.UPGRADE_STATE_FILE) == \
        (Config().maintenance_file, Config().upgrade_state_file)
    unit = (ROOT / "agent" / "packaging" / "gpu-agent.service").read_text()
    readable = next(line for line in unit.splitlines() if line.startswith("ReadOnlyPaths=")).split("=", 1)[1]
    folders = {p.lstrip("-") for p in readable.split()}
    assert {str(Path(hostpaths.MAINTENANCE_MARKER).parent), str(Path(hostpaths.UPGRADE_STATE_FILE).parent)} <= folders


def test_provisioner_reads_the_maintenance_marker_where_the_agent_does():
    from agent.hostpaths import MAINTENANCE_MARKER
    from provision.facts import FACTS
    from provision.gpu import devcontainer
    assert f"[ -e {MAINTENANCE_MARKER} ]" in FACTS["maintenance"].command
    assert devcontainer.MAINTENANCE_MARKER is MAINTENANCE_MARKER


@pytest.fixture(scope="module")
def agent_wheel(tmp_path_factory) -> Path:
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        try:
            import wheel.bdist_wheel  # noqa: F401
        except ImportError:
            pytest.skip("this Python's setuptools cannot build a wheel offline (needs setuptools>=70.1 or the "
                        "wheel package; pip install -e '.[test]' brings it)")
    return agentpkg.build_agent_wheel(tmp_path_factory.mktemp("wheel"), isolated=False)


def test_agent_wheel_holds_agent_only_and_its_four_dependencies(agent_wheel):
    from agent import __version__
    assert agent_wheel.name.startswith(f"gpufleet_agent-{__version__}-")
    with zipfile.ZipFile(agent_wheel) as zf:
        names = zf.namelist()
        info = f"gpufleet_agent-{__version__}.dist-info/"
        meta = email.parser.Parser().parsestr(zf.read(info + "METADATA").decode())
        entry_points = zf.read(info + "entry_points.txt").decode()
    built_from = {"agent/" + str(p.relative_to(agentpkg.AGENT_DIR)) for p in agentpkg.agent_sources()}
    assert {n for n in names if not n.startswith(info)} == built_from - {"agent/pyproject.toml"}
    assert "agent/server.py" in names and "agent/packaging/gpu-agent.service" in names
    assert meta["Name"] == "gpufleet-agent"
    required = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in meta.get_all("Requires-Dist")}
    assert required == {"prometheus-client", "nvidia-ml-py", "pyyaml", "bcrypt"}
    assert agentpkg.wheel_requirements(agent_wheel) == meta.get_all("Requires-Dist")
    assert re.search(r"^gpu-agent = agent\.server:main$", entry_points, re.M)


def test_agent_bundle_digest_follows_every_file_the_wheel_is_built_from(tmp_path, monkeypatch):
    copy = tmp_path / "agent"
    shutil.copytree(agentpkg.AGENT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    monkeypatch.setattr(agentpkg, "AGENT_DIR", copy)
    digest = agentpkg.source_digest()
    for leftover in ("build/lib/agent/server.py", "__pycache__/server.cpython-311.pyc",
                     "gpufleet_agent.egg-info/PKG-INFO"):
        (copy / leftover).parent.mkdir(parents=True, exist_ok=True)
        (copy / leftover).write_text("left by a build or a run\n")
    assert agentpkg.source_digest() == digest            # what never reaches the wheel changes nothing
    for rel in ("dashboards/gpufleet.json", "pyproject.toml", "packaging/gpu-agent.yaml", "hostpaths.py"):
        (copy / rel).write_bytes((copy / rel).read_bytes() + b"\n")
        changed = agentpkg.source_digest()
        assert changed != digest, rel
        digest = changed
