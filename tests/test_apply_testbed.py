"""The engine end to end against real sshd hosts (testbed): idempotence, check mode, diff masking, handlers,
serial/max_fail_percentage, unreachable hosts, bad input before any connection, forks bound."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provision.cli import main
from provision.testbed import HostSpec

pytestmark = pytest.mark.testbed
FIX = Path(__file__).parent / "fixtures" / "engine"
HOSTS = ("e1", "e2", "e3")
SNAPSHOT = ("ls -la --time-style=+ /etc/demo-app /etc/apt/keyrings /etc/apt/sources.list.d 2>&1; "
            "cat /etc/demo-app/* /etc/systemd/system/demo-app.service 2>&1; "
            "dpkg-query -W -f='${Package} ${Version} ${Status}\\n'; apt-mark showhold; "
            "systemctl is-active demo-app; systemctl is-enabled demo-app 2>&1; cat /var/log/demo-app.starts 2>&1")


@pytest.fixture(scope="module")
def tb(module_testbed_factory):
    t = module_testbed_factory("engine", [HostSpec(h) for h in HOSTS])
    t.write_inventory()
    return t


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def statuses(report: dict) -> dict:
    """(task name, host) -> status from a --json report."""
    out = {}
    for play in report["plays"]:
        for t in play["tasks"]:
            for host, r in t["hosts"].items():
                out[(t["task"]["name"], host)] = r["status"]
    return out


def sshd_log_lines(tb) -> dict:
    return {h: int(tb.exec(h, "journalctl -u ssh --no-pager -q | wc -l")[1].strip() or 0) for h in HOSTS}


def test_bad_input_exits_4_and_opens_no_connection(tb, capsys, tmp_path):
    before = sshd_log_lines(tb)
    rc, out, err = run_cli(capsys, "apply", tb.inventory_path, "-p", FIX / "bad_module.yaml")
    assert rc == 4
    assert "bad_module.yaml:5" in err and "did you mean 'copy'" in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "apply", tb.inventory_path, "-p", FIX / "markers.yaml", "-e", "marker=1",
                         "--limit", "nosuchhost")
    assert rc == 5 and "--limit" in err
    bad_var = tmp_path / "undefined.yaml"
    bad_var.write_text((FIX / "markers.yaml").read_text())
    rc, _, err = run_cli(capsys, "apply", tb.inventory_path, "-p", bad_var)   # {{ marker }} is undefined
    assert rc == 4 and "marker" in err
    assert sshd_log_lines(tb) == before, "a host was contacted although the input was wrong"


def test_check_predicts_apply_then_second_run_changes_nothing(tb, capsys):
    snap = {h: tb.exec(h, SNAPSHOT)[1] for h in HOSTS}
    rc, out, _ = run_cli(capsys, "check", tb.inventory_path, "-p", FIX / "site.yaml", "--json", "--diff")
    assert rc == 0, out
    predicted = statuses(json.loads(out))
    assert {h: tb.exec(h, SNAPSHOT)[1] for h in HOSTS} == snap, "check mode changed a host"

    rc, out, _ = run_cli(capsys, "apply", tb.inventory_path, "-p", FIX / "site.yaml", "--json", "--diff")
    assert rc == 0, out
    report = json.loads(out)
    actual = statuses(report)
    assert predicted == actual
    assert sum(1 for s in actual.values() if s == "changed") >= 10 * len(HOSTS)
    assert all(report["stats"][h]["changed"] > 0 and report["stats"][h]["failed"] == 0 for h in HOSTS)

    # --diff: file and package changes shown, secrets and no_log values masked
    assert "s3cr3t-t0ken-value" not in out and "token = ********" in out
    assert "confidential bytes" not in out
    assert "libnvidia-container1" in out and "held" in out
    # handler notified by three tasks (config, tuning, unit, private) ran once per host: 2 starts in total
    handler_runs = [k for k in actual if k[0] == "restart demo"]
    assert len(handler_runs) == len(HOSTS)
    for h in HOSTS:
        assert tb.exec(h, "cat /var/log/demo-app.starts")[1].count("start") == 2
        assert tb.exec(h, "apt-mark showhold")[1].split() == ["libnvidia-container1"]
        assert tb.exec(h, "stat -c %a /etc/demo-app/app.conf")[1].strip() == "640"

    rc, out, _ = run_cli(capsys, "apply", tb.inventory_path, "-p", FIX / "site.yaml", "--json")
    report = json.loads(out)
    assert rc == 0 and all(report["stats"][h]["changed"] == 0 for h in HOSTS), statuses(report)
    assert not any(k[0] == "restart demo" for k in statuses(report))
    for h in HOSTS:
        assert tb.exec(h, "cat /var/log/demo-app.starts")[1].count("start") == 2


def test_text_output_diff_masks_secret_and_reports_change(tb, capsys):
    tb.exec("e1", "sed -i 's/^token = .*/token = old-token-value-xyz/' /etc/demo-app/app.conf")
    rc, out, _ = run_cli(capsys, "apply", tb.inventory_path, "-p", FIX / "site.yaml", "--diff", "--limit", "e1")
    assert rc == 0
    assert "TASK [app config] ***" in out and "changed: [e1]" in out
    assert "-token = old-token-value-xyz" not in out and "s3cr3t-t0ken-value" not in out
    assert "+token = ********" in out and "-token = ********" in out
    assert "PLAY RECAP" in out and "e1                         : ok=" in out


def test_serial_2_max_fail_0_stops_after_failing_batch(tb, capsys):
    for h in HOSTS:
        tb.exec(h, "rm -f /tmp/serial-before /tmp/serial-after")
    rc, out, _ = run_cli(capsys, "apply", tb.inventory_path, "-p", FIX / "serial_fail.yaml", "--no-retry-file")
    assert rc == 2, out
    present = {h: tuple(tb.exec(h, f"test -e /tmp/serial-{m}")[0] == 0 for m in ("before", "after"))
               for h in HOSTS}
    assert present == {"e1": (True, False), "e2": (True, False), "e3": (False, False)}
    assert "fatal: [e1]: FAILED!" in out and "boom on e1" in out


def test_forks_bound_simultaneous_connections(tb):
    from provision.executor import Executor, RunOptions
    from provision.inventory import load_inventory
    from provision.output import JsonReporter
    from provision.playbook import load_playbook
    import io
    inv = load_inventory(str(tb.inventory_path))
    pb = load_playbook(str(FIX / "markers.yaml"))
    peaks = {}
    for forks in (1, 3):
        opts = RunOptions(forks=forks, extra_vars={"marker": f"forks{forks}"}, retry_files=False)
        stats = Executor(inv, opts, JsonReporter(out=io.StringIO())).run_playbook(pb)
        assert stats.exit_code() == 0
        peaks[forks] = (stats.peak_connections, stats.connections_opened)
    assert peaks[1][0] == 1          # never more than one connection open with -f 1
    assert peaks[3] == (3, 3)        # one connection per host for the whole run when they fit


def test_stopped_host_is_unreachable_and_others_finish(tb, capsys, tmp_path):
    tb.stop_host("e3")
    try:
        rc, out, _ = run_cli(capsys, "apply", tb.inventory_path, "-p", FIX / "markers.yaml", "-e", "marker=unr",
                             "--retry-dir", tmp_path, "--connect-timeout", "3")
        assert rc == 3, out
        assert "fatal: [e3]: UNREACHABLE!" in out
        assert "e3                         : ok=0    changed=0    unreachable=1    failed=0" in out
        for h in ("e1", "e2"):
            assert tb.exec(h, "cat /tmp/marker-unr")[1].strip() == h
        assert (tmp_path / "markers.retry").read_text() == "e3\n"
    finally:
        tb.start_host("e3")


def test_changed_host_key_is_refused_and_accept_new_adds_unknown(tb, capsys, tmp_path):
    import paramiko
    import yaml
    known = tb.known_hosts_path.read_text().splitlines()
    port = {h: tb.hosts[h].port for h in HOSTS}
    fake = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    if fake is None:   # paramiko cannot generate ed25519: use an RSA key as "the changed key"
        fake = paramiko.RSAKey.generate(2048)
    lines = []
    for line in known:
        if line.startswith(f"[127.0.0.1]:{port['e1']} "):
            lines.append(f"[127.0.0.1]:{port['e1']} {fake.get_name()} {fake.get_base64()}")   # e1: key changed
        elif line.startswith(f"[127.0.0.1]:{port['e2']} "):
            continue                                                                           # e2: unknown
        else:
            lines.append(line)
    kh = tmp_path / "known_hosts"
    kh.write_text("\n".join(lines) + "\n")
    inv = yaml.safe_load(Path(tb.inventory_path).read_text())
    for group in inv["all"]["children"].values():
        for hv in group["hosts"].values():
            if hv:
                hv["ansible_ssh_known_hosts_file"] = str(kh)
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(yaml.safe_dump(inv))

    rc, out, err = run_cli(capsys, "ping", inv_path)
    assert rc == 3
    assert "e1 | UNREACHABLE!" in out and "HOST KEY CHANGED" in out
    assert "e2 | UNREACHABLE!" in out and "not in" in out
    assert "e3 | SUCCESS" in out

    rc, out, err = run_cli(capsys, "ping", inv_path, "--host-key-checking", "accept-new")
    assert rc == 3 and "e1 | UNREACHABLE!" in out and "HOST KEY CHANGED" in out   # a changed key: always refused
    assert "e2 | SUCCESS" in out and "added to" in err
    assert f"[127.0.0.1]:{port['e2']} ssh-ed25519 " in kh.read_text()

    rc, out, err = run_cli(capsys, "ping", inv_path, "--host-key-checking", "off")
    assert "e1 | UNREACHABLE!" in out, "off must still refuse a key that CHANGED"
    shutil.rmtree(tmp_path, ignore_errors=True)
