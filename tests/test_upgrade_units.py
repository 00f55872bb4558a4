"""Pure parts of the rolling driver upgrade: transition table, budget, parsers, plan (no hosts)."""
from __future__ import annotations

import json
import os

import pytest

from provision.errors import OptionError
from provision.upgrade import remote as R
from provision.versions import version_key
from provision.upgrade import states as S
from provision.upgrade.budget import Budget, Count, next_batch, parse_count, plan_batches
from provision.upgrade.plan import RolloutPlan, plan_upgrade
from provision.upgrade.report import report_lines
from provision.upgrade.statefile import HostRecord, StateFile
from provision.facts import MARK
from provision.upgrade.steps import parse_facts

# ---------------------------------------------------------------------------------------------- transitions
LEGAL = [
    (S.REQUIRED, S.START, S.DRAINING),
    (S.DRAINING, S.DRAINED, S.UPGRADING),
    (S.UPGRADING, S.INSTALLED, S.REBOOTING),
    (S.REBOOTING, S.BOOTED, S.VALIDATING),
    (S.VALIDATING, S.VALIDATED, S.RESTORING),
    (S.RESTORING, S.RESTORED, S.DONE),
    (S.VALIDATING, S.ROLLBACK, S.UPGRADING),
    (S.VALIDATING, S.ROLLED_BACK, S.FAILED),
] + [(s, S.FAIL, S.FAILED) for s in (S.REQUIRED, S.DRAINING, S.UPGRADING, S.REBOOTING, S.VALIDATING, S.RESTORING)]


@pytest.mark.parametrize("state,event,new", LEGAL)
def test_legal_transitions(state, event, new):
    assert S.transition(state, event) == new


def test_every_other_pair_is_illegal():
    legal = {(s, e) for s, e, _ in LEGAL}
    for s in S.STATES + (S.SKIPPED,):
        for e in S.EVENTS:
            if (s, e) not in legal:
                with pytest.raises(S.IllegalTransition):
                    S.transition(s, e)


def test_terminal_states_have_no_way_out():
    for s in (S.DONE, S.FAILED, S.SKIPPED):
        assert S.is_terminal(s)
        assert not any(k[0] == s for k in S.TRANSITIONS)


def test_happy_path_walk():
    s = S.REQUIRED
    for e in (S.START, S.DRAINED, S.INSTALLED, S.BOOTED, S.VALIDATED, S.RESTORED):
        s = S.transition(s, e)
    assert s == S.DONE


# ---------------------------------------------------------------------------------------------- budget
@pytest.mark.parametrize("text,total,kw,want", [
    ("2", 6, {}, 2), ("25%", 6, {"round_up": True}, 2), ("25%", 6, {"round_up": False}, 1),
    ("10%", 6, {"round_up": False, "minimum": 1}, 1), ("0", 6, {}, 0), ("50%", 7, {"round_up": False}, 3),
    ("100%", 3, {}, 3),
])
def test_count_of(text, total, kw, want):
    assert parse_count(text, "--x").of(total, **kw) == want


@pytest.mark.parametrize("bad", ["", "x", "-1", "2.5", "101%", "%"])
def test_parse_count_rejects(bad):
    with pytest.raises(OptionError) as e:
        parse_count(bad, "--batch")
    assert "--batch" in str(e.value) and "\n" not in str(e.value)


def test_zero_batch_rejected():
    with pytest.raises(OptionError):
        parse_count("0", "--batch", allow_zero=False)


def test_budget_resolve_and_exceeded():
    b = Budget.resolve(6, Count(2), Count(25, True), Count(0))
    assert (b.batch, b.max_unavailable, b.max_fail) == (2, 2, 0)
    assert not b.exceeded(0) and b.exceeded(1)
    b = Budget.resolve(10, Count(50, True), Count(3), Count(20, True))
    assert (b.batch, b.max_unavailable, b.max_fail) == (5, 3, 2)
    assert not b.exceeded(2) and b.exceeded(3)


