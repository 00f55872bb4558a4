"""gpu-agent's HTTP side: exporter-toolkit web config (TLS, client certificates, bcrypt basic auth), the pages,
and one-line errors for bad config files."""
from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import bcrypt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.webconfig import load_web_config
from test_agent_support import ROOT, RunningAgent, free_port, replay

NONE = {"maintenance_file": "/nonexistent/m", "upgrade_state_file": "/nonexistent/u", "docker": False}


def _cert(tmp, name, ca=None, server=True):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(ca[0].subject if ca else subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1)))
    if ca is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    elif server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = b.sign(ca[1] if ca else key, hashes.SHA256())
    cp, kp = os.path.join(tmp, f"{name}.crt"), os.path.join(tmp, f"{name}.key")
    with open(cp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(kp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert, key, cp, kp


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("pki"))
    ca = _cert(tmp, "ca")
    srv = _cert(tmp, "server", ca=(ca[0], ca[1]))
    cli = _cert(tmp, "client", ca=(ca[0], ca[1]), server=False)
    return {"dir": tmp, "ca": ca[2], "crt": srv[2], "key": srv[3], "client": (cli[2], cli[3])}


def _web(tmp_path, text):
    p = tmp_path / "web.yml"
    p.write_text(text)
    return load_web_config(str(p))


def test_tls_and_basic_auth(pki, tmp_path):
    h = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = _web(tmp_path, f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {pki['key']}\n"
                         f"basic_auth_users:\n  prometheus: {h}\n")
    a = RunningAgent(replay(), web=web, **NONE)
    url = f"https://127.0.0.1:{a.port}"
    try:
        ok = requests.get(url + "/metrics", auth=("prometheus", "s3cret"), verify=pki["ca"], timeout=10)
        assert ok.status_code == 200 and "gpufleet_gpu_up" in ok.text
        again = requests.get(url + "/metrics", auth=("prometheus", "s3cret"), verify=pki["ca"], timeout=10)
        assert again.status_code == 200  # the verified pair is remembered (no second bcrypt)
        bad = requests.get(url + "/metrics", auth=("prometheus", "wrong"), verify=pki["ca"], timeout=10)
        assert bad.status_code == 401 and "gpufleet" not in bad.text
        assert bad.headers["WWW-Authenticate"].startswith("Basic")
        assert requests.get(url + "/metrics", auth=("nobody", "s3cret"), verify=pki["ca"], timeout=10
                            ).status_code == 401
        assert requests.get(url + "/metrics", verify=pki["ca"], timeout=10).status_code == 401
        assert requests.get(url + "/healthz", verify=pki["ca"], timeout=10).status_code == 401
        # plain HTTP to the TLS port: refused with a 400, never metrics
        plain = requests.get(f"http://127.0.0.1:{a.port}/metrics", auth=("prometheus", "s3cret"), timeout=10)
        assert plain.status_code == 400 and "gpufleet" not in plain.text
        # a client that does not trust the server's CA fails the handshake
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + "/metrics", auth=("prometheus", "s3cret"), timeout=10)
    finally:
        a.stop()


def test_client_certificate_required(pki, tmp_path):
    web = _web(tmp_path, f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {pki['key']}\n"
                         f"  client_ca_file: {pki['ca']}\n  client_auth_type: RequireAndVerifyClientCert\n")
    a = RunningAgent(replay(), web=web, **NONE)
    url = f"https://127.0.0.1:{a.port}/metrics"
    try:
        r = requests.get(url, verify=pki["ca"], cert=pki["client"], timeout=10)
        assert r.status_code == 200 and "gpufleet_nvml_up 1.0" in r.text
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=pki["ca"], timeout=10)
    finally:
        a.stop()


def test_pages_without_web_config():
    a = RunningAgent(replay(), **NONE)
    try:
        land = requests.get(a.url + "/", timeout=5)
        assert land.status_code == 200 and 'href="/metrics"' in land.text
        assert requests.get(a.url + "/healthz", timeout=5).text == "ok\n"
        assert requests.get(a.url + "/nope", timeout=5).status_code == 404
        m = requests.get(a.url + "/metrics", timeout=5)
        assert m.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    finally:
        a.stop()


