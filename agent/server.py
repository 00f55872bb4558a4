"""gpu-agent: the HTTP side. ``/metrics``, ``/healthz``, a landing page; TLS and basic auth from a web-config.yml
in the Prometheus exporter-toolkit format; settings from flags and a YAML config file.

Default port 9835 is taken (nvidia_gpu_exporter) as is 9400 (dcgm-exporter); see docs/agent.md for ours.
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import hmac
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from agent import __version__
from agent.collectors import render_metrics
from agent.errors import EXIT_OPTIONS, EXIT_PARSE, InputError, closest
from agent.hostpaths import MAINTENANCE_MARKER, UPGRADE_STATE_FILE

log = logging.getLogger("gpu-agent")

DEFAULT_PORT = 10240
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what agent.collectors.render_metrics writes
DEFAULT_LISTEN = f":{DEFAULT_PORT}"

# ------------------------------------------------------------------------------------------------ YAML with lines


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for k, _v in node.value:
        lines[k.value] = k.start_mark.line + 1
    return _LinedDict(mapping, lines)


class _LinedDict(dict):
    def __init__(self, data: dict, lines: dict):
        super().__init__(data)
        self.lines = lines

    def line(self, key: str) -> int | None:
        return self.lines.get(key)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_LineLoader)
    except FileNotFoundError:
        raise InputError("file not found", file=path, exit_code=EXIT_OPTIONS) from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise InputError(f"invalid YAML: {e.problem}", file=path, line=line) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=path, exit_code=EXIT_OPTIONS) from None



def _load_mapping(path: str) -> dict | None:
    """A YAML config file: None when empty, else its top-level mapping (anything else is bad input)."""
    doc = _load_yaml(path)
    if doc is not None and not isinstance(doc, dict):
        raise InputError("expected a mapping at the top", file=path, line=1)
    return doc

# ------------------------------------------------------------------------------------------------ web config
CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
                     "RequireAndVerifyClientCert")
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version")
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


@dataclass
class WebConfig:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = ""
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)


def load_web_config(path: str) -> WebConfig:
    """Parse an exporter-toolkit web-config.yml; bad input -> InputError naming file, line and key."""
    doc = _load_mapping(path)
    wc = WebConfig()
    if doc is None:
        return wc
    top = ("tls_server_config", "basic_auth_users", "http_server_config")
    base = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)
    for key, val in doc.items():
        line = doc.line(key) if isinstance(doc, _LinedDict) else None
        if key not in top:
            raise InputError("unknown key", file=path, line=line, key=str(key), choices=top)
        if key == "http_server_config" and val:
            raise InputError("not supported by gpu-agent (HTTP/1.1 only, no extra headers)", file=path, line=line,
                             key=key)
        if key == "tls_server_config" and val is not None:
            if not isinstance(val, dict):
                raise InputError("expected a mapping", file=path, line=line, key=key)
            for k, v in val.items():
                kl = val.line(k) if isinstance(val, _LinedDict) else line
                if k not in TLS_KEYS:
                    if k in ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites"):
                        raise InputError("not supported by gpu-agent (Python's ssl defaults are used)", file=path,
                                         line=kl, key=f"tls_server_config.{k}")
                    raise InputError("unknown key", file=path, line=kl, key=f"tls_server_config.{k}",
                                     hint=closest(str(k), TLS_KEYS))
                if k == "client_auth_type" and v not in CLIENT_AUTH_TYPES:
                    raise InputError(f"unknown value {v!r}", file=path, line=kl, key="tls_server_config." + k,
                                     hint=closest(str(v), CLIENT_AUTH_TYPES))
                if k in ("min_version", "max_version") and v not in TLS_VERSIONS:
                    raise InputError(f"unknown value {v!r}", file=path, line=kl, key="tls_server_config." + k,
                                     hint=closest(str(v), TLS_VERSIONS))
                if k.endswith("_file"):
                    v = rel(str(v))
                    if not os.path.isfile(v):
                        raise InputError(f"file not found: {v}", file=path, line=kl, key="tls_server_config." + k)
                setattr(wc, k, str(v))
            if bool(wc.cert_file) != bool(wc.key_file):
                raise InputError("cert_file and key_file must be given together", file=path, line=line,
                                 key="tls_server_config")
            if wc.client_auth_type in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") \
                    and not wc.client_ca_file:
                raise InputError(f"client_auth_type {wc.client_auth_type} needs client_ca_file", file=path,
                                 line=line, key="tls_server_config.client_ca_file")
        elif key == "basic_auth_users" and val is not None:
            if not isinstance(val, dict):
                raise InputError("expected a mapping of user: bcrypt hash", file=path, line=line, key=key)
            for user, h in val.items():
                ul = val.line(user) if isinstance(val, _LinedDict) else line
                if not isinstance(h, str) or not h.startswith(("$2a$", "$2b$", "$2y$")):
                    raise InputError("expected a bcrypt hash ($2b$...; make one with htpasswd -nBC 10 USER)",
                                     file=path, line=ul, key=f"basic_auth_users.{user}")
                wc.basic_auth_users[str(user)] = h.encode()
    return wc


def ssl_context(wc: WebConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[wc.min_version or "TLS12"]
    if wc.max_version:
        ctx.maximum_version = TLS_VERSIONS[wc.max_version]
    ctx.load_cert_chain(wc.cert_file, wc.key_file)
    if wc.client_ca_file:
        ctx.load_verify_locations(wc.client_ca_file)
    mode = wc.client_auth_type
    if mode in ("RequireAndVerifyClientCert", "RequireAnyClientCert"):
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif mode in ("VerifyClientCertIfGiven", "RequestClientCert"):
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if mode == "RequireAnyClientCert" and not wc.client_ca_file:
        # Python cannot accept an unverified client certificate; refuse rather than silently skip checking it
        raise InputError("RequireAnyClientCert needs client_ca_file with gpu-agent",
                         key="tls_server_config.client_auth_type")
    return ctx


class BasicAuth:
    """bcrypt checks cost ~50-250 ms, so a (user, password) pair already verified is remembered (as a keyed
    digest, never the password) — as exporter-toolkit does."""

    def __init__(self, users: dict[str, bytes]):
        self.users = users
        self._ok: set[bytes] = set()
        self._key = os.urandom(32)
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        h = self.users.get(user)
        if h is None:
            return False
        tag = hmac.new(self._key, user.encode() + b"\0" + pw.encode() + b"\0" + h, hashlib.sha256).digest()
        with self._lock:
            if tag in self._ok:
                return True
        import bcrypt
        try:
            ok = bcrypt.checkpw(pw.encode(), h)
        except ValueError:
            ok = False
        if ok:
            with self._lock:
                self._ok.add(tag)
        return ok


# ------------------------------------------------------------------------------------------------ agent config
@dataclass
class Config:
    listen_address: str = DEFAULT_LISTEN
    web_config_file: str = ""
    collect_timeout_seconds: float = 1.0
    nvml: bool = True
    slow_interval_seconds: float = 10.0
    reinit_interval_seconds: float = 10.0
    pcie_throughput: bool = False
    xid_events: bool = True
    docker: bool = True
    docker_socket: str = "/var/run/docker.sock"
    docker_timeout_seconds: float = 2.0
    proc_root: str = "/proc"
    maintenance_file: str = MAINTENANCE_MARKER
    upgrade_state_file: str = UPGRADE_STATE_FILE
    log_level: str = "info"


def load_config(path: str) -> Config:
    doc = _load_mapping(path)
    cfg = Config()
    if doc is None:
        return cfg
    types = {f.name: f.type for f in fields(Config)}
    for key, val in doc.items():
        line = doc.line(key) if isinstance(doc, _LinedDict) else None
        if key not in types:
            raise InputError("unknown key", file=path, line=line, key=str(key), choices=types)
        t = types[key]
        ok = (isinstance(val, bool) if t == "bool" else
              isinstance(val, (int, float)) and not isinstance(val, bool) and val > 0 if t == "float" else
              isinstance(val, str))
        if not ok:
            want = {"bool": "true or false", "float": "a positive number", "str": "a string"}[t]
            raise InputError(f"expected {want}, got {val!r}", file=path, line=line, key=key)
        if key == "log_level" and val not in ("debug", "info", "warning", "error"):
            raise InputError(f"unknown level {val!r}", file=path, line=line, key=key,
                             hint=closest(val, ("debug", "info", "warning", "error")))
        setattr(cfg, key, float(val) if t == "float" else val)
    return cfg


def parse_listen(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"expected HOST:PORT or :PORT, got {addr!r}", key="--web.listen-address",
                         exit_code=EXIT_OPTIONS)
    return host.strip("[]"), int(port)


# ------------------------------------------------------------------------------------------------ HTTP
LANDING = """<!doctype html><html><head><title>gpu-agent</title></head><body>
<h1>gpu-agent {version}</h1><p>GPU, container and host metrics for Prometheus.</p>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li></ul></body></html>
"""


def release_free_heap() -> bool:
    """Hand the free pages inside glibc's heaps back to the kernel (``malloc_trim(0)``); False where the C library
    has no malloc_trim (musl). Start-up (imports, NVML's initialisation, the first collection) frees ~10 MiB that
    glibc then keeps in its main heap in about half the starts: measured on the H200 (Python 3.12.3, glibc 2.39),
    RSS was 62.8-63.0 MiB in 4 of 4 starts without a trim and 52.5-52.7 MiB in 4 of 4 with one (bench/agent/
    results/README.md, run 5). A trim after the first scrape makes the RSS the same from one start to the next."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


class _Handler(BaseHTTPRequestHandler):
    server: "AgentHTTPServer"
    protocol_version = "HTTP/1.1"
    server_version = f"gpu-agent/{__version__}"

    def log_message(self, fmt: str, *args: Any) -> None:  # no per-request logging (no secrets either)
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", extra={"WWW-Authenticate": 'Basic realm="gpu-agent"'})
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = render_metrics(self.server.registry)
            except Exception:
                log.exception("scrape failed")
                self._send(500, b"collection failed\n")
                return
            self._send(200, body, CONTENT_TYPE)
            self.server.scrape_served()
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/":
            self._send(200, LANDING.format(version=__version__).encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n")

    do_HEAD = do_GET


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a burst of new connections (50 scrapers at once on the H200, run 6)
    # overflowed it, and the dropped SYNs were retried after 1 s and 3 s (a 4.4 s scrape). The kernel caps this at
    # net.core.somaxconn.
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], registry: Any, web: WebConfig):
        self.registry = registry
        self.web = web
        self.auth = BasicAuth(web.basic_auth_users)
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self._heap_release = threading.Lock()  # taken by the first scrape, never given back: the trim runs once
        self.ssl_ctx = ssl_context(web) if web.tls else None
        host = addr[0]
        if host and ":" in host:
            self.address_family = socket.AF_INET6
        elif not host and socket.has_ipv6:  # ":PORT": every address, IPv6 and IPv4, where the host has IPv6
            self.address_family = socket.AF_INET6
            try:
                super().__init__(("::", addr[1]), _Handler)
                return
            except OSError:
                self.address_family = socket.AF_INET
        super().__init__(addr, _Handler)

    def scrape_served(self) -> None:
        """Called after each /metrics answer: the first one releases start-up's freed memory (release_free_heap),
        after the answer went out, so no scrape waits for it."""
        if self._heap_release.acquire(blocking=False):
            release_free_heap()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()

    def server_close(self) -> None:
        super().server_close()
        with self._conns_lock:  # keep-alive connections end with the server (as they do when the process exits)
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def finish_request(self, request: socket.socket, client_address: Any) -> None:
        try:  # headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.ssl_ctx is not None:
            request.settimeout(10)
            try:
                first = request.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first != b"\x16":  # not a TLS handshake: a plain HTTP request to the TLS port
                try:
                    request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                                    b"Content-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                except OSError:
                    pass
                return
            try:
                request = self.ssl_ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log.debug("TLS handshake from %s failed: %s", client_address, e)
                return
            request.settimeout(30)
        super().finish_request(request, client_address)


