"""The testbed is made of real parts: real sshd with verified host keys, real reboots, real apt from a signed
repository, real Docker inside a host. Only the GPUs and NVIDIA's packages are stand-ins."""
from __future__ import annotations

import json
import time

import paramiko
import pytest
import yaml

from provision.testbed import HostSpec
from provision.testbed.image import mini_tag

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def tb(module_testbed_factory):
    return module_testbed_factory("tbtest", [
        HostSpec("gpu1", gpus=("H100-SXM",) * 8),
        HostSpec("ws", gpus=("RTX-5090",) * 2, docker=True),
        HostSpec("a100", gpus=("A100-PCIE-80GB",), secure_boot=True),
        HostSpec("cpu1"),
    ])


def ssh_client(tb, host: str, known_hosts=None) -> paramiko.SSHClient:
    info = tb.hosts[host]
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or tb.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(info.address, port=info.port, username="root", key_filename=str(tb.key_path),
                   look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client


def ssh(tb, host: str, command: str, timeout: float = 300) -> tuple[int, str, str]:
    client = ssh_client(tb, host)
    try:
        _, out, err = client.exec_command(command, timeout=timeout)
        stdout, stderr = out.read().decode(), err.read().decode()
        return out.channel.recv_exit_status(), stdout, stderr
    finally:
        client.close()


def wait_for_new_boot(tb, host: str, old_boot: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            rc, out, _ = ssh(tb, host, "cat /proc/sys/kernel/random/boot_id", timeout=10)
        except (OSError, paramiko.SSHException):
            continue
        if rc == 0 and out.strip() and out.strip() != old_boot:
            return out.strip()
    raise AssertionError(f"{host} did not come back with a new boot_id within {timeout}s")


def reboot(tb, host: str) -> str:
    old = tb.boot_id(host)
    client = ssh_client(tb, host)
    try:
        client.exec_command("systemctl reboot")
    finally:
        client.close()
    return wait_for_new_boot(tb, host, old)


def test_ssh_with_testbed_key_and_verified_host_key(tb):
    for name in tb.hosts:
        rc, out, _ = ssh(tb, name, "hostname; id -u; systemctl is-system-running")
        assert rc == 0, name
        assert out.split()[:2] == [name, "0"]
        assert out.split()[2] in ("running", "degraded")


def test_wrong_host_key_is_rejected(tb, tmp_path):
    # Give cpu1's port gpu1's key: a client that verifies must refuse to talk.
    lines = tb.known_hosts_path.read_text().splitlines()
    keys = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    cpu1 = f"[127.0.0.1]:{tb.hosts['cpu1'].port}"
    gpu1 = f"[127.0.0.1]:{tb.hosts['gpu1'].port}"
    assert keys[cpu1] != keys[gpu1]
    bad = tmp_path / "known_hosts"
    bad.write_text(f"{cpu1} {keys[gpu1]}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        ssh_client(tb, "cpu1", known_hosts=bad)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        ssh_client(tb, "cpu1", known_hosts=empty)


def test_ports_published_on_loopback_only(tb):
    from provision.testbed import docker
    for info in tb.hosts.values():
        bound = docker.out(["port", info.container, "22/tcp"]).splitlines()
        assert bound == [f"127.0.0.1:{info.port}"]


def test_inventory_describes_the_hosts(tb):
    inv = yaml.safe_load(tb.inventory_path.read_text())
    allvars = inv["all"]["vars"]
    assert allvars["gpufleet_testbed"] is True and allvars["gpufleet_simulated_gpus"] is True
    for key in ("nvidia_cuda_repo_url", "nvidia_cuda_repo_key_url", "nvidia_container_toolkit_repo_url",
                "nvidia_container_toolkit_repo_key_url"):
        assert allvars[key].startswith("http://nvidia-repo/")
    groups = inv["all"]["children"]
    assert set(groups) == {"hopper", "blackwell", "ampere", "nogpu"}
    assert list(groups["hopper"]["hosts"]) == ["gpu1"]
    assert list(groups["blackwell"]["hosts"]) == ["ws"]
    assert list(groups["nogpu"]["hosts"]) == ["cpu1"]
    ws = groups["blackwell"]["hosts"]["ws"]
    assert ws["ansible_host"] == "127.0.0.1" and ws["ansible_port"] == tb.hosts["ws"].port
    assert ws["ansible_user"] == "root"
    assert ws["ansible_ssh_private_key_file"] == str(tb.key_path)
    assert ws["ansible_ssh_known_hosts_file"] == str(tb.known_hosts_path)
    assert groups["hopper"]["hosts"]["gpu1"]["gpufleet_nvswitch"] is True


def test_simulated_pci_ids_are_seen(tb):
    cmd = "for d in /sys/bus/pci/devices/*; do echo $(cat $d/vendor) $(cat $d/device) $(cat $d/class); done"
    _, out, _ = ssh(tb, "gpu1", cmd)
    rows = [tuple(line.split()) for line in out.splitlines()]
    assert rows.count(("0x10de", "0x2330", "0x030200")) == 8
    assert rows.count(("0x10de", "0x22a3", "0x068000")) == 4        # NVSwitch bridges on an HGX board
    _, out, _ = ssh(tb, "ws", cmd)
    assert [r for r in (tuple(x.split()) for x in out.splitlines()) if r[0] == "0x10de"] == \
        [("0x10de", "0x2b85", "0x030000")] * 2
    _, out, _ = ssh(tb, "cpu1", cmd)
    assert "0x10de" not in out and "0x8086" in out


def test_secure_boot_is_seen_by_mokutil(tb):
    rc, out, _ = ssh(tb, "a100", "mokutil --sb-state")
    assert rc == 0 and "SecureBoot enabled" in out
    rc, out, err = ssh(tb, "cpu1", "mokutil --sb-state")
    assert "SecureBoot enabled" not in out + err


def test_reboot_comes_back_with_new_boot_id(tb):
    before = tb.boot_id("cpu1")
    after = reboot(tb, "cpu1")
    assert after != before
    assert tb.boot_id("cpu1") == after
    rc, out, _ = ssh(tb, "cpu1", "systemctl is-system-running --wait")
    assert out.strip() in ("running", "degraded")


def test_stopped_host_is_unreachable_until_started(tb):
    tb.stop_host("cpu1")
    with pytest.raises((OSError, paramiko.SSHException)):
        ssh(tb, "cpu1", "true", timeout=5)
    tb.start_host("cpu1")
    assert ssh(tb, "cpu1", "hostname")[1].strip() == "cpu1"


def add_repo(tb, host: str, url_var: str, key_var: str, keyring: str) -> None:
    inv = yaml.safe_load(tb.inventory_path.read_text())["all"]["vars"]
    url, key = inv[url_var], inv[key_var]
    rc, out, err = ssh(tb, host, f"""set -e
curl -fsSL {key} | gpg --dearmor --yes -o /usr/share/keyrings/{keyring}.gpg
echo 'deb [signed-by=/usr/share/keyrings/{keyring}.gpg] {url} /' > /etc/apt/sources.list.d/{keyring}.list
apt-get update -q""")
    assert rc == 0, out + err


def test_repository_is_signed(tb):
    inv = yaml.safe_load(tb.inventory_path.read_text())["all"]["vars"]
    # Without the key apt refuses the repository: it is signed, not trusted blindly.
    rc, out, err = ssh(tb, "cpu1", f"""echo 'deb {inv['nvidia_cuda_repo_url']} /' > /etc/apt/sources.list.d/x.list
apt-get update -q -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/x.list -o Dir::Etc::sourceparts=-; rc=$?
rm /etc/apt/sources.list.d/x.list; exit $rc""")
    assert rc != 0 and "NO_PUBKEY" in out + err


def test_driver_standin_installs_from_signed_repo_and_answers_after_reboot(tb):
    host = "a100"
    add_repo(tb, host, "nvidia_cuda_repo_url", "nvidia_cuda_repo_key_url", "cuda-archive-keyring")
    rc, out, err = ssh(tb, host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                                 "nvidia-driver-580-open=580.82.07-1")
    assert rc == 0, out + err
    rc, out, _ = ssh(tb, host, "nvidia-smi")
    assert rc == 18 and "Driver/library version mismatch" in out     # the module loads at boot
    reboot(tb, host)
    rc, out, _ = ssh(tb, host, "nvidia-smi -L")
    assert rc == 0 and out.startswith("GPU 0: NVIDIA A100 80GB PCIe (UUID: GPU-")
    rc, out, _ = ssh(tb, host, "nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,driver_version,memory.total "
                               "--format=csv,noheader")
    index, name, uuid, bus, version, mem = [f.strip() for f in out.strip().split(",")]
    assert "Open Kernel Module" in ssh(tb, host, "cat /proc/driver/nvidia/version")[1]
    assert (index, name, bus, version, mem) == ("0", "NVIDIA A100 80GB PCIe", "00000000:18:00.0", "580.82.07",
                                                "81920 MiB")
    # Upgrade within the branch: the old module stays loaded until the next reboot.
    rc, out, err = ssh(tb, host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                                 "nvidia-driver-580-open=580.95.05-1")
    assert rc == 0, out + err
    assert ssh(tb, host, "nvidia-smi")[0] == 18
    reboot(tb, host)
    rc, out, _ = ssh(tb, host, "nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    assert (rc, out.strip()) == (0, "580.95.05")
    # Removing the package removes nvidia-smi.
    rc, out, err = ssh(tb, host, "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q nvidia-driver-580-open; "
                                 "command -v nvidia-smi")
    assert rc != 0 and "/usr/bin/nvidia-smi" not in out


def test_fabricmanager_needs_the_matching_driver(tb):
    host = "gpu1"
    add_repo(tb, host, "nvidia_cuda_repo_url", "nvidia_cuda_repo_key_url", "cuda-archive-keyring")
    env = "DEBIAN_FRONTEND=noninteractive"
    rc, out, err = ssh(tb, host, f"{env} apt-get install -y -q nvidia-driver-570-server-open=570.172.08-1 "
                                 f"nvidia-fabricmanager-570=570.195.03-1")
    assert rc != 0                                             # apt refuses a mismatched pair
    rc, out, err = ssh(tb, host, f"{env} apt-get install -y -q nvidia-driver-570-server-open=570.172.08-1 "
                                 f"nvidia-fabricmanager-570=570.172.08-1 && apt-mark hold "
                                 f"nvidia-driver-570-server-open nvidia-fabricmanager-570")
    assert rc == 0, out + err
    reboot(tb, host)
    rc, out, _ = ssh(tb, host, "nvidia-smi -L | wc -l; systemctl start nvidia-fabricmanager; sleep 1; "
                               "systemctl is-active nvidia-fabricmanager")
    assert out.split() == ["8", "active"]


def test_docker_runs_a_container_inside_a_host(tb):
    rc, out, err = ssh(tb, "ws", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io && "
                                 "systemctl is-active docker")
    assert rc == 0, out + err
    assert "Need to get 0 B" in out          # the .debs were baked into the image: no network needed
    tb.load_image("ws")                      # docker save (outside) | docker load (inside the host)
    rc, out, err = ssh(tb, "ws", f"docker run --rm {mini_tag()} sh -c 'echo hello from $(echo inside)'")
    assert (rc, out.strip()) == (0, "hello from inside"), err


def test_nvidia_ctk_configures_docker_like_the_real_tool(tb):
    add_repo(tb, "ws", "nvidia_container_toolkit_repo_url", "nvidia_container_toolkit_repo_key_url",
             "nvidia-container-toolkit-keyring")
    rc, out, err = ssh(tb, "ws", """set -e
mkdir -p /etc/docker
echo '{"log-level": "warn", "runtimes": {"other": {"path": "/usr/bin/other"}}}' > /etc/docker/daemon.json
DEBIAN_FRONTEND=noninteractive apt-get install -y -q nvidia-container-toolkit
nvidia-ctk runtime configure --runtime=docker
cat /etc/docker/daemon.json""")
    assert rc == 0, out + err
    config = json.loads(out[out.index("{"):])
    assert config["log-level"] == "warn"
    assert config["runtimes"]["other"] == {"path": "/usr/bin/other"}
    assert config["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    assert "default-runtime" not in config
    rc, out, _ = ssh(tb, "ws", "nvidia-ctk runtime configure --runtime=docker --set-as-default >/dev/null 2>&1 "
                               "&& cat /etc/docker/daemon.json")
    assert json.loads(out)["default-runtime"] == "nvidia"
    rc, _, err = ssh(tb, "ws", "nvidia-ctk cdi generate")            # no driver loaded yet: like the real tool
    assert rc != 0 and "NVML" in err


def test_blackwell_needs_the_open_flavour_and_flavours_replace_each_other(tb):
    host, env = "ws", "DEBIAN_FRONTEND=noninteractive"
    add_repo(tb, host, "nvidia_cuda_repo_url", "nvidia_cuda_repo_key_url", "cuda-archive-keyring")
    rc, out, err = ssh(tb, host, f"{env} apt-get install -y -q nvidia-driver-580=580.95.05-1")
    assert rc == 0, out + err
    reboot(tb, host)
    rc, out, _ = ssh(tb, host, "nvidia-smi -L")
    assert (rc, out.strip()) == (6, "No devices were found")     # proprietary modules do not drive Blackwell
    rc, out, err = ssh(tb, host, f"{env} apt-get install -y -q nvidia-driver-580-open=580.95.05-1; "
                                 "dpkg-query -W -f='${Package} ${Status}\\n' 'nvidia-driver-580*'")
    assert "nvidia-driver-580-open install ok installed" in out
    assert "nvidia-driver-580 install ok installed" not in out   # the other flavour was replaced
    reboot(tb, host)
    rc, out, _ = ssh(tb, host, "nvidia-smi --query-gpu=name,driver_version --format=csv,noheader")
    assert (rc, out.splitlines()) == (0, ["NVIDIA GeForce RTX 5090, 580.95.05"] * 2)
    # with a loaded driver, nvidia-ctk (installed by the toolkit test) writes a CDI spec for the two GPUs
    rc, out, err = ssh(tb, host, "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml && nvidia-ctk cdi list")
    assert rc == 0, err
    assert out.split() == ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all"]


def test_hosts_of_two_testbeds_coexist(tb, testbed_factory):
    other = testbed_factory("tbother", [HostSpec("cpu1")])
    assert other.hosts["cpu1"].container != tb.hosts["cpu1"].container
    assert other.hosts["cpu1"].port != tb.hosts["cpu1"].port
    assert ssh(other, "cpu1", "hostname")[1].strip() == "cpu1"
    # each testbed's key only opens its own hosts
    with pytest.raises(paramiko.SSHException):
        client = paramiko.SSHClient()
        client.load_host_keys(str(other.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=other.hosts["cpu1"].port, username="root",
                       key_filename=str(tb.key_path), look_for_keys=False, allow_agent=False, timeout=10)


def test_orphans_of_a_killed_run_are_pruned_and_live_ones_kept(tb, tmp_path):
    import socket
    import subprocess
    import uuid

    from provision.testbed import Testbed, list_testbeds, prune_orphans
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"orphan-{uuid.uuid4().hex[:6]}"
    orphan = Testbed(name=name, workdir=tmp_path / "orphan",
                     labels={"gpufleet.owner": f"pytest-{socket.gethostname()}-{dead.pid}"})
    try:
        orphan.up([HostSpec("cpu1")])
        assert name in list_testbeds()
        removed = prune_orphans()
        assert name in removed and tb.name not in removed      # our own (live) testbed stays
        assert name not in list_testbeds()
        assert ssh(tb, "cpu1", "hostname")[1].strip() == "cpu1"
    finally:
        orphan.down()
