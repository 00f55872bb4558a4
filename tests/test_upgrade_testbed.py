"""Rolling driver upgrade against real sshd hosts (the testbed): real apt/dpkg with the signed stand-in NVIDIA repo,
real reboots (new boot_id), real Docker inside a host. One module-scoped fleet of six light hosts; every test
starts by resetting the hosts it uses to driver 570.172.08."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from provision.testbed import HostSpec, mini_tag

pytestmark = pytest.mark.testbed

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ["g1", "g2", "g3", "g4", "g5", "g6"]
SPECS = [HostSpec("g1", gpus=("H100-SXM",) * 8),                # HGX board: NVSwitch + fabric manager
         HostSpec("g2", gpus=("H100-PCIe",) * 2, docker=True)] + \
        [HostSpec(h, gpus=("H100-PCIe",)) for h in HOSTS[2:]]
FROM, TO = "570.172.08", "580.95.05"
JOB = "upgjob"          # a GPU job container (label gpufleet.gpus) on g2
SIDE = "upgside"        # a container without GPUs on g2: never touched
WAIT = "sh -c 'trap \"exit 0\" TERM; read x'"   # the mini image has only dash: block on stdin (-i), stop on TERM

PREP = r"""
set -e
if [ -n "$WANT_DOCKER" ] && ! command -v docker >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-download install docker.io >/dev/null 2>&1 ||
  DEBIAN_FRONTEND=noninteractive apt-get -q -y install docker.io >/dev/null
  systemctl start docker
fi
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/apt.conf.d/99upgtest*
if command -v docker >/dev/null; then docker rm -f upgjob upgside >/dev/null 2>&1 || true; fi
if [ ! -f /usr/share/keyrings/upg-cuda.gpg ]; then
  curl -fsSL "$KEY" | gpg --dearmor > /usr/share/keyrings/upg-cuda.gpg
  echo "deb [signed-by=/usr/share/keyrings/upg-cuda.gpg] $URL /" > /etc/apt/sources.list.d/cuda.list
  apt-get -q update >/dev/null
fi
rm -rf /etc/gpufleet /var/lib/gpufleet
P="nvidia-open-570=$FROM-1"; [ -n "$FM" ] && P="$P nvidia-fabricmanager-570=$FROM-1"
H=$(apt-mark showhold); [ -z "$H" ] || apt-mark unhold $H >/dev/null
OTHER=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' 'nvidia-*' 2>/dev/null | awk '$2 ~ /^[ih]i/ {print $1}' |
        grep -v -x -e nvidia-open-570 -e nvidia-fabricmanager-570 | sed 's/$/-/' | tr '\n' ' ')
DEBIAN_FRONTEND=noninteractive apt-get -q -y --allow-downgrades --allow-change-held-packages install $P $OTHER \
  >/tmp/prep-apt.log 2>&1 || { cat /tmp/prep-apt.log >&2; exit 1; }