def build_agent(cfg: Config, nvml_module: Any = None) -> Any:
    from agent.collectors import Agent
    from agent.containers import ContainerSource, DockerClient
    from agent.nvml import NvmlSource
    src = None
    if cfg.nvml:
        if nvml_module is None:
            import pynvml as nvml_module  # noqa: N813
        src = NvmlSource(nvml_module, reinit_interval=cfg.reinit_interval_seconds,
                         slow_interval=cfg.slow_interval_seconds, pcie_throughput=cfg.pcie_throughput,
                         xid_events=cfg.xid_events)
    cs = ContainerSource(DockerClient(cfg.docker_socket, cfg.docker_timeout_seconds), cfg.proc_root) \
        if cfg.docker else None
    return Agent(src, cs, maintenance_file=cfg.maintenance_file, upgrade_state_file=cfg.upgrade_state_file,
                 collect_timeout=cfg.collect_timeout_seconds)


def make_server(cfg: Config, web: WebConfig, nvml_module: Any = None) -> tuple[AgentHTTPServer, Any]:
    from agent.collectors import registry_for
    agent = build_agent(cfg, nvml_module)
    host, port = parse_listen(cfg.listen_address)
    try:
        srv = AgentHTTPServer((host, port), registry_for(agent), web)
    except OSError as e:
        agent.close()
        raise InputError(f"cannot listen on {cfg.listen_address}: {e.strerror}", key="--web.listen-address",
                         exit_code=EXIT_OPTIONS) from None
    return srv, agent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu-agent", description="GPU, container and host metrics for Prometheus")
    p.add_argument("--config.file", dest="config_file", help="YAML settings (see agent/packaging/gpu-agent.yaml)")
    p.add_argument("--web.listen-address", dest="listen_address", help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    p.add_argument("--web.config.file", dest="web_config_file", help="exporter-toolkit web-config.yml (TLS, auth)")
    p.add_argument("--collector.pcie-throughput", dest="pcie_throughput", action="store_true", default=None,
                   help="read PCIe throughput (expensive; read in the background)")
    p.add_argument("--no-collector.docker", dest="docker", action="store_false", default=None)
    p.add_argument("--replay", help=argparse.SUPPRESS)  # a recorded fixture instead of the driver (demo, bench)
    p.add_argument("--replay-gpus", type=int, help=argparse.SUPPRESS)
    p.add_argument("--replay-latency", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--log.level", dest="log_level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--version", action="version", version=f"gpu-agent {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config_file) if args.config_file else Config()
        for k in ("listen_address", "web_config_file", "pcie_throughput", "docker", "log_level"):
            v = getattr(args, k)
            if v is not None:
                setattr(cfg, k, v)
        parse_listen(cfg.listen_address)
        web = load_web_config(cfg.web_config_file) if cfg.web_config_file else WebConfig()
        logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        nvml_module = None
        if args.replay:
            from agent.replay import ReplayNvml
            nvml_module = ReplayNvml.from_file(args.replay, gpus=args.replay_gpus, latency=args.replay_latency)
            nvml_module.init_error = None
        srv, agent = make_server(cfg, web, nvml_module)
    except InputError as e:
        print(f"gpu-agent: {e}", file=sys.stderr)
        return e.exit_code
    except ssl.SSLError as e:
        print(f"gpu-agent: {cfg.web_config_file}: tls_server_config: {e.reason or e}", file=sys.stderr)
        return EXIT_PARSE

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("gpu-agent %s listening on %s (%s)", __version__, cfg.listen_address, "TLS" if web.tls else "HTTP")
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
