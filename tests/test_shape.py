"""The engine's shape, checked from the code's imports: only the executor opens connections to hosts; operations
and the rolling upgrade import no connector (they hand command objects to the executor's runner)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROVISION = ROOT / "provision"


def imported(path: Path) -> set[str]:
    """Every module name a file imports (``from a.b import c`` gives a.b and a.b.c)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def files(under: str) -> list[Path]:
    return sorted((PROVISION / under).rglob("*.py"))


def test_ops_and_upgrade_import_no_connector():
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imported(p) if m.startswith("provision.connectors"))
           for p in files("ops") + files("upgrade")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_executor_opens_connections():
    """``connect`` (the factory that opens a connection) is imported by the executor's pool alone."""
    users = sorted(str(p.relative_to(ROOT)) for p in PROVISION.rglob("*.py")
                   if "provision.connectors.connect" in imported(p) and "connectors" not in p.parts)
    assert users == ["provision/executor/play.py", "provision/executor/pool.py"]


def test_the_upgrade_has_no_connection_code_or_pool_of_its_own():
    assert not (PROVISION / "upgrade" / "connect.py").exists()
    for p in files("upgrade"):
        mods = imported(p)
        assert "concurrent.futures" not in mods and "paramiko" not in mods, p


def test_the_rule_sees_a_violation(tmp_path):
    """The scanner itself: a connector import is found (so the tests above can fail)."""
    f = tmp_path / "x.py"
    f.write_text("from provision.connectors.base import Unreachable\nimport provision.connectors\n")
    assert {"provision.connectors.base", "provision.connectors"} <= imported(f)


def test_every_op_plans_and_only_controller_ops_answer_themselves():
    """An op that reaches a host returns a plan; only debug/set_fact/assert/fail/meta/include_vars/pause (controller =
    True) have run()."""
    from provision.ops.spec import registry
    host_ops = {n: s.impl for n, s in registry().items() if isinstance(s.impl, type) and not s.runs_on_controller}
    assert host_ops and not [n for n, impl in host_ops.items() if hasattr(impl, "run")]
    controller = sorted({s.name for s in registry().values() if s.runs_on_controller})
    assert controller == ["assert", "debug", "fail", "include_vars", "meta", "pause", "set_fact"]
    assert all(hasattr(registry()[n].impl, "run") and registry()[n].impl.controller for n in controller)
