"""agent.nvml through a replay of the H100 recording: the same code path as on the GPU, plus injected faults."""
from __future__ import annotations

import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from agent.collectors import Agent, registry_for, render_metrics
from agent.nvml import NvmlSource
from agent.replay import Recorder, ReplayNvml
from test_agent_support import FIXTURE, RunningAgent, replay

NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


def metrics(registry_or_text) -> dict:
    text = registry_or_text if isinstance(registry_or_text, str) else render_metrics(registry_or_text).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def values(m: dict, name: str) -> dict:
    return {labels: v for (n, labels), v in m.items() if n == name}


def wait_until(fn, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    return fn()


def test_fixture_is_a_real_h100_recording():
    with open(FIXTURE) as f:
        meta = json.load(f)["meta"]
    assert meta["gpu"].startswith("NVIDIA H100")
    assert meta["driver"].count(".") == 2 and meta["date"]


H200 = FIXTURE.replace("h100-2026-11-23", "h200-2026-12-01")


def test_h200_recording_replays_through_the_same_reading_code():
    """Recorded on the device's H200 (2026-12-01, driver 580.159.04, bench/agent/device_run5.sh: calls timed one at a
    time, under a bf16 matmul load)."""
    meta = json.load(open(H200))["meta"]
    assert meta["gpu"] == "NVIDIA H200" and meta["date"] == "2026-12-01"
    src = NvmlSource(ReplayNvml.from_file(H200), xid_events=False)
    try:
        snap = src.collect()
        g = snap.gpus[0]
        assert snap.up and snap.driver_version == meta["driver"] and g.info.compute_capability == "9.0"
        assert g.memory_total_bytes > 140e9 and 0 < g.power_watts <= g.power_limit_watts
        assert g.fan_speed_ratio is None   # the H200 has no fan: NOT_SUPPORTED, the field is absent
    finally:
        src.close()


def test_render_gives_what_prometheus_client_gives():
    """render_metrics() (the fast writer of /metrics) against prometheus_client's own generate_latest, sample by sample,
    with 8 GPUs: series of one GPU share their labels dict, and render_metrics() formats each dict once."""
    from prometheus_client import generate_latest
    agent = Agent(NvmlSource(replay(gpus=8), xid_events=False), None, maintenance_file="/nonexistent",
                  upgrade_state_file="/nonexistent")
    try:
        reg = registry_for(agent)
        # the first background reading (energy, PCIe, processes) is in; the next one is 10 s away
        assert wait_until(lambda: len(values(metrics(reg), "gpufleet_gpu_energy_joules_total")) == 8)
        ours, theirs = metrics(reg), metrics(generate_latest(reg).decode())
        for key in ("gpufleet_agent_collection_duration_seconds", "gpufleet_agent_reading_age_seconds",
                    "gpufleet_gpu_slow_reading_age_seconds"):   # times: differ between two collections
            ours = {k: v for k, v in ours.items() if k[0] != key}
            theirs = {k: v for k, v in theirs.items() if k[0] != key}
        assert len(values(ours, "gpufleet_gpu_up")) == 8 and len(ours) > 300
        assert ours == theirs
    finally:
        agent.close()


def test_replay_reads_the_recorded_h100():
    src = NvmlSource(replay(), xid_events=False)
    try:
        snap = src.collect()
        assert snap.up and snap.driver_version == json.load(open(FIXTURE))["meta"]["driver"]
        g = snap.gpus[0]
        assert g.up and g.info.name.startswith("NVIDIA H100") and g.info.compute_capability == "9.0"
        assert g.info.uuid.startswith("GPU-") and g.info.pci_bus_id.count(":") == 2
        assert g.memory_total_bytes > 80e9 and g.memory_used_bytes + g.memory_free_bytes <= g.memory_total_bytes
        assert 0 < g.power_watts <= g.power_limit_watts
        assert g.sm_clock_hertz > 1e8 and g.temperature_celsius > 0
        # H100 SXM has no fan and uses row remapping instead of page retirement: NOT_SUPPORTED -> absent
        assert g.fan_speed_ratio is None and g.retired_pages == {}
        assert g.remapped_rows.keys() == {"correctable", "uncorrectable"}
        src.refresh_slow()
        g = src.collect().gpus[0]
        assert g.energy_joules > 0 and g.pcie_link_generation >= 4 and g.slow_age_seconds < 5
    finally:
        src.close()


def test_not_supported_is_not_asked_again():
    r = replay()
    src = NvmlSource(r, xid_events=False)
    calls = []
    real = r._replay

    def counting(name, args):
        calls.append(name)
        return real(name, args)
    r._replay = counting
    src.collect()
    src.collect()
    assert calls.count("nvmlDeviceGetFanSpeed") == 1  # NOT_SUPPORTED on the H100: remembered
    assert calls.count("nvmlDeviceGetPowerUsage") == 2
    src.close()


def test_gpu_lost_mid_run_others_still_exported():
    r = replay(gpus=3)
    agent = Agent(NvmlSource(r, xid_events=False), maintenance_file="/nonexistent/m",
                  upgrade_state_file="/nonexistent/u")
    reg = registry_for(agent)
    try:
        m = metrics(reg)
        assert values(m, "gpufleet_gpu_up") == {(("gpu", "0"),): 1, (("gpu", "1"),): 1, (("gpu", "2"),): 1}
        r.lose_gpu(1)
        m = metrics(reg)
        assert values(m, "gpufleet_gpu_up") == {(("gpu", "0"),): 1, (("gpu", "1"),): 0, (("gpu", "2"),): 1}
        temps = values(m, "gpufleet_gpu_temperature_celsius")
        assert (("gpu", "1"),) not in temps and (("gpu", "0"),) in temps and (("gpu", "2"),) in temps
        assert m[("gpufleet_nvml_up", ())] == 1
        assert m[("gpufleet_agent_collection_errors_total", (("source", "nvml"),))] >= 1
    finally:
        agent.close()


def test_field_error_leaves_only_that_field_out():
    r = replay()
    r.fail("nvmlDeviceGetPowerUsage", NVML_ERROR_UNKNOWN)
    src = NvmlSource(r, xid_events=False)
    snap = src.collect()
    g = snap.gpus[0]
    assert g.up and g.power_watts is None and g.temperature_celsius is not None and snap.errors == 1
    src.close()


def test_no_driver_nvml_up_0_and_server_keeps_serving_then_driver_appears():
    r = replay()
    r.init_error = NVML_ERROR_DRIVER_NOT_LOADED
    a = RunningAgent(r, docker=False, reinit_interval_seconds=0.2, maintenance_file="/nonexistent/m",
                     upgrade_state_file="/nonexistent/u")
    try:
        resp = requests.get(a.url + "/metrics", timeout=5)
        assert resp.status_code == 200
        m = metrics(resp.text)
        assert m[("gpufleet_nvml_up", ())] == 0 and not values(m, "gpufleet_gpu_up")
        assert requests.get(a.url + "/healthz", timeout=5).status_code == 200
        # a host provisioned while the agent ran: the driver appears, NVML is initialised again
        r.init_error = None
        time.sleep(0.3)
        m = metrics(requests.get(a.url + "/metrics", timeout=5).text)
        assert m[("gpufleet_nvml_up", ())] == 1
        assert values(m, "gpufleet_gpu_up") == {(("gpu", "0"),): 1}
        assert r.init_calls >= 2
    finally:
        a.stop()


def test_xid_events_counted_per_gpu_and_code_with_last_seen():
    r = replay(gpus=2)
    src = NvmlSource(r)
    agent = Agent(src, maintenance_file="/nonexistent/m", upgrade_state_file="/nonexistent/u")
    reg = registry_for(agent)
    try:
        metrics(reg)  # initialises NVML and starts the event thread
        t0 = time.time()
        r.xid(1, 79)
        r.xid(1, 79)
        r.xid(0, 48)
        m = wait_until(lambda: (lambda m: m if m.get(("gpufleet_gpu_xid_errors_total",
                                                      (("gpu", "1"), ("xid", "79")))) == 2 else None)(metrics(reg)))
        assert m, "XID events were not counted"
        assert m[("gpufleet_gpu_xid_errors_total", (("gpu", "0"), ("xid", "48")))] == 1
        seen = m[("gpufleet_gpu_xid_last_seen_timestamp_seconds", (("gpu", "1"), ("xid", "79")))]
        assert t0 - 1 <= seen <= time.time() + 1
    finally:
        agent.close()


def test_gpu_count_change_is_noticed_and_xid_events_follow():
    r = replay(gpus=2)
    src = NvmlSource(r, slow_interval=3600)
    try:
        assert len(src.collect().gpus) == 2
        r.gpus = 3  # a GPU added (or back after a reset): NVML enumerates it
        src.refresh_slow()
        assert [g.info.index for g in src.collect().gpus] == [0, 1, 2]
        time.sleep(1.2)  # the event thread notices new handles between its 0.5 s waits and registers them
        r.xid(2, 79)
        assert wait_until(lambda: src.collect().xid_counts.get((2, 79)) == 1)
        r.gpus = 1  # a GPU gone after a reset: NVML no longer enumerates it
        src.refresh_slow()
        assert [g.info.index for g in src.collect().gpus] == [0]
    finally:
        src.close()


def test_recorder_round_trip_through_replay():
    rec = Recorder(replay(), max_per_key=3)
    src = NvmlSource(rec, xid_events=False)
    src.collect()
    src.refresh_slow()
    first = src.collect()
    src.close()
    data = json.loads(json.dumps(rec.dump({"date": "x"})))
    assert "nvmlDeviceGetMemoryInfo(gpu0)" in data["calls"] or "nvmlDeviceGetMemoryInfo(gpu0,33554472)" in data[
        "calls"]
    assert any("error" in o for o in data["calls"]["nvmlDeviceGetFanSpeed(gpu0)"])
    src2 = NvmlSource(ReplayNvml(data), xid_events=False)
    again = src2.collect()
    src2.close()
    assert again.gpus[0].info == first.gpus[0].info
    assert again.gpus[0].memory_total_bytes == first.gpus[0].memory_total_bytes


def test_eight_simulated_gpus_have_distinct_identities():
    src = NvmlSource(replay(gpus=8), xid_events=False)
    snap = src.collect()
    src.close()
    assert len({g.info.uuid for g in snap.gpus}) == 8
    assert len({g.info.pci_bus_id for g in snap.gpus}) == 8


def test_scrape_never_waits_past_its_bound():
    """A hung NVML call: the scrape answers from the last complete reading while the call still hangs."""
    import threading
    r = replay()
    gate, entered, left = threading.Event(), threading.Event(), threading.Event()
    agent = Agent(NvmlSource(r, xid_events=False), maintenance_file="/nonexistent/m",
                  upgrade_state_file="/nonexistent/u", collect_timeout=0.3)
    reg = registry_for(agent)
    try:
        assert metrics(reg)[("gpufleet_gpu_up", (("gpu", "0"),))] == 1
        real = r._replay

        def hang(name, args):
            if name == "nvmlDeviceGetPowerUsage":
                entered.set()
                gate.wait(120)
                left.set()
            return real(name, args)
        r._replay = hang
        m = metrics(reg)
        assert entered.is_set() and not left.is_set()  # answered while the NVML call was still stuck
        assert m[("gpufleet_gpu_up", (("gpu", "0"),))] == 1  # served from the last reading
        assert m[("gpufleet_agent_collection_errors_total", (("source", "timeout"),))] >= 1
        m2 = metrics(reg)  # a second scrape does not start a second stuck read: it shares the one in flight
        assert not left.is_set() and m2[("gpufleet_agent_collection_errors_total", (("source", "timeout"),))] >= 2
    finally:
        gate.set()
        agent.close()


@pytest.mark.parametrize("bad", ["", "{not json", '{"state": "melting"}'])
def test_upgrade_state_file_bad_content_counts_an_error(tmp_path, bad):
    from agent.collectors import read_host_state
    p = tmp_path / "u.json"
    p.write_text(bad)
    hs = read_host_state(str(tmp_path / "none"), str(p))
    assert hs.upgrade_state == "" and hs.errors == 1


def test_host_maintenance_and_upgrade_state(tmp_path):
    m, u = tmp_path / "maintenance", tmp_path / "upgrade-state.json"
    agent = Agent(None, maintenance_file=str(m), upgrade_state_file=str(u))
    reg = registry_for(agent)
    got = metrics(reg)
    assert got[("gpufleet_host_maintenance", ())] == 0 and not values(got, "gpufleet_driver_upgrade_state")
    m.write_text(json.dumps({"reason": "driver upgrade", "since": 1700000000, "by": "provision"}))
    u.write_text(json.dumps({"state": "rebooting", "target": "580.95.05", "since": 1700000100}))
    got = metrics(reg)
    assert got[("gpufleet_host_maintenance", ())] == 1
    assert got[("gpufleet_host_maintenance_info", (("by", "provision"), ("reason", "driver upgrade")))] == 1
    st = values(got, "gpufleet_driver_upgrade_state")
    assert st[(("state", "rebooting"), ("target", "580.95.05"))] == 1
    assert sum(st.values()) == 1 and len(st) == 7
    assert got[("gpufleet_driver_upgrade_state_since_timestamp_seconds", ())] == 1700000100


def test_recorder_times_each_call_alone():
    """NVML makes a call wait while another thread's call on the GPU runs; the recording must not count that wait
    as the call's cost (a replay with latency spins the recorded durations)."""
    import threading
    import time as _time

    class Nvml:  # a stand-in module with NVML's behaviour: one call at a time inside
        NVMLError = Exception
        inner = threading.Lock()

        def nvmlSlow(self):
            with self.inner:
                _time.sleep(0.2)

        def nvmlFast(self):
            with self.inner:
                return 1

    rec = Recorder(Nvml())
    t = threading.Thread(target=rec.nvmlSlow)
    t.start()
    _time.sleep(0.05)  # the slow call is under way
    assert rec.nvmlFast() == 1
    t.join()
    assert rec.calls["nvmlSlow()"][0]["us"] >= 150_000
    assert rec.calls["nvmlFast()"][0]["us"] < 20_000