def test_batches_respect_batch_size():
    b = Budget(6, 2, 6, 0)
    batches, why = plan_batches(list("abcdef"), set(), b)
    assert batches == [["a", "b"], ["c", "d"], ["e", "f"]] and why is None


def test_max_unavailable_counts_hosts_already_in_maintenance():
    b = Budget(6, 3, 2, 0)
    # x (not in the rollout) is in maintenance: only one more host may go down at a time
    batches, why = plan_batches(list("abc"), {"x"}, b)
    assert batches == [["a"], ["b"], ["c"]]
    batch, why = next_batch(list("abc"), {"x", "y"}, b)
    assert batch == [] and "max-unavailable 2" in why and "x, y" in why


def test_host_already_in_maintenance_does_not_add_to_unavailable():
    b = Budget(4, 2, 1, 0)
    batch, why = next_batch(["a", "m"], {"m"}, b)
    assert batch == ["m"]            # m is already out; a would make two


def test_never_more_in_flight_than_batch_or_budget():
    for total in range(1, 9):
        for bs in range(1, 5):
            for mu in range(1, 5):
                b = Budget(total, bs, mu, 0)
                hosts = [f"h{i}" for i in range(total)]
                batches, _ = plan_batches(hosts, set(), b)
                assert all(len(x) <= min(bs, mu) for x in batches)
                assert sum(map(len, batches)) == total


# ---------------------------------------------------------------------------------------------- parsers
def test_versions():
    assert R.upstream("580.95.05-1") == "580.95.05"
    assert R.upstream("1:580.95.05-0ubuntu1") == "580.95.05"
    assert R.matches_target("580.95.05-1", "580") and R.matches_target("580.95.05-1", "580.95.05")
    assert not R.matches_target("580.82.07-1", "580.95.05")
    assert R.pick_version(["580.82.07-1", "580.95.05-1", "570.195.03-1"], "580") == "580.95.05-1"
    assert R.pick_version(["580.82.07-1"], "580.95.05") is None
    assert version_key("580.95.05") > version_key("580.82.07") > version_key("570.195.03")


def _sections(**parts) -> str:
    """What the upgrade's facts script prints (the fact sections' protocol) for the given sections."""
    return "".join(f"{MARK} {name}\n{text}\n" for name, text in parts.items()) + f"{MARK} end\n"


def _smi_rows(*rows) -> str:
    """nvidia-smi's --query-gpu CSV as the nvidia_smi section prints it: (bus id, driver) per GPU."""
    return "path=/usr/bin/nvidia-smi\n" + "".join(f"{i}, {bus}, NVIDIA H100 80GB HBM3, {drv}, 9.0, GPU-{i}, 81559\n"
                                                  for i, (bus, drv) in enumerate(rows))


def test_parse_smi_ok_and_mismatch():
    ok = parse_facts(_sections(nvidia_smi=_smi_rows(("00000000:17:00.0", "580.95.05"),
                                                     ("00000000:2A:00.0", "580.95.05")) + "rc=0")).smi
    assert ok.ok and ok.driver_version == "580.95.05" and ok.bus_ids == ("0000:17:00.0", "0000:2a:00.0")
    bad = parse_facts(_sections(nvidia_smi="path=/usr/bin/nvidia-smi\nFailed to initialize NVML: Driver/library "
                                           "version mismatch\nNVML library version: 580.95\nrc=18")).smi
    assert not bad.ok and bad.rc == 18 and "mismatch" in bad.message
    assert parse_facts(_sections(nvidia_smi="rc=127")).smi.rc == 127


def test_parse_pci_finds_gpus_and_nvswitches():
    pci = parse_facts(_sections(pci="0000:17:00.0 0x10de 0x2330 0x030200\n0000:05:00.0 0x10de 0x22a3 0x068000\n"
                                    "0000:00:1f.0 0x8086 0x1234 0x060100")).pci
    assert pci.gpus == ("0000:17:00.0",) and pci.nvswitches == ("0000:05:00.0",)


