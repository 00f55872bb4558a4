"""Record real NVML calls, and replay a recording as a stand-in ``pynvml`` module.

The agent takes its NVML module as an argument (:class:`agent.nvml.NvmlSource`), so the same reading code runs
against the real ``pynvml`` on a GPU host, against :class:`Recorder` (real calls, written down as they pass), and
against :class:`ReplayNvml` in CI, where there is no GPU. A recording is JSON::

    {"meta": {...date, gpu, driver...}, "calls": {"nvmlDeviceGetPowerUsage(gpu0)": [{"value": 71234, "us": 4.1},
                                                                               {"error": 3, "us": 1.0}]}}

Keys are the function name and its arguments; device handles become tokens (``gpu0``, ``gpu0/mig1``). Values are
plain JSON; ctypes structures become ``{"struct": {field: value}}`` and are replayed as attribute objects.
Replay steps through the recorded outcomes of a key on each call and then stays on the last one.

GPM: sample buffers become the token ``sample``; ``nvmlGpmMetricsGet`` is keyed by the device (and GPU instance) its
newer sample was taken from, ``nvmlGpmMetricsGet(gpu0)`` / ``nvmlGpmMetricsGet(gpu0,1)``, and holds the metrics asked
for. ``nvmlDeviceGetProcessUtilization`` is keyed without its since-timestamp.

Faults for tests: :meth:`ReplayNvml.lose_gpu`, ``init_error``, :meth:`fail`, :meth:`xid` (an XID event for the
event thread), ``processes`` (running GPU processes to report per GPU), :meth:`ReplayNvml.gpm` (GPM values on a
recording without them), :meth:`ReplayNvml.mig` (MIG instances: never switched on for a recording).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import pynvml as _pynvml

_IDENTITY_CALLS = ("nvmlDeviceGetUUID", "nvmlDeviceGetPciInfo", "nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetSerial",
                   "nvmlDeviceGetIndex", "nvmlDeviceGetMinorNumber")


_MISSING = object()
_SAMPLE = "sample"  # the token of every GPM sample buffer
_KEY_ARGS = {"nvmlDeviceGetProcessUtilization": 1}  # arguments kept in the key (the rest is a timestamp)


class Handle:
    """A replayed device (or event set) handle."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:
        return f"Handle({self.token})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handle) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)


def handle_id(handle: Any) -> Any:
    """A hashable identity for a real ctypes handle or a replayed one (event data names its device by handle)."""
    if isinstance(handle, Handle):
        return handle.token
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


