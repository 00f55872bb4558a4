"""agent.profiling: GPM metrics and per-process utilisation, replayed from the H200 recording made with them
(tests/fixtures/nvml/h200-2026-12-02.json, under a bf16 matmul), GPM absent with its reason, MIG through the
replay (MIG is never switched on on the GPU machine), and the DCGM field table in docs/agent.md."""
from __future__ import annotations

import json
import os
import re

import pytest

from agent.collectors import Agent, registry_for, render_metrics
from agent.nvml import NvmlSource
from agent.profiling import GPM_METRICS, GPM_REASONS
from agent.profiling_families import GPM_FAMILIES
from agent.replay import Recorder, ReplayNvml
from test_agent_nvml import metrics, values, wait_until
from test_agent_support import FIXTURE, ROOT, process_utilization

H200_GPM = os.path.join(ROOT, "tests", "fixtures", "nvml", "h200-2026-12-02.json")
NOT_SUPPORTED = 3


def _started(src: NvmlSource) -> NvmlSource:
    """NVML initialised and the profiling thread's first round (one GPM sample) done; its next is an hour away, so
    the test's own refresh_profiling() calls are the only ones."""
    src.collect()
    assert wait_until(lambda: src.profiler.rounds >= 1)
    return src


def _scraped(nvml, rounds: int = 1, text: bool = False):
    """Metrics (parsed, or the exposition ``text``) after the thread's first round and ``rounds`` more (two GPM
    samples make the first window), and the snapshot."""
    src = NvmlSource(nvml, xid_events=False, slow_interval=3600)
    agent = Agent(src, None, maintenance_file="/nonexistent/m", upgrade_state_file="/nonexistent/u")
    try:
        reg = registry_for(agent)
        _started(src)
        for _ in range(rounds):
            src.refresh_profiling()
        return (render_metrics(reg).decode() if text else metrics(reg)), src.collect()
    finally:
        agent.close()


def _one(m: dict, name: str, **labels) -> float:
    want = tuple(sorted(labels.items()))
    return m[(name, want)]


def test_h200_recording_with_gpm_replays_as_measured():
    """The recording holds what the H200 answered under a bf16 matmul: SM ~96 % active, occupancy ~14 %,
    tensor (HMMA) ~93 %, DRAM ~16 %, no FP64/IMMA; the load's process at ~99 % SM."""
    meta = json.load(open(H200_GPM))["meta"]
    assert meta["gpu"] == "NVIDIA H200" and meta["driver"] == "580.159.04"
    m, snap = _scraped(ReplayNvml.from_file(H200_GPM))
    g = dict(gpu="0")
    assert _one(m, "gpufleet_gpu_gpm_supported", gpu="0", reason="supported") == 1
    assert 0.9 < _one(m, "gpufleet_gpu_sm_active_ratio", **g) <= 1
    assert 0.1 < _one(m, "gpufleet_gpu_sm_occupancy_ratio", **g) < 0.2
    assert 0.85 < _one(m, "gpufleet_gpu_tensor_active_ratio", **g) <= 1
    assert _one(m, "gpufleet_gpu_pipe_active_ratio", gpu="0", pipe="hmma") == pytest.approx(
        _one(m, "gpufleet_gpu_tensor_active_ratio", **g))
    assert _one(m, "gpufleet_gpu_pipe_active_ratio", gpu="0", pipe="imma") == 0
    assert _one(m, "gpufleet_gpu_pipe_active_ratio", gpu="0", pipe="fp64") == 0
    assert 0.1 < _one(m, "gpufleet_gpu_dram_active_ratio", **g) < 0.3
    assert _one(m, "gpufleet_gpu_pcie_bytes_total", gpu="0", direction="rx") > 0
    assert _one(m, "gpufleet_gpu_gpm_window_seconds", **g) >= 0
    procs = snap.gpus[0].process_utilization
    assert list(procs) == [435] and procs[435][0] > 0.9  # the matmul's PID, as recorded
    assert not [k for k in m if "pid" in dict(k[1])]


def test_gpm_families_are_ratios_and_base_units():
    m, _ = _scraped(ReplayNvml.from_file(H200_GPM))
    for (name, _labels), v in m.items():
        if name.endswith("_ratio") and ("_active_" in name or "occupancy" in name):
            assert 0 <= v <= 1, (name, v)
    # every GPM metric id asked for maps to one exported series
    keys = {f[2] for f in GPM_FAMILIES}
    assert keys == {k for _, k, _ in GPM_METRICS}


