"""apt, apt_key and apt_repository against a real Debian host and the testbed's signed stand-in repository."""
from __future__ import annotations

import json
import textwrap
import time

import pytest
import yaml

from provision.cli import main
from provision.testbed import HostSpec

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def tb(module_testbed_factory):
    t = module_testbed_factory("ops", [HostSpec("o1")])
    t.write_inventory()
    return t


def apply(tb, tmp_path, capsys, tasks: list, **extra) -> tuple[int, dict]:
    pb = tmp_path / f"pb{time.monotonic_ns()}.yaml"
    pb.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    argv = ["apply", str(tb.inventory_path), "-p", str(pb), "--json", "--diff", "--no-retry-file"]
    for k, v in extra.items():
        argv += ["-e", json.dumps({k: v})]
    capsys.readouterr()
    rc = main(argv)
    return rc, json.loads(capsys.readouterr().out)


def results(rep) -> list:
    return [t["hosts"]["o1"] for t in rep["plays"][0]["tasks"]]


def installed(tb, pkg) -> str:
    rc, out, _ = tb.exec("o1", f"dpkg-query -W -f='${{Version}} ${{Status}}' {pkg} 2>/dev/null")
    return out.strip() if rc == 0 and "installed" in out and "not-installed" not in out else ""


def test_key_from_data_deb822_repo_and_apt_lifecycle(tb, tmp_path, capsys):
    url = tb.group_vars()["nvidia_container_toolkit_repo_key_url"]
    rc, armored, _ = tb.exec("o1", f"curl -fsSL {url}")
    assert rc == 0 and "BEGIN PGP PUBLIC KEY BLOCK" in armored
    repo_url = tb.group_vars()["nvidia_container_toolkit_repo_url"]
    setup = [
        {"name": "key", "apt_key": {"data": "{{ ct_key }}", "keyring": "/usr/share/keyrings/ct.gpg"}},
        {"name": "repo", "apt_repository": {"uris": [repo_url], "suites": ["/"], "signed_by":
                                            "/usr/share/keyrings/ct.gpg", "filename": "ct"}},
    ]
    rc, rep = apply(tb, tmp_path, capsys, setup, ct_key=armored)
    assert rc == 0, rep
    assert [r["status"] for r in results(rep)] == ["changed", "changed"]
    # our dearmored key is byte-identical to what gpg --dearmor makes, and apt accepted the signed repo
    rc, same, _ = tb.exec("o1", f"curl -fsSL {url} | gpg --dearmor | cmp - /usr/share/keyrings/ct.gpg && echo same")
    assert "same" in same
    assert "Signed-By: /usr/share/keyrings/ct.gpg" in tb.exec("o1", "cat /etc/apt/sources.list.d/ct.sources")[1]
    rc, rep = apply(tb, tmp_path, capsys, setup, ct_key=armored)
    assert [r["status"] for r in results(rep)] == ["ok", "ok"]

    rc, rep = apply(tb, tmp_path, capsys, [{"apt": {"name": "libnvidia-container1", "state": "latest"}}])
    assert rc == 0 and installed(tb, "libnvidia-container1").startswith("1.18.0-1")
    rc, rep = apply(tb, tmp_path, capsys, [{"apt": {"name": ["libnvidia-container1=1.17.8-1"],
                                                    "allow_downgrade": True, "hold": True}}])
    assert rc == 0, rep
    assert installed(tb, "libnvidia-container1").startswith("1.17.8-1")
    diff = json.dumps(results(rep)[0]["diff"])
    assert "libnvidia-container1 1.18.0-1" in diff and "libnvidia-container1 1.17.8-1" in diff
    assert tb.exec("o1", "apt-mark showhold")[1].split() == ["libnvidia-container1"]
    # latest must not move a held package the task did not ask to hold
    rc, rep = apply(tb, tmp_path, capsys, [{"apt": {"name": "libnvidia-container1=1.17.8-1", "hold": True}}])
    assert results(rep)[0]["status"] == "ok"
    rc, rep = apply(tb, tmp_path, capsys, [{"apt": {"name": "libnvidia-container1", "hold": False}},
                                           {"apt": {"name": "libnvidia-container1", "state": "absent"}}])
    assert rc == 0 and [r["status"] for r in results(rep)] == ["changed", "changed"]
    assert tb.exec("o1", "apt-mark showhold")[1].strip() == "" and installed(tb, "libnvidia-container1") == ""


def test_apt_waits_for_the_dpkg_lock(tb, tmp_path, capsys):
    holder = textwrap.dedent("""
        import fcntl, os, time
        f = open('/var/lib/dpkg/lock-frontend', 'w')
        fcntl.lockf(f, fcntl.LOCK_EX)
        open('/tmp/lock-held', 'w').close()
        time.sleep(6)
        os.unlink('/tmp/lock-held')
        """)
    tb.exec("o1", "cat > /tmp/holder.py && (nohup python3 /tmp/holder.py >/dev/null 2>&1 &)", input=holder)
    for _ in range(50):
        if tb.exec("o1", "test -e /tmp/lock-held")[0] == 0:
            break
        time.sleep(0.1)
    assert tb.exec("o1", "test -e /tmp/lock-held")[0] == 0, "the lock holder did not start"
    rc, rep = apply(tb, tmp_path, capsys, [{"apt": {"name": "libnvidia-container1=1.18.0-1"}}])
    assert rc == 0, rep
    assert installed(tb, "libnvidia-container1").startswith("1.18.0-1")
    assert tb.exec("o1", "test -e /tmp/lock-held")[0] != 0   # it finished only after the lock was released