# --------------------------------------------------------------------------------------------------- recording
class Recorder:
    """Wraps a real nvml module: every ``nvml*`` call passes through and its result or error is written down.

    Calls are timed one at a time (a lock around each, event waits left out): a fast read timed while the background
    thread's 3-16 ms energy read runs can count a wait inside NVML as its own cost. Between the H200 recordings of
    run 4 (overlapping) and run 5 (one at a time) the fast reads' medians fell by ~25% (memory 78 -> 71 us). They are
    still the cost of calls made once a second, several times that of the same call repeated in a tight loop
    (memory 5-9 us, ``bench.py calls``), so a replay with ``latency`` errs on the slow side.
    """

    _UNTIMED = ("nvmlEventSetWait", "nvmlEventSetWait_v2")  # block for up to their timeout: never serialised

    def __init__(self, module: Any, *, max_per_key: int = 8):
        self._m = module
        self._max = max_per_key
        self._lock = threading.Lock()
        self._call_lock = threading.Lock()
        self.calls: dict[str, list[dict]] = {}
        self._tokens: dict[Any, str] = {}
        self._sampled: dict[Any, str] = {}  # GPM sample -> "gpu0" / "gpu0,GI": where it was last taken

    # tokens for handles ----------------------------------------------------------------------------------------
    def _token(self, obj: Any) -> str | None:
        if isinstance(obj, (int, float, str, bytes, bool, list, tuple)) or obj is None:
            return None
        return self._tokens.get(handle_id(obj))

    def _arg(self, a: Any) -> str:
        tok = self._token(a)
        if tok is not None:
            return tok
        if isinstance(a, (list, tuple)):
            return "[" + ";".join(self._arg(x) for x in a) + "]"
        return repr(a)

    def _ser(self, v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, bytes):
            return {"bytes": v.decode("latin-1")}
        if isinstance(v, (list, tuple, ctypes.Array)):
            return [self._ser(x) for x in v]
        if isinstance(v, (ctypes.Structure, ctypes.Union)):
            out = {}
            for f in v._fields_:
                name = f[0]
                try:
                    raw = object.__getattribute__(v, name)
                except Exception:  # pragma: no cover - defensive
                    continue
                out[name] = self._ser(raw)
            return {"struct": out}
        if isinstance(v, SimpleNamespace) or type(v).__name__ == "nvmlFriendlyObject":
            # pynvml's friendly objects (process lists), or a replayed structure (recording a replay, in tests)
            return {"struct": {k: self._ser(x) for k, x in vars(v).items()}}
        if isinstance(v, Handle):
            return {"handle": self._token(v) or v.token}
        if isinstance(v, ctypes._SimpleCData):
            return self._ser(v.value)
        if isinstance(v, ctypes._Pointer) or hasattr(v, "contents"):
            tok = self._token(v)
            if tok is None and not v:
                return None
            return {"handle": tok or "unknown"}
        return repr(v)

    def _add(self, key: str, outcome: dict) -> None:
        with self._lock:
            lst = self.calls.setdefault(key, [])
            if len(lst) < self._max:
                lst.append(outcome)
            else:  # keep the first ones (static values) and the newest (counters move on)
                lst[-1] = outcome

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._m, name)
        if not (name.startswith("nvml") and callable(attr)):
            return attr

        one_at_a_time = contextlib.nullcontext() if name in self._UNTIMED else self._call_lock

        def call(*args: Any) -> Any:
            if name == "nvmlGpmMetricsGet":
                key = f"{name}({self._sampled.get(handle_id(args[0].sample2), 'unknown')})"
            else:
                key = f"{name}({','.join(self._arg(a) for a in args[:_KEY_ARGS.get(name, len(args))])})"
            with one_at_a_time:
                t0 = time.perf_counter()
                try:
                    res = attr(*args)
                except self._m.NVMLError as e:
                    self._add(key, {"error": int(e.value), "us": round((time.perf_counter() - t0) * 1e6, 1)})
                    raise
                us = round((time.perf_counter() - t0) * 1e6, 1)
            if name in ("nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByIndex_v2"):
                self._tokens[handle_id(res)] = f"gpu{args[0]}"
            elif name == "nvmlDeviceGetMigDeviceHandleByIndex":
                self._tokens[handle_id(res)] = f"{self._arg(args[0])}/mig{args[1]}"
            elif name == "nvmlEventSetCreate":
                self._tokens[handle_id(res)] = "eventset"
            elif name == "nvmlGpmSampleAlloc":
                self._tokens[handle_id(res)] = _SAMPLE
            elif name in ("nvmlGpmSampleGet", "nvmlGpmMigSampleGet"):
                self._sampled[handle_id(args[-1])] = ",".join(self._arg(a) for a in args[:-1])
            value = self._metrics(res) if name == "nvmlGpmMetricsGet" else self._ser(res)
            self._add(key, {"value": value, "us": us})
            return res

        return call

    @staticmethod
    def _metrics(mg: Any) -> dict:
        """The metrics a nvmlGpmMetricsGet call asked for and got (its samples and names left out)."""
        return {"struct": {"metrics": [{"struct": {"metricId": int(m.metricId), "nvmlReturn": int(m.nvmlReturn),
                                                   "value": float(m.value)}}
                                       for m in list(mg.metrics)[:int(mg.numMetrics)]]}}

    def dump(self, meta: dict) -> dict:
        with self._lock:
            return {"meta": meta, "calls": {k: list(v) for k, v in sorted(self.calls.items())}}


