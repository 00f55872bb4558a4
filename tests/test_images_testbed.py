"""A generated image (tens of MB of random bytes, two layers) to a testbed host with Docker: pulled from the
controller's registry, and through the connection; the re-run changes nothing (the host holds the image id)."""
from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest
import yaml

from provision.cli import main
from provision.gpu.images import IMAGE_CACHE
from provision.testbed import HostSpec

pytestmark = pytest.mark.testbed
BASE = "gpufleet-agenttest-busybox:1"            # present locally (the agent tests build it): no registry pull


@pytest.fixture(scope="module")
def tb(module_testbed_factory):
    t = module_testbed_factory("img", [HostSpec("i1", docker=True)])
    rc, out, err = t.exec("i1", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/tmp/apt.log 2>&1"
                                " && systemctl is-active docker")
    assert rc == 0, out + err
    t.write_inventory()
    return t


@pytest.fixture(scope="module")
def image():
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode != 0:
        pytest.skip(f"{BASE} is not on this machine")
    tag = f"gpufleet-imgtest:{secrets.token_hex(4)}"
    dockerfile = (f"FROM {BASE}\nRUN head -c 24000000 /dev/urandom > /a\nRUN head -c 8000000 /dev/urandom > /b\n")
    proc = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile.encode(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True,
                              text=True).stdout.strip()
    yield tag, image_id
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
    for f in IMAGE_CACHE.glob(image_id.removeprefix("sha256:")[:24] + ".*"):     # its saved tarball
        f.unlink(missing_ok=True)


def apply(tb, tmp_path, capsys, tag: str, via: str) -> tuple[int, dict, str]:
    pb = tmp_path / f"pb{time.monotonic_ns()}.yaml"
    pb.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "image", "gpu_image": {"image": tag, "source": "stream", "via": via, "check_gpus": False}}]}]))
    capsys.readouterr()
    rc = main(["apply", str(tb.inventory_path), "-p", str(pb), "--json", "--no-retry-file"])
    out = capsys.readouterr().out
    return rc, json.loads(out)["plays"][0]["tasks"][0]["hosts"]["i1"], out


def host_image_id(tb, tag: str) -> str:
    return tb.exec("i1", f"docker image inspect -f '{{{{.Id}}}}' {tag}")[1].strip()


def test_pulled_from_the_controllers_registry_then_nothing_to_do(tb, image, tmp_path, capsys):
    tag, image_id = image
    rc, r, out = apply(tb, tmp_path, capsys, tag, "registry")
    assert rc == 0 and r["status"] == "changed", out
    assert "pulled from the controller's registry" in r["msg"] and image_id[:19] in r["msg"]
    assert host_image_id(tb, tag) == image_id
    rc, listing, _ = tb.exec("i1", "ls /etc/docker/certs.d 2>/dev/null; docker images --format '{{.Repository}}'")
    assert listing.split() == [tag.split(":")[0]]   # neither the run's certificate nor the registry's name stays
    rc, again, out = apply(tb, tmp_path, capsys, tag, "registry")
    assert rc == 0 and again["status"] == "ok" and "present" in again["msg"], out


def test_through_the_connection_and_a_retag_when_the_id_is_there(tb, image, tmp_path, capsys):
    tag, image_id = image
    tb.exec("i1", f"docker image rm -f {image_id}")
    rc, r, out = apply(tb, tmp_path, capsys, tag, "ssh")
    assert rc == 0 and r["status"] == "changed" and "through the connection" in r["msg"], out
    assert host_image_id(tb, tag) == image_id
    tb.exec("i1", f"docker tag {image_id} keep:1 && docker rmi {tag}")      # the id stays, the tag goes
    rc, r, out = apply(tb, tmp_path, capsys, tag, "ssh")
    assert rc == 0 and r["status"] == "changed" and "already on the host" in r["msg"], out
    rc, again, out = apply(tb, tmp_path, capsys, tag, "ssh")
    assert rc == 0 and again["status"] == "ok", out


def test_a_load_that_fails_part_way_says_so_and_leaves_nothing(tb, image, tmp_path, capsys):
    tag, image_id = image
    whole = tmp_path / "whole.tar"
    subprocess.run(["docker", "save", "-o", str(whole), tag], check=True)
    cut = tmp_path / "cut.tar"
    with open(whole, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(whole.stat().st_size // 2))
    tb.exec("i1", f"docker image rm -f {image_id}; docker image prune -f")
    layers_before = tb.exec("i1", "ls /var/lib/docker/overlay2 | wc -l")[1]
    pb = tmp_path / "cut.yaml"
    pb.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "image", "gpu_image": {"image": "cut:1", "source": "stream", "tarball": str(cut), "via": "ssh",
                                        "check_gpus": False}}]}]))
    capsys.readouterr()
    rc = main(["apply", str(tb.inventory_path), "-p", str(pb), "--json", "--no-retry-file"])
    r = json.loads(capsys.readouterr().out)["plays"][0]["tasks"][0]["hosts"]["i1"]
    assert rc != 0 and r["status"] == "failed" and "nothing of it kept on the host" in r["msg"], r
    rc, left, _ = tb.exec("i1", f"docker images -q --no-trunc | grep -c {image_id}; ls /var/lib/docker/tmp "
                                "/var/tmp | grep -c gpufleet")
    assert left.split() == ["0", "0"]
    assert tb.exec("i1", "ls /var/lib/docker/overlay2 | wc -l")[1] == layers_before     # no layer of it stays
