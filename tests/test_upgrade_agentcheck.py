"""F10 (issue 15): the upgrade's XID check reads a real gpu-agent over its real TLS with its basic auth, both from
the inventory; a 401, a TLS failure or a plain-HTTP answer from a TLS port fails validation instead of skipping it.
The credentials travel in the stdin of `python3 -`, never on a command line."""
from __future__ import annotations

import bcrypt
import pytest

from provision.connectors.local import LocalConnector
from provision.upgrade.agentcheck import agent_access
from provision.upgrade.statefile import HostRecord
from provision.upgrade.steps import HostUpgrade, StepOptions
from test_agent_server import _cert, _web
from test_agent_support import RunningAgent, free_port, replay

NONE = {"maintenance_file": "/nonexistent/m", "upgrade_state_file": "/nonexistent/u", "docker": False}
PASSWORD = "s3cret-Agent-pw"


class LocalRunner:
    """The runner's do(ctx, Cmd) on this machine, through the real local connector; remembers the command lines."""

    def __init__(self):
        self.conn, self.lines = LocalConnector(), []

    def do(self, ctx, c):
        self.lines.append(c.cmd)
        return self.conn.run(c.cmd, stdin=c.stdin, timeout=c.timeout)


def check(port: int, variables: dict) -> tuple[str, list[str]]:
    runner = LocalRunner()
    access = agent_access("localhost", variables, port)
    hu = HostUpgrade("localhost", runner, None, HostRecord("localhost"), StepOptions(target="580"), agent=access)
    return hu.check_xids(), runner.lines


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a server certificate for 127.0.0.1 and localhost (test_agent_server's)."""
    tmp = str(tmp_path_factory.mktemp("pki"))
    ca = _cert(tmp, "ca")
    srv = _cert(tmp, "server", ca=(ca[0], ca[1]))
    return {"ca": ca[2], "crt": srv[2], "key": srv[3]}


@pytest.fixture(scope="module")
def tls_agent(pki, tmp_path_factory):
    h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = _web(tmp_path_factory.mktemp("web"), f"tls_server_config:\n  cert_file: {pki['crt']}\n"
                                               f"  key_file: {pki['key']}\nbasic_auth_users:\n  prometheus: {h}\n")
    a = RunningAgent(replay(), web=web, **NONE)
    yield a
    a.stop()


def test_the_xid_check_reads_the_agent_over_tls_with_the_inventorys_credentials(tls_agent, pki):
    good = {"gpu_agent_scheme": "https", "gpu_agent_ca_file": pki["ca"], "gpu_agent_basic_auth_user": "prometheus",
            "gpu_agent_basic_auth_password": PASSWORD}
    verdict, lines = check(tls_agent.port, good)
    assert verdict == "ok", verdict
    assert lines == ["python3 -"] and not any(PASSWORD in ln for ln in lines)


@pytest.mark.parametrize("change, expected", [
    ({"gpu_agent_basic_auth_user": None, "gpu_agent_basic_auth_password": None},
     "failed: HTTP 401 from https://127.0.0.1:{port}/metrics: the agent asks for basic auth"),
    ({"gpu_agent_basic_auth_password": "wrong"}, "failed: HTTP 401 from https://127.0.0.1:{port}/metrics: the "
                                                 "credentials in gpu_agent_basic_auth_user/password were refused"),
    ({"gpu_agent_scheme": "http"}, "failed: HTTP 400 from http://127.0.0.1:{port}/metrics: the agent serves HTTPS"),
    ({"gpu_agent_ca_file": None}, "failed: TLS with the agent on https://127.0.0.1:{port}/metrics"),
    ({"gpu_agent_tls_server_name": "not-the-agent.example"}, "failed: TLS with the agent"),
])
def test_refused_credentials_or_tls_fail_the_check_instead_of_skipping_it(tls_agent, pki, change, expected):
    variables = {"gpu_agent_scheme": "https", "gpu_agent_ca_file": pki["ca"],
                 "gpu_agent_basic_auth_user": "prometheus", "gpu_agent_basic_auth_password": PASSWORD}
    variables.update(change)
    verdict, _ = check(tls_agent.port, {k: v for k, v in variables.items() if v is not None})
    assert verdict.startswith(expected.format(port=tls_agent.port)), verdict


def test_a_plain_agent_is_read_and_an_absent_one_skips():
    a = RunningAgent(replay(), **NONE)
    try:
        assert check(a.port, {})[0] == "ok"
    finally:
        a.stop()
    port = free_port()
    assert check(port, {})[0] == f"skipped: no gpufleet agent answering on http://127.0.0.1:{port}/metrics"


def test_bad_agent_variables_stop_the_upgrade_before_any_host(tmp_path, capsys):
    from provision.cli import main
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    gpu1: {ansible_host: 127.0.0.1, ansible_port: 1, gpu_agent_scheme: ftp}\n")
    rc = main(["upgrade-driver", str(inv), "--to", "580", "--check"])
    err = capsys.readouterr().err.strip()
    assert rc in (4, 5) and len(err.splitlines()) == 1 and "gpu_agent_scheme" in err and "gpu1" in err, err
    inv.write_text("all:\n  hosts:\n    gpu1: {ansible_host: 127.0.0.1, ansible_port: 1, "
                   f"gpu_agent_scheme: https, gpu_agent_ca_file: {tmp_path}/missing.pem}}\n")
    rc = main(["upgrade-driver", str(inv), "--to", "580", "--check"])
    err = capsys.readouterr().err.strip()
    assert rc in (4, 5) and len(err.splitlines()) == 1 and "missing.pem" in err, err


def test_templated_agent_variables_are_rendered_by_agent_access_alone():
    """One render for the rollout and the playbook form: a vault-style reference resolves; a broken template is
    one InputError naming the host."""
    from provision.errors import InputError
    access = agent_access("gpu1", {"vault_pw": PASSWORD, "gpu_agent_basic_auth_user": "prom",
                                   "gpu_agent_basic_auth_password": "{{ vault_pw }}"})
    assert access.user == "prom" and access.password == PASSWORD
    with pytest.raises(InputError) as err:
        agent_access("gpu1", {"gpu_agent_scheme": "{{ nope }}"})
    assert "host gpu1" in str(err.value) and "\n" not in str(err.value)