def test_find_driver_and_rename():
    installed = parse_facts(_sections(packages="nvidia-driver-570-open\t570.172.08-1\tinstall ok installed\n"
                                                "nvidia-fabricmanager-570\t570.172.08-1\thold ok installed\n"
                                                "libnvidia-compute-570\t570.172.08-1\tinstall ok installed\n"
                                                "nvidia-container-toolkit\t1.17.8-1\tinstall ok installed\n"
                                                "nvidia-driver-535\t535.1-1\tdeinstall ok config-files")).installed
    d = R.find_driver(installed)
    assert (d.package, d.branch, d.suffix, d.version) == ("nvidia-driver-570-open", "570", "-open", "570.172.08-1")
    assert "nvidia-container-toolkit" not in d.family and "libnvidia-compute-570" in d.family
    assert d.fabricmanager == "nvidia-fabricmanager-570"
    assert R.rename_for_branch("nvidia-driver-570-open", "570", "580") == "nvidia-driver-580-open"
    assert R.rename_for_branch("nvidia-open", "570", "580") == "nvidia-open"
    assert R.rename_for_branch("nvidia-fabricmanager-570", "570", "580") == "nvidia-fabricmanager-580"
    assert R.rename_for_branch("libnvidia-compute-570-server", "570", "580") == "libnvidia-compute-580-server"


@pytest.mark.parametrize("pkg,branch", [("nvidia-open-570", "570"), ("cuda-drivers-570", "570"),
                                        ("nvidia-open", "570"), ("nvidia-driver-570-server-open", "570")])
def test_find_driver_cuda_repo_names(pkg, branch):
    d = R.find_driver({pkg: "570.172.08-1", "nvidia-container-toolkit": "1.17.8-1"})
    assert d.package == pkg and d.branch == branch and d.family == (pkg,)


def _inspect(**kw):
    c = {"Id": kw.get("id", "a" * 64), "Name": "/" + kw.get("name", "job"), "State": {"Running": True},
         "HostConfig": {"DeviceRequests": kw.get("req")}, "Config": {"Env": kw.get("env", []),
                                                                      "Labels": kw.get("labels", {})}}
    return c


@pytest.mark.parametrize("kw,why", [
    ({"req": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]}, "device request gpu"),
    ({"env": ["NVIDIA_VISIBLE_DEVICES=all"]}, "NVIDIA_VISIBLE_DEVICES"),
    ({"labels": {"gpufleet.gpus": "0,1"}}, "label gpufleet.gpus"),
    ({"env": ["NVIDIA_VISIBLE_DEVICES=void"]}, None),
    ({"req": [{"Capabilities": [["compute"]]}]}, None),
    ({}, None),
])
def test_gpu_containers(kw, why):
    found = R.containers_holding_gpus(json.dumps([_inspect(**kw)]))
    assert (found[0]["why"] if found else None) == why


def test_gpu_containers_without_docker():
    assert R.containers_holding_gpus("NODOCKER") == []


def test_parse_compute_apps():
    assert R.parse_compute_apps("1234, python\nrc=0") == (["1234 python"], "")
    procs, why = R.parse_compute_apps("Field is not valid\nrc=2")
    assert procs is None and "rc 2" in why


def test_parse_xids():
    text = ('# HELP gpufleet_gpu_xid_errors_total XIDs\n# TYPE gpufleet_gpu_xid_errors_total counter\n'
            'gpufleet_gpu_xid_errors_total{gpu="0",xid="79"} 2.0\n'
            'gpufleet_gpu_xid_errors_total_created{gpu="0",xid="79"} 1.7e9\n'
            'gpufleet_gpu_temperature_celsius{gpu="0"} 31\n')
    assert R.parse_xids(text) == {("0", "79"): 2.0}


