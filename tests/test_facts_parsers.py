"""Fact parsers are pure: recorded command outputs in, values out (table-driven)."""
from __future__ import annotations

from pathlib import Path

import pytest

from provision import facts
from provision.facts import parsers as p

FIX = Path(__file__).parent / "fixtures" / "engine"

UBUNTU = '''PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=jammy
'''
ROCKY = 'NAME="Rocky Linux"\nVERSION_ID="9.3"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'


@pytest.mark.parametrize("text, expect", [
    (UBUNTU, {"os_family": "Debian", "distribution": "Ubuntu", "distribution_version": "22.04",
              "distribution_major_version": "22", "distribution_release": "jammy"}),
    (ROCKY, {"os_family": "RedHat", "distribution": "Rocky", "distribution_major_version": "9"}),
    ('ID=mylinux\nID_LIKE="ubuntu debian"\nVERSION_ID=1\n', {"os_family": "Debian"}),
])
def test_os_release(text, expect):
    got = p.os_release(text)
    for k, v in expect.items():
        assert got[k] == v


@pytest.mark.parametrize("text, expect", [
    ("SecureBoot enabled\n", True),
    ("SecureBoot disabled\n", False),
    ("EFI variables are not supported on this system\n", False),
    ("efivar:  06 00 00 00 01\n", True),
    ("efivar:  06 00 00 00 00\n", False),
    ("", None),
])
def test_secure_boot(text, expect):
    assert p.secure_boot(text) is expect


@pytest.mark.parametrize("text, expect", [
    ("/usr/bin/apt-get\n", "apt"), ("/usr/bin/dnf\n/usr/bin/yum\n", "dnf"), ("", "unknown"),
])
def test_pkg_mgr(text, expect):
    assert p.pkg_mgr(text) == expect


def test_pci_devices_sorted_and_normalised():
    text = "0000:b1:00.0 0x10de 0x2330 0x030200\n0000:17:00.0 0x10DE 0x2335 0x030200\nbroken\n"
    assert p.pci_devices(text) == [
        {"address": "0000:17:00.0", "vendor": "10de", "device": "2335", "class": "030200"},
        {"address": "0000:b1:00.0", "vendor": "10de", "device": "2330", "class": "030200"},
    ]


def test_dpkg_packages_installed_and_holds():
    text = ("bash\t5.2\tinstall ok installed\nnv\t570.1-1\thold ok installed\nold\t1\tdeinstall ok config-files\n"
            "half\t2\tinstall reinstreq half-installed\n")
    got = p.dpkg_packages(text)
    assert got["packages"] == {"bash": "5.2", "nv": "570.1-1"}
    assert got["held_packages"] == ["nv"]


def test_recorded_testbed_host_round_trip():
    """One recorded gather script output from a testbed host parses into every play fact."""
    text = (FIX / "facts_debian12_testbed.txt").read_text()
    f = facts.parse(text, facts.PLAY_FACTS)
    assert f["distribution"] == "Debian" and f["distribution_major_version"] == "12"
    assert f["distribution_release"] == "bookworm" and f["os_family"] == "Debian"
    assert f["architecture"] == "x86_64" and f["processor_vcpus"] == 2
    assert f["memtotal_mb"] == 24684092 // 1024
    assert f["boot_id"] == "9c5b7fe6-f5af-46fa-b30c-8677a8f8c8d4"
    assert f["service_mgr"] == "systemd" and f["pkg_mgr"] == "apt"
    assert f["secure_boot"] is False
    assert f["pci_devices"][0]["vendor"] == "8086"
    assert f["packages"]["libnvidia-container1"] == "1.17.8-1" and "oldpkg" not in f["packages"]
    assert f["held_packages"] == ["libnvidia-container1"]
    assert f["date_epoch"] == 1795434941 and f["apt_cache_mtime"] == 1795434910


def test_script_has_one_section_per_fact_and_missing_sections_are_absent():
    s = facts.script(["kernel", "boot_id"])
    assert s.count(facts.MARK) == 3   # two facts + end marker
    assert facts.parse(f"{facts.MARK} kernel\n6.1.0\n", ["kernel", "boot_id"]) == {"kernel": "6.1.0",
                                                                                    "boot_id": ""}


