"""Images of real size: a generated image (random layers, >= 2 GB) from the controller to testbed hosts with Docker.

    python3 -m bench.run_images [--layers 4 --layer-mb 520 --hosts 8]

Untimed: the image is built locally (``FROM`` an image already on this machine, ``RUN head -c ... /dev/urandom``
layers: no registry is pulled from), N docker-capable testbed hosts come up and get docker.io from the testbed's
apt cache. Timed, each on hosts that do not hold the image (removed between runs):

* baseline: ``docker save IMAGE | ssh host docker load`` (OpenSSH), one host;
* gpufleet, one host, cold: ``provision apply`` of a gpu_image task (source stream, via auto: the host pulls
  from the controller's registry), the controller's ``docker save`` into its cache included;
* gpufleet, one host, warm (the saved tarball cached), and through the connection (via ssh) for comparison;
* gpufleet, N hosts at once, warm; then its re-run (every host holds the image id: changed=0); then N hosts
  through the connections (via ssh), for comparison.

Each run's controller RSS peak is the waited process's ru_maxrss (the provision process; its children are the
docker CLI) and the sampled VmHWM of the provision process. Writes bench/results/images-<stamp>.md and .csv;
the full record (output tails with the -v progress lines) under bench/raw/. Removes the image, its cached
tarball and the testbed at the end.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time

from bench.common import RAW, REPO, RESULTS, loadavg, machine_info, md_table, measure

BASE = "gpufleet-agenttest-busybox:1"
PLAYBOOK = """- hosts: "{{ bench_hosts }}"
  gather_facts: false
  tasks:
    - name: image
      gpu_image: {image: "{{ bench_image }}", source: stream, via: "{{ bench_via }}", check_gpus: false}
