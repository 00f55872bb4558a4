"""Metric families of the profiling readings (agent.profiling): GPM per GPU and per MIG GPU instance, GPM support,
and SM / memory-bandwidth utilisation per container. collectors.AgentCollector yields them.

:data:`GPM_FAMILIES` is the one table of what is exported, from which reading, and which DCGM field it stands for
(docs/agent.md shows the same table; a test holds the two together).
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent.profiling import GPM_REASONS

# (metric name after gpufleet_gpu_ / gpufleet_gpu_mig_, extra label (name, value) or None, reading key,
#  DCGM field, what it is)
GPM_FAMILIES = (
    ("graphics_engine_active_ratio", None, "graphics_engine_active", "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
     "Fraction of the window a graphics or compute engine was busy"),
    ("sm_active_ratio", None, "sm_active", "DCGM_FI_PROF_SM_ACTIVE",
     "Fraction of the window the SMs had at least one warp resident, averaged over all SMs"),
    ("sm_occupancy_ratio", None, "sm_occupancy", "DCGM_FI_PROF_SM_OCCUPANCY",
     "Resident warps as a fraction of the SMs' maximum, averaged over the window"),
    ("tensor_active_ratio", None, "tensor_active", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
     "Fraction of the window any tensor pipe was active"),
    ("dram_active_ratio", None, "dram_active", "DCGM_FI_PROF_DRAM_ACTIVE",
     "Device memory bandwidth used as a fraction of the peak"),
    ("pipe_active_ratio", ("pipe", "hmma"), "pipe_hmma", "DCGM_FI_PROF_PIPE_TENSOR_HMMA_ACTIVE", ""),
    ("pipe_active_ratio", ("pipe", "imma"), "pipe_imma", "DCGM_FI_PROF_PIPE_TENSOR_IMMA_ACTIVE", ""),
    ("pipe_active_ratio", ("pipe", "dfma"), "pipe_dfma", "DCGM_FI_PROF_PIPE_TENSOR_DFMA_ACTIVE", ""),
    ("pipe_active_ratio", ("pipe", "dmma"), "pipe_dmma", "", ""),
    ("pipe_active_ratio", ("pipe", "fp64"), "pipe_fp64", "DCGM_FI_PROF_PIPE_FP64_ACTIVE", ""),
    ("pipe_active_ratio", ("pipe", "fp32"), "pipe_fp32", "DCGM_FI_PROF_PIPE_FP32_ACTIVE", ""),
    ("pipe_active_ratio", ("pipe", "fp16"), "pipe_fp16", "DCGM_FI_PROF_PIPE_FP16_ACTIVE", ""),
    ("pipe_active_ratio", ("pipe", "integer"), "pipe_integer", "DCGM_FI_PROF_PIPE_INT_ACTIVE", ""),
    ("pcie_bytes", ("direction", "tx"), "pcie_tx_bytes", "DCGM_FI_PROF_PCIE_TX_BYTES", ""),
    ("pcie_bytes", ("direction", "rx"), "pcie_rx_bytes", "DCGM_FI_PROF_PCIE_RX_BYTES", ""),
    ("nvlink_bytes", ("direction", "tx"), "nvlink_tx_bytes", "DCGM_FI_PROF_NVLINK_TX_BYTES", ""),
    ("nvlink_bytes", ("direction", "rx"), "nvlink_rx_bytes", "DCGM_FI_PROF_NVLINK_RX_BYTES", ""),
)
_HELP = {
    "pipe_active_ratio": "Fraction of the window a pipe was active: tensor pipes hmma (FP16/BF16), imma (INT8), "
                         "dfma/dmma (FP64); non-tensor fp16, fp32, fp64, integer",
    "pcie_bytes": "PCIe bytes sent (tx) and received (rx), headers included: GPM's rate over each window times the "
                  "window, summed since the agent started",
    "nvlink_bytes": "NVLink bytes sent (tx) and received (rx), all links: GPM's rate over each window times the "
                    "window, summed since the agent started",
}


def _families(prefix: str, labels: list[str], window: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, extra, _key, _dcgm, doc in GPM_FAMILIES:
        if name in out:
            continue
        help_ = f"{doc or _HELP[name]}. NVML GPM over a window of ~{window:g} s (gpufleet_gpu_gpm_window_seconds)"
        lbl = labels + ([extra[0]] if extra else [])
        out[name] = (CounterMetricFamily if name.endswith("_bytes") else GaugeMetricFamily)(prefix + name, help_,
                                                                                           labels=lbl)
    out["window"] = GaugeMetricFamily(prefix + "gpm_window_seconds", "Time between the two GPM samples the "
                                      "profiling metrics were computed from", labels=labels)
    out["age"] = GaugeMetricFamily(prefix + "gpm_reading_age_seconds", "Age of the GPM reading served (read in "
                                   "the background)", labels=labels)
    return out


def _add(fams: dict[str, Any], labels: list[str], reading: Any, now: float) -> None:
    for name, extra, key, _dcgm, _doc in GPM_FAMILIES:
        v = reading.bytes_total.get(key) if name.endswith("_bytes") else reading.values.get(key)
        if v is not None:
            fams[name].add_metric(labels + ([extra[1]] if extra else []), v)
    fams["window"].add_metric(labels, reading.window_seconds)
    fams["age"].add_metric(labels, now - reading.at)


def profiling_families(gpus: Iterable[Any], window: float) -> Iterator[Any]:
    """GPM support and readings of the GPUs that answered (agent.nvml.GpuReading), whole GPU and per GPU instance."""
    sup = GaugeMetricFamily("gpufleet_gpu_gpm_supported", "1 when NVML GPM (profiling metrics) answers for the GPU; "
                            "0 with why not: " + "; ".join(f"{k} = {v}" for k, v in GPM_REASONS.items()
                                                          if k != "supported"), labels=["gpu", "reason"])
    whole = _families("gpufleet_gpu_", ["gpu"], window)
    mig = _families("gpufleet_gpu_mig_", ["gpu", "gpu_instance"], window)
    now = time.monotonic()
    for g in gpus:
        gl = [str(g.info.index)]
        if g.gpm_support is not None:
            sup.add_metric(gl + [g.gpm_support], 1 if g.gpm_support in ("supported", "mig") else 0)
        if g.gpm is not None:
            _add(whole, gl, g.gpm, now)
        for gi, reading in sorted(g.mig_gpm.items()):
            _add(mig, gl + [str(gi)], reading, now)
    yield sup
    for fams in (whole, mig):
        yield from (f for f in fams.values() if f.samples)


def container_utilization_families(containers: Iterable[Any]) -> Iterator[Any]:
    """SM and memory-bandwidth utilisation per container and GPU: its processes' (nvmlDeviceGetProcessUtilization)
    summed."""
    sm = GaugeMetricFamily("gpufleet_container_gpu_sm_utilization_ratio",
                           "Fraction of the last interval the container's processes ran kernels on the GPU, summed "
                           "over its processes (per-process NVML utilisation, read in the background)",
                           labels=["container", "gpu"])
    mem = GaugeMetricFamily("gpufleet_container_gpu_memory_utilization_ratio",
                            "Fraction of the last interval the container's processes read or wrote device memory, "
                            "summed over its processes", labels=["container", "gpu"])
    for c in containers:
        for gpu, (s, m) in sorted(c.gpu_utilization.items()):
            sm.add_metric([c.name, str(gpu)], s)
            mem.add_metric([c.name, str(gpu)], m)
    yield sm
    yield mem
