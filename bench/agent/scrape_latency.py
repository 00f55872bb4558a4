"""gpu-agent scrape latency, one agent version against another on the same machine (issue 16 item 4, issue 15 F1).

    python3 bench/agent/scrape_latency.py OUTDIR [--variant NAME=DIR[@CONFIG]]... [--replay FIX --gpus N]
                                          [--seconds 20] [--spaced-n 100] [--b2b-n 2000] [--idle 300]

Each variant is an agent/ tree (DIR holds agent/; default: this checkout) started as ``python3 -m agent.server`` on
127.0.0.1 with real NVML (or --replay), the Docker collector off, and --config.file CONFIG where given (such as
``metrics_refresh_seconds: 1``), and measured in turn:

  b2b       one keep-alive connection, scrapes back to back (--b2b-n)
  spaced    one keep-alive connection, one scrape every 200 ms (--spaced-n)
  together  50 scrapers, each on its own keep-alive connection, all scraping at the same instants 5 times a second
            (ticks of one wall clock, shared by --procs client processes of 50/procs scrapers each), --seconds
  idle300   --idle connections left open (half silent, half a partial request: slow loris), then 20 scrapes on a
            new connection each

Latency is the client's: request sent to last byte of the answer. An error is a non-200, a body without the GPU
marker metric, a timeout (5 s) or a broken connection. The agent's CPU time per mode from /proc. Writes
OUTDIR/scrape-latency.json, .csv and .md.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench.agent_load import HEADERS, _cpu_s, _free_port, _pct, _read_response  # noqa: E402
from bench.common import machine_info, md_table  # noqa: E402

MARKER = b"gpufleet_gpu_up"


# ---------------------------------------------------------------------------------------------------- clients
async def _together(port: int, scrapers: int, interval: float, t0: float, seconds: float) -> tuple[list, list]:
    lat: list[float] = []
    errors: list[str] = []
    req = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{HEADERS}\r\n".encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        k = 0
        while True:
            at = t0 + k * interval
            k += 1
            if at >= t0 + seconds:
                break
            await asyncio.sleep(max(0.0, at - time.time()))
            t = time.perf_counter()
            try:
                writer.write(req)
                status, body, close = await asyncio.wait_for(_read_response(reader), 5.0)
                if status != 200 or MARKER not in body:
                    errors.append(f"status {status}")
                else:
                    lat.append(time.perf_counter() - t)
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                errors.append(type(e).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    await asyncio.gather(*(one() for _ in range(scrapers)))
    return lat, errors


def client_main(args: argparse.Namespace) -> int:
    lat, errors = asyncio.run(_together(args.port, args.scrapers, args.interval, args.t0, args.seconds))
    print(json.dumps({"lat": lat, "errors": errors}))
    return 0


def _scrape(conn: http.client.HTTPConnection) -> float:
    t = time.perf_counter()
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    body = r.read()
    dt = time.perf_counter() - t
    if r.status != 200 or MARKER not in body:
        raise RuntimeError(f"status {r.status}")
    return dt


def _serial(port: int, n: int, gap: float) -> tuple[list, list]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    lat, errors = [], []
    nxt = time.perf_counter()
    for _ in range(n):
        if gap:
            nxt += gap
            time.sleep(max(0.0, nxt - time.perf_counter()))
        try:
            lat.append(_scrape(conn))
        except (OSError, RuntimeError, http.client.HTTPException) as e:
            errors.append(str(e)[:80])
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.close()
    return lat, errors


def _idle(port: int, n: int) -> tuple[list, list]:
    socks, lat, errors = [], [], []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-slow: ")
            socks.append(s)
        time.sleep(0.5)
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                lat.append(_scrape(conn))
            except (OSError, RuntimeError, http.client.HTTPException) as e:
                errors.append(str(e)[:80])
            conn.close()
    finally:
        for s in socks:
            s.close()
    return lat, errors


# ---------------------------------------------------------------------------------------------------- runs
def _start(tree: str, port: int, args: argparse.Namespace, config: str = "") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agent.server", "--web.listen-address", f"127.0.0.1:{port}",
           "--no-collector.docker", "--log.level", "warning"] + (["--config.file", config] if config else [])
    if args.replay:
        cmd += ["--replay", os.path.abspath(args.replay), "--replay-gpus", str(args.gpus), "--replay-latency"]
    env = dict(os.environ, PYTHONPATH=tree)
    p = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                if r.status == 200:
                    return p
        except OSError:
            if p.poll() is not None:
                raise SystemExit(f"agent in {tree} exited: {p.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    raise SystemExit(f"agent in {tree} did not answer")


def _row(variant: str, mode: str, lat: list, errors: list, cpu: float) -> dict:
    ms = [x * 1000 for x in lat]
    return {"variant": variant, "mode": mode, "ok": len(ms), "errors": len(errors),
            "error_samples": sorted(set(errors))[:5], "p50_ms": round(_pct(ms, 50), 3),
            "p90_ms": round(_pct(ms, 90), 3), "p99_ms": round(_pct(ms, 99), 3),
            "max_ms": round(max(ms), 3) if ms else None, "agent_cpu_s": round(cpu, 3)}


def run_variant(name: str, tree: str, args: argparse.Namespace) -> list[dict]:
    port = _free_port()
    tree, _, config = tree.partition("@")
    agent = _start(os.path.abspath(tree), port, args, os.path.abspath(config) if config else "")
    rows = []
    try:
        _serial(port, 50, 0)   # warm up
        for mode in args.modes:
            cpu0 = _cpu_s(agent.pid)
            if mode == "b2b":
                lat, err = _serial(port, args.b2b_n, 0)
            elif mode == "spaced":
                lat, err = _serial(port, args.spaced_n, 0.2)
            elif mode == "idle300":
                lat, err = _idle(port, args.idle)
            else:
                lat, err = _run_together(port, args)
            rows.append(_row(name, mode, lat, err, _cpu_s(agent.pid) - cpu0))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
    return rows


def _run_together(port: int, args: argparse.Namespace) -> tuple[list, list]:
    per = args.scrapers // args.procs
    t0 = time.time() + 1.0 + args.procs * 0.1     # every client process connected and waiting by then
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "-", "--client", "--port", str(port),
                               "--scrapers", str(per), "--interval", str(args.interval), "--t0", repr(t0),
                               "--seconds", str(args.seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(args.procs)]
    lat, errors = [], []
    for p in procs:
        out, _ = p.communicate(timeout=args.seconds + 60)
        res = json.loads(out.strip().splitlines()[-1])
        lat += res["lat"]
        errors += res["errors"]
    return lat, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--variant", action="append", default=[], help="NAME=DIR[@CONFIG] (DIR holds agent/)")
    ap.add_argument("--modes", nargs="+", default=["b2b", "spaced", "together", "idle300"])
    ap.add_argument("--replay")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--scrapers", type=int, default=50)
    ap.add_argument("--procs", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--spaced-n", type=int, default=100)
    ap.add_argument("--b2b-n", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=300)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        return client_main(args)
    variants = [v.split("=", 1) for v in args.variant] or [["working-tree", ROOT]]
    payload = {"machine": machine_info(), "gpu": _smi(), "replay": args.replay or "real NVML",
               "args": {k: v for k, v in vars(args).items() if k not in ("client", "port", "t0", "outdir")},
               "rows": []}
    for name, tree in variants:
        payload["rows"] += run_variant(name, tree, args)
    os.makedirs(args.outdir, exist_ok=True)
    base = os.path.join(args.outdir, "scrape-latency")
    with open(base + ".json", "w") as f:
        json.dump(payload, f, indent=1)
    cols = ["variant", "mode", "ok", "errors", "p50_ms", "p90_ms", "p99_ms", "max_ms", "agent_cpu_s"]
    with open(base + ".csv", "w") as f:
        f.write(",".join(cols) + "\n")
        for r in payload["rows"]:
            f.write(",".join(str(r[c]) for c in cols) + "\n")
    md = (f"# gpu-agent scrape latency — {payload['machine']['date']}\n\n{payload['gpu']}; "
          f"{payload['machine']['nproc']} CPUs; Python {payload['machine']['python']}; {payload['replay']}\n\n"
          + md_table(cols, [[r[c] for c in cols] for r in payload["rows"]]))
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


def _smi() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "no GPU"
    except OSError:
        return "no nvidia-smi"


if __name__ == "__main__":
    sys.exit(main())
