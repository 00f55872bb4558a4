"""A REAL Prometheus (Debian's package) scrapes four agents fed by the H100 replay with injected faults; every
alert expression and every dashboard query is evaluated through Prometheus' HTTP API and must return data;
promtool checks the exposition and the rules."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import requests
import yaml

from test_agent_support import (ROOT, RunningAgent, containers, free_port, process_utilization,  # noqa: F401
                                replay)

pytestmark = pytest.mark.prometheus

RULES = os.path.join(ROOT, "agent", "alerts", "gpufleet-rules.yaml")
DASHBOARD = os.path.join(ROOT, "agent", "dashboards", "gpufleet.json")


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        pytest.fail(f"{binary} is required (Debian package prometheus)")
    return path


class Prom:
    def __init__(self, targets: list[str], tmp: str, discovery: dict | None = None):
        self.port = free_port()
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
               "rule_files": [RULES],
               "scrape_configs": [{"job_name": "gpu-agent", **(discovery or {"static_configs": [{"targets": targets}]})}]}
        path = os.path.join(tmp, "prometheus.yml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.log = open(os.path.join(tmp, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [_need("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not start: " + open(self.log.name).read()[-2000:])

    def query(self, expr: str) -> list:
        r = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def wait(self, expr: str, timeout: float = 30) -> list:
        end = time.time() + timeout
        while time.time() < end:
            res = self.query(expr)
            if res:
                return res
            time.sleep(0.5)
        raise AssertionError(f"no data for {expr!r} within {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _dashboard_exprs() -> list[tuple[str, str]]:
    with open(DASHBOARD) as f:
        d = json.load(f)
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append(("annotation " + a["name"], a["expr"]))
    for v in d["templating"]["list"]:
        q = v.get("definition", "")
        if q.startswith("label_values("):  # label_values(METRIC, label) -> the metric selector must match
            out.append(("variable " + v["name"], q[len("label_values("):].rsplit(",", 1)[0]))
    return out


def _subst(expr: str) -> str:
    return expr.replace("$instance", ".*").replace("$gpu", ".*").replace("$group", ".*").replace("$__rate_interval", "1m")


def test_rules_file_is_clean():
    out = subprocess.run([_need("promtool"), "check", "rules", RULES], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_alert_timing_with_promtool_test_rules():
    """`for` durations, the 6-hour GPU-count memory, XID code filter, drift majority and annotations."""
    out = subprocess.run([_need("promtool"), "test", "rules", RULES.replace(".yaml", ".test.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_real_prometheus_evaluates_every_alert_and_dashboard_query(containers, tmp_path):  # noqa: F811
    tmp = str(tmp_path)
    train = containers.run("train", "-e", "NVIDIA_VISIBLE_DEVICES=0")
    m_file, u_file = tmp_path / "maintenance", tmp_path / "upgrade-state.json"
    m_file.write_text(json.dumps({"reason": "driver upgrade", "since": time.time(), "by": "provision"}))
    u_file.write_text(json.dumps({"state": "validating", "target": "580.95.05", "since": time.time()}))
    none = {"maintenance_file": "/nonexistent/m", "upgrade_state_file": "/nonexistent/u"}

    # A: 2 GPUs, one lost; XID, ECC, row-remap failure, throttling, heat on GPU 0; a real container on GPU 0;
    #    in maintenance and mid-upgrade
    ra = replay(gpus=2)
    ra.lose_gpu(1)
    ra.set("nvmlDeviceGetTotalEccErrors", 2, gpu=0, args=(1, 0))
    ra.set("nvmlDeviceGetRemappedRows", [0, 3, 1, 1], gpu=0)
    ra.set("nvmlDeviceGetCurrentClocksEventReasons", 0x4 | 0x40 | 0x80, gpu=0)
    ra.set("nvmlDeviceGetTemperature", 90, gpu=0, args=(0,))
    ra.processes = {0: [(train["State"]["Pid"], 6 << 30)]}
    # GPM on GPU 0 (the H100 recording has none): held by the container, SMs at 2 %, tensor pipes idle
    ra.gpm(0, {2: 2.0, 3: 1.0, 5: 0.0, 7: 0.0, 9: 0.0, 6: 0.0, 8: 0.0, 10: 0.5, 20: 1.0, 21: 1.0})
    ra.set("nvmlDeviceGetProcessUtilization", process_utilization((train["State"]["Pid"], 2, 1)), gpu=0)
    # B: 2 GPUs then 1 (a GPU gone from the bus), on an older driver than the rest of the fleet
    rb = replay(gpus=2)
    rb.set("nvmlSystemGetDriverVersion", "570.133.20")
    # C: no driver (NVML fails to start); stopped later (agent down)
    rc = replay()
    rc.init_error = 9
    # D: a healthy host on the fleet's driver
    rd = replay()
    agents = {
        "a": RunningAgent(ra, slow_interval_seconds=0.5, maintenance_file=str(m_file), upgrade_state_file=str(u_file)),
        "b": RunningAgent(rb, slow_interval_seconds=0.5, docker=False, **none),
        "c": RunningAgent(rc, docker=False, **none),
        "d": RunningAgent(rd, docker=False, **none),
    }
    inst = {k: f"127.0.0.1:{a.port}" for k, a in agents.items()}
    prom = Prom(list(inst.values()), tmp)
    try:
        prom.wait('count(up{job="gpu-agent"} == 1) == 4')
        prom.wait('count(count_over_time(gpufleet_gpu_up[1m]) >= 3) >= 5')  # a few scrapes of every GPU
        ra.xid(0, 79)
        prom.wait('gpufleet_gpu_xid_errors_total{xid="79"}')
        ra.xid(0, 79)  # a second one, so increase()/changes() see the counter move
        prom.wait('gpufleet_gpu_xid_errors_total{xid="79"} == 2')
        rb.gpus = 1
        prom.wait(f'instance:gpufleet_gpus:count{{instance="{inst["b"]}"}} == 1')
        prom.wait('count_over_time(gpufleet_container_gpu_memory_used_bytes[1m]) >= 2')

        with open(RULES) as f:
            rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
        rule = {r.get("alert"): r["expr"] for r in rules}
        expect_instance = {"GpuDown": "a", "GpuMissing": "b", "GpuXidCritical": "a", "GpuEccUncorrectable": "a",
                           "GpuRowRemapFailure": "a", "GpuRowRemapPending": "a", "GpuThermalThrottling": "a",
                           "GpuPowerThrottling": "a", "GpuTemperatureHigh": "a", "GpuDriverDrift": "b",
                           "GpuNvmlDown": "c", "GpuHeldIdle": "a"}
        checked = set()
        for r in rules:
            name = r.get("alert") or r.get("record")
            if name in ("GpuAgentDown", "GpuDriverUpgradeFailed", "GpuAgentCollectionErrors"):
                continue  # set up below
            res = prom.wait(r["expr"], timeout=15)
            if name in expect_instance:
                got = {s["metric"].get("instance") for s in res}
                assert got == {inst[expect_instance[name]]}, f"{name}: {got}"
            checked.add(name)

        for title, expr in _dashboard_exprs():
            res = prom.wait(_subst(expr), timeout=15)
            assert res, title
        # the fleet panels count what the test set up
        assert prom.query("count(gpufleet_gpu_up == 0)")[0]["value"][1] == "1"
        assert {s["metric"]["driver"] for s in prom.query("count by (driver) (gpufleet_driver_info)")} == {
            "570.133.20", ra.meta["driver"]}
        mem = prom.query("gpufleet_container_gpu_memory_used_bytes")
        assert [(s["metric"]["container"], s["value"][1]) for s in mem] == [(train["Name"].lstrip("/"),
                                                                            str(6 << 30))]
        held = prom.query(rule["GpuHeldIdle"])
        assert [(s["metric"]["container"], s["metric"]["gpu"], s["value"][1]) for s in held] == [
            (train["Name"].lstrip("/"), "0", "0.02")]
        sm = prom.query("gpufleet_container_gpu_sm_utilization_ratio")
        assert [(s["metric"]["container"], s["value"][1]) for s in sm] == [(train["Name"].lstrip("/"), "0.02")]
        # GPM absent on the hosts whose recording has none: no series, the reason instead
        assert {s["metric"]["instance"] for s in prom.query("gpufleet_gpu_sm_active_ratio")} == {inst["a"]}
        assert {s["metric"]["reason"] for s in prom.query('gpufleet_gpu_gpm_supported{instance="%s"}' % inst["d"])
                } == {"driver"}

        # the upgrade fails on A; collection errors on A (the lost GPU is an NVML error on every scrape)
        u_file.write_text(json.dumps({"state": "failed", "target": "580.95.05", "since": time.time()}))
        assert prom.wait(rule["GpuDriverUpgradeFailed"])[0]["metric"]["instance"] == inst["a"]
        assert inst["a"] in {s["metric"]["instance"] for s in prom.wait(rule["GpuAgentCollectionErrors"])}
        # an agent goes down
        agents["c"].stop()
        del agents["c"]
        res = prom.wait(rule["GpuAgentDown"])
        assert {s["metric"]["instance"] for s in res} == {inst["c"]}
        assert prom.query(_subst([e for t, e in _dashboard_exprs() if t == "Agents down"][0]))[0]["value"][1] == "1"
        checked |= {"GpuDriverUpgradeFailed", "GpuAgentCollectionErrors", "GpuAgentDown"}
        assert checked == {r.get("alert") or r.get("record") for r in rules}
    finally:
        prom.stop()
        for a in agents.values():
            a.stop()


def test_promtool_check_metrics_is_clean(containers, tmp_path):  # noqa: F811
    c = containers.run("m", "-e", "NVIDIA_VISIBLE_DEVICES=0")
    r = replay(gpus=2)
    r.processes = {0: [(c["State"]["Pid"], 1 << 30)]}
    r.xid(1, 48)
    m, u = tmp_path / "m", tmp_path / "u"
    m.write_text("{}")
    u.write_text(json.dumps({"state": "draining", "target": "580.95.05", "since": 1}))
    a = RunningAgent(r, slow_interval_seconds=0.2, maintenance_file=str(m), upgrade_state_file=str(u))
    try:
        requests.get(a.url + "/metrics", timeout=5)
        time.sleep(0.6)
        requests.get(a.url + "/metrics", timeout=5)
        text = requests.get(a.url + "/metrics", timeout=5).text
        for name in ("gpufleet_container_gpu_memory_used_bytes", "gpufleet_gpu_xid_errors_total",
                     "gpufleet_driver_upgrade_state", "gpufleet_gpu_energy_joules_total"):
            assert name in text
        out = subprocess.run([_need("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr
    finally:
        a.stop()


@pytest.mark.parametrize("mig", [False, True])
def test_promtool_check_metrics_is_clean_with_gpm(mig):
    """The profiling families (GPM per GPU, or per GPU instance under MIG) pass promtool's exposition lint."""
    from agent.replay import ReplayNvml
    from test_agent_nvml import metrics
    from test_agent_profiling import GiB, H200_GPM, _scraped
    r = ReplayNvml.from_file(H200_GPM)
    if mig:
        r.mig(0, [(1, 0, 70 * GiB, GiB), (2, 0, 35 * GiB, GiB)])
        r.gpm(0, {2: 50.0, 7: 1.0, 20: 3.0}, gpu_instance=1)
    m, _ = _scraped(r, text=True)
    assert ("gpufleet_gpu_mig_sm_active_ratio" if mig else "gpufleet_gpu_sm_active_ratio") in m
    assert metrics(m)  # parses
    out = subprocess.run([_need("promtool"), "check", "metrics"], input=m, capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr
