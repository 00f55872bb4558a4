"""Pure parts of the testbed: GPU specs, the simulated PCI tree, the stand-in repository's contents and
signatures, and the image recipe hash. No container is started here."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provision.errors import InputError
from provision.testbed import HostSpec, gpus, image, repo
from provision.testbed.core import write_secure_boot_firmware

ROOT = Path(__file__).resolve().parent.parent


def test_parse_gpus_forms():
    assert gpus.parse_gpus("8xH100-SXM") == ("H100-SXM",) * 8
    assert gpus.parse_gpus("2xrtx-5090+1xA100-PCIE-80GB") == ("RTX-5090", "RTX-5090", "A100-PCIE-80GB")
    assert gpus.parse_gpus("none") == () and gpus.parse_gpus(None) == ()
    assert HostSpec("h", "2xL40S").gpus == ("L40S", "L40S")


def test_parse_gpus_errors():
    with pytest.raises(InputError) as err:
        gpus.parse_gpus("4xB20O")
    assert err.value.hint == "B200"
    with pytest.raises(InputError, match="count must be 1 or more"):
        gpus.parse_gpus("0xB200")


def read_tree(root):
    return {d.name: tuple((d / f).read_text().strip() for f in ("vendor", "device", "class"))
            for d in sorted(root.iterdir())}


def test_hgx_board_gets_nvswitches(tmp_path):
    gpus.write_pci_tree(tmp_path / "hgx", ("H100-SXM",) * 8)
    tree = read_tree(tmp_path / "hgx")
    assert sum(v == ("0x10de", "0x2330", "0x030200") for v in tree.values()) == 8
    assert sum(v[2] == "0x068000" for v in tree.values()) == 4
    assert tree["0000:18:00.0"] == ("0x10de", "0x2330", "0x030200")
    assert tree["0000:00:00.0"][0] == "0x8086"            # a non-NVIDIA device is always there
    gpus.write_pci_tree(tmp_path / "pcie", ("H100-PCIE",) * 8)
    assert not any(v[2] == "0x068000" for v in read_tree(tmp_path / "pcie").values())
    gpus.write_pci_tree(tmp_path / "ws", ("RTX-5090",) * 2)
    assert [v for v in read_tree(tmp_path / "ws").values() if v[0] == "0x10de"] == [("0x10de", "0x2b85",
                                                                                     "0x030000")] * 2


def test_model_table_has_the_required_ids():
    want = {"H100-SXM": 0x2330, "H100-PCIE": 0x2331, "H200": 0x2335, "A100-PCIE-80GB": 0x20B5,
            "A100-SXM4-80GB": 0x20B2, "RTX-4090": 0x2684, "L40S": 0x26B9, "RTX-5090": 0x2B85, "B200": 0x2901}
    assert {k: gpus.MODELS[k].device_id for k in want} == want


def test_secure_boot_firmware_layout(tmp_path):
    write_secure_boot_firmware(tmp_path, enabled=True)
    guid = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
    assert (tmp_path / f"efi/efivars/SecureBoot-{guid}").read_bytes() == bytes([6, 0, 0, 0, 1])
    raw = (tmp_path / f"efi/vars/SecureBoot-{guid}/raw_var").read_bytes()
    assert len(raw) == 2084 and raw[1024 + 16 + 8] == 1


def test_repo_plan_versions_and_dependencies():
    plan = repo._plan("amd64")
    names = {(p["name"], p["version"]) for p in plan}
    for branch, versions in repo.DRIVER_VERSIONS.items():
        for v in versions:
            for name in repo.standin_driver_packages(branch):
                assert (name, f"{v}-1") in names
            fm = next(p for p in plan if p["name"] == f"nvidia-fabricmanager-{branch}" and p["version"] == f"{v}-1")
            assert f"nvidia-driver-version (= {v})" in fm["fields"]["Depends"]
    assert len(repo.DRIVER_VERSIONS["570"]) >= 2 and len(repo.DRIVER_VERSIONS["580"]) >= 2
    assert ("nvidia-container-toolkit", "1.17.8-1") in names


def test_built_repository_is_signed_and_indexed(tmp_path):
    root = repo.ensure_repo(log=lambda m: None)
    cuda = root / repo.cuda_path()
    packages = (cuda / "Packages").read_text()
    assert "Package: nvidia-driver-580-open\nVersion: 580.95.05-1" in packages
    assert "Package: cuda-drivers-535\n" in packages
    for repo_dir, key in ((cuda, cuda / repo.CUDA_KEY), (root / repo.toolkit_path(), root / repo.TOOLKIT_KEY)):
        keyring = tmp_path / f"{repo_dir.name}.gpg"
        subprocess.run(["gpg", "--dearmor", "-o", str(keyring), str(key)], check=True)
        ok = subprocess.run(["gpgv", "--keyring", str(keyring), str(repo_dir / "InRelease")], capture_output=True)
        assert ok.returncode == 0, ok.stderr
    # the two repositories have different keys: one does not verify the other
    wrong = subprocess.run(["gpgv", "--keyring", str(tmp_path / f"{cuda.name}.gpg"),
                            str(root / repo.toolkit_path() / "InRelease")], capture_output=True)
    assert wrong.returncode != 0


def test_image_tag_follows_the_recipe(monkeypatch):
    before = image.image_tag()
    monkeypatch.setitem(image.RECIPE, "files", dict(image.FILES, **{"etc/x": "y\n"}))
    assert image.image_tag() != before
    monkeypatch.setenv("GPUFLEET_IMAGE_SALT", "abc")
    assert image.image_tag().startswith("gpufleet-testbed:")


def test_short_model_names_are_ambiguous_not_a_wrong_guess():
    with pytest.raises(InputError, match="ambiguous: H100-SXM, H100-PCIE, H100-NVL") as err:
        gpus.parse_gpus("8xH100")
    assert err.value.hint == "H100-SXM"


def test_testbed_hosts_get_images_only_from_the_controller():
    """gpu_image's default `auto` would `docker pull` from a public registry first: never from the testbed."""
    from provision.testbed import Testbed
    assert Testbed(name="unit-vars").group_vars()["gpu_image_source"] == "stream"


def test_testbed_inventory_carries_what_the_demo_needs(tmp_path):
    """`provision apply inventories/testbed.yaml` runs again as it is after the demo (README command 1): the dev
    containers' bind address and the testbed's key are in the inventory, and the stand-in dev image carries the
    devcontainer role's default name, so no -e is needed."""
    import yaml

    from provision.testbed import Testbed
    from provision.testbed.standin_images import BASE_TAG, DEV_DEFAULT_TAG
    tb = Testbed(name="unit-demo", workdir=tmp_path)
    assert tb.group_vars()["devcontainer_authorized_keys"] == []          # before `up` wrote the key
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3Nza-test gpufleet-testbed-unit-demo\n")
    v = tb.group_vars()
    assert v["devcontainer_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza-test gpufleet-testbed-unit-demo"]
    assert v["devcontainer_bind"] == "127.0.0.1" and "devcontainer_image" not in v
    defaults = yaml.safe_load((ROOT / "playbooks/roles/devcontainer/defaults/main.yaml").read_text())
    role_default = defaults["devcontainer_image"].replace(
        "{{ gpu_image | regex_replace('^.*:', '') }}", BASE_TAG.rsplit(":", 1)[1])
    assert role_default == DEV_DEFAULT_TAG == "gpufleet/dev:2.7.0-cuda12.8-cudnn9-runtime"
    demo = (ROOT / "scripts/demo.sh").read_text()
    assert "provision apply inventories/testbed.yaml -p playbooks/site.yaml\n" in demo and " -e " not in demo
