"""agent.containers: cgroup parsing (table), GPU requests (table), and attribution against REAL containers on this
machine's Docker engine (GPU processes come from the NVML replay, mapped to the containers' real PIDs)."""
from __future__ import annotations

import pytest

from agent.collectors import Agent, registry_for
from agent.containers import (ContainerSource, DockerClient, container_cgroups, container_id_from_cgroup,
                              requested_gpus)
from agent.nvml import NvmlSource
from test_agent_nvml import metrics, values
from test_agent_support import containers, process_utilization, replay  # noqa: F401  (fixture)

CID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"
CASES = [
    # cgroup v1, cgroupfs driver
    ("12:memory:/docker/%s\n11:cpuacct,cpu:/docker/%s\n" % (CID, CID), CID),
    # cgroup v1, systemd driver
    ("4:memory:/system.slice/docker-%s.scope\n1:name=systemd:/system.slice/docker-%s.scope\n" % (CID, CID), CID),
    # cgroup v2, systemd driver
    ("0::/system.slice/docker-%s.scope\n" % CID, CID),
    # cgroup v2, cgroupfs driver; a process in a sub-cgroup (systemd inside the container)
    ("0::/docker/%s/init.scope\n" % CID, CID),
    # hybrid v1 + v2 line, as on this Debian machine
    ("9:name=systemd:/docker/%s/init.scope\n0::/docker/%s/init.scope\n" % (CID, CID), CID),
    # Kubernetes (containerd, CRI-O)
    ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-%s.scope\n" % CID,
     CID),
    ("0::/kubepods.slice/kubepods-pod1.slice/crio-%s.scope\n" % CID, CID),
    ("11:memory:/kubepods/besteffort/pod0c1d/%s\n" % CID, CID),
    # podman
    ("0::/machine.slice/libpod-%s.scope/container\n" % CID, CID),
    ("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-%s.scope\n" % CID, CID),
    # host processes
    ("0::/user.slice/user-0.slice/session-3.scope\n", None),
    ("12:memory:/\n0::/init.scope\n", None),
    ("", None),
    ("garbage without colons", None),
    # not a 64-hex id
    ("0::/docker/abc123\n", None),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_container_id_from_cgroup(text, expected):
    assert container_id_from_cgroup(text) == expected


def test_container_cgroups_cut_at_the_container():
    cg = container_cgroups("4:memory:/docker/%s/init.scope\n2:cpu,cpuacct:/docker/%s\n0::/docker/%s/init.scope\n"
                           % (CID, CID, CID))
    assert cg == {"memory": f"/docker/{CID}", "cpu": f"/docker/{CID}", "cpuacct": f"/docker/{CID}",
                  "": f"/docker/{CID}"}


GPU_CASES = [
    ({"HostConfig": {"DeviceRequests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]}}, ["all"]),
    ({"HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["0", "2"],
                                         "Capabilities": [["gpu"]]}]}}, ["0", "2"]),
    ({"HostConfig": {"DeviceRequests": [{"Driver": "", "Count": 2, "Capabilities": [["gpu", "utility"]]}]}},
     ["count=2"]),
    ({"HostConfig": {"DeviceRequests": None}, "Config": {"Env": ["NVIDIA_VISIBLE_DEVICES=GPU-aaa,GPU-bbb"]}},
     ["GPU-aaa", "GPU-bbb"]),
    ({"HostConfig": {}, "Config": {"Env": ["NVIDIA_VISIBLE_DEVICES=void"]}}, []),
    ({"HostConfig": {}, "Config": {"Env": ["PATH=/bin"]}}, []),
    ({"HostConfig": {"DeviceRequests": [{"Driver": "other", "Count": 1, "Capabilities": [["fpga"]]}]}}, []),
]


@pytest.mark.parametrize("inspect,expected", GPU_CASES)
def test_requested_gpus(inspect, expected):
    assert requested_gpus(inspect) == expected


