"""Profiling readings without DCGM: NVML GPM metrics and per-process utilisation, read in a background thread.

GPM (GPU Performance Monitoring, Hopper and newer) gives what DCGM's DCGM_FI_PROF_* fields give: SM activity and
occupancy, tensor and FP pipe activity, DRAM bandwidth, PCIe and NVLink traffic. A GPM metric is computed from two
samples of the GPU's counters; the time between them is the window. :class:`Profiler` takes one sample per GPU (and
per MIG GPU instance, through ``nvmlGpmMigSampleGet``) every ``interval`` seconds in its own thread and computes the
metrics over the last two: ``nvmlGpmMetricsGet`` takes ~6 ms on an H200, so it never runs in a scrape. The window
actually measured is kept with the values.

On the same thread, ``nvmlDeviceGetProcessUtilization`` gives each process's SM and memory-bandwidth utilisation over
the last interval (per PID; the agent only exports it summed per container).

Where GPM is unavailable the values are absent and :attr:`Profiler.support` says why (one of :data:`GPM_REASONS`).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gpu-agent.profiling")

# NVML return codes (nvml.h)
_NOT_SUPPORTED, _NO_PERMISSION, _NOT_FOUND, _FUNCTION_NOT_FOUND, _GPU_IS_LOST = 3, 4, 6, 13, 15

_PERCENT = 0.01
_MIB = float(1 << 20)
# (NVML_GPM_METRIC_* id, reading key, scale to base units): percentages -> ratios 0..1, MiB/s -> bytes/s
GPM_METRICS = (
    (1, "graphics_engine_active", _PERCENT),
    (2, "sm_active", _PERCENT),
    (3, "sm_occupancy", _PERCENT),
    (4, "pipe_integer", _PERCENT),
    (5, "tensor_active", _PERCENT),
    (6, "pipe_dfma", _PERCENT),
    (7, "pipe_hmma", _PERCENT),
    (8, "pipe_dmma", _PERCENT),
    (9, "pipe_imma", _PERCENT),
    (10, "dram_active", _PERCENT),
    (11, "pipe_fp64", _PERCENT),
    (12, "pipe_fp32", _PERCENT),
    (13, "pipe_fp16", _PERCENT),
    (20, "pcie_tx_bytes", _MIB),
    (21, "pcie_rx_bytes", _MIB),
    (60, "nvlink_rx_bytes", _MIB),
    (61, "nvlink_tx_bytes", _MIB),
)
BYTE_KEYS = ("pcie_tx_bytes", "pcie_rx_bytes", "nvlink_tx_bytes", "nvlink_rx_bytes")

# why GPM readings are absent on a GPU (gpufleet_gpu_gpm_supported{reason})
GPM_REASONS = {
    "supported": "GPM answers",
    "gpu": "the GPU has no GPM (before Hopper): nvmlGpmQueryDeviceSupport says no",
    "driver": "the driver has no GPM functions (before R520)",
    "binding": "the nvidia-ml-py binding installed has no GPM functions (an old release)",
    "mig": "MIG is on: GPM is read per GPU instance",
    "no_permission": "NVML refused GPM to this user",
    "error": "GPM calls failed; retried every interval",
}


@dataclass
class GpmReading:
    values: dict[str, float]  # GPM_METRICS key -> ratio, or bytes per second for the *_bytes keys
    window_seconds: float
    at: float  # time.monotonic() of the newer sample
    bytes_total: dict[str, float] = field(default_factory=dict)  # BYTE_KEYS -> bytes summed over all windows


def _code(e: Exception) -> int:
    return _FUNCTION_NOT_FOUND if isinstance(e, AttributeError) else int(getattr(e, "value", -1))


class _Lost(Exception):
    pass


class Profiler:
    """GPM and process-utilisation readings of every GPU, refreshed by :meth:`refresh` (the owner's thread calls it
    every ``interval`` seconds). Thread-safe: :meth:`reading` copies out under a lock."""

    def __init__(self, nvml: Any, interval: float = 10.0, *, processes: bool = True):
        self.nvml = nvml
        self.interval = interval
        self.processes = processes
        self._lock = threading.Lock()
        self.support: dict[int, str] = {}
        self._samples: dict[tuple[int, int | None], list] = {}  # (gpu, gpu instance) -> [older, newer] (sample, t)
        self._gpm: dict[tuple[int, int | None], GpmReading] = {}
        self._bytes: dict[tuple[int, int | None], dict[str, float]] = {}
        self._proc_util: dict[int, dict[int, tuple[float, float]]] = {}
        self._no_proc_util: set[int] = set()
        self.errors = 0
        self.rounds = 0  # refresh rounds done (tests and benchmarks wait on it)

    # ----------------------------------------------------------------------------------------------- reading
    def refresh(self, devices: list[tuple[int, Any, list[int] | None]]) -> None:
        """One round: ``devices`` holds (gpu index, handle, None when MIG is off / the GPU instance ids when on)."""
        for i, h, gis in devices:
            try:
                self._refresh_gpu(i, h, gis)
            except _Lost:
                self._forget(i)
        self.rounds += 1

    def _refresh_gpu(self, i: int, h: Any, gis: list[int] | None) -> None:
        sup = self.support.get(i)
        if sup is None or sup == "error":
            sup = self._query_support(h)
            self.support[i] = sup
        if sup in ("supported", "mig"):
            keys = [(i, None)] if gis is None else [(i, gi) for gi in gis]
            self._drop([k for k in list(self._samples) if k[0] == i and k not in keys])  # instances gone
            for key in keys:
                self._sample(key, h)
            if gis is not None and sup == "supported":
                self.support[i] = "mig"
            elif gis is None and sup == "mig":
                self.support[i] = "supported"
        if self.processes and gis is None and i not in self._no_proc_util:
            self._read_process_utilization(i, h)

    def _query_support(self, h: Any) -> str:
        nv = self.nvml
        if not all(hasattr(nv, n) for n in ("nvmlGpmQueryDeviceSupport", "nvmlGpmMetricsGet",
                                             "c_nvmlGpmMetricsGet_t")):
            return "binding"
        try:
            ok = int(nv.nvmlGpmQueryDeviceSupport(h).isSupportedDevice)
        except Exception as e:
            code = _code(e)
            if code == _GPU_IS_LOST:
                raise _Lost() from e
            return {_NOT_SUPPORTED: "gpu", _FUNCTION_NOT_FOUND: "driver", _NO_PERMISSION: "no_permission"}.get(
                code, "error")
        return "supported" if ok else "gpu"

    def _sample(self, key: tuple[int, int | None], h: Any) -> None:
        nv = self.nvml
        pair = self._samples.get(key)
        try:
            if pair is None:
                pair = self._samples[key] = [(nv.nvmlGpmSampleAlloc(), 0.0), (nv.nvmlGpmSampleAlloc(), 0.0)]
            older, newer = pair
            s = older[0]  # the older sample's buffer takes the new reading
            if key[1] is None:
                nv.nvmlGpmSampleGet(h, s)
            else:
                nv.nvmlGpmMigSampleGet(h, key[1], s)
            now = time.monotonic()
            pair[0], pair[1] = newer, (s, now)
            if newer[1]:
                self._compute(key, newer[0], s, now - newer[1], now)
        except Exception as e:
            code = _code(e)
            if code == _GPU_IS_LOST:
                raise _Lost() from e
            self.errors += 1
            log.debug("GPM %s: %s", key, e)
            if pair is not None:
                pair[1] = (pair[1][0], 0.0)  # the next round starts a new window
            with self._lock:
                self._gpm.pop(key, None)  # absent rather than stale
            if key[1] is None and code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND, _NO_PERMISSION):
                self.support[key[0]] = "gpu" if code == _NOT_SUPPORTED else "error"

    def _compute(self, key: tuple[int, int | None], s1: Any, s2: Any, window: float, now: float) -> None:
        nv = self.nvml
        mg = nv.c_nvmlGpmMetricsGet_t()
        mg.version = getattr(nv, "NVML_GPM_METRICS_GET_VERSION", 1)
        mg.numMetrics = len(GPM_METRICS)
        mg.sample1, mg.sample2 = s1, s2
        for k, (mid, _, _) in enumerate(GPM_METRICS):
            mg.metrics[k].metricId = mid
        nv.nvmlGpmMetricsGet(mg)
        values = {}
        for k, (mid, name, scale) in enumerate(GPM_METRICS):
            m = mg.metrics[k]
            if int(m.nvmlReturn) == 0 and int(m.metricId) == mid:
                values[name] = float(m.value) * scale
        acc = self._bytes.setdefault(key, {})
        for name in BYTE_KEYS:
            if name in values:
                acc[name] = acc.get(name, 0.0) + values[name] * window
        with self._lock:
            self._gpm[key] = GpmReading(values, window, now, dict(acc))

    def _read_process_utilization(self, i: int, h: Any) -> None:
        since = int((time.time() - self.interval) * 1e6)  # NVML's sample timestamps are CPU time in microseconds
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(h, since)
        except Exception as e:
            code = _code(e)
            if code == _GPU_IS_LOST:
                raise _Lost() from e
            if code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                self._no_proc_util.add(i)
                return
            if code not in (_NOT_FOUND, 0):  # NOT_FOUND: no process ran in the interval
                self.errors += 1
                return
            samples = []
        per: dict[int, list[tuple[float, float]]] = {}
        for s in samples:
            per.setdefault(int(s.pid), []).append((int(s.smUtil) * _PERCENT, int(s.memUtil) * _PERCENT))
        out = {pid: (sum(v[0] for v in vs) / len(vs), sum(v[1] for v in vs) / len(vs)) for pid, vs in per.items()}
        with self._lock:
            self._proc_util[i] = out

    # ------------------------------------------------------------------------------------------ reading out
    def reading(self, i: int) -> tuple[str | None, GpmReading | None, dict[int, GpmReading], dict | None]:
        """(support reason, whole-GPU reading, per GPU instance readings, {pid: (sm, memory)} or None)."""
        with self._lock:
            whole = self._gpm.get((i, None))
            mig = {k[1]: v for k, v in self._gpm.items() if k[0] == i and k[1] is not None}
            return self.support.get(i), whole, mig, self._proc_util.get(i)

    def _drop(self, keys: list[tuple[int, int | None]]) -> None:
        with self._lock:
            for k in keys:
                self._free(self._samples.pop(k, []))
                self._gpm.pop(k, None)
                self._bytes.pop(k, None)

    def _forget(self, i: int) -> None:
        self._drop([k for k in set(self._samples) | set(self._gpm) if k[0] == i])
        with self._lock:
            self._proc_util.pop(i, None)

    def _free(self, pair: list) -> None:
        for s, _ in pair:
            try:
                self.nvml.nvmlGpmSampleFree(s)
            except Exception:
                pass

    def reset(self) -> None:
        """Forget every GPU (NVML was initialised again, or the GPUs were enumerated again)."""
        with self._lock:
            for pair in self._samples.values():
                self._free(pair)
            self._samples.clear()
            self._gpm.clear()
            self._bytes.clear()
            self._proc_util.clear()
            self.support.clear()
            self._no_proc_util.clear()

