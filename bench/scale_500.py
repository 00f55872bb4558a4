"""The controller alone against up to 500 SSH endpoints on one machine: time and memory per host.

    python3 -m bench.scale_500 [--steps 50 100 250 500] [--per-container 100] [--forks 0 (= hosts)]

Endpoints: real OpenSSH daemons, one per endpoint, each on its own port with its own ed25519 host key (so every
endpoint costs the controller a full SSH handshake, host key check against known_hosts, auth and sessions, as a
host does), packed --per-container to a container (5 containers for 500) on a Docker network made here. They are
NOT full hosts: no systemd per endpoint, and the endpoints of one container share its filesystem and CPU, so the
play writes only under /tmp/gpufleet-bench/<inventory_hostname>. What this measures is the controller: its wall
time, CPU and peak memory as the fleet grows, with the endpoints as cheap as one 2-core machine allows
(an idle sshd listener costs ~1 MiB PSS; a per-host systemd container ~20 MB and cannot reach 500 here).
For each step: (a) first apply of bench/workload/scale.yml, (b) idempotent re-run, (c) facts.
Writes bench/results/scale-<stamp>.json (summary) and .md; the full record (each run's output tails, which name
any endpoint that failed) under bench/raw/ (not committed). Everything is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import (PREFIX, REPO, fixed_rlimit_nofile, loadavg, machine_info, md_table, measure,
                          tool_versions, finish, compile_gpufleet)
from bench.run_provisioner import DEFAULT_VENV, WORKLOAD, _gpufleet_cmd, _gpufleet_help

NET = f"{PREFIX}-scale-net"
BASE_PORT = 2200

SSHD_CONFIG = """Port @PORT@
HostKey /etc/ssh/gpufleet-bench/key@PORT@
PidFile /run/gpufleet-bench-sshd-@PORT@.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
MaxStartups 100:30:200
Subsystem sftp /usr/lib/openssh/sftp-server
"""

ENTRY = r"""set -e
mkdir -p /run/sshd /root/.ssh /etc/ssh/gpufleet-bench
cp /bench/authorized_keys /root/.ssh/authorized_keys; chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys
for port in $(seq {first} {last}); do
  ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/gpufleet-bench/key$port
  sed "s/@PORT@/$port/g" /bench/sshd_config.in > /etc/ssh/gpufleet-bench/sshd_config_$port
  /usr/sbin/sshd -f /etc/ssh/gpufleet-bench/sshd_config_$port