def test_docker_absent_gives_docker_up_0_and_gpu_metrics_unaffected(tmp_path):
    agent = Agent(NvmlSource(replay(), xid_events=False),
                  ContainerSource(DockerClient(str(tmp_path / "no-docker.sock"), timeout=1)),
                  maintenance_file="/nonexistent/m", upgrade_state_file="/nonexistent/u")
    try:
        m = metrics(registry_for(agent))
        assert m[("gpufleet_docker_up", ())] == 0
        assert m[("gpufleet_gpu_up", (("gpu", "0"),))] == 1
        assert m[("gpufleet_agent_collection_errors_total", (("source", "docker"),))] >= 1
    finally:
        agent.close()


def _scraped_with_docker(r, refresh: str) -> dict:
    """Metrics of an agent on the replay ``r`` and the real Docker engine, once ``refresh`` (the NvmlSource method
    that reads in the background what is attributed) has run and the docker worker has mapped its result."""
    src = NvmlSource(r, xid_events=False)
    agent = Agent(src, ContainerSource(DockerClient()), maintenance_file="/nonexistent/m",
                  upgrade_state_file="/nonexistent/u")
    reg = registry_for(agent)
    try:
        metrics(reg)
        getattr(src, refresh)()
        metrics(reg)  # the docker worker maps what NVML last reported
        return metrics(reg)
    finally:
        agent.close()


def test_real_containers_with_gpu_processes_attributed(containers):  # noqa: F811
    a = containers.run("train", "-e", "NVIDIA_VISIBLE_DEVICES=0,1", "--memory", "64m")
    b = containers.run("infer", "-e", "NVIDIA_VISIBLE_DEVICES=1")
    c = containers.run("nogpu")
    r = replay(gpus=2)
    # NVML reports these PIDs on the GPUs; the agent must find their containers through /proc/PID/cgroup
    r.processes = {0: [(a["State"]["Pid"], 3 << 30)],
                   1: [(a["State"]["Pid"], 1 << 30), (b["State"]["Pid"], 2 << 30), (1, 5 << 20)]}
    m = _scraped_with_docker(r, "refresh_slow")  # processes are read in the background
    assert m[("gpufleet_docker_up", ())] == 1
    na, nb, nc = a["Name"].lstrip("/"), b["Name"].lstrip("/"), c["Name"].lstrip("/")
    mem = values(m, "gpufleet_container_gpu_memory_used_bytes")
    procs = values(m, "gpufleet_container_gpu_processes")
    assert mem[(("container", na), ("gpu", "0"))] == 3 << 30
    assert mem[(("container", na), ("gpu", "1"))] == 1 << 30
    assert mem[(("container", nb), ("gpu", "1"))] == 2 << 30
    assert procs[(("container", nb), ("gpu", "1"))] == 1
    assert not [k for k in mem if ("container", nc) in k]  # no GPU process, no series
    # pid 1 (the host's init) is in no container: not attributed to anyone
    assert sum(mem.values()) == (3 << 30) + (1 << 30) + (2 << 30)
    req = values(m, "gpufleet_container_gpu_requested")
    assert {k for k in req if ("container", na) in k} == {(("container", na), ("gpu", "0")),
                                                           (("container", na), ("gpu", "1"))}
    # CPU, memory and limit from the container's cgroup
    assert m[("gpufleet_container_memory_limit_bytes", (("container", na),))] == 64 << 20
    assert m[("gpufleet_container_memory_usage_bytes", (("container", na),))] > 0
    assert ("gpufleet_container_cpu_seconds_total", (("container", na),)) in m
    assert m[("gpufleet_container_state", (("container", nc), ("state", "running")))] == 1
    assert m[("gpufleet_container_restarts_total", (("container", nc),))] == 0
    info = values(m, "gpufleet_container_info")
    assert (("container", na), ("id", a["Id"][:12]), ("image", "gpufleet-agenttest-busybox:1")) in info


def _tree(tmp_path, cgroup_text, files):
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text(cgroup_text)
    cg = tmp_path / "cg"
    for rel, content in files.items():
        p = cg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return str(proc), str(cg)


