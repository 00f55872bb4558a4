"""Shared fixtures. Tests that need real sshd hosts carry ``@pytest.mark.testbed`` and use ``testbed_factory``.

No skipping when Docker is absent: CI installs the engine (scripts/install.sh), so a missing engine fails loudly.
"""
from __future__ import annotations

import os
import re
import socket
import uuid

import pytest

from provision.testbed import HostSpec, Testbed, ensure_image  # noqa: F401 - HostSpec re-exported for tests
from provision.testbed import docker as _docker
from provision.testbed.core import prune_orphans, raise_inotify_limits
from provision.testbed.repo import ensure_repo


OWNER = {"gpufleet.owner": f"pytest-{socket.gethostname()}-{os.getpid()}"}


@pytest.fixture(scope="session")
def testbed_image() -> str:
    """The testbed host image tag (built once per recipe; a missing Docker engine is a failure, not a skip)."""
    problem = _docker.engine_problem()
    if problem:
        pytest.fail(f"testbed: {problem}", pytrace=False)
    raise_inotify_limits()
    prune_orphans(log=lambda m: print(m))      # testbeds left by a killed test run on this machine
    tag = ensure_image(log=lambda m: print(m))
    ensure_repo(log=lambda m: print(m))
    return tag


def _short(text: str, n: int) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:n].strip("-") or "t"


def _testbeds(tmp_path_factory):
    """The factory both fixtures yield; every testbed it made is torn down when the fixture ends."""
    made: list[Testbed] = []

    def make(name: str, specs, **kw) -> Testbed:
        unique = f"{_short(name, 18)}-{uuid.uuid4().hex[:6]}"
        tb = Testbed(name=unique, workdir=tmp_path_factory.mktemp(f"testbed-{_short(name, 18)}"), labels=OWNER)
        made.append(tb)
        tb.up(list(specs), **kw)
        return tb

    yield make
    for tb in reversed(made):
        tb.down()


@pytest.fixture
def testbed_factory(request, testbed_image, tmp_path_factory):
    """``testbed_factory(name, specs, **kw) -> Testbed`` (already up). Each call gets a unique Docker prefix
    (``gpufleet-<name>-<random>``) and a tmp state folder; every testbed is torn down when the module or test that
    asked for the fixture finishes. ``kw`` goes to ``Testbed.up`` (e.g. ``inventory_path=``, ``timeout=``)."""
    yield from _testbeds(tmp_path_factory)


@pytest.fixture(scope="module")
def module_testbed_factory(request, testbed_image, tmp_path_factory):
    """Like ``testbed_factory`` but torn down at the end of the module (share one testbed across its tests)."""
    yield from _testbeds(tmp_path_factory)