def test_byte_counters_sum_rate_times_window():
    r = ReplayNvml.from_file(FIXTURE)
    r.gpm(0, {20: 100.0, 21: 50.0, 2: 10.0})  # PCIe TX 100 MiB/s, RX 50 MiB/s
    src = _started(NvmlSource(r, xid_events=False, slow_interval=3600))
    try:
        for _ in range(4):
            src.refresh_profiling()
        g = src.collect().gpus[0]
        assert g.gpm.bytes_total["pcie_tx_bytes"] == pytest.approx(2 * g.gpm.bytes_total["pcie_rx_bytes"])
        assert g.gpm.bytes_total["pcie_tx_bytes"] >= g.gpm.values["pcie_tx_bytes"] * g.gpm.window_seconds
        assert g.gpm.values["pcie_tx_bytes"] == 100 * 2**20  # MiB/s -> bytes/s
        before = g.gpm.bytes_total["pcie_tx_bytes"]
        src.refresh_profiling()
        assert src.collect().gpus[0].gpm.bytes_total["pcie_tx_bytes"] > before  # a counter: never goes back
    finally:
        src.close()


class _OldBinding:
    """pynvml before GPM (nvidia-ml-py < 12.535): the GPM functions and structures are missing."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if "Gpm" in name:
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.mark.parametrize("case,reason", [("no-gpm-gpu", "gpu"), ("query-not-supported", "gpu"),
                                         ("old-binding", "binding"), ("old-driver", "driver")])
def test_without_gpm_the_series_are_absent_not_zero_and_the_reason_is_given(case, reason):
    r = ReplayNvml.from_file(H200_GPM)
    nv = r
    if case == "no-gpm-gpu":
        r.set("nvmlGpmQueryDeviceSupport", {"struct": {"version": 1, "isSupportedDevice": 0}}, gpu=0)
    elif case == "query-not-supported":
        r.fail("nvmlGpmQueryDeviceSupport", NOT_SUPPORTED)
    elif case == "old-binding":
        nv = _OldBinding(r)
    else:
        r.fail("nvmlGpmQueryDeviceSupport", 13)  # FUNCTION_NOT_FOUND
    m, _ = _scraped(nv)
    assert values(m, "gpufleet_gpu_gpm_supported") == {(("gpu", "0"), ("reason", reason)): 0}
    assert reason in GPM_REASONS
    assert not [k for k in m if k[0].startswith(("gpufleet_gpu_sm_active", "gpufleet_gpu_sm_occupancy",
                                                 "gpufleet_gpu_tensor", "gpufleet_gpu_pipe", "gpufleet_gpu_dram",
                                                 "gpufleet_gpu_pcie_bytes", "gpufleet_gpu_gpm_window"))]
    assert ("gpufleet_gpu_utilization_ratio", (("gpu", "0"),)) in m  # the rest of the GPU is still there


def test_gpm_and_process_utilization_are_never_read_in_a_scrape():
    """nvmlGpmMetricsGet takes ~1.4-6 ms: only the profiling thread calls GPM and process utilisation."""
    rec = Recorder(ReplayNvml.from_file(H200_GPM))
    src = NvmlSource(rec, xid_events=False, slow_interval=3600)
    agent = Agent(src, None, maintenance_file="/nonexistent/m", upgrade_state_file="/nonexistent/u")
    try:
        reg = registry_for(agent)
        _started(src)
        src.refresh_profiling()
        rec.calls.clear()
        for _ in range(5):
            metrics(reg)
        called = {k.split("(")[0] for k in rec.calls}
        assert "nvmlDeviceGetMemoryInfo" in called
        assert not {c for c in called if "Gpm" in c or c == "nvmlDeviceGetProcessUtilization"}, called
    finally:
        agent.close()


def test_recorder_round_trip_keeps_gpm_and_process_utilization():
    r = ReplayNvml.from_file(FIXTURE)
    r.gpm(0, {2: 40.0, 5: 30.0, 10: 20.0})
    r.set("nvmlDeviceGetProcessUtilization", process_utilization((77, 40, 10)), gpu=0)
    rec = Recorder(r)
    m1, s1 = _scraped(rec)
    doc = json.loads(json.dumps(rec.dump({"date": "x"})))
    assert {"nvmlGpmMetricsGet(gpu0)", "nvmlGpmSampleGet(gpu0,sample)", "nvmlDeviceGetProcessUtilization(gpu0)"} <= \
        set(doc["calls"])
    m2, s2 = _scraped(ReplayNvml(doc))
    assert s2.gpus[0].gpm.values == s1.gpus[0].gpm.values == {"sm_active": 0.4, "tensor_active": 0.3,
                                                              "dram_active": 0.2}
    assert s2.gpus[0].process_utilization == {77: (0.4, 0.1)}


def test_lost_gpu_drops_its_profiling_readings():
    r = ReplayNvml.from_file(H200_GPM, gpus=2)
    src = _started(NvmlSource(r, xid_events=False, slow_interval=3600))
    try:
        src.refresh_profiling()
        src.refresh_profiling()
        assert src.collect().gpus[1].gpm is not None
        r.lose_gpu(1)
        src.refresh_profiling()
        snap = src.collect()
        assert snap.gpus[0].gpm is not None and not snap.gpus[1].up
        assert src.profiler.reading(1)[1] is None
    finally:
        src.close()


GiB = 1 << 30


def test_mig_per_gpu_instance_through_the_replay():
    """MIG on (injected into the replay: never switched on on the GPU machine): GPM per GPU instance, memory per
    MIG device, labelled gpu / gpu_instance / compute_instance; the whole-GPU GPM and utilisation are absent."""
    r = ReplayNvml.from_file(H200_GPM)
    r.mig(0, [(1, 0, 70 * GiB, 30 * GiB), (2, 0, 35 * GiB, 1 * GiB), (2, 1, 35 * GiB, 1 * GiB)])
    r.gpm(0, {2: 80.0, 5: 60.0, 7: 60.0, 10: 40.0}, gpu_instance=1)
    r.gpm(0, {2: 3.0, 5: 0.0, 10: 1.0}, gpu_instance=2)
    m, snap = _scraped(r)
    assert values(m, "gpufleet_gpu_gpm_supported") == {(("gpu", "0"), ("reason", "mig")): 1}
    sm = values(m, "gpufleet_gpu_mig_sm_active_ratio")
    assert sm == {(("gpu", "0"), ("gpu_instance", "1")): 0.8, (("gpu", "0"), ("gpu_instance", "2")): 0.03}
    assert _one(m, "gpufleet_gpu_mig_pipe_active_ratio", gpu="0", gpu_instance="1", pipe="hmma") == 0.6
    assert _one(m, "gpufleet_gpu_mig_dram_active_ratio", gpu="0", gpu_instance="2") == 0.01
    assert ("gpufleet_gpu_mig_gpm_window_seconds", (("gpu", "0"), ("gpu_instance", "1"))) in m
    assert not values(m, "gpufleet_gpu_sm_active_ratio")  # no whole-GPU reading under MIG
    assert not values(m, "gpufleet_gpu_utilization_ratio")  # NVML has none under MIG
    used = {(d["gpu_instance"], d["compute_instance"]): v for k, v in values(m, "gpufleet_gpu_mig_memory_used_bytes")
            .items() for d in [dict(k)]}
    assert used == {("1", "0"): 30 * GiB, ("2", "0"): GiB, ("2", "1"): GiB}
    assert [(i.gpu_instance, i.compute_instance) for i in snap.gpus[0].mig] == [(1, 0), (2, 0), (2, 1)]
    assert snap.gpus[0].process_utilization is None


DOC = os.path.join(ROOT, "docs", "agent.md")


def test_docs_map_every_gpm_metric_to_its_dcgm_field():
    """docs/agent.md's table (GPM metric, series, DCGM field) lists exactly agent.profiling_families.GPM_FAMILIES."""
    text = open(DOC).read()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("NVML_GPM_METRIC_"):
            rows[cells[0]] = (cells[1], cells[2])
    names = {m[0]: m for m in GPM_METRICS}
    import pynvml
    by_id = {v: k for k, v in vars(pynvml).items() if k.startswith("NVML_GPM_METRIC_") and isinstance(v, int)}
    want = {}
    for name, extra, key, dcgm, _ in GPM_FAMILIES:
        mid = next(i for i, k, _ in GPM_METRICS if k == key)
        series = f"gpu_{name}" + ("_total" if name.endswith("_bytes") else "") + (
            f'{{{extra[0]}="{extra[1]}"}}' if extra else "")
        want[by_id[mid]] = (series, dcgm or "-")
    assert rows == want and len(names) == len(rows)
    assert re.search(r"gpu_gpm_supported", text) and re.search(r"container_gpu_sm_utilization_ratio", text)