def _run_cli(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "agent.server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


BAD_WEB = [
    ("tls_server_config:\n  min_version: TLS12\n  key_flie: x.key\n", "web.yml:3: tls_server_config.key_flie: "
     "unknown key (did you mean 'key_file'?)"),
    ("basic_auth_user:\n  p: x\n", "web.yml:1: basic_auth_user: unknown key (did you mean 'basic_auth_users'?)"),
    ("basic_auth_users:\n  prometheus: plaintext\n", "web.yml:2: basic_auth_users.prometheus: expected a bcrypt"),
    ("tls_server_config:\n  cert_file: /nonexistent.crt\n", "web.yml:2: tls_server_config.cert_file: file not found"),
    ("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCrt\n",
     "(did you mean 'RequireAndVerifyClientCert'?)"),
    ("tls_server_config: [\n", "web.yml:2: invalid YAML"),
]


@pytest.mark.parametrize("text,expected", BAD_WEB)
def test_bad_web_config_one_line_error(tmp_path, text, expected):
    (tmp_path / "web.yml").write_text(text)
    port = free_port()
    out = _run_cli("--web.config.file", str(tmp_path / "web.yml"), "--web.listen-address", f"127.0.0.1:{port}")
    assert out.returncode == 4, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert expected in lines[0]
    with pytest.raises(OSError):  # nothing was started
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


BAD_CONFIG = [
    ("listen_adress: ':1'\n", "config.yml:1: listen_adress: unknown key (did you mean 'listen_address'?)"),
    ("docker: yes please\n", "config.yml:1: docker: expected true or false"),
    ("collect_timeout_seconds: -1\n", "config.yml:1: collect_timeout_seconds: expected a positive number"),
    ("log_level: verbose\n", "config.yml:1: log_level: unknown level 'verbose'"),
]


@pytest.mark.parametrize("text,expected", BAD_CONFIG)
def test_bad_config_file_one_line_error(tmp_path, text, expected):
    (tmp_path / "config.yml").write_text(text)
    out = _run_cli("--config.file", str(tmp_path / "config.yml"))
    assert out.returncode == 4 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert expected in out.stderr


def test_bad_listen_address():
    out = _run_cli("--web.listen-address", "localhost")
    assert out.returncode == 5 and "--web.listen-address: expected HOST:PORT" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_serves_a_replay_with_the_example_config_and_stops_on_sigterm(tmp_path):
    """The packaged example config is valid; the console entry point serves and exits cleanly on SIGTERM."""
    port = free_port()
    example = os.path.join(ROOT, "agent", "packaging", "gpu-agent.yaml")
    p = subprocess.Popen([sys.executable, "-m", "agent.server", "--config.file", example,
                          "--web.listen-address", f"127.0.0.1:{port}", "--no-collector.docker",
                          "--replay", os.path.join(ROOT, "tests", "fixtures", "nvml",
                                                   sorted(os.listdir(os.path.join(ROOT, "tests", "fixtures",
                                                                                  "nvml")))[-1])],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.1)
        assert r.status_code == 200 and 'gpufleet_gpu_up{gpu="0"} 1.0' in r.text
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_basic_auth_cache_never_holds_the_password():
    from agent.webconfig import BasicAuth
    import base64
    h = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))
    ba = BasicAuth({"u": h})
    hdr = "Basic " + base64.b64encode(b"u:pw").decode()
    assert ba.check(hdr) and ba.check(hdr)
    assert not ba.check("Basic " + base64.b64encode(b"u:pW").decode())
    assert not ba.check("Basic !!!") and not ba.check(None) and not ba.check("Bearer x")
    assert all(b"pw" not in t for t in ba._ok)