def test_lock_reply():
    taken, owner, note = R.parse_lock_reply('TAKEN {"controller": "c", "rollout": "r", "expires": 5, "taken": 1}')
    assert taken and owner["controller"] == "c" and note == ""
    taken, owner, _ = R.parse_lock_reply('HELD {"controller": "other", "rollout": "r2", "expires": 9, "taken": 1}')
    assert not taken and owner["controller"] == "other"
    taken, _, note = R.parse_lock_reply('TAKEN {"controller": "c"} BROKE-STALE {"controller": "old"}')
    assert taken and "stale" in note


# ---------------------------------------------------------------------------------------------- plan
def _facts(smi=_smi_rows(("00000000:17:00.0", "570.172.08")) + "rc=0",
           dpkg="nvidia-driver-570-open\t570.172.08-1\thold ok installed\n", marker="", lock=""):
    return parse_facts(_sections(boot_id="b1", apt_cache="100 0", nvidia_smi=smi,
                                 pci="0000:17:00.0 0x10de 0x2330 0x030200", packages=dpkg,
                                 maintenance=f"present\n{marker}" if marker else "", upgrade_state="", record="",
                                 lock=lock, docker_runtimes="", container_toolkit="", nvidia_devnodes=""))


MADISON = (" nvidia-driver-580-open | 580.95.05-1 | file:/srv ./ Packages\n"
           " nvidia-driver-580-open | 580.82.07-1 | file:/srv ./ Packages\n")


def test_plan_upgrade_and_skip():
    p = plan_upgrade("h", _facts(), MADISON, "580")
    assert p.action == "upgrade" and p.target == "580.95.05" and "nvidia-driver-580-open" in p.packages
    at = _facts(smi=_smi_rows(("00000000:17:00.0", "580.95.05")) + "rc=0",
                dpkg="nvidia-driver-580-open\t580.95.05-1\tinstall ok installed\n")
    s = plan_upgrade("h", at, MADISON, "580.95.05")
    assert s.action == "skip" and "already at 580.95.05" in s.reason
    # installed but not yet rebooted into it: not at target
    pending = _facts(smi="Failed to initialize NVML: Driver/library version mismatch\nrc=18",
                     dpkg="nvidia-driver-580-open\t580.95.05-1\tinstall ok installed\n")
    assert plan_upgrade("h", pending, MADISON, "580.95.05").action == "upgrade"


def test_plan_admin_maintenance_and_foreign_lock():
    marker = json.dumps({"reason": "RMA", "since": 1, "by": "alice"})
    p = plan_upgrade("h", _facts(marker=marker), MADISON, "580.95.05")
    assert p.in_maintenance and p.maintenance_by == "alice"
    lock = json.dumps({"controller": "other:1:r", "rollout": "r", "expires": 1000})
    p = plan_upgrade("h", _facts(lock=lock), MADISON, "580.95.05", controller="me:2:q")
    assert p.action == "skip" and "locked by other:1:r" in p.reason
    stale = json.dumps({"controller": "other:1:r", "rollout": "r", "expires": 50})
    assert plan_upgrade("h", _facts(lock=stale), MADISON, "580.95.05", controller="me").action == "upgrade"


def test_plan_lines_say_what_stops():
    b = Budget(3, 1, 1, 0)
    hosts = [plan_upgrade(n, _facts(), MADISON, "580.95.05") for n in ("a", "b")]
    hosts.append(plan_upgrade("c", _facts(marker=json.dumps({"by": "bob", "reason": "x", "since": 1})), MADISON,
                           "580.95.05"))
    plan = RolloutPlan("580.95.05", b, hosts).compute()
    text = "\n".join(plan.lines())
    assert plan.batches == [["c"]] and "STOPS before a, b" in text and "max-unavailable 1" in text


