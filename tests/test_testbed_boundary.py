"""The testbed is a feature, not a dependency: no module of provision/ outside provision/testbed/ and its CLI
command (provision/commands/testbed.py) imports it, in any spelling."""
from __future__ import annotations

import ast
from pathlib import Path

PROVISION = Path(__file__).resolve().parent.parent / "provision"
ALLOWED = {Path("testbed"), Path("commands/testbed.py")}
TESTBED = "provision.testbed"


def _is_testbed(name: str) -> bool:
    return name == TESTBED or name.startswith(TESTBED + ".")


def imports_of_testbed(source: str, rel: Path) -> list[str]:
    """'line: statement' for every import of provision.testbed in ``source`` (``rel``: its path under provision/)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = ["provision", *rel.parts[:-1]]                # the package the module is in
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        if any(_is_testbed(n) for n in names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_nothing_outside_the_testbed_imports_it():
    offenders = []
    for path in sorted(PROVISION.rglob("*.py")):
        rel = path.relative_to(PROVISION)
        if rel in ALLOWED or rel.parts[0] == "testbed":
            continue
        offenders += [f"provision/{rel}:{hit}" for hit in imports_of_testbed(path.read_text(), rel)]
    assert offenders == []


def test_every_spelling_of_the_import_is_caught():
    rel = Path("gpu/images.py")
    for src in ("import provision.testbed", "import provision.testbed.docker as d",
                "from provision.testbed import docker", "from provision.testbed.cache import locked",
                "from provision import testbed", "from .. import testbed", "from ..testbed.docker import run",
                "def f():\n    from provision.testbed import docker",
                "importlib.import_module('provision.testbed.docker')", "__import__('provision.testbed')"):
        assert imports_of_testbed(src, rel), src
    for src in ("import provision.gpu.table", "from provision import results", "from . import table",
                "from ..testbeds import x", "import_module('provision.testbedx')"):
        assert not imports_of_testbed(src, rel), src