# ------------------------------------------------------------------------------------------------------ replay
def _de(v: Any) -> Any:
    if isinstance(v, list):
        return [_de(x) for x in v]
    if isinstance(v, dict):
        if "handle" in v:
            return Handle(v["handle"]) if v["handle"] else None
        if "bytes" in v:
            return v["bytes"].encode("latin-1")
        if "struct" in v:
            return SimpleNamespace(**{k: _de(x) for k, x in v["struct"].items()})
    return v


class ReplayNvml:
    """A stand-in ``pynvml`` module that answers from a recording (see the module docstring).

    ``gpus`` clones the recorded GPUs to that many (UUID, PCI bus id, index and minor number made unique), for
    tests and for the simulated-8-GPU benchmark. ``latency`` makes each call take as long as it took when recorded.
    Constants and error classes come from the real ``pynvml`` (a pure-Python module that loads the driver's
    library only in ``nvmlInit``, which this class never calls).
    """

    def __init__(self, recording: dict, *, gpus: int | None = None, latency: bool = False):
        self._calls = {k: [dict(o) for o in v] for k, v in recording["calls"].items()}
        self.meta = recording.get("meta", {})
        self._pos: dict[str, int] = {}
        self._keycache: dict[tuple, tuple] = {}
        self._latency = latency
        self._lock = threading.Lock()
        self._recorded = max(1, int(self._first("nvmlDeviceGetCount()", 1)))
        self.gpus = gpus if gpus is not None else self._recorded
        self.init_error: int | None = None
        self.initialized = False
        self.lost: set[int] = set()
        self.failures: dict[tuple[str, int | None], int] = {}
        self.overrides: dict[tuple, Any] = {}
        self.processes: dict[int, list[tuple[int, int]]] = {}
        self.init_calls = 0
        self._events: list[tuple[int, int]] = []
        self._event_cond = threading.Condition()
        self._samples: dict[Any, Any] = {}  # GPM sample address -> its buffer
        self._sampled: dict[Any, tuple] = {}  # GPM sample address -> (device handle[, GPU instance])
        self.NVMLError = _pynvml.NVMLError

    @classmethod
    def from_file(cls, path: str, **kw: Any) -> "ReplayNvml":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f), **kw)

    # fault injection -------------------------------------------------------------------------------------------
    def lose_gpu(self, index: int) -> None:
        """From now on every call on that GPU fails with GPU_IS_LOST (fell off the bus)."""
        self.lost.add(index)

    def fail(self, func: str, code: int, gpu: int | None = None) -> None:
        self.failures[(func, gpu)] = code

    def set(self, func: str, value: Any, gpu: int | None = None, args: tuple = ()) -> None:
        """From now on ``func`` (on that GPU, with these extra arguments) returns ``value`` (plain JSON form, as in
        a recording: {"struct": {...}} for structures)."""
        self.overrides[(func, gpu, tuple(args))] = value

    def gpm(self, gpu: int, metrics: dict[int, float], gpu_instance: int | None = None) -> None:
        """GPM answers on that GPU (or GPU instance) with these values, NVML_GPM_METRIC_* id -> value in NVML's units
        (percent, MiB/s): for recordings made on GPUs or drivers without GPM."""
        sample = Handle(_SAMPLE)
        self.set("nvmlGpmQueryDeviceSupport", {"struct": {"version": 1, "isSupportedDevice": 1}}, gpu=gpu)
        if gpu_instance is None:
            self.set("nvmlGpmSampleGet", {"handle": _SAMPLE}, gpu=gpu, args=(sample,))
        else:
            self.set("nvmlGpmMigSampleGet", {"handle": _SAMPLE}, gpu=gpu, args=(gpu_instance, sample))
        self.set("nvmlGpmMetricsGet", {"struct": {"metrics": [
            {"struct": {"metricId": k, "nvmlReturn": 0, "value": v}} for k, v in metrics.items()]}},
            gpu=gpu, args=() if gpu_instance is None else (gpu_instance,))

    def mig(self, gpu: int, instances: list[tuple[int, int, int, int]]) -> None:
        """MIG on for a recorded GPU, with these MIG devices: (GPU instance id, compute instance id, memory total,
        memory used). Written into the recorded calls as a MIG host's recording holds them (MIG is never switched on
        to make a recording). Call before NVML is initialised: the mode is read once."""
        t = f"gpu{gpu}"
        calls: dict[str, dict] = {f"nvmlDeviceGetMigMode({t})": {"value": [1, 1]},
                                  f"nvmlDeviceGetMaxMigDeviceCount({t})": {"value": 7},
                                  # what NVML answers for the whole GPU once MIG is on
                                  f"nvmlDeviceGetUtilizationRates({t})": {"error": _pynvml.NVML_ERROR_NOT_SUPPORTED},
                                  f"nvmlDeviceGetProcessUtilization({t})": {"error": _pynvml.NVML_ERROR_NOT_SUPPORTED}}
        for j in range(7):
            m = f"{t}/mig{j}"
            calls[f"nvmlDeviceGetMigDeviceHandleByIndex({t},{j})"] = (
                {"value": {"handle": m}} if j < len(instances) else {"error": _pynvml.NVML_ERROR_NOT_FOUND})
        for j, (gi, ci, total, used) in enumerate(instances):
            m = f"{t}/mig{j}"
            calls.update({f"nvmlDeviceGetGpuInstanceId({m})": {"value": gi},
                          f"nvmlDeviceGetComputeInstanceId({m})": {"value": ci},
                          f"nvmlDeviceGetUUID({m})": {"value": f"MIG-{gpu:08x}-{gi:04x}-{ci:04x}-0000-000000000000"},
                          f"nvmlDeviceGetMemoryInfo({m})": {"value": {"struct": {"total": total, "used": used,
                                                                                  "free": total - used}}}})
        for key, outcome in calls.items():
            self._calls[key] = [outcome]
            self._pos.pop(key, None)

    def xid(self, gpu: int, code: int) -> None:
        with self._event_cond:
            self._events.append((gpu, code))
            self._event_cond.notify_all()

    # plumbing ---------------------------------------------------------------------------------------------------
    def _first(self, key: str, default: Any) -> Any:
        for o in self._calls.get(key, []):
            if "value" in o:
                return o["value"]
        return default

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml") and callable(getattr(_pynvml, name, None)):
            fn = getattr(self, "_fn_" + name, None)
            if fn is None:
                def fn(*args: Any, _name: str = name) -> Any:
                    return self._replay(_name, args)
            object.__setattr__(self, name, fn)  # later lookups skip __getattr__
            return fn
        return getattr(_pynvml, name)

    def _err(self, code: int) -> Exception:
        return _pynvml.NVMLError(code)

    @staticmethod
    def _gpu_of(args: tuple) -> int | None:
        if args:
            a = args[0]
            if type(a) is Handle and a.token.startswith("gpu"):
                return int(a.token[3:].split("/")[0])
        return None

    def _argkey(self, a: Any) -> str:
        t = type(a)
        if t is int:
            return str(a)
        if t is Handle:
            tok = a.token
            if tok.startswith("gpu"):
                idx, _, rest = tok[3:].partition("/")
                tok = f"gpu{int(idx) % self._recorded}" + (f"/{rest}" if rest else "")
            return tok
        if isinstance(a, (list, tuple)):
            return "[" + ";".join(self._argkey(x) for x in a) + "]"
        return repr(a)

    def _replay(self, name: str, args: tuple) -> Any:
        if not self.initialized and name not in ("nvmlErrorString",):
            raise self._err(_pynvml.NVML_ERROR_UNINITIALIZED)
        try:
            ck: Any = (name, *args)
            hit = self._keycache.get(ck)
        except TypeError:  # a list argument: not hashable, no cache
            ck, hit = None, None
        if hit is None:
            gpu = self._gpu_of(args)
            key = f"{name}({','.join(self._argkey(a) for a in args)})"
            hit = (gpu, key, tuple(args[1:]) if gpu is not None else tuple(args))
            if ck is not None:
                self._keycache[ck] = hit
        gpu, key, rest = hit
        if gpu is not None and (gpu in self.lost or gpu >= self.gpus):
            raise self._err(_pynvml.NVML_ERROR_GPU_IS_LOST if gpu in self.lost
                            else _pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.failures:
            code = self.failures.get((name, gpu), self.failures.get((name, None)))
            if code is not None:
                raise self._err(code)
        if self.overrides:
            for g in (gpu, None):
                if (name, g, rest) in self.overrides:
                    return _de(self.overrides[(name, g, rest)])
        outcomes = self._calls.get(key)
        if not outcomes:
            raise self._err(_pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        i = self._pos.get(key, 0)
        if i < len(outcomes) - 1:
            with self._lock:
                self._pos[key] = i + 1
        o = outcomes[i]
        if self._latency:
            self._spin(o.get("us", 0.0))
        if "error" in o:
            raise self._err(o["error"])
        val = o.get("_de", _MISSING)
        if val is _MISSING:  # deserialise once; the agent never mutates what NVML returns
            val = o["_de"] = _de(o["value"])
        if gpu is not None and gpu >= self._recorded and name in _IDENTITY_CALLS:
            val = self._relabel(name, val, gpu)
        return val

    @staticmethod
    def _spin(us: float) -> None:
        # a real NVML call runs in C with the GIL released: long ones sleep (GIL released too); short ones spin,
        # since a sleep cannot be shorter than ~60 us
        if us > 200:
            time.sleep(us / 1e6)
            return
        end = time.perf_counter() + us / 1e6
        while time.perf_counter() < end:
            pass

    @staticmethod
    def _relabel(name: str, val: Any, gpu: int) -> Any:
        if name == "nvmlDeviceGetUUID":
            return f"{val[:-4]}{gpu:04x}"
        if name in ("nvmlDeviceGetIndex", "nvmlDeviceGetMinorNumber"):
            return gpu
        if name == "nvmlDeviceGetSerial":
            return f"{val}-{gpu}"
        if name.startswith("nvmlDeviceGetPciInfo") and isinstance(val, SimpleNamespace):
            bus = 0x10 + gpu * 0x10
            val = SimpleNamespace(**vars(val))
            for attr in ("busId", "busIdLegacy"):
                b = getattr(val, attr, None)
                if isinstance(b, (bytes, str)) and len(b) >= 12:
                    s = b.decode() if isinstance(b, bytes) else b
                    parts = s.split(":")
                    if len(parts) == 3:
                        s = f"{parts[0]}:{bus:02X}:{parts[2]}"
                    setattr(val, attr, s.encode() if isinstance(b, bytes) else s)
            val.bus = bus
            return val
        return val

    # functions with behaviour of their own -----------------------------------------------------------------------
    def _fn_nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self._err(self.init_error)
        self.initialized = True

    def _fn_nvmlInitWithFlags(self, flags: int) -> None:
        self._fn_nvmlInit()

    def _fn_nvmlShutdown(self) -> None:
        self.initialized = False
        with self._event_cond:
            self._event_cond.notify_all()

    def _fn_nvmlDeviceGetCount(self) -> int:
        self._replay("nvmlDeviceGetCount", ())
        return self.gpus

    def _fn_nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        if not self.initialized:
            raise self._err(_pynvml.NVML_ERROR_UNINITIALIZED)
        if index >= self.gpus:
            raise self._err(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index in self.lost:
            raise self._err(_pynvml.NVML_ERROR_GPU_IS_LOST)
        return Handle(f"gpu{index}")

    def _fn_nvmlDeviceGetMigDeviceHandleByIndex(self, device: Handle, index: int) -> Handle:
        self._replay("nvmlDeviceGetMigDeviceHandleByIndex", (device, index))
        return Handle(f"{device.token}/mig{index}")

    def _procs(self, device: Handle) -> list:
        gpu = self._gpu_of((device,))
        if gpu in self.processes:
            if gpu in self.lost:
                raise self._err(_pynvml.NVML_ERROR_GPU_IS_LOST)
            return [SimpleNamespace(pid=p, usedGpuMemory=m, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                    for p, m in self.processes[gpu]]
        return None  # type: ignore[return-value]

    def _fn_nvmlDeviceGetComputeRunningProcesses(self, device: Handle) -> list:
        p = self._procs(device)
        return p if p is not None else self._replay("nvmlDeviceGetComputeRunningProcesses", (device,))

    def _fn_nvmlDeviceGetGraphicsRunningProcesses(self, device: Handle) -> list:
        p = self._procs(device)
        return [] if p is not None else self._replay("nvmlDeviceGetGraphicsRunningProcesses", (device,))

    def _fn_nvmlEventSetCreate(self) -> Handle:
        if not self.initialized:
            raise self._err(_pynvml.NVML_ERROR_UNINITIALIZED)
        return Handle("eventset")

    def _fn_nvmlDeviceRegisterEvents(self, device: Handle, types: int, eventset: Handle) -> None:
        gpu = self._gpu_of((device,))
        if gpu in self.lost:
            raise self._err(_pynvml.NVML_ERROR_GPU_IS_LOST)

    def _fn_nvmlEventSetFree(self, eventset: Handle) -> None:
        return None

    def _fn_nvmlEventSetWait_v2(self, eventset: Handle, timeout_ms: int) -> SimpleNamespace:
        with self._event_cond:
            if not self._events and self.initialized:
                self._event_cond.wait(timeout_ms / 1000.0)
            if not self.initialized:
                raise self._err(_pynvml.NVML_ERROR_UNINITIALIZED)
            if not self._events:
                raise self._err(_pynvml.NVML_ERROR_TIMEOUT)
            gpu, code = self._events.pop(0)
        return SimpleNamespace(device=Handle(f"gpu{gpu}"), eventType=_pynvml.nvmlEventTypeXidCriticalError,
                               eventData=code, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)

    _fn_nvmlEventSetWait = _fn_nvmlEventSetWait_v2

    def _fn_nvmlDeviceGetProcessUtilization(self, device: Handle, since_us: int) -> list:
        return self._replay("nvmlDeviceGetProcessUtilization", (device,))

    # GPM: sample buffers are real ctypes pointers (nvmlGpmMetricsGet's structure holds them), to buffers of ours
    def _fn_nvmlGpmSampleAlloc(self) -> Any:
        if not self.initialized:
            raise self._err(_pynvml.NVML_ERROR_UNINITIALIZED)
        buf = (ctypes.c_char * 8)()
        sample = ctypes.cast(buf, _pynvml.c_nvmlGpmSample_t)
        self._samples[handle_id(sample)] = buf
        return sample

    def _fn_nvmlGpmSampleFree(self, sample: Any) -> None:
        self._samples.pop(handle_id(sample), None)

    def _fn_nvmlGpmSampleGet(self, device: Handle, sample: Any) -> Any:
        self._replay("nvmlGpmSampleGet", (device, Handle(_SAMPLE)))
        self._sampled[handle_id(sample)] = (device,)
        return sample

    def _fn_nvmlGpmMigSampleGet(self, device: Handle, gpu_instance: int, sample: Any) -> Any:
        self._replay("nvmlGpmMigSampleGet", (device, gpu_instance, Handle(_SAMPLE)))
        self._sampled[handle_id(sample)] = (device, gpu_instance)
        return sample

    def _fn_nvmlGpmMetricsGet(self, mg: Any) -> Any:
        where = self._sampled.get(handle_id(mg.sample2))
        if where is None or handle_id(mg.sample1) not in self._sampled:
            raise self._err(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        got = {int(m.metricId): m for m in self._replay("nvmlGpmMetricsGet", where).metrics}
        for k in range(int(mg.numMetrics)):
            m = mg.metrics[k]
            r = got.get(int(m.metricId))
            m.nvmlReturn = _pynvml.NVML_ERROR_NOT_SUPPORTED if r is None else int(r.nvmlReturn)
            m.value = 0.0 if r is None else float(r.value)
        return mg
