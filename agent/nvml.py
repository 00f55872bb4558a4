"""NVML -> dataclasses, through an injected nvml module.

``NvmlSource(nvml)`` takes the module to call: the real ``pynvml`` (nvidia-ml-py), an :class:`agent.replay.Recorder`
around it, or an :class:`agent.replay.ReplayNvml` in CI. The reading code is the same in all three.

Errors are handled per field: NOT_SUPPORTED / FUNCTION_NOT_FOUND -> that field is absent (and not asked again
until NVML is re-initialised); GPU_IS_LOST -> that GPU is down (gpu_up 0) while the
others are still read; any other error -> the field is absent and counted in ``errors``.
If ``nvmlInit`` fails (no driver), the source reports ``up=False`` and tries again at most every
``reinit_interval`` seconds, so a driver installed after the agent started is picked up.

Slow reads run in a background refresher, never in a scrape: the total-energy counter (3-16 ms a call on H100)
and, when enabled, PCIe throughput (~20 ms per direction). Their values carry their age. GPM profiling metrics and
per-process utilisation (agent.profiling) are read on a third thread, every ``slow_interval`` too.
XID errors come from an event thread (nvmlEventSetCreate / nvmlDeviceRegisterEvents / nvmlEventSetWait).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.profiling import GpmReading, Profiler
from agent.replay import handle_id

log = logging.getLogger("gpu-agent.nvml")

# codes from nvml.h (the same values as pynvml's constants)
ERR_NOT_SUPPORTED = 3
ERR_NO_PERMISSION = 4
ERR_TIMEOUT = 10
ERR_FUNCTION_NOT_FOUND = 13
ERR_GPU_IS_LOST = 15
ERR_UNINITIALIZED = 1
_ABSENT = (ERR_NOT_SUPPORTED, ERR_FUNCTION_NOT_FOUND)

# clock-event (throttle) reason bits, nvmlClocksEventReason*
CLOCK_EVENT_REASONS = {
    "gpu_idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4, "hw_slowdown": 0x8, "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20, "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
NVLINK_COUNTERS = {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3}
NVLINK_MAX_LINKS = 18  # Hopper has 18; probing stops at the first NOT_SUPPORTED link
FI_DEV_MEMORY_TEMP = 82
XID_CRITICAL_EVENT = 0x8
MEMORY_V2 = 0x02000028  # nvmlMemory_v2


@dataclass
class GpuInfo:
    index: int
    uuid: str = ""
    name: str = ""
    pci_bus_id: str = ""
    vbios: str = ""
    compute_capability: str = ""
    mig_mode: str = ""  # "enabled" / "disabled" / "" (not supported)


@dataclass
class MigInstance:
    index: int
    uuid: str = ""
    gpu_instance: int | None = None
    compute_instance: int | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


@dataclass
class GpuProcess:
    pid: int
    used_memory_bytes: int | None


@dataclass
class GpuReading:
    info: GpuInfo
    up: bool = True
    error: str = ""
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    temperature_celsius: float | None = None
    memory_temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    slow_age_seconds: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    clock_event_reasons: int | None = None
    ecc_errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (corrected|uncorrected, volatile|aggregate)
    remapped_rows: dict[str, int] = field(default_factory=dict)  # correctable / uncorrectable
    row_remap_pending: int | None = None
    row_remap_failure: int | None = None
    retired_pages: dict[str, int] = field(default_factory=dict)  # single_bit_ecc / double_bit_ecc
    retired_pages_pending: int | None = None
    pcie_replay_total: int | None = None
    pcie_link_generation: int | None = None
    pcie_link_width: int | None = None
    pcie_tx_bytes_per_second: float | None = None
    pcie_rx_bytes_per_second: float | None = None
    nvlink_up: dict[int, int] = field(default_factory=dict)
    nvlink_errors: dict[tuple[int, str], int] = field(default_factory=dict)
    fan_speed_ratio: float | None = None
    performance_state: int | None = None
    mig: list[MigInstance] = field(default_factory=list)
    processes: list[GpuProcess] = field(default_factory=list)
    # agent.profiling: GPM support reason, whole-GPU and per GPU instance readings, {pid: (SM, memory) ratios}
    gpm_support: str | None = None
    gpm: GpmReading | None = None
    mig_gpm: dict[int, GpmReading] = field(default_factory=dict)
    process_utilization: dict[int, tuple[float, float]] | None = None


@dataclass
class NvmlSnapshot:
    up: bool
    error: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    nvml_version: str = ""
    gpus: list[GpuReading] = field(default_factory=list)
    errors: int = 0  # field reads that failed with something other than NOT_SUPPORTED
    xid_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    xid_last_seen: dict[tuple[int, int], float] = field(default_factory=dict)
    duration_seconds: float = 0.0


# read by the background refresher (slow, or rarely changing), served with their age
SLOW_FIELDS = ("energy_joules", "pcie_tx_bytes_per_second", "pcie_rx_bytes_per_second", "pcie_replay_total",
               "pcie_link_generation", "pcie_link_width", "retired_pages", "retired_pages_pending", "nvlink_up",
               "nvlink_errors", "processes")


class _Lost(Exception):
    """The GPU fell off the bus (GPU_IS_LOST)."""


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class NvmlSource:
    """Reads all GPUs through ``nvml``; thread-safe; one instance per agent."""

    def __init__(self, nvml: Any, *, reinit_interval: float = 10.0, slow_interval: float = 10.0,
                 pcie_throughput: bool = False, xid_events: bool = True, processes: bool = True):
        self.nvml = nvml
        self.reinit_interval = reinit_interval
        self.slow_interval = slow_interval
        self.pcie_throughput = pcie_throughput
        self.xid_events = xid_events
        self.processes = processes
        self._lock = threading.RLock()
        self._up = False
        self._error = ""
        self._last_init_try = float("-inf")
        self._handles: list[Any] = []
        self._infos: list[GpuInfo] = []
        self._unsupported: set[tuple[int, str]] = set()
        self._driver = self._cuda = self._nvml_version = ""
        self._slow: dict[int, dict[str, Any]] = {}
        self._slow_thread: threading.Thread | None = None
        self._profile_thread: threading.Thread | None = None
        self.profiler = Profiler(nvml, slow_interval, processes=processes)
        self._xid_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._generation = 0
        self.xid_counts: dict[tuple[int, int], int] = {}
        self.xid_last_seen: dict[tuple[int, int], float] = {}
        self._xid_lock = threading.Lock()
        self._slow_errors = 0

    # ------------------------------------------------------------------------------------------- init / shutdown
    def _code(self, e: Exception) -> int:
        return int(getattr(e, "value", -1))

    def ensure_init(self) -> bool:
        with self._lock:
            if self._up:
                return True
            now = time.monotonic()
            if now - self._last_init_try < self.reinit_interval:
                return False
            self._last_init_try = now
            try:
                self.nvml.nvmlInit()
            except Exception as e:  # NVMLError, or OSError when the library is missing entirely
                self._error = f"nvmlInit: {e}"
                log.info("NVML not available: %s", e)
                return False
            try:
                self._discover()
            except Exception as e:
                self._error = f"discover: {e}"
                log.warning("NVML device discovery failed: %s", e)
                try:
                    self.nvml.nvmlShutdown()
                except Exception:
                    pass
                return False
            self._up = True
            self._error = ""
            self._generation += 1
            self._start_threads()
            return True

    def _discover(self) -> None:
        n = self.nvml.nvmlDeviceGetCount()
        self._driver = self._try_static(lambda: _s(self.nvml.nvmlSystemGetDriverVersion()))
        self._nvml_version = self._try_static(lambda: _s(self.nvml.nvmlSystemGetNVMLVersion()))

        def cuda() -> str:
            v = int(self.nvml.nvmlSystemGetCudaDriverVersion_v2())
            return f"{v // 1000}.{(v % 1000) // 10}"
        self._cuda = self._try_static(cuda)
        self._handles, self._infos, self._unsupported = [], [], set()
        self._slow = {}
        self.profiler.reset()
        for i in range(n):
            info = GpuInfo(index=i)
            try:
                h = self.nvml.nvmlDeviceGetHandleByIndex(i)
            except Exception as e:
                log.warning("GPU %d: no handle: %s", i, e)
                h = None
            self._handles.append(h)
            if h is not None:
                info.uuid = self._try_static(lambda: _s(self.nvml.nvmlDeviceGetUUID(h)))
                info.name = self._try_static(lambda: _s(self.nvml.nvmlDeviceGetName(h)))
                info.pci_bus_id = self._try_static(lambda: _s(self.nvml.nvmlDeviceGetPciInfo(h).busId).lower())
                info.vbios = self._try_static(lambda: _s(self.nvml.nvmlDeviceGetVbiosVersion(h)))
                info.compute_capability = self._try_static(
                    lambda: "%d.%d" % tuple(self.nvml.nvmlDeviceGetCudaComputeCapability(h)))
                info.mig_mode = self._try_static(
                    lambda: "enabled" if self.nvml.nvmlDeviceGetMigMode(h)[0] else "disabled")
            self._infos.append(info)

    def _try_static(self, fn: Any) -> str:
        try:
            return fn()
        except Exception:
            return ""

    def _start_threads(self) -> None:
        self._stop.clear()
        if self._slow_thread is None or not self._slow_thread.is_alive():
            self._slow_thread = threading.Thread(target=self._every, args=(self.refresh_slow,), name="nvml-slow",
                                                 daemon=True)
            self._slow_thread.start()
        if self._profile_thread is None or not self._profile_thread.is_alive():
            self._profile_thread = threading.Thread(target=self._every, args=(self.refresh_profiling,),
                                                    name="nvml-profiling", daemon=True)
            self._profile_thread.start()
        if self.xid_events and (self._xid_thread is None or not self._xid_thread.is_alive()):
            self._xid_thread = threading.Thread(target=self._xid_loop, name="nvml-xid", daemon=True)
            self._xid_thread.start()

    def close(self) -> None:
        self._stop.set()
        for t in (self._slow_thread, self._profile_thread, self._xid_thread):
            if t is not None:
                t.join(timeout=3)
        with self._lock:
            self.profiler.reset()
            if self._up:
                try:
                    self.nvml.nvmlShutdown()
                except Exception:
                    pass
            self._up = False

    # --------------------------------------------------------------------------------------------------- reading
    def _read(self, i: int, name: str, fn: Any, errs: list[int]) -> Any:
        """One field: its value, or None when absent. Raises _Lost when the GPU is gone."""
        if (i, name) in self._unsupported:
            return None
        try:
            return fn()
        except _Lost:
            raise
        except Exception as e:
            code = ERR_FUNCTION_NOT_FOUND if isinstance(e, AttributeError) else self._code(e)
            if code == ERR_GPU_IS_LOST:
                raise _Lost(str(e))
            if code in _ABSENT:
                self._unsupported.add((i, name))
            else:
                errs[0] += 1
                log.debug("GPU %d %s: %s", i, name, e)
            return None

    def collect(self) -> NvmlSnapshot:
        t0 = time.perf_counter()
        if not self.ensure_init():
            return NvmlSnapshot(up=False, error=self._error, duration_seconds=time.perf_counter() - t0)
        with self._lock:
            snap = NvmlSnapshot(up=True, driver_version=self._driver, cuda_version=self._cuda,
                                nvml_version=self._nvml_version)
            errs = [0]
            for i, h in enumerate(self._handles):
                snap.gpus.append(self._read_gpu(i, h, errs))
            snap.errors = errs[0] + self._slow_errors
            self._slow_errors = 0
        with self._xid_lock:
            snap.xid_counts = dict(self.xid_counts)
            snap.xid_last_seen = dict(self.xid_last_seen)
        snap.duration_seconds = time.perf_counter() - t0
        return snap

    def _read_gpu(self, i: int, h: Any, errs: list[int]) -> GpuReading:
        nv = self.nvml
        r = GpuReading(info=self._infos[i])
        if h is None:
            r.up, r.error = False, "no handle"
            return r
        rd = self._read
        try:
            # v2 reports driver-reserved memory apart from "used" (as nvidia-smi shows it); v1 counts it as used
            mem = rd(i, "memory2", lambda: nv.nvmlDeviceGetMemoryInfo(h, MEMORY_V2), errs)
            if mem is None:
                mem = rd(i, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h), errs)
            if mem is not None:
                r.memory_used_bytes, r.memory_free_bytes, r.memory_total_bytes = mem.used, mem.free, mem.total
                r.memory_reserved_bytes = getattr(mem, "reserved", None)
            util = rd(i, "util", lambda: nv.nvmlDeviceGetUtilizationRates(h), errs)
            if util is not None:
                r.utilization_ratio, r.memory_utilization_ratio = util.gpu / 100.0, util.memory / 100.0
            t = rd(i, "temp", lambda: nv.nvmlDeviceGetTemperature(h, 0), errs)
            r.temperature_celsius = None if t is None else float(t)
            fv = rd(i, "memtemp", lambda: nv.nvmlDeviceGetFieldValues(h, [FI_DEV_MEMORY_TEMP]), errs)
            if fv:
                v = fv[0]
                if getattr(v, "nvmlReturn", 0) == 0:
                    r.memory_temperature_celsius = float(getattr(v.value, "ullVal" if v.valueType == 3 else "uiVal", 0))
                elif v.nvmlReturn in _ABSENT:
                    self._unsupported.add((i, "memtemp"))
            p = rd(i, "power", lambda: nv.nvmlDeviceGetPowerUsage(h), errs)
            r.power_watts = None if p is None else p / 1000.0
            pl = rd(i, "powerlimit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h), errs)
            r.power_limit_watts = None if pl is None else pl / 1000.0
            c = rd(i, "smclock", lambda: nv.nvmlDeviceGetClockInfo(h, 1), errs)
            r.sm_clock_hertz = None if c is None else c * 1e6
            c = rd(i, "memclock", lambda: nv.nvmlDeviceGetClockInfo(h, 2), errs)
            r.memory_clock_hertz = None if c is None else c * 1e6
            r.clock_event_reasons = rd(i, "clockevents", lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h), errs)
            if r.clock_event_reasons is None:  # bindings/drivers before the rename
                r.clock_event_reasons = rd(i, "throttle", lambda: nv.nvmlDeviceGetCurrentClocksThrottleReasons(h),
                                           errs)
            for et, etn in ((0, "corrected"), (1, "uncorrected")):
                for ct, ctn in ((0, "volatile"), (1, "aggregate")):
                    v = rd(i, f"ecc{et}{ct}", lambda et=et, ct=ct: nv.nvmlDeviceGetTotalEccErrors(h, et, ct), errs)
                    if v is not None:
                        r.ecc_errors[(etn, ctn)] = int(v)
            rr = rd(i, "remap", lambda: nv.nvmlDeviceGetRemappedRows(h), errs)
            if rr is not None:
                r.remapped_rows = {"correctable": int(rr[0]), "uncorrectable": int(rr[1])}
                r.row_remap_pending, r.row_remap_failure = int(rr[2]), int(rr[3])
            fan = rd(i, "fan", lambda: nv.nvmlDeviceGetFanSpeed(h), errs)
            r.fan_speed_ratio = None if fan is None else fan / 100.0
            r.performance_state = rd(i, "pstate", lambda: nv.nvmlDeviceGetPerformanceState(h), errs)
            if r.info.mig_mode == "enabled":
                self._read_mig(i, h, r, errs)
        except _Lost as e:
            r = GpuReading(info=r.info, up=False, error=f"GPU is lost: {e}")
            return r
        slow = self._slow.get(i)
        if slow:
            for k, v in slow.items():
                if k != "at":
                    setattr(r, k, v)
            r.slow_age_seconds = time.monotonic() - slow["at"]
        r.gpm_support, r.gpm, r.mig_gpm, r.process_utilization = self.profiler.reading(i)
        return r

    def _read_nvlink(self, i: int, h: Any, r: GpuReading, errs: list[int]) -> None:
        if (i, "nvlink") in self._unsupported:
            return
        nv = self.nvml
        for link in range(NVLINK_MAX_LINKS):
            if (i, f"nvlink{link}") in self._unsupported:
                break
            st = self._read(i, f"nvlink{link}", lambda link=link: nv.nvmlDeviceGetNvLinkState(h, link), errs)
            if st is None:
                if link == 0:
                    self._unsupported.add((i, "nvlink"))
                break
            r.nvlink_up[link] = int(st)
            if not st:
                continue  # an inactive link counts nothing; skip its four counter reads
            for cname, cid in NVLINK_COUNTERS.items():
                v = self._read(i, f"nvlinkerr{link}.{cid}",
                               lambda link=link, cid=cid: nv.nvmlDeviceGetNvLinkErrorCounter(h, link, cid), errs)
                if v is not None:
                    r.nvlink_errors[(link, cname)] = int(v)

    def _mig_devices(self, i: int, h: Any, errs: list[int]) -> list[tuple[MigInstance, Any]]:
        """The GPU's MIG devices (one per compute instance), with their GPU and compute instance ids."""
        nv = self.nvml
        n = self._read(i, "migcount", lambda: nv.nvmlDeviceGetMaxMigDeviceCount(h), errs) or 0
        out = []
        for j in range(int(n)):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
            except Exception as e:
                if self._code(e) == ERR_GPU_IS_LOST:
                    raise _Lost(str(e))
                continue  # NOT_FOUND: that slot holds no instance
            inst = MigInstance(index=j)
            inst.gpu_instance = self._read(i, "mig_gi", lambda: nv.nvmlDeviceGetGpuInstanceId(mh), errs)
            inst.compute_instance = self._read(i, "mig_ci", lambda: nv.nvmlDeviceGetComputeInstanceId(mh), errs)
            out.append((inst, mh))
        return out

    def _read_mig(self, i: int, h: Any, r: GpuReading, errs: list[int]) -> None:
        nv = self.nvml
        for inst, mh in self._mig_devices(i, h, errs):
            inst.uuid = self._try_static(lambda: _s(nv.nvmlDeviceGetUUID(mh)))
            mem = self._read(i, "migmem", lambda: nv.nvmlDeviceGetMemoryInfo(mh), errs)
            if mem is not None:
                inst.memory_used_bytes, inst.memory_total_bytes = mem.used, mem.total
            r.mig.append(inst)

    def _read_processes(self, i: int, h: Any, r: GpuReading, errs: list[int]) -> None:
        nv = self.nvml
        seen: dict[int, GpuProcess] = {}
        for kind, fn in (("computeprocs", nv.nvmlDeviceGetComputeRunningProcesses),
                         ("graphicsprocs", nv.nvmlDeviceGetGraphicsRunningProcesses)):
            procs = self._read(i, kind, lambda fn=fn: fn(h), errs) or []
            for p in procs:
                if not hasattr(p, "pid"):
                    errs[0] += 1
                    continue
                mem = getattr(p, "usedGpuMemory", None)
                if mem is None or mem >= (1 << 63):  # NVML_VALUE_NOT_AVAILABLE
                    mem = None
                pid = int(p.pid)
                if pid in seen:
                    if mem is not None:
                        seen[pid].used_memory_bytes = (seen[pid].used_memory_bytes or 0) + mem
                else:
                    seen[pid] = GpuProcess(pid=pid, used_memory_bytes=mem)
        r.processes = list(seen.values())

    # ------------------------------------------------------------------------------------------ background reads
    def refresh_slow(self) -> None:
        """Read the slow fields of every GPU once (the background thread calls this every slow_interval).
        Also notices a change in the GPU count (a GPU gone from the bus after a reset, or one added) and then
        enumerates the GPUs again."""
        nv = self.nvml
        with self._lock:
            if not self._up:
                return
            try:
                n = nv.nvmlDeviceGetCount()
            except Exception:
                n = len(self._handles)
            if n != len(self._handles):
                log.warning("GPU count changed from %d to %d: enumerating again", len(self._handles), n)
                try:
                    self._discover()
                except Exception as e:
                    log.warning("GPU enumeration failed: %s", e)
            handles = list(enumerate(self._handles))
        for i, h in handles:
            if h is None:
                continue
            errs = [0]
            r = GpuReading(info=self._infos[i])
            rd = self._read
            try:
                e = rd(i, "energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h), errs)
                r.energy_joules = None if e is None else e / 1000.0
                if self.pcie_throughput:
                    tx = rd(i, "pcietx", lambda: nv.nvmlDeviceGetPcieThroughput(h, 0), errs)
                    rx = rd(i, "pcierx", lambda: nv.nvmlDeviceGetPcieThroughput(h, 1), errs)
                    r.pcie_tx_bytes_per_second = None if tx is None else tx * 1024.0
                    r.pcie_rx_bytes_per_second = None if rx is None else rx * 1024.0
                r.pcie_replay_total = rd(i, "pciereplay", lambda: nv.nvmlDeviceGetPcieReplayCounter(h), errs)
                r.pcie_link_generation = rd(i, "pciegen", lambda: nv.nvmlDeviceGetCurrPcieLinkGeneration(h), errs)
                r.pcie_link_width = rd(i, "pciewidth", lambda: nv.nvmlDeviceGetCurrPcieLinkWidth(h), errs)
                for cause, cn in ((0, "single_bit_ecc"), (1, "double_bit_ecc")):
                    pages = rd(i, f"retired{cause}", lambda cause=cause: nv.nvmlDeviceGetRetiredPages(h, cause), errs)
                    if pages is not None:
                        r.retired_pages[cn] = len(pages)
                pend = rd(i, "retiredpending", lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(h), errs)
                r.retired_pages_pending = None if pend is None else int(pend)
                self._read_nvlink(i, h, r, errs)
                if self.processes:
                    self._read_processes(i, h, r, errs)
            except _Lost:
                self._slow.pop(i, None)
                continue
            out = {k: getattr(r, k) for k in SLOW_FIELDS}
            out["at"] = time.monotonic()
            self._slow[i] = out
            self._slow_errors += errs[0]

    def refresh_profiling(self) -> None:
        """GPM samples and process utilisation of every GPU, once; done every slow_interval: the GPM window."""
        with self._lock:
            if not self._up:
                return
            gpus = [(i, h, self._infos[i].mig_mode) for i, h in enumerate(self._handles) if h is not None]
        devices = []
        for i, h, mig in gpus:
            try:  # MIG on: the GPU instances, each sampled apart
                gis = sorted({m.gpu_instance for m, _ in self._mig_devices(i, h, [0]) if m.gpu_instance is not None}
                             ) if mig == "enabled" else None
            except _Lost:
                continue
            devices.append((i, h, gis))
        self.profiler.refresh(devices)
        self._slow_errors += self.profiler.errors
        self.profiler.errors = 0

    def _every(self, refresh: Any) -> None:
        gen = self._generation
        while not self._stop.is_set() and gen == self._generation:
            try:
                refresh()
            except Exception:  # never let a refresher die
                log.exception("%s failed", refresh.__name__)
            self._stop.wait(self.slow_interval)

    # ------------------------------------------------------------------------------------------------ XID events
    def record_xid(self, gpu: int, xid: int, when: float | None = None) -> None:
        with self._xid_lock:
            key = (gpu, xid)
            self.xid_counts[key] = self.xid_counts.get(key, 0) + 1
            self.xid_last_seen[key] = time.time() if when is None else when

    def _xid_loop(self) -> None:
        gen = self._generation
        while not self._stop.is_set() and gen == self._generation:
            handles = self._handles
            if not self._xid_watch(handles, gen):
                return

    def _xid_watch(self, handles: list, gen: int) -> bool:
        """Register the GPUs for XID events and wait for them until stopped (False) or until the GPUs were
        enumerated again (True: register the new handles)."""
        nv = self.nvml
        try:
            es = nv.nvmlEventSetCreate()
        except Exception as e:
            log.warning("XID events unavailable: %s", e)
            return False
        ids = {}
        registered = 0
        for i, h in enumerate(handles):
            if h is None:
                continue
            ids[handle_id(h)] = i
            try:
                nv.nvmlDeviceRegisterEvents(h, XID_CRITICAL_EVENT, es)
                registered += 1
            except Exception as e:
                log.info("GPU %d: XID events not registered: %s", i, e)
        again = False
        while registered and not self._stop.is_set() and gen == self._generation:
            if self._handles is not handles:
                again = True
                break
            try:
                data = nv.nvmlEventSetWait_v2(es, 500)
            except Exception as e:
                code = self._code(e)
                if code == ERR_TIMEOUT:
                    continue
                if code == ERR_GPU_IS_LOST:
                    # the event set reports a lost GPU; which one is seen by the next scrape
                    self._stop.wait(1.0)
                    continue
                if code == ERR_UNINITIALIZED:
                    break
                log.warning("XID event wait failed: %s", e)
                self._stop.wait(1.0)
                continue
            if int(data.eventType) & XID_CRITICAL_EVENT:
                gpu = ids.get(handle_id(data.device))
                if gpu is None:
                    try:
                        gpu = int(nv.nvmlDeviceGetIndex(data.device))
                    except Exception:
                        gpu = -1
                self.record_xid(gpu, int(data.eventData))
        try:
            nv.nvmlEventSetFree(es)
        except Exception:
            pass
        return again
