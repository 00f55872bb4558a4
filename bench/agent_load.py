"""gpu-agent under load: 50 concurrent scrapers on loopback for 60 s (bounded in count and time).

    python3 -m bench.agent_load [--scrapers 50] [--seconds 60] [--gpus 8] [--modes paced closed]

Starts ``gpu-agent`` (python3 -m agent.server) on 127.0.0.1 with the agent's replay of a recorded H100 NVML session
(``--replay`` = the newest recording found under tests/fixtures, agent/ or bench/agent/, ``--replay-gpus N``;
no GPU on this machine), the Docker collector off,
and runs the load from a separate process (asyncio, one keep-alive connection per scraper, Prometheus' Accept and
Accept-Encoding: gzip headers). Two load shapes, each for --seconds:

  paced   every scraper scrapes once per --interval (default 1 s), start times spread over the interval:
          50 scrapers = 50 scrapes/s, far more than any real deployment (Prometheus: one scrape per 15-30 s per
          server). The target (p99 <= 20 ms, 0 errors) is judged on this one.
  closed  every scraper scrapes again as soon as its answer is in (saturation): throughput, and latency when
          50 requests are always queued on a 2-core machine.

Latency is measured by the client (send to last byte); an error is any non-200, a body without GPU metrics,
a timeout (--timeout, 5 s) or a broken connection. RSS (VmRSS, and VmHWM) of the agent before and after.
Writes bench/results/agent-load-<stamp>.json (summary) and .md; the full record under bench/raw/ (not committed).
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import REPO, loadavg, machine_info, md_table, write_results

HEADERS = ("Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1\r\n"
           "Accept-Encoding: gzip\r\nUser-Agent: gpufleet-bench/1\r\n")


# ---------------------------------------------------------------------------------------------------- client

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdr = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdr[k.strip().lower()] = v.strip()
    if "content-length" in hdr:
        body = await reader.readexactly(int(hdr["content-length"]))
    elif hdr.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    if hdr.get("content-encoding") == "gzip":
        import gzip  # noqa: PLC0415
        body = gzip.decompress(body)
    return status, body, hdr.get("connection", "").lower() == "close"


async def _scraper(idx: int, host: str, port: int, path: str, mode: str, interval: float, t_end: float,
                   timeout: float, lat: list, errors: list, marker: bytes) -> None:
    reader = writer = None
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{HEADERS}\r\n".encode()
    next_at = time.perf_counter() + (random.random() * interval if mode == "paced" else 0)
    while True:
        if mode == "paced":
            now = time.perf_counter()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at += interval
        if time.perf_counter() >= t_end:
            break
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(req)
            status, body, close = await asyncio.wait_for(_read_response(reader), timeout)
            dt = time.perf_counter() - t0
            if status != 200 or marker not in body:
                errors.append(f"status {status}, {len(body)} bytes")
            else:
                lat.append(dt)
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
            errors.append(f"{type(err).__name__}: {err}"[:200])
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def _load(host, port, path, scrapers, seconds, mode, interval, timeout, marker):
    lat: list[float] = []
    errors: list[str] = []
    t_start = time.perf_counter()
    t_end = t_start + seconds
    await asyncio.gather(*(_scraper(i, host, port, path, mode, interval, t_end, timeout, lat, errors, marker)
                           for i in range(scrapers)))
    return lat, errors, time.perf_counter() - t_start


def client_main(args) -> int:
    """Run in a child process: print one JSON line with latencies and errors."""
    random.seed(1)
    lat, errors, took = asyncio.run(_load(args.host, args.port, "/metrics", args.scrapers, args.seconds, args.mode,
                                          args.interval, args.timeout, args.marker.encode()))
    print(json.dumps({"lat": lat, "errors": errors, "took": took}))
    return 0


# ---------------------------------------------------------------------------------------------------- server side

def find_recording() -> str:
    """The agent's NVML recording (JSON with "calls"), from the agent's fixtures; newest first."""
    cands = sorted(set(glob.glob(str(REPO / "tests/fixtures/**/*.json"), recursive=True)
                       + glob.glob(str(REPO / "agent/**/*.json"), recursive=True)
                       + glob.glob(str(REPO / "bench/agent/**/*.json"), recursive=True)),
                   key=os.path.getmtime, reverse=True)
    for c in cands:
        try:
            with open(c) as fh:
                head = fh.read(4096)
            if '"calls"' in head or ('"meta"' in head and '"calls"' in open(c).read()):
                return c
        except OSError:
            continue
    raise SystemExit("no NVML recording found (a JSON with \"calls\", see agent/replay.py); pass --replay FILE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) if k == "Threads" else round(int(v.split()[0]) / 1024, 1)
    return out


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scrapers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", type=float, default=1.0, help="paced mode: seconds between a scraper's scrapes")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--gpus", type=int, default=8, help="replayed GPUs")
    ap.add_argument("--replay", default=None, help="NVML recording (default: tests/fixtures/gpu/h100-*.json)")
    ap.add_argument("--no-replay-latency", action="store_true", help="do not replay the recorded NVML call times")
    ap.add_argument("--real-nvml", action="store_true", help="read the real GPUs (GPU machine) instead of a replay")
    ap.add_argument("--modes", nargs="+", default=["paced", "closed"], choices=("paced", "closed"))
    ap.add_argument("--stem", default="agent-load")
    # internal: the client process
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--marker", default="gpu", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        return client_main(args)

    replay = None if args.real_nvml else (args.replay or find_recording())
    port = _free_port()
    cmd = [sys.executable, "-m", "agent.server", "--web.listen-address", f"127.0.0.1:{port}",
           "--no-collector.docker", "--log.level", "warning"]
    if replay:
        cmd += ["--replay", replay, "--replay-gpus", str(args.gpus)]
        if not args.no_replay_latency:
            cmd.append("--replay-latency")
    payload = {"machine": machine_info(), "agent_cmd": cmd, "scrapers": args.scrapers, "seconds": args.seconds,
               "interval": args.interval, "gpus": args.gpus if replay else "real",
               "replay": os.path.relpath(replay, REPO) if replay else "real NVML (no replay)", "runs": []}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    agent = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        body = b""
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read()
                break
            except OSError:
                if agent.poll() is not None:
                    raise RuntimeError("agent exited: " + agent.stdout.read().decode(errors="replace")[-2000:])
                time.sleep(0.1)
        # a metric family every scrape must carry: the first sample line naming a GPU
        sample = next((ln for ln in body.decode().splitlines() if ln and not ln.startswith("#") and "gpu" in ln),
                      "")
        marker = sample.split("{")[0].split(" ")[0] or "gpu"
        payload["marker_metric"] = marker
        payload["metrics_bytes"] = len(body)
        payload["series"] = sum(1 for ln in body.decode().splitlines() if ln and not ln.startswith("#"))
        time.sleep(1)
        payload["rss_before"] = _mem(agent.pid)
        for mode in args.modes:
            cpu0, la0 = _cpu_s(agent.pid), loadavg()
            mem0 = _mem(agent.pid)
            r = subprocess.run([sys.executable, "-m", "bench.agent_load", "--client", "--port", str(port),
                                "--mode", mode, "--scrapers", str(args.scrapers), "--seconds", str(args.seconds),
                                "--interval", str(args.interval), "--timeout", str(args.timeout),
                                "--marker", marker], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=args.seconds + 120)
            if r.returncode != 0:
                raise RuntimeError(f"load client failed: {r.stderr[-2000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            lat = res["lat"]
            run = {"mode": mode, "loadavg_before": la0, "requests_ok": len(lat), "errors": len(res["errors"]),
                   "error_samples": sorted(set(res["errors"]))[:10], "took_s": round(res["took"], 2),
                   "rate_per_s": round(len(lat) / res["took"], 1),
                   "p50_ms": round(_pct(lat, 50) * 1000, 2), "p90_ms": round(_pct(lat, 90) * 1000, 2),
                   "p99_ms": round(_pct(lat, 99) * 1000, 2), "max_ms": round(max(lat) * 1000, 2) if lat else None,
                   "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
                   "agent_cpu_s": round(_cpu_s(agent.pid) - cpu0, 2), "rss_before": mem0,
                   "rss_after": _mem(agent.pid)}
            payload["runs"].append(run)
            print(json.dumps(run), flush=True)
        payload["rss_after"] = _mem(agent.pid)
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
    payload["machine"]["loadavg_end"] = loadavg()
    md = render(payload)
    print(md)
    print("wrote " + ", ".join(map(str, write_results(args.stem, payload, md))))
    return 0


def render(p: dict) -> str:
    m = p["machine"]
    rows = []
    for r in p["runs"]:
        verdict = ""
        if r["mode"] == "paced":
            ok = r["p99_ms"] <= 20 and r["errors"] == 0
            verdict = "met" if ok else f"MISSED (p99 {r['p99_ms']:.1f} ms vs 20 ms, {r['errors']} errors)"
        rows.append([r["mode"], r["requests_ok"], r["errors"], r["rate_per_s"], r["p50_ms"], r["p99_ms"],
                     r["max_ms"], r["agent_cpu_s"], f"{r['rss_before']['VmRSS']} → {r['rss_after']['VmRSS']}",
                     verdict])
    return (f"# gpu-agent under load — {m['date']}\n\n"
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_mib']} MiB, load average at start "
            f"{m['loadavg_start']}, at end {m['loadavg_end']} (what else ran shows in the load average).\n"
            + (f"Agent: replay of {p['replay']} × {p['gpus']} GPUs (recorded NVML call times replayed), Docker "
               if p["gpus"] != "real" else "Agent: real NVML, the machine's GPUs, Docker ")
            + f"collector off; /metrics = {p['metrics_bytes']} bytes, {p['series']} samples.\n"
            f"Load: {p['scrapers']} concurrent scrapers for {p['seconds']} s each mode, one keep-alive connection "
            f"each, gzip accepted; paced = one scrape per scraper per {p['interval']} s.\n\n"
            + md_table(["mode", "ok", "errors", "req/s", "p50 ms", "p99 ms", "max ms", "agent CPU s",
                        "agent RSS MiB before → after", "target p99 ≤ 20 ms, 0 errors"], rows))


if __name__ == "__main__":
    sys.exit(main())