def test_dmi_facts_use_ansible_names_and_na_for_what_cannot_be_read():
    got = p.dmi("product_name:DGX H100\nsys_vendor:NVIDIA\nproduct_serial:\nbios_version:1.2:b\n")
    assert got["product_name"] == "DGX H100" and got["system_vendor"] == "NVIDIA" and got["bios_version"] == "1.2:b"
    assert got["product_serial"] == "NA" and got["board_name"] == "NA"    # empty (root only) or missing: NA
    assert p.dmi("")["product_name"] == "NA"                               # no /sys/class/dmi (a container)


def test_environment_keeps_values_with_newlines_and_equals():
    assert p.environment("HOME=/root\nX=a=b\x01c\nEMPTY=\n") == {"env": {"HOME": "/root", "X": "a=b\nc",
                                                                         "EMPTY": ""}}


def test_local_facts_json_ini_and_broken():
    import base64
    enc = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    files = {"nv_os_release": '{"nv_os_release": "ubuntu22.04"}', "site": "[general]\nrack = r12\n",
             "bad": "not json and no section"}
    text = "".join(f"{name}\t{enc(body)}\n" for name, body in files.items())
    got = p.local_facts(text)["local"]
    assert got["nv_os_release"] == {"nv_os_release": "ubuntu22.04"}
    assert got["site"] == {"general": {"rack": "r12"}}
    assert got["bad"].startswith("error loading fact")
    assert p.local_facts("") == {"local": {}}


def test_new_sections_run_in_the_one_script(tmp_path):
    """dmi, env and local are sections of the play's one fact script; run here through sh, the local section finds
    a plain JSON fact, an executable one (its output) and an INI one."""
    import subprocess
    d = tmp_path / "facts.d"
    d.mkdir()
    (d / "plain.fact").write_text('{"a": 1}')
    exe = d / "run.fact"
    exe.write_text("#!/bin/sh\necho '{\"ran\": true}'\n")
    exe.chmod(0o755)
    (d / "ini.fact").write_text("[s]\nk=v\n")
    assert {"dmi", "env", "local"} <= set(facts.PLAY_FACTS)
    script = facts.script(["env", "local"]).replace("/etc/ansible/facts.d", str(d))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin",
                                                                                      "MARKER": "x\ny"}).stdout
    got = facts.parse(out, ["env", "local"])
    assert got["env"]["MARKER"] == "x\ny"
    assert got["local"] == {"plain": {"a": 1}, "run": {"ran": True}, "ini": {"s": {"k": "v"}}}


def test_selinux_fact_as_ansible_gives_it():
    assert p.selinux("") == {"selinux": {"status": "disabled"}}              # no getenforce (Debian, Ubuntu)
    assert p.selinux("Disabled\n") == {"selinux": {"status": "disabled"}}
    assert p.selinux("Enforcing\nSELINUXTYPE=targeted\n") == {"selinux": {"status": "enabled", "mode": "enforcing",
                                                                          "type": "targeted"}}


def test_network_facts_fqdn_interfaces_default_ipv4():
    text = ("fqdn gpu1.lab.example\ninterfaces eth0 lo ib0\nroute\ndefault via 10.0.0.1 dev eth0 proto dhcp\naddr\n"
            "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
            "2: eth0    inet 10.0.0.7/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever\n")
    got = p.network(text)
    assert got["fqdn"] == "gpu1.lab.example" and got["interfaces"] == ["eth0", "ib0", "lo"]
    assert got["default_ipv4"] == {"address": "10.0.0.7", "interface": "eth0", "alias": "eth0", "gateway": "10.0.0.1",
                                   "prefix": "24", "netmask": "255.255.255.0", "network": "10.0.0.0",
                                   "broadcast": "10.0.0.255"}
    assert p.network("fqdn h\ninterfaces lo\n")["default_ipv4"] == {}    # no default route