# ---------------------------------------------------------------------------------------------- state file
def test_state_file_atomic_roundtrip(tmp_path):
    path = str(tmp_path / "s.json")
    sf = StateFile.new(path, rollout_id="r1", controller="c", inventory="inv", target="580.95.05", options={},
                       hosts=[HostRecord("a"), HostRecord("b")])
    rec = sf.host("a")
    rec.state = S.DRAINING
    rec.stopped_containers = [{"id": "x", "name": "job"}]
    sf.put(rec)
    again = StateFile.load(path)
    assert again.host("a").state == S.DRAINING and again.host("a").stopped_containers[0]["name"] == "job"
    assert again.unfinished() == ["a", "b"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_state_file_rejects_foreign_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(ValueError):
        StateFile.load(str(p))


def test_report_lists_failed_and_undone(tmp_path):
    sf = StateFile.new(str(tmp_path / "s.json"), rollout_id="r1", controller="c", inventory="i",
                       target="580.95.05", options={}, hosts=[HostRecord("a"), HostRecord("b"), HostRecord("c")])
    a = sf.host("a"); a.state = S.DONE; a.from_version = "570.172.08"; a.target = "580.95.05"; sf.put(a)
    b = sf.host("b"); b.state = S.FAILED; b.error = "upgrading: apt-get install failed"; sf.put(b)
    sf.set("stopped", "1 failure(s) exceed max-fail 0: no new host started")
    text = "\n".join(report_lines(sf.doc))
    assert "stays in maintenance" in text and "LEFT UNDONE: b, c" in text and "STOPPED: 1 failure" in text


def test_progress_redraws_a_status_line_on_a_tty_and_prints_lines_otherwise():
    import io
    from provision.upgrade.report import Progress
    tty = io.StringIO()
    p = Progress(tty, tty=True)
    p.set_state("a", S.UPGRADING)
    p.set_state("b", S.FAILED)
    p.set_batch(1, 3, ["a", "b"])
    p.event("a", "draining -> upgrading")
    p.end()
    text = tty.getvalue()
    assert "\r\033[K" in text and "batch 1/3" in text and "upgrading 1" in text and "failures 1" in text
    plain = io.StringIO()
    p = Progress(plain, tty=False)
    p.event("a", "draining -> upgrading")
    p.end()
    assert "\r" not in plain.getvalue() and plain.getvalue().endswith("a: draining -> upgrading\n")


def test_a_reboot_already_asked_in_this_boot_is_found_in_the_event_log(tmp_path, monkeypatch):
    """A resumed rollout must not ask for a second reboot when the killed controller's one is on its way: the
    host's event log says which rollout asked during which boot (the event and the reboot go in one command)."""
    import subprocess
    from types import SimpleNamespace
    from provision.upgrade import remote as R
    from provision.upgrade.steps import HostUpgrade
    monkeypatch.setattr(R, "EVENT_LOG", str(tmp_path / "events.log"))

    def sh(cmd, timeout=30, **_):
        return SimpleNamespace(stdout=subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True,
                                                     timeout=timeout).stdout)
    me = SimpleNamespace(o=SimpleNamespace(rollout="r-2026-12-01-ab12"), sh=sh)
    assert not HostUpgrade.reboot_asked(me, "boot-1")                      # no log yet
    for ev in ({"event": "drain-start", "rollout": "r-2026-12-01-ab12"},
               {"event": "reboot", "boot_id": "boot-1", "rollout": "an-older-rollout"}):
        sh(f"printf '%s\\n' {R.q(json.dumps(ev, sort_keys=True))} >> {R.EVENT_LOG}")
    assert not HostUpgrade.reboot_asked(me, "boot-1")                      # another rollout's
    mine = {"event": "reboot", "boot_id": "boot-1", "rollout": me.o.rollout}
    sh(f"printf '%s\\n' {R.q(json.dumps(mine, sort_keys=True))} >> {R.EVENT_LOG}")
    assert HostUpgrade.reboot_asked(me, "boot-1") and not HostUpgrade.reboot_asked(me, "boot-2")


