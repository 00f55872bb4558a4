"""The upgrade's XID check reads the gpufleet agent's /metrics on the host, as Prometheus would: over the agent's
TLS and with its basic-auth credentials, both from the inventory.

Host variables (the same names for the rollout and the playbook form; templates rendered):

* ``gpu_agent_scheme``: ``http`` (default) or ``https`` (the agent behind its web config's TLS; the same variable
  the Prometheus service discovery reads);
* ``gpu_agent_ca_file``: the PEM file, on the controller, of the CA that signed the agent's certificate (default:
  the host's trust store); ``gpu_agent_tls_server_name``: the name the certificate holds (default: the host's
  inventory name; the request goes to 127.0.0.1 with that name);
* ``gpu_agent_basic_auth_user`` / ``gpu_agent_basic_auth_password``.

The credentials and the CA travel inside a small Python program given to ``python3 -`` on its stdin: never on a
command line. A 401/403, a TLS failure, a plain-HTTP answer from a TLS port or a timeout FAIL the check; only an
agent that is not there (connection refused) skips it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from provision import templating
from provision.errors import InputError
from provision.upgrade.remote import DEFAULT_AGENT_PORT, parse_xids

@dataclass(frozen=True)
class AgentAccess:
    port: int = DEFAULT_AGENT_PORT
    scheme: str = "http"
    server_name: str = "localhost"
    ca_pem: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/metrics"


def agent_access(host: str, variables: Mapping[str, Any], port: int = DEFAULT_AGENT_PORT) -> AgentAccess:
    """The host's agent access from its variables (templated values, ``"{{ vault_agent_password }}"``, rendered
    with them). Bad values: InputError naming the host and the variable (the upgrade checks every host before it
    touches one)."""
    def get(name: str) -> str | None:
        v = variables.get(name)
        if isinstance(v, str) and "{{" in v:
            try:
                v = templating.render(v, variables)
            except templating.TemplateError as err:
                raise InputError(f"host {host}: {err}", key="gpu_agent_*") from None
        return None if v in (None, "") else str(v)

    scheme = (get("gpu_agent_scheme") or "http").lower()
    if scheme not in ("http", "https"):
        raise InputError(f"host {host}: gpu_agent_scheme must be http or https, got {scheme!r}",
                         key="gpu_agent_scheme", choices=("http", "https"))
    ca_pem = None
    ca_file = get("gpu_agent_ca_file")
    if ca_file:
        try:
            with open(os.path.expanduser(ca_file), encoding="utf-8") as fh:
                ca_pem = fh.read()
        except (OSError, ValueError) as err:
            raise InputError(f"host {host}: cannot read the agent's CA file: {getattr(err, 'strerror', None) or err}",
                             file=ca_file, key="gpu_agent_ca_file") from None
        if "-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise InputError(f"host {host}: the agent's CA file holds no PEM certificate", file=ca_file,
                             key="gpu_agent_ca_file")
    user, password = get("gpu_agent_basic_auth_user"), get("gpu_agent_basic_auth_password")
    if (user is None) != (password is None):
        missing = "gpu_agent_basic_auth_password" if password is None else "gpu_agent_basic_auth_user"
        raise InputError(f"host {host}: basic auth needs both user and password", key=missing)
    return AgentAccess(port=int(port), scheme=scheme, server_name=get("gpu_agent_tls_server_name") or host,
                       ca_pem=ca_pem, user=user, password=password)


# The program run on the host: one request, then 'HTTP <status>' or 'ERR <kind> <why>' on its first line.
_PROGRAM = r'''
import base64, http.client, json, socket, ssl, sys
c = json.loads(CONFIG)
try:
    if c["scheme"] == "https":
        ctx = ssl.create_default_context(cadata=c["ca"]) if c["ca"] else ssl.create_default_context()
        raw = socket.create_connection(("127.0.0.1", c["port"]), timeout=10)
        conn = http.client.HTTPSConnection(c["name"], c["port"], timeout=10, context=ctx)
        conn.sock = ctx.wrap_socket(raw, server_hostname=c["name"])
    else:
        conn = http.client.HTTPConnection("127.0.0.1", c["port"], timeout=10)
    head = {}
    if c["user"] is not None:
        head["Authorization"] = "Basic " + base64.b64encode((c["user"] + ":" + c["password"]).encode()).decode()
    conn.request("GET", "/metrics", headers=head)
    r = conn.getresponse()
    body = r.read().decode("utf-8", "replace")
    print("HTTP", r.status)
    sys.stdout.write(body if r.status == 200 else "")
except ConnectionRefusedError:
    print("ERR refused nothing listens")
except (ssl.SSLError, ssl.CertificateError) as e:
    print("ERR tls", getattr(e, "verify_message", None) or getattr(e, "reason", None) or e)
except socket.timeout:
    print("ERR timeout no answer within 10 s")
except Exception as e:
    print("ERR other", type(e).__name__, str(e)[:200])
'''


def metrics_program(access: AgentAccess) -> bytes:
    """The stdin of ``python3 -``: the program with its configuration (credentials and CA inside)."""
    config = json.dumps({"scheme": access.scheme, "port": access.port, "name": access.server_name,
                         "ca": access.ca_pem, "user": access.user, "password": access.password})
    return (f"CONFIG = {config!r}\n" + _PROGRAM).encode()


METRICS_COMMAND = "python3 -"


def xid_verdict(rc: int, stdout: str, access: AgentAccess) -> str:
    """'ok', 'failed: why' or 'skipped: why' from the program's output."""
    first, _, body = stdout.partition("\n")
    words = first.split(None, 2)
    if rc == 127 or not words:
        return f"skipped: cannot read the agent on the host (no python3? rc {rc})"
    if words[0] == "ERR":
        kind, why = words[1] if len(words) > 1 else "other", words[2] if len(words) > 2 else ""
        if kind == "refused":
            return f"skipped: no gpufleet agent answering on {access.where}"
        if kind == "tls":
            return (f"failed: TLS with the agent on {access.where} (server name {access.server_name}): {why}; "
                    "check gpu_agent_ca_file / gpu_agent_tls_server_name")
        return f"failed: reading {access.where}: {why}"
    status = words[1] if len(words) > 1 else "?"
    if status in ("401", "403"):
        given = "the credentials in gpu_agent_basic_auth_user/password were refused" if access.user else \
            "the agent asks for basic auth: set gpu_agent_basic_auth_user/password"
        return f"failed: HTTP {status} from {access.where}: {given}"
    if status == "400" and access.scheme == "http":
        return f"failed: HTTP 400 from {access.where}: the agent serves HTTPS (set gpu_agent_scheme: https)"
    if status != "200":
        return f"failed: HTTP {status} from {access.where}"
    xids = {k: v for k, v in parse_xids(body).items() if v > 0}
    if xids:
        listed = ", ".join(f"GPU {g} XID {x} ×{int(v)}" for (g, x), v in sorted(xids.items()))
        return f"failed: XID errors since the reboot: {listed}"
    return "ok"