def test_tls_handshake_refused_for_old_versions(pki, tmp_path):
    web = _web(tmp_path, f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {pki['key']}\n"
                         f"  min_version: TLS13\n")
    a = RunningAgent(replay(), web=web, **NONE)
    try:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            with socket.create_connection(("127.0.0.1", a.port), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                    pass
    finally:
        a.stop()


@pytest.mark.parametrize("loader", ["load_config", "load_web_config"])
def test_config_file_whose_top_level_is_not_a_mapping_is_one_line_error(tmp_path, loader):
    from agent import server, webconfig
    from agent.errors import InputError
    path = tmp_path / "bad.yml"
    path.write_text("- listen_address: ':10240'\n")
    with pytest.raises(InputError) as err:
        getattr(server if loader == "load_config" else webconfig, loader)(str(path))
    assert str(err.value) == f"{path}:1: expected a mapping at the top"
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert getattr(server if loader == "load_config" else webconfig, loader)(str(empty)) is not None      # an empty file means the defaults


def test_first_scrape_releases_start_up_memory_once(monkeypatch):
    """glibc keeps start-up's freed memory in its heap (~10 MiB on the H200 in about half the starts); the agent
    trims once, after its first /metrics answer, and never again."""
    import agent.pages
    calls = []
    monkeypatch.setattr(agent.pages, "release_free_heap", lambda: calls.append(time.monotonic()))
    a = RunningAgent(replay(), **NONE)
    try:
        assert requests.get(a.url + "/healthz", timeout=5).status_code == 200
        assert calls == []
        for _ in range(3):
            assert requests.get(a.url + "/metrics", timeout=5).status_code == 200
        time.sleep(0.2)
        assert len(calls) == 1
    finally:
        a.stop()


def test_release_free_heap_runs_on_this_c_library():
    from agent.pages import release_free_heap
    assert release_free_heap() is True  # CI runs Debian (glibc)


def test_a_burst_of_connections_is_not_dropped():
    """50 connections at once, before the server accepts any: all complete their handshake (socketserver's own
    backlog of 5 completed 6 and left the rest to SYN retries, 1 s and 3 s later)."""
    import select
    from agent.server import Config, WebConfig, make_server
    port = free_port()
    srv, agent = make_server(Config(listen_address=f"127.0.0.1:{port}", **NONE), WebConfig(), replay())
    socks = []
    try:  # bound and listening, not accepting: every connection waits in the backlog
        for _ in range(50):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        deadline = time.monotonic() + 0.5
        done = set()
        while len(done) < len(socks) and time.monotonic() < deadline:
            _, w, _ = select.select([], [s for s in socks if s not in done], [], 0.05)
            done.update(s for s in w if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        assert len(done) == 50
    finally:
        for s in socks:
            s.close()
        srv.server_close()
        agent.close()


# ------------------------------------------------------------------------------------------------ issue 15: F2, F8, F9
def _refused(tmp_path, web_text=None, config_text=None):
    """Start the CLI with these files: it must exit 4 with one line and listen on nothing."""
    port = free_port()
    args = ["--web.listen-address", f"127.0.0.1:{port}"]
    if web_text is not None:
        p = tmp_path / "web.yml"
        p.write_bytes(web_text if isinstance(web_text, bytes) else web_text.encode())
        args += ["--web.config.file", str(p)]
    if config_text is not None:
        p = tmp_path / "config.yml"
        p.write_bytes(config_text)
        args += ["--config.file", str(p)]
    out = subprocess.run([sys.executable, "-m", "agent.server", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=20, stdin=subprocess.DEVNULL)
    assert out.returncode == 4, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    return lines[0]


def test_client_ca_without_a_server_certificate_refuses_to_start(pki, tmp_path):
    """F2: exporter-toolkit refuses this; gpu-agent served plain HTTP to anyone."""
    line = _refused(tmp_path, f"tls_server_config:\n  client_ca_file: {pki['ca']}\n"
                              f"  client_auth_type: RequireAndVerifyClientCert\n")
    assert "tls_server_config.cert_file: cert_file is required" in line
    line = _refused(tmp_path, "tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n")
    assert "cert_file is required" in line or "needs client_ca_file" in line


def test_client_ca_without_a_client_auth_policy_refuses_to_start(pki, tmp_path):
    line = _refused(tmp_path, f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {pki['key']}\n"
                              f"  client_ca_file: {pki['ca']}\n")
    assert "client_auth_type" in line and "NoClientCert" in line


def test_min_version_above_max_version_refuses_to_start(pki, tmp_path):
    line = _refused(tmp_path, f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {pki['key']}\n"
                              f"  min_version: TLS13\n  max_version: TLS12\n")
    assert "web.yml:1: tls_server_config.max_version: min_version TLS13 is above max_version TLS12" in line


@pytest.mark.parametrize("hashed", ["$2y$10$REPLACE.WITH.A.REAL.BCRYPT.HASH.OF.THE.PASSWORD........",
                                    "$2b$10$tooshort", "$2b$99$" + "a" * 53, "$1$abc$def"])
def test_malformed_bcrypt_hash_refuses_to_start(tmp_path, hashed):
    line = _refused(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    assert "web.yml:2: basic_auth_users.prometheus: expected a bcrypt hash" in line


def test_tls_problems_are_named_as_tls_problems(pki, tmp_path):
    other = _cert(str(tmp_path), "other", ca=None)
    line = _refused(tmp_path, f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {other[3]}\n")
    assert "tls_server_config.key_file: TLS:" in line and "is not the key of" in line
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    line = _refused(tmp_path, f"tls_server_config:\n  cert_file: {junk}\n  key_file: {pki['key']}\n")
    assert "tls_server_config.cert_file: TLS: cannot load the certificate" in line
    assert "cannot listen" not in line


def test_encrypted_key_is_refused_without_asking_for_a_pass_phrase(pki, tmp_path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    with open(pki["key"], "rb") as f:
        key = load_pem_private_key(f.read(), None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pass phrase")))
    line = _refused(tmp_path, f"tls_server_config:\n  cert_file: {pki['crt']}\n  key_file: {enc}\n")
    assert "tls_server_config.key_file: TLS:" in line and "is encrypted" in line


BAD_BYTES = [(b"listen_address: ':1'\x00\n", "control character 0x00"),
             (b"log_level: info\nlisten_address: '\x1b[31m:1'\n", "2: control character 0x1b"),
             (b"log_level: \xff\xfeinfo\n", "1: not valid UTF-8")]


@pytest.mark.parametrize("data,expected", BAD_BYTES)
@pytest.mark.parametrize("which", ["web", "config"])
def test_config_files_with_bad_bytes_are_one_line_errors(tmp_path, data, expected, which):
    """F9: a NUL, a control character or invalid UTF-8 gave a traceback and exit 1."""
    line = _refused(tmp_path, **({"web_text": data} if which == "web" else {"config_text": data}))
    assert expected in line and ("web.yml" if which == "web" else "config.yml") in line


def test_unknown_user_costs_a_bcrypt_like_a_known_one(monkeypatch):
    """F8: a known user's wrong password ran bcrypt, an unknown user's did not (user enumeration by timing)."""
    import base64
    from agent.webconfig import BasicAuth
    real, calls = bcrypt.checkpw, []
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(h) or real(pw, h))
    ba = BasicAuth({"u": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=5))})
    assert not ba.check("Basic " + base64.b64encode(b"nobody:pw").decode())
    assert len(calls) == 1 and calls[0].startswith(b"$2b$05$")   # the dummy, at the configured cost
    assert not ba.check("Basic " + base64.b64encode(b"u:wrong").decode())
    assert len(calls) == 2


def test_one_bcrypt_at_a_time_and_a_bounded_queue(monkeypatch):
    """F8: wrong passwords ran any number of bcrypts at once; now one runs, at most max_waiting wait, the others
    are told to come back (503), whoever they claim to be."""
    import base64
    import threading
    from agent.webconfig import AuthBusy, BasicAuth
    real, lock = bcrypt.checkpw, threading.Lock()
    state = {"now": 0, "most": 0}

    def counting(pw, h):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.05)
            return real(pw, h)
        finally:
            with lock:
                state["now"] -= 1
    monkeypatch.setattr(bcrypt, "checkpw", counting)
    ba = BasicAuth({"u": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))}, max_waiting=2)
    results, barrier = [], threading.Barrier(8)

    def login(i):
        barrier.wait()
        try:
            results.append(ba.check("Basic " + base64.b64encode(f"{'u' if i % 2 else 'x'}:bad{i}".encode()).decode()))
        except AuthBusy:
            results.append("busy")
    threads = [threading.Thread(target=login, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert state["most"] == 1 and len(results) == 8
    assert True not in results and results.count(False) >= 1 and "busy" in results