def test_upgrade_driver_takes_applys_connection_flags_and_refuses_bad_ones_in_one_line(tmp_path, capsys):
    """-f, --connect-timeout, -e... are apply's flags (add_connection_args): bad values exit 5 before any host."""
    from provision.cli import main
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    gpu1: {ansible_host: gpu1.invalid}\n")
    for args, key in ((["-f", "0"], "--forks"), (["--connect-timeout", "-1"], "--connect-timeout"),
                      (["-e", f"@{tmp_path}/missing.yaml"], "--extra-vars")):
        capsys.readouterr()
        rc = main(["upgrade-driver", str(inv), "--to", "580", "--check", *args])
        err = capsys.readouterr().err
        assert rc == 5 and key in err and len(err.strip().splitlines()) == 1, (args, err)
    p = build_parser_for("upgrade-driver")
    for flag in ("-K", "-b", "--become-user", "-F", "-u", "--connect-timeout", "--command-timeout", "-i", "-e"):
        assert flag in p.format_help(), flag


def build_parser_for(name):
    from provision.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


# ---------------------------------------------------------------------------------------------- F5: unreadable state
def _unreachable_inventory(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    gpu1: {ansible_host: 127.0.0.1, ansible_port: 1}\n")
    return inv


@pytest.mark.parametrize("content", [b'{"format": 1, "hosts": {"a": {"state": "drain', b"\xff\xfe\x00", b"[]"])
def test_an_unreadable_state_file_stops_a_new_rollout_and_is_kept(tmp_path, capsys, content):
    """A state file that cannot be read may hold an unfinished rollout's stopped containers, old packages and admin
    markers: a new rollout stops with one line (exit 5) naming it, before any host, and leaves it as it was."""
    from provision.cli import main
    state = tmp_path / "state.json"
    state.write_bytes(content)
    rc = main(["upgrade-driver", str(_unreachable_inventory(tmp_path)), "--to", "580.95.05",
               "--state-file", str(state)])
    err = capsys.readouterr().err.strip()
    assert rc == 5 and len(err.splitlines()) == 1, err
    assert str(state) in err and "cannot read the state file" in err and "--discard-state" in err
    assert state.read_bytes() == content and sorted(os.listdir(tmp_path)) == ["inv.yaml", "state.json"]


def test_discard_state_starts_over_and_keeps_the_old_file_beside(tmp_path, capsys):
    from provision.cli import main
    state = tmp_path / "state.json"
    state.write_bytes(b"{not json")
    rc = main(["upgrade-driver", str(_unreachable_inventory(tmp_path)), "--to", "580.95.05",
               "--state-file", str(state), "--discard-state", "--connect-timeout", "2"])
    capsys.readouterr()
    kept = [f for f in os.listdir(tmp_path) if f.startswith("state.json.discarded-")]
    assert rc == 2 and len(kept) == 1 and (tmp_path / kept[0]).read_bytes() == b"{not json"
    assert StateFile.load(str(state)).doc["target"] == "580.95.05"


def test_discard_state_is_refused_with_resume(tmp_path, capsys):
    from provision.cli import main
    rc = main(["upgrade-driver", str(_unreachable_inventory(tmp_path)), "--resume", "--discard-state"])
    err = capsys.readouterr().err.strip()
    assert rc == 5 and "--discard-state" in err and len(err.splitlines()) == 1


def test_set_aside_never_overwrites_an_earlier_discarded_file(tmp_path):
    from provision.upgrade.statefile import set_aside
    p = tmp_path / "s.json"
    names = []
    for i in range(2):
        p.write_text(str(i))
        names.append(set_aside(str(p), now=0))
    assert len(set(names)) == 2 and [open(n).read() for n in names] == ["0", "1"]
