"""Facts from real (simulated-GPU) hosts in one round trip: Secure Boot from efivars, PCI devices, packages."""
from __future__ import annotations

import json

import pytest

from provision.cli import main
from provision.testbed import HostSpec

pytestmark = pytest.mark.testbed


def test_facts_of_simulated_gpu_hosts(testbed_factory, capsys):
    tb = testbed_factory("facts", [HostSpec("g1", gpus=("H100-SXM", "H100-SXM"), secure_boot=True), HostSpec("n1")])
    tb.write_inventory()
    capsys.readouterr()
    rc = main(["facts", "-i", str(tb.inventory_path)])
    facts = json.loads(capsys.readouterr().out)
    assert rc == 0
    g1, n1 = facts["g1"], facts["n1"]
    assert g1["secure_boot"] is True and n1["secure_boot"] is not True
    nvidia = [d for d in g1["pci_devices"] if d["vendor"] == "10de"]
    assert len(nvidia) == 2 and {d["device"] for d in nvidia} == {"2330"}
    assert all(d["class"].startswith("0302") for d in nvidia)
    assert not [d for d in n1["pci_devices"] if d["vendor"] == "10de"]
    for f in (g1, n1):
        assert f["distribution"] == "Debian" and f["service_mgr"] == "systemd" and f["pkg_mgr"] == "apt"
        assert f["boot_id"] == tb.boot_id("g1" if f is g1 else "n1")
        assert "openssh-server" in f["packages"] and f["hostname"] in ("g1", "n1")
