"""gpu-agent: the command. Settings from flags and a YAML config file (Config), the web config (TLS, basic auth:
agent/webconfig.py), the collectors (agent/collectors.py) served by the bounded HTTP server (agent/httpd.py) with
the pages of agent/pages.py.

Listens on 127.0.0.1:10240 unless told otherwise (``--web.listen-address``, ``listen_address``). Port 9835 is
taken (nvidia_gpu_exporter) as is 9400 (dcgm-exporter); see docs/agent.md for ours.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass, fields
from typing import Any

from agent import __version__
from agent.errors import EXIT_OPTIONS, InputError, closest
from agent.hostpaths import AGENT_PORT, MAINTENANCE_MARKER, UPGRADE_STATE_FILE
from agent.httpd import BoundedHTTPServer
from agent.pages import AgentPages
from agent.webconfig import BasicAuth, WebConfig, load_mapping, load_web_config, ssl_context

log = logging.getLogger("gpu-agent")

DEFAULT_LISTEN = f"127.0.0.1:{AGENT_PORT}"   # loopback unless asked: the web config's TLS and auth are opt-in
HTTP_WORKERS = 4    # threads that answer complete requests; the unit's TasksMax=64 leaves room for NVML's

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
    max_connections: int = 256                 # then the oldest idle connection is closed (agent/httpd.py)
    header_timeout_seconds: float = 5.0        # request line and headers (and the TLS handshake) within this
    idle_timeout_seconds: float = 90.0         # a keep-alive connection idle this long is closed
    metrics_refresh_seconds: float = 0.0       # opt-in: /metrics made in the background this often (agent/pages.py)


def load_config(path: str) -> Config:
    doc = load_mapping(path)
    cfg = Config()
    if doc is None:
        return cfg
    types = {f.name: f.type for f in fields(Config)}
    for key, val in doc.items():
        line = doc.line(key)
        if key not in types:
            raise InputError("unknown key", file=path, line=line, key=str(key), choices=types)
        t = types[key]
        ok = (isinstance(val, bool) if t == "bool" else
              isinstance(val, (int, float)) and not isinstance(val, bool) and val > 0 if t == "float" else
              isinstance(val, int) and not isinstance(val, bool) and val > 0 if t == "int" else
              isinstance(val, str))
        if not ok:
            want = {"bool": "true or false", "float": "a positive number", "int": "a positive whole number",
                    "str": "a string"}[t]
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
                 collect_timeout=cfg.collect_timeout_seconds, metrics_refresh=cfg.metrics_refresh_seconds)


def make_server(cfg: Config, web: WebConfig, nvml_module: Any = None) -> tuple[BoundedHTTPServer, Any]:
    from agent.collectors import registry_for
    host, port = parse_listen(cfg.listen_address)
    ctx = ssl_context(web) if web.tls else None
    agent = build_agent(cfg, nvml_module)
    pages = AgentPages(registry_for(agent), BasicAuth(web.basic_auth_users, max_waiting=HTTP_WORKERS // 2),
                       refresh=cfg.metrics_refresh_seconds)
    try:
        srv = BoundedHTTPServer((host, port), pages, ssl_ctx=ctx, workers=HTTP_WORKERS,
                                max_connections=cfg.max_connections, header_timeout=cfg.header_timeout_seconds,
                                idle_timeout=cfg.idle_timeout_seconds, server_name=f"gpu-agent/{__version__}")
    except OSError as e:
        pages.scrape.close()
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

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("gpu-agent %s listening on %s (%s%s)", __version__, cfg.listen_address, "TLS" if web.tls else "HTTP",
             ", basic auth" if web.basic_auth_users else "")
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
        srv.app.scrape.close()
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