"""


def run(cmd: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd[:120]}: {proc.stderr.strip()[-400:]}")
    return proc


def build_image(tag: str, layers: int, layer_mb: int) -> str:
    df = "\n".join([f"FROM {BASE}"] + [f"RUN head -c {layer_mb * 1000 * 1000} /dev/urandom > /random{i}"
                                       for i in range(layers)]) + "\n"
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=df.encode(), check=True, capture_output=True)
    return run(f"docker image inspect -f '{{{{.Id}}}}' {tag}").stdout.strip()


def vmhwm_sampler(peak: dict, stop: threading.Event) -> None:
    """VmHWM (its own peak RSS) of our child running provision.cli, read every 0.2 s until it ends."""
    me = str(os.getpid())
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[1] != me:
                        continue
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"provision.cli" not in fh.read():
                        continue
                with open(f"/proc/{pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            peak["kib"] = max(peak.get("kib", 0), int(line.split()[1]))
            except (OSError, IndexError):
                pass
        stop.wait(0.2)


def testbed_cpu_s(ids: list[str]) -> float:
    """CPU seconds used so far by these containers (cgroup v1 cpuacct; 0 where unreadable): our hosts only, not
    the other containers on the machine."""
    total = 0
    for cid in ids:
        try:
            with open(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage") as fh:
                total += int(fh.read())
        except (OSError, ValueError):
            pass
    return total / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mb", type=int, default=520)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the testbed and image (debugging)")
    a = ap.parse_args(argv)

    from provision.gpu.images import IMAGE_CACHE
    from provision.testbed import HostSpec, Testbed

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = RAW / f"images-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    tag = f"gpufleet-bench-big:{stamp.lower()}"
    payload = {"machine": machine_info(), "params": vars(a), "runs": []}
    print(f"df before: {run('df -h / | tail -1').stdout.strip()}", flush=True)
    t0 = time.monotonic()
    image_id = build_image(tag, a.layers, a.layer_mb)
    size = int(run(f"docker image inspect -f '{{{{.Size}}}}' {tag}").stdout)
    payload["image"] = {"tag": tag, "id": image_id, "bytes": size, "build_s": round(time.monotonic() - t0, 1)}
    print(f"image {tag} {size / 1e9:.2f} GB built in {time.monotonic() - t0:.0f}s", flush=True)
    tb = Testbed("bimg", workdir=work / "testbed", log=lambda m: None)
    names = [f"h{i + 1}" for i in range(a.hosts)]
    try:
        tb.up([HostSpec(n, docker=True) for n in names])
        procs = [subprocess.Popen(["docker", "exec", tb.container(n), "sh", "-c",
                                   "DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/tmp/apt.log "
                                   "2>&1 && systemctl is-active docker"], stdout=subprocess.DEVNULL)
                 for n in names]
        assert all(p.wait() == 0 for p in procs), "docker.io did not install on every host"
        inv = tb.write_inventory()
        ids = [run(f"docker inspect -f '{{{{.Id}}}}' {tb.container(n)}").stdout.strip() for n in names]
        host_cpu = [0.0]
        pb = work / "image.yaml"
        pb.write_text(PLAYBOOK)
        h1 = tb.hosts["h1"]
        ssh = (f"ssh -i {tb.key_path} -p {h1.port} -o UserKnownHostsFile={tb.known_hosts_path} "
               f"-o StrictHostKeyChecking=yes -o BatchMode=yes root@{h1.address}")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

        def clean(hosts):
            for n in hosts:
                tb.exec(n, f"docker image rm -f {image_id} >/dev/null 2>&1; docker image prune -f >/dev/null")
            run("sync")

        def record(name, m, hosts, extra=None):
            row = {"run": name, "hosts": hosts, "rc": m.rc, "wall_s": m.wall_s, "cpu_s": round(m.cpu_s, 1),
                   "hosts_cpu_s": round(testbed_cpu_s(ids) - host_cpu[0], 1),
                   "controller_maxrss_mib": m.maxrss_mib, "loadavg": loadavg(), **(extra or {})}
            payload["runs"].append({**row, "stdout_tail": m.stdout_tail, "stderr_tail": m.stderr_tail})
            print(json.dumps(row), flush=True)
            if m.rc != 0:
                print(m.stdout_tail[-3000:], m.stderr_tail[-2000:], file=sys.stderr)
            return row

        def gpufleet(name, hosts: list[str], via: str):
            argv = [sys.executable, "-m", "provision.cli", "apply", str(inv), "-p", str(pb), "-v", "--forks",
                    str(a.hosts), "--no-retry-file", "-e", json.dumps({"bench_hosts": ",".join(hosts),
                                                                       "bench_image": tag, "bench_via": via})]
            host_cpu[0] = testbed_cpu_s(ids)
            peak, stop = {}, threading.Event()
            threading.Thread(target=vmhwm_sampler, args=(peak, stop), daemon=True).start()
            try:
                m = measure(argv, cwd=REPO, env=env, timeout=3000)
            finally:
                stop.set()
            changed = [ln for ln in m.stdout_tail.splitlines() if ln.startswith(tuple(hosts)) and "changed=" in ln]
            return record(name, m, len(hosts), {
                "via": via, "controller_vmhwm_mib": round(peak.get("kib", 0) / 1024, 1),
                "recap": " | ".join(" ".join(ln.split()) for ln in changed)[:300]})

        host_cpu[0] = testbed_cpu_s(ids)
        base = measure(["sh", "-c", f"docker save {shlex.quote(tag)} | {ssh} docker load"], timeout=3000)
        baseline = record("baseline: docker save | ssh host docker load", base, 1)
        clean(["h1"])
        cached = IMAGE_CACHE / (image_id.replace("sha256:", "")[:24] + ".tar")
        for p in (cached, cached.with_suffix(".sha256")):
            p.unlink(missing_ok=True)
        one_cold = gpufleet("gpufleet 1 host, cold (docker save into the cache included)", ["h1"], "auto")
        clean(["h1"])
        one_warm = gpufleet("gpufleet 1 host, warm", ["h1"], "auto")
        clean(["h1"])
        gpufleet("gpufleet 1 host, warm, through the connection (via ssh)", ["h1"], "ssh")
        clean(["h1"])
        many = gpufleet(f"gpufleet {a.hosts} hosts, warm", names, "auto")
        again = gpufleet(f"gpufleet {a.hosts} hosts, re-run (image id present)", names, "auto")
        clean(names)
        many_ssh = gpufleet(f"gpufleet {a.hosts} hosts, warm, through the connections (via ssh)", names, "ssh")
        payload["ratios"] = {
            "one_host_cold_vs_baseline": round(one_cold["wall_s"] / baseline["wall_s"], 2),
            "one_host_warm_vs_baseline": round(one_warm["wall_s"] / baseline["wall_s"], 2),
            "many_vs_one_warm": round(many["wall_s"] / one_warm["wall_s"], 2),
            "many_vs_one_cold": round(many["wall_s"] / one_cold["wall_s"], 2),
            "many_via_ssh_vs_one_warm": round(many_ssh["wall_s"] / one_warm["wall_s"], 2),
            "max_controller_rss_mib": max(r.get("controller_maxrss_mib", 0) for r in payload["runs"][1:]),
        }
        payload["ratios"]["rerun_recap"] = again["recap"]
    finally:
        payload["machine"]["loadavg_end"] = loadavg()
        (work / "record.json").write_text(json.dumps(payload, indent=2) + "\n")
        if payload["runs"]:
            write_summary(stamp, payload)
        if not a.keep:
            tb.down()
            run(f"docker image rm -f {tag}", check=False)
            for p in IMAGE_CACHE.glob(image_id.replace("sha256:", "")[:24] + ".*"):
                p.unlink(missing_ok=True)
            shutil.rmtree(work / "testbed", ignore_errors=True)
        print(f"df after: {run('df -h / | tail -1').stdout.strip()}", flush=True)
    return 0


def write_summary(stamp: str, payload: dict) -> None:
    keys = ["run", "hosts", "via", "rc", "wall_s", "cpu_s", "hosts_cpu_s", "controller_maxrss_mib",
            "controller_vmhwm_mib", "loadavg", "recap"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"images-{stamp}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in payload["runs"]:
            w.writerow([r.get(k, "") for k in keys])
    img = payload.get("image", {})
    rows = [[r["run"].replace("|", "\\|"), r["hosts"], r["rc"], r["wall_s"], r["cpu_s"], r.get("hosts_cpu_s", ""),
             r.get("controller_maxrss_mib", ""), r.get("controller_vmhwm_mib", "")] for r in payload["runs"]]
    md = (f"# Images of real size ({stamp})\n\n"
          f"Image: {img.get('tag')} ({img.get('bytes', 0) / 1e9:.2f} GB, {payload['params']['layers']} random "
          f"layers of {payload['params']['layer_mb']} MB), testbed hosts with Docker 20.10 (overlay2), all on "
          f"this machine: {payload['machine']['nproc']} cores, shared (load average at start "
          f"{payload['machine']['loadavg_start']}, at the end {payload['machine'].get('loadavg_end')}).\n\n"
          + md_table(["run", "hosts", "rc", "wall s", "controller CPU s", "hosts' CPU s", "controller maxrss MiB",
                      "provision VmHWM MiB"], rows)
          + "\nRatios: " + json.dumps(payload.get("ratios", {})) + "\n\n"
          "Targets (issue 13 item 4): one host within 1.5x of the baseline; N hosts under 3x one host; controller "
          "RSS under 200 MB. Produced by `python3 -m bench.run_images`; raw record under bench/raw/.\n")
    (RESULTS / f"images-{stamp}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