apt-mark hold nvidia-open-570 $FM >/dev/null
systemctl restart nvidia-standin-module
[ -n "$FM" ] && systemctl enable nvidia-fabricmanager 2>/dev/null && systemctl restart nvidia-fabricmanager
nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1
"""


def sh(tb, host, cmd, ok=True):
    rc, out, err = tb.exec(host, cmd)
    if ok:
        assert rc == 0, f"{host}: {cmd}: rc {rc}: {err.strip()[-300:]}"
    return out.strip()


def reset(tb, hosts=HOSTS):
    gv = yaml.safe_load(Path(tb.inventory_path).read_text())["all"]["vars"]

    def one(h):
        env = (f"URL={gv['nvidia_cuda_repo_url']} KEY={gv['nvidia_cuda_repo_key_url']} FROM={FROM} "
               f"FM={'nvidia-fabricmanager-570' if h == 'g1' else ''} WANT_DOCKER={'1' if h == 'g2' else ''}")
        rc, out, err = tb.exec(h, f"cat > /tmp/prep.sh && env {env} sh /tmp/prep.sh", input=PREP, timeout=600)
        assert rc == 0 and out.strip() == FROM, f"{h}: prep failed: {out} {err[-500:]}"
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(one, hosts))


@pytest.fixture(scope="module")
def fleet(module_testbed_factory):
    tb = module_testbed_factory("upg", SPECS)
    reset(tb)
    tb.load_image("g2")
    return tb


def start_job(tb):
    """A GPU job (label gpufleet.gpus) and a side container without GPUs on g2."""
    sh(tb, "g2", f"docker rm -f {JOB} {SIDE} >/dev/null 2>&1; "
                 f"docker run -d -i --name {JOB} --label gpufleet.gpus=0,1 {mini_tag()} {WAIT} && "
                 f"docker run -d -i --name {SIDE} {mini_tag()} {WAIT}")
    assert started_at(tb, JOB).startswith("true") and started_at(tb, SIDE).startswith("true")
    return started_at(tb, JOB), started_at(tb, SIDE)


def started_at(tb, name):
    return sh(tb, "g2", f"docker inspect -f '{{{{.State.Running}}}} {{{{.State.StartedAt}}}}' {name}")


def upgrade(tb, tmp_path, *args, state="state.json", timeout=400):
    cmd = [sys.executable, "-m", "provision.cli", "upgrade-driver", str(tb.inventory_path),
           "--state-file", str(tmp_path / state), "--reboot-timeout", "60", "--validate-timeout", "30", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def events(tb, host):
    out = sh(tb, host, "cat /var/lib/gpufleet/upgrade-events.log 2>/dev/null || true")
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def running(tb, host):
    return sh(tb, host, "nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1", ok=False)


def marker(tb, host):
    return sh(tb, host, "cat /etc/gpufleet/maintenance 2>/dev/null || true")


def host_state(tb, host):
    out = sh(tb, host, "cat /var/lib/gpufleet/upgrade-state.json 2>/dev/null || true")
    return json.loads(out)["state"] if out else None


def snapshot(tb, hosts=HOSTS):
    cmd = ("cat /proc/sys/kernel/random/boot_id; dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
           "'nvidia-*'; apt-mark showhold; ls -la --time-style=+%s /etc/gpufleet /var/lib/gpufleet 2>&1; "
           "docker ps --format '{{.Names}} {{.Status}}' 2>/dev/null || true")
    return {h: sh(tb, h, cmd, ok=False) for h in hosts}


# ------------------------------------------------------------------------------------------------------------------
def test_check_changes_nothing_and_shows_plan(fleet, tmp_path):
    tb = fleet
    reset(tb)
    sh(tb, "g3", 'mkdir -p /etc/gpufleet && echo \'{"reason": "RMA", "since": 1, "by": "alice"}\' '
                 '> /etc/gpufleet/maintenance')
    before = snapshot(tb)
    r = upgrade(tb, tmp_path, "--to", "580", "--check", "--batch", "2", "--max-unavailable", "3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "upgrade  g1:" in out and "nvidia-open-580 580.95.05" in out and "fabricmanager" in out
    assert "[in maintenance: alice]" in out
    # g3 already out: two more may go at once under max-unavailable 3
    assert "batch 1: g1, g2" in out and "batch 2: g3, g4" in out and "batch 3: g5, g6" in out
    assert "nothing was changed" in out
    assert snapshot(tb) == before
    assert not (tmp_path / "state.json").exists()
    # max-unavailable 1 with g3 in maintenance: only g3 itself can go, the rest is blocked and the plan says so
    r = upgrade(tb, tmp_path, "--to", TO, "--check", "--max-unavailable", "1")
    assert "batch 1: g3" in r.stdout and "STOPS before g1, g2, g4, g5, g6: max-unavailable 1 reached" in r.stdout
    assert snapshot(tb) == before


def test_bad_input_is_one_line_and_contacts_nobody(fleet, tmp_path):
    tb = fleet
    before = snapshot(tb, ["g1"])
    for args, key in ((["--to", "58x"], "--to"), (["--to", TO, "--batch", "two"], "--batch"),
                      (["--to", TO, "--max-fail", "150%"], "--max-fail"), (["--to", TO, "--limit", "g9"], "--limit")):
        r = upgrade(tb, tmp_path, *args)
        assert r.returncode == 5, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and key in r.stderr and "Traceback" not in r.stderr
    assert snapshot(tb, ["g1"]) == before


def test_six_hosts_batch_two_all_upgrade_and_restore(fleet, tmp_path):
    tb = fleet
    reset(tb)
    job0, side0 = start_job(tb)
    boots = {h: tb.boot_id(h) for h in HOSTS}
    r = upgrade(tb, tmp_path, "--to", TO, "--batch", "2", "--max-unavailable", "2", "--force",
                "--drain-timeout", "2", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["summary"] == {"done": 6}, rep
    for h in HOSTS:
        assert running(tb, h) == TO
        assert tb.boot_id(h) != boots[h]
        assert marker(tb, h) == "" and host_state(tb, h) == "done"
        assert sh(tb, h, "test -e /var/lib/gpufleet/upgrade.lock && echo held || echo free") == "free"
        assert "nvidia-open-580" in sh(tb, h, "apt-mark showhold")
        assert rep["hosts"][h]["checks"]["driver"].startswith("ok: 580.95.05")
    assert "nvidia-fabricmanager-580" in sh(tb, "g1", "apt-mark showhold")
    assert sh(tb, "g1", "systemctl is-active nvidia-fabricmanager") == "active"
    assert rep["hosts"]["g1"]["checks"]["driver"] == "ok: 580.95.05 on 8 GPU(s)"
    # exactly the GPU job was stopped, and it runs again; the side container was not stopped by us
    assert [c["name"] for c in rep["hosts"]["g2"]["stopped_containers"]] == [JOB]
    job1 = started_at(tb, JOB)
    assert job1.startswith("true") and job1 != job0
    stops = [e for e in events(tb, "g2") if e["event"] == "stop-containers"]
    assert [e["containers"] for e in stops] == [[JOB]]
    # never more than 2 hosts out of service at once (from the controller's recorded transitions)
    doc = json.loads((tmp_path / "state.json").read_text())
    spans = []
    for h in HOSTS:
        hist = doc["hosts"][h]["history"]
        spans.append((next(t for s, t in hist if s == "draining"), next(t for s, t in hist if s == "done")))
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert sorted(doc["hosts"][h]["batch"] for h in HOSTS) == [1, 1, 2, 2, 3, 3]
    # a second run does nothing
    logs = {h: len(events(tb, h)) for h in HOSTS}
    boots = {h: tb.boot_id(h) for h in HOSTS}
    r = upgrade(tb, tmp_path, "--to", TO, "--batch", "2", "--max-unavailable", "2", state="second.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already at 580.95.05") == 6 and "SUMMARY skipped 6" in r.stdout
    assert {h: len(events(tb, h)) for h in HOSTS} == logs
    assert {h: tb.boot_id(h) for h in HOSTS} == boots


def test_failed_install_stops_new_batches(fleet, tmp_path):
    tb = fleet
    reset(tb)
    sh(tb, "g1", "echo 'DPkg::Pre-Invoke { \"echo planted failure >&2; exit 1\"; };' "
                 "> /etc/apt/apt.conf.d/99upgtest-fail")
    try:
        r = upgrade(tb, tmp_path, "--to", TO, "--batch", "2", "--max-unavailable", "2")
    finally:
        sh(tb, "g1", "rm -f /etc/apt/apt.conf.d/99upgtest-fail")
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout
    assert "g1  failed     upgrading: apt-get install failed" in out and "stays in maintenance" in out
    assert "STOPPED: 1 failure(s) exceed max-fail 0" in out and "LEFT UNDONE: g1, g3, g4, g5, g6" in out
    assert "g2  done" in out                       # in flight with g1: finished
    assert json.loads(marker(tb, "g1"))["by"].startswith("gpufleet-upgrade")
    assert host_state(tb, "g1") == "failed" and running(tb, "g1") == FROM
    for h in ("g3", "g4", "g5", "g6"):              # no new batch: never touched
        assert events(tb, h) == [] and marker(tb, h) == "" and running(tb, h) == FROM


def test_reboot_never_back_fails_after_timeout_others_fine(fleet, tmp_path):
    tb = fleet
    reset(tb, ["g3", "g4", "g5"])
    # g3: sshd is stopped at the next boot (the SSH session is cut by the reboot and never comes back)
    sh(tb, "g3", "printf '[Unit]\\nAfter=ssh.service\\n[Service]\\nType=oneshot\\nExecStart=/bin/systemctl stop "
                 "ssh.service\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/upgtest-cut.service"
                 " && systemctl enable upgtest-cut.service 2>/dev/null")
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "provision.cli", "upgrade-driver", str(tb.inventory_path), "--state-file", str(state),
         "--to", TO, "--limit", "g3,g4,g5", "--batch", "3", "--max-unavailable", "3", "--max-fail", "2",
         "--reboot-timeout", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:      # g4 is switched off while it reboots
            try:
                if json.loads(state.read_text())["hosts"]["g4"]["state"] == "rebooting":
                    tb.stop_host("g4")
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        else:
            pytest.fail("g4 never reached rebooting")
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        tb.start_host("g4")
        sh(tb, "g3", "systemctl disable upgtest-cut.service 2>/dev/null; rm -f /etc/systemd/system/upgtest-cut.service;"
                     " systemctl start ssh.service")
    assert proc.returncode == 2, out + err
    assert "g3  failed     rebooting: did not come back within 20s" in out
    assert "g4  failed     rebooting: did not come back within 20s" in out
    assert "g5  done" in out and running(tb, "g5") == TO
    doc = json.loads(state.read_text())
    assert {h: doc["hosts"][h]["state"] for h in ("g3", "g4", "g5")} == {"g3": "failed", "g4": "failed", "g5": "done"}
    for h in ("g3", "g4"):
        assert json.loads(marker(tb, h))["by"].startswith("gpufleet-upgrade")    # stays in maintenance


def test_controller_killed_then_resume(fleet, tmp_path):
    tb = fleet
    hosts = ["g1", "g3", "g4", "g5"]
    reset(tb, hosts)
    state = tmp_path / "state.json"
    args = ["--to", TO, "--limit", ",".join(hosts), "--batch", "2", "--max-unavailable", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "provision.cli", "upgrade-driver", str(tb.inventory_path), "--state-file", str(state),
         "--reboot-timeout", "60", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    killed_at = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and killed_at is None:
            try:
                doc = json.loads(state.read_text())
                if doc["hosts"]["g1"]["state"] == "rebooting":     # mid-batch: g1 and g3 in flight
                    proc.send_signal(signal.SIGKILL)
                    killed_at = {h: doc["hosts"][h]["state"] for h in hosts}
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    assert killed_at["g4"] == "required" and killed_at["g5"] == "required"
    # a new rollout is refused while this one is unfinished
    r = upgrade(tb, tmp_path, *args)
    assert r.returncode == 5 and "unfinished" in r.stderr and "--resume" in r.stderr
    r = upgrade(tb, tmp_path, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUMMARY done 4" in r.stdout
    for h in hosts:
        ev = [e["event"] for e in events(tb, h)]
        assert ev.count("drain-start") == 1, (h, ev)         # nothing drained twice
        assert ev.count("install") <= 1 and ev.count("restored") == 1, (h, ev)
        assert running(tb, h) == TO and marker(tb, h) == "" and host_state(tb, h) == "done"
        assert sh(tb, h, "test -e /var/lib/gpufleet/upgrade.lock && echo held || echo free") == "free"
    assert [e["event"] for e in events(tb, "g1")].count("reboot") == 1


def test_gpu_job_blocks_drain_and_is_left_running_without_force(fleet, tmp_path):
    tb = fleet
    reset(tb, ["g2"])
    job0, side0 = start_job(tb)
    r = upgrade(tb, tmp_path, "--to", TO, "--limit", "g2", "--drain-timeout", "4", "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    rep = json.loads(r.stdout)["hosts"]["g2"]
    assert rep["state"] == "failed" and "drain timeout after 4s" in rep["error"] and JOB in rep["error"]
    assert rep["stopped_containers"] == []
    assert started_at(tb, JOB) == job0 and started_at(tb, SIDE) == side0      # left running, untouched
    doc = json.loads((tmp_path / "state.json").read_text())
    hist = dict((s, t) for s, t in doc["hosts"]["g2"]["history"])
    assert hist["failed"] - hist["draining"] >= 4                              # it waited the whole timeout
    assert running(tb, "g2") == FROM and json.loads(marker(tb, "g2"))["by"].startswith("gpufleet-upgrade")


def test_admin_marker_kept_lock_blocks_other_controller_rollback_on_failure(fleet, tmp_path):
    tb = fleet
    reset(tb, ["g5", "g6"])
    admin = '{"reason": "cable swap", "since": 1, "by": "alice"}'
    sh(tb, "g6", f"mkdir -p /etc/gpufleet && echo '{admin}' > /etc/gpufleet/maintenance")
    # another controller holds g6's lock (not expired): a run skips g6; --break-lock removes it
    sh(tb, "g6", "mkdir -p /var/lib/gpufleet/upgrade.lock && echo '{\"controller\": \"elsewhere:1:r0\", "
                 "\"rollout\": \"r0\", \"expires\": 99999999999}' > /var/lib/gpufleet/upgrade.lock/owner")
    # g5: the 580.95.05 kernel module fails to load at boot -> validation fails -> rolled back to 570.172.08
    sh(tb, "g5", "printf '[Unit]\\nAfter=nvidia-standin-module.service\\n[Service]\\nType=oneshot\\nExecStart=/bin/sh"
                 " -c \"grep -q 580.95.05 /usr/lib/nvidia-standin/driver.json && echo {} > "
                 "/run/nvidia-standin/module || true\"\\n[Install]\\nWantedBy=multi-user.target\\n' > "
                 "/etc/systemd/system/upgtest-badmod.service && systemctl enable upgtest-badmod.service 2>/dev/null")
    try:
        r = upgrade(tb, tmp_path, "--to", TO, "--limit", "g5,g6", "--batch", "2", "--max-unavailable", "2",
                    "--max-fail", "1", "--rollback-on-failure", "--validate-timeout", "5", "--json")
    finally:
        sh(tb, "g5", "systemctl disable upgtest-badmod.service 2>/dev/null; "
                     "rm -f /etc/systemd/system/upgtest-badmod.service")
    rep = json.loads(r.stdout)["hosts"]
    assert r.returncode == 2
    assert rep["g6"]["state"] == "skipped" and "locked by elsewhere:1:r0" in rep["g6"]["skip_reason"]
    assert rep["g5"]["state"] == "failed" and "rolled back to 570.172.08" in rep["g5"]["error"], rep["g5"]
    assert running(tb, "g5") == FROM and "nvidia-open-570" in sh(tb, "g5", "apt-mark showhold")
    assert json.loads(marker(tb, "g5"))["by"].startswith("gpufleet-upgrade")
    r = upgrade(tb, tmp_path, "--break-lock", "g6", "--to", TO)
    assert r.returncode == 0 and "elsewhere:1:r0" in r.stdout
    r = upgrade(tb, tmp_path, "--to", TO, "--limit", "g6", "--max-unavailable", "1", state="g6.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert running(tb, "g6") == TO
    assert json.loads(marker(tb, "g6")) == json.loads(admin)        # the admin's marker stays
    assert "left in maintenance: an admin had put it there" in r.stdout


def test_playbook_runs_the_same_steps(fleet, tmp_path):
    tb = fleet
    reset(tb, ["g4"])
    boot = tb.boot_id("g4")
    cmd = [sys.executable, "-m", "provision.cli", "apply", str(tb.inventory_path),
           str(ROOT / "playbooks/driver-upgrade.yaml"), "--limit", "g4", "-e", f"driver_target={TO}",
           "-e", "reboot_timeout=60", "-e", "validate_timeout=30"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "g4                         : ok=5    changed=5" in r.stdout
    assert running(tb, "g4") == TO and tb.boot_id("g4") != boot
    assert marker(tb, "g4") == "" and host_state(tb, "g4") == "done"
    assert [e["event"] for e in events(tb, "g4")] == ["drain-start", "install", "reboot", "validated", "restored"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "changed=0" in r.stdout, r.stdout[-2000:]


def test_connection_flags_and_become_password_reach_the_upgrade(fleet, tmp_path):
    """upgrade-driver runs on the engine of apply: -u picks the SSH user, and the become password
    (PROVISION_BECOME_PASS, as -K) reaches sudo's prompt for every step; without it the host is skipped with the
    reason, and the password is never printed."""
    tb = fleet
    reset(tb, ["g5"])
    sh(tb, "g5", "id dev >/dev/null 2>&1 || useradd -m -s /bin/sh dev; echo 'dev:Upg-Pa55-7731' | chpasswd; "
                 "echo 'dev ALL=(ALL) ALL' > /etc/sudoers.d/dev; mkdir -p /home/dev/.ssh; "
                 "cp /root/.ssh/authorized_keys /home/dev/.ssh/; chown -R dev: /home/dev/.ssh")
    inv = yaml.safe_load(Path(tb.inventory_path).read_text())
    for group in [inv["all"], *inv["all"].get("children", {}).values()]:
        for hv in (group.get("hosts") or {}).values():
            if hv:
                hv.pop("ansible_user", None)        # the user comes from -u
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(inv))
    base = [sys.executable, "-m", "provision.cli", "upgrade-driver", str(path), "--limit", "g5", "-u", "dev",
            "--to", TO, "--state-file", str(tmp_path / "s.json"), "--reboot-timeout", "60",
            "--validate-timeout", "30"]
    env = {k: v for k, v in os.environ.items() if k != "PROVISION_BECOME_PASS"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(base + ["--check"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    # -u dev took effect (as root the facts need no sudo) and sudo asked for a password that was not given
    assert "cannot read facts" in r.stdout and "PROVISION_BECOME_PASS" in r.stdout
    env["PROVISION_BECOME_PASS"] = "Upg-Pa55-7731"
    r = subprocess.run(base + ["--check"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "upgrade  g5:" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(base + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["summary"] == {"done": 1}
    assert running(tb, "g5") == TO and host_state(tb, "g5") == "done"
    assert "Upg-Pa55" not in r.stdout + r.stderr