def test_cgroup_usage_v2_systemd_driver(tmp_path):
    from agent.containers import cgroup_usage
    scope = f"system.slice/docker-{CID}.scope"
    proc, cg = _tree(tmp_path, f"0::/{scope}\n", {
        "cgroup.controllers": "cpu memory\n",
        f"{scope}/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        f"{scope}/memory.current": "73400320\n",
        f"{scope}/memory.max": "134217728\n"})
    assert cgroup_usage(4242, proc, cg) == (2.5, 73400320, 134217728)


def test_cgroup_usage_v2_unlimited_memory_reports_host_memory(tmp_path):
    from agent.containers import _mem_total, cgroup_usage
    proc, cg = _tree(tmp_path, f"0::/docker/{CID}/init.scope\n", {
        "cgroup.controllers": "cpu memory\n",
        f"docker/{CID}/cpu.stat": "usage_usec 10\n",
        f"docker/{CID}/memory.current": "4096\n",
        f"docker/{CID}/memory.max": "max\n"})
    assert cgroup_usage(4242, proc, cg) == (1e-05, 4096, _mem_total())


def test_cgroup_usage_v1_cgroupfs_driver(tmp_path):
    from agent.containers import cgroup_usage
    proc, cg = _tree(tmp_path, f"4:memory:/docker/{CID}/init.scope\n2:cpu,cpuacct:/docker/{CID}\n", {
        f"cpu,cpuacct/docker/{CID}/cpuacct.usage": "1500000000\n",
        f"memory/docker/{CID}/memory.usage_in_bytes": "1048576\n",
        f"memory/docker/{CID}/memory.limit_in_bytes": "67108864\n"})
    assert cgroup_usage(4242, proc, cg) == (1.5, 1048576, 67108864)


def test_cgroup_usage_unreadable_is_none(tmp_path):
    from agent.containers import cgroup_usage
    assert cgroup_usage(4242, str(tmp_path / "proc"), str(tmp_path / "cg")) == (None, None, None)


def test_real_containers_gpu_utilization_summed_per_container(containers, tmp_path):  # noqa: F811
    """Per-process SM / memory-bandwidth utilisation (nvmlDeviceGetProcessUtilization) mapped through
    /proc/PID/cgroup like memory, summed per container and GPU; no PID label."""
    a = containers.run("util-a", "-e", "NVIDIA_VISIBLE_DEVICES=0")
    b = containers.run("util-b", "-e", "NVIDIA_VISIBLE_DEVICES=0")
    pa, pb = a["State"]["Pid"], b["State"]["Pid"]
    r = replay(gpus=2)
    r.set("nvmlDeviceGetProcessUtilization", process_utilization((pa, 60, 20), (pb, 30, 5), (1, 9, 9)), gpu=0)
    m = _scraped_with_docker(r, "refresh_profiling")
    na, nb = a["Name"].lstrip("/"), b["Name"].lstrip("/")
    sm = values(m, "gpufleet_container_gpu_sm_utilization_ratio")
    mem = values(m, "gpufleet_container_gpu_memory_utilization_ratio")
    assert sm == {(("container", na), ("gpu", "0")): 0.6, (("container", nb), ("gpu", "0")): 0.3}
    assert mem == {(("container", na), ("gpu", "0")): 0.2, (("container", nb), ("gpu", "0")): 0.05}
    assert not [k for k in m if ("pid", str(pa)) in k[1]]


def test_gpu_utilization_of_two_processes_of_one_container_is_summed(tmp_path):
    from types import SimpleNamespace

    from agent.containers import attribute_gpu_processes
    proc = tmp_path / "proc"
    for pid in (11, 12, 13):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n" if pid != 13
                                                else "0::/user.slice\n")
    gpu = SimpleNamespace(info=SimpleNamespace(index=3), processes=[],
                          process_utilization={11: (0.5, 0.1), 12: (0.25, 0.2), 13: (0.9, 0.9)})
    usage, util = attribute_gpu_processes([gpu], str(proc))
    assert util == {CID: {3: (0.75, pytest.approx(0.3))}} and usage == {}