done
touch /run/gpufleet-bench-ready
exec sleep infinity
"""


def image() -> str:
    from provision.testbed import ensure_image  # noqa: PLC0415 - the testbed's Debian image has sshd
    return ensure_image(log=lambda m: None)


def start_endpoints(total: int, per: int, work: Path) -> tuple[list[tuple[str, str, int]], Path, Path, list[str]]:
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    bench_dir = work / "mount"
    bench_dir.mkdir()
    (bench_dir / "authorized_keys").write_text((work / "id_ed25519.pub").read_text())
    (bench_dir / "sshd_config.in").write_text(SSHD_CONFIG)
    os.chmod(bench_dir, 0o755)
    img = image()
    subprocess.run(["docker", "network", "create", "--label", f"{PREFIX}=1", NET], capture_output=True)
    names = []
    ncont = (total + per - 1) // per
    for c in range(ncont):
        count = min(per, total - c * per)
        name = f"{PREFIX}-scale-{c:02d}"
        names.append(name)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "run", "-d", "--name", name, "--label", f"{PREFIX}=1", "--network", NET,
                        "--tmpfs", "/run", "-v", f"{bench_dir}:/bench:ro", "--entrypoint", "/bin/sh", img, "-c",
                        ENTRY.format(first=BASE_PORT, last=BASE_PORT + count - 1)], check=True, capture_output=True)
    endpoints, kh_lines = [], []
    for c, name in enumerate(names):
        for _ in range(600):
            if subprocess.run(["docker", "exec", name, "test", "-f", "/run/gpufleet-bench-ready"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{name}: endpoints did not start")
        ip = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                             name], check=True, capture_output=True, text=True).stdout.strip()
        pubs = subprocess.run(["docker", "exec", name, "sh", "-c",
                               "for f in /etc/ssh/gpufleet-bench/key*.pub; do echo ${f##*key} $(cat $f); done"],
                              check=True, capture_output=True, text=True).stdout
        for line in pubs.splitlines():
            port_s, typ, b64 = line.split()[:3]
            port = int(port_s.split(".")[0])
            kh_lines.append(f"[{ip}]:{port} {typ} {b64}")
            endpoints.append((f"e{c:02d}-{port - BASE_PORT:03d}", ip, port))
    kh = work / "known_hosts"
    kh.write_text("\n".join(kh_lines) + "\n")
    return sorted(endpoints), key, kh, names


def stop_endpoints(names: list[str]) -> None:
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
    subprocess.run(["docker", "network", "rm", NET], capture_output=True)


def write_inventory(path: Path, endpoints, key: Path, kh: Path) -> None:
    hosts = {name: {"ansible_host": ip, "ansible_port": port, "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(key), "ansible_ssh_known_hosts_file": str(kh),
                    "ansible_ssh_common_args": f"-o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes",
                    "bench_port": 9477}
             for name, ip, port in endpoints}
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))


def pyinfra_inventory(path: Path, endpoints, key: Path, kh: Path) -> None:
    lines = ["hosts = ["]
    for name, ip, port in endpoints:
        lines.append(f"    ({name!r}, {{'ssh_hostname': {ip!r}, 'ssh_port': {port}, 'ssh_user': 'root', "
                     f"'ssh_key': {str(key)!r}, 'ssh_known_hosts_file': {str(kh)!r}, "
                     "'ssh_strict_host_key_checking': 'yes'}),")
    lines.append("]")
    path.write_text("\n".join(lines) + "\n")


def clean_endpoints(names: list[str]) -> None:
    for name in names:
        subprocess.run(["docker", "exec", name, "rm", "-rf", "/tmp/gpufleet-bench"], capture_output=True)


def run_step(n: int, endpoints, key, kh, work: Path, forks: int, tools: list[str], venv: Path,
             names: list[str], phases: tuple = ("a", "b", "c"), connect_timeout: int = 0) -> dict:
    inv = work / f"inventory-{n}.yml"
    write_inventory(inv, endpoints[:n], key, kh)
    f = forks or n
    step: dict = {"hosts": n, "forks": f, "loadavg_before": loadavg(), "tools": {}}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for tool in tools:
        if tool in ("gpufleet", "gpufleet-khcache"):
            fk = ["--forks", str(f)] if "--forks" in _gpufleet_help("apply") else []
            if connect_timeout:
                fk += ["--connect-timeout", str(connect_timeout)]
            fk += ["--no-retry-file"]
            cli = _gpufleet_cmd() if tool == "gpufleet" else [sys.executable, "-m", "bench.khcache"]
            apply = cli + ["apply", str(inv), "-p", str(WORKLOAD / "scale.yml"), *fk]
            fkf = ["--forks", str(f)] if "--forks" in _gpufleet_help("facts") else []
            if connect_timeout:
                fkf += ["--connect-timeout", str(connect_timeout)]
            facts = cli + ["facts", "-i", str(inv), *fkf]
        else:  # pyinfra, for reference
            pinv = work / f"inventory-{n}.py"
            pyinfra_inventory(pinv, endpoints[:n], key, kh)
            deploy = work / "scale_deploy.py"
            deploy.write_text(SCALE_PYINFRA.format(files=str(WORKLOAD / "files")))
            apply = [str(venv / "bin/pyinfra"), "-y", "--parallel", str(f), str(pinv), str(deploy)]
            facts = [str(venv / "bin/pyinfra"), "-y", "--parallel", str(f), str(pinv), "fact", "server.Hostname",
                     "server.Arch", "server.KernelVersion", "server.LinuxDistribution", "server.Uptime"]
        clean_endpoints(names)  # (a) is a real first apply for every tool
        res = {}
        for phase, argv in (("a_first_apply", apply), ("b_rerun", apply), ("c_facts", facts)):
            if phase[0] not in phases:
                continue
            print(f"[{n} endpoints] {tool} {phase} ...", flush=True)
            m = measure(argv, cwd=WORKLOAD, env=env, timeout=1200)
            d = m.as_dict()
            d["per_host_ms"] = round(m.wall_s / n * 1000, 1)
            d["cpu_per_host_ms"] = round(m.cpu_s / n * 1000, 1)
            d["stdout_tail"] = d["stdout_tail"][-1200:]
            res[phase] = d
            print(f"    wall {m.wall_s}s cpu {m.cpu_s:.1f}s maxrss {m.maxrss_mib} MiB rc {m.rc}", flush=True)
        step["tools"][tool] = res
    return step


SCALE_PYINFRA = '''from pyinfra import host
from pyinfra.operations import files
d = "/tmp/gpufleet-bench/" + host.name
files.directory(name="folder", path=d, mode="755")
files.template(name="config file", src="{files}/bench.conf.j2", dest=d + "/bench.conf", mode="644",
               inventory_hostname=host.name, bench_port=9477)
files.line(name="environment line", path=d + "/env", line="^BENCH_LEVEL=", replace="BENCH_LEVEL=3")
files.put(name="static file", src=__import__("io").StringIO("managed by the gpufleet scale benchmark\\n"),
          dest=d + "/motd", mode="644")
'''


def render(p: dict) -> str:
    m = p["machine"]
    rows = []
    prev: dict = {}
    for s in p["steps"]:
        for tool, r in s["tools"].items():
            for phase in ("a_first_apply", "b_rerun", "c_facts"):
                if phase not in r:
                    continue
                x = r[phase]
                last = prev.get((tool, phase))
                marginal = "-"
                if last:  # memory added per extra host since the previous step
                    marginal = round((x["maxrss_mib"] - last[1]) / (s["hosts"] - last[0]), 3)
                prev[(tool, phase)] = (s["hosts"], x["maxrss_mib"])
                rows.append([s["hosts"], s["forks"], tool, phase[0], f"{x['wall_s']:.1f}", x["per_host_ms"],
                             f"{x['cpu_s']:.1f}", x["cpu_per_host_ms"], x["maxrss_mib"], marginal, x["rc"]])
    return (f"# Controller at scale — {m['date']}\n\n"
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_mib']} MiB, load average at start "
            f"{m['loadavg_start']}, at end {m.get('loadavg_end')} (shared machine; the endpoints run on it too).\n"
            f"Endpoints: {p['endpoints']} sshd processes, {p['per_container']} per container (see scale_500.py); "
            f"gpufleet connect timeout: {p.get('connect_timeout')}.\n"
            f"Versions: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items()) + "\n\n"
            + md_table(["hosts", "forks", "tool", "phase", "wall s", "ms/host", "CPU s", "CPU ms/host",
                        "peak RSS MiB", "+MiB per extra host", "rc"], rows)
            + "\nTarget: controller RSS < 200 MB at 500 hosts.\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 250, 500])
    ap.add_argument("--per-container", type=int, default=100)
    ap.add_argument("--forks", type=int, default=0, help="0: as many as hosts")
    ap.add_argument("--tools", nargs="+", default=["gpufleet"], choices=("gpufleet", "gpufleet-khcache", "pyinfra"),
                    help="gpufleet-khcache: gpufleet with proposed fix 1 applied from outside (bench/khcache.py)")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--stem", default="scale")
    ap.add_argument("--phases", default="abc", help="which of a (first apply), b (re-run), c (facts)")
    ap.add_argument("--connect-timeout", type=int, default=0, help="gpufleet --connect-timeout (0: its default)")
    args = ap.parse_args(argv)
    fixed_rlimit_nofile()
    bytecode = compile_gpufleet()
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-scale-"))
    payload = {"machine": machine_info(), "versions": tool_versions(args.venv), "per_container": args.per_container,
               "phases": args.phases, "connect_timeout": args.connect_timeout or "gpufleet default (10 s)",
               "endpoints": max(args.steps), "gpufleet_bytecode": bytecode, "steps": []}
    names: list[str] = []
    try:
        t0 = time.perf_counter()
        endpoints, key, kh, names = start_endpoints(max(args.steps), args.per_container, work)
        payload["endpoints_up_s"] = round(time.perf_counter() - t0, 1)
        for n in sorted(args.steps):
            payload["steps"].append(run_step(n, endpoints, key, kh, work, args.forks, args.tools, args.venv, names,
                                             tuple(args.phases), args.connect_timeout))
    finally:
        stop_endpoints(names)
        subprocess.run(["rm", "-rf", str(work)])
        finish(args.stem, payload, "steps", render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