def test_gpm_error_leaves_the_reading_absent_not_stale_and_counts_an_error():
    r = ReplayNvml.from_file(H200_GPM)
    src = _started(NvmlSource(r, xid_events=False, slow_interval=3600))
    try:
        src.refresh_profiling()
        src.refresh_profiling()
        assert src.collect().gpus[0].gpm is not None
        r.fail("nvmlGpmSampleGet", 999)  # NVML_ERROR_UNKNOWN
        src.refresh_profiling()
        snap = src.collect()
        assert snap.gpus[0].gpm is None and snap.gpus[0].gpm_support == "supported" and snap.errors >= 1
        del r.failures[("nvmlGpmSampleGet", None)]
        src.refresh_profiling()  # a new window starts: one sample
        assert src.collect().gpus[0].gpm is None
        src.refresh_profiling()
        assert src.collect().gpus[0].gpm is not None
    finally:
        src.close()


def test_a_gpu_instance_destroyed_loses_its_series():
    r = ReplayNvml.from_file(H200_GPM)
    r.mig(0, [(1, 0, 70 * GiB, GiB), (2, 0, 35 * GiB, GiB)])
    r.gpm(0, {2: 50.0}, gpu_instance=1)
    r.gpm(0, {2: 20.0}, gpu_instance=2)
    src = _started(NvmlSource(r, xid_events=False, slow_interval=3600))
    try:
        src.refresh_profiling()
        src.refresh_profiling()
        assert sorted(src.collect().gpus[0].mig_gpm) == [1, 2]
        r.mig(0, [(1, 0, 70 * GiB, GiB)])
        src.refresh_profiling()
        assert sorted(src.collect().gpus[0].mig_gpm) == [1]
    finally:
        src.close()
