"""`provision testbed up|down|status`: simulated GPU hosts as local Docker containers (see docs/testbed.md)."""
from __future__ import annotations

import os
import shutil
import sys
import time

from provision.errors import EXIT_OPTIONS, OptionError

DEFAULT_INVENTORY = "inventories/testbed.yaml"
EXIT_TESTBED = 1


def register(subparsers) -> None:
    p = subparsers.add_parser("testbed", help="start/stop simulated GPU hosts (Docker containers) for testing",
                              description="Simulated GPU hosts: Debian 12 + systemd + sshd containers, with a "
                                          "stand-in NVIDIA apt repository (TEST EQUIPMENT).")
    sub = p.add_subparsers(dest="testbed_command", metavar="ACTION", parser_class=type(p))
    up = sub.add_parser("up", help="build the image if needed, start the hosts, write the inventory")
    up.add_argument("spec", nargs="?", help="YAML spec file (hosts: NAME: {gpus: 8xH100-SXM, docker: true})")
    up.add_argument("--host", action="append", default=[], metavar="NAME=GPUS[,docker][,secure-boot][,count=N]",
                    help="a host, e.g. h100=8xH100-SXM, ws=2xRTX-5090, cpu=none (repeatable)")
    up.add_argument("--name", default=None, help="testbed name (default: the spec's name, else 'lab')")
    up.add_argument("--docker", action="store_true", help="every host can run Docker inside")
    up.add_argument("--inventory", default=DEFAULT_INVENTORY, help=f"inventory to write ({DEFAULT_INVENTORY})")
    up.add_argument("--timeout", type=float, default=120, help="seconds to wait for each host's sshd")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="remove every container, network and volume of a testbed")
    down.add_argument("--name", default="lab")
    down.add_argument("--inventory", default=DEFAULT_INVENTORY,
                      help="inventory to remove when it belongs to this testbed")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="list a testbed's containers")
    status.add_argument("--name", default="lab")
    status.add_argument("--all", action="store_true", help="list every testbed on this Docker engine")
    status.set_defaults(func=cmd_status)
    p.set_defaults(func=lambda args: (p.print_help(), EXIT_OPTIONS)[1])


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _preflight(need_root: bool = True) -> None:
    from provision.testbed import docker
    if need_root and os.geteuid() != 0:
        raise OptionError("must run as root (it builds a root filesystem with debootstrap and raises kernel "
                          "inotify limits)", key="provision testbed")
    problem = docker.engine_problem()
    if problem:
        raise OptionError(problem, key="docker")


def cmd_up(args) -> int:
    from provision.testbed import Testbed, TestbedError
    from provision.testbed.spec import load_spec_file, parse_host_flag
    specs = []
    name = None
    if args.spec:
        name, specs = load_spec_file(args.spec, default_docker=args.docker)
    for text in args.host:
        specs += parse_host_flag(text, default_docker=args.docker)
    if not specs:
        raise OptionError("no hosts given: pass a spec file or --host NAME=GPUS (e.g. --host cpu=none)",
                          key="provision testbed up")
    names = [s.name for s in specs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise OptionError(f"host name '{dup}' is given twice", key="--host")
    name = args.name or name or "lab"
    _preflight()
    try:
        tb = Testbed(name=name, log=_log)
    except TestbedError as err:
        raise OptionError(str(err), key="--name") from None
    start = time.monotonic()
    try:
        tb.up(specs, inventory_path=args.inventory, timeout=args.timeout)
    except Exception as err:   # one line; up() already removed every Docker object it made
        if tb.workdir.is_dir() and tb.workdir.parent.name == ".testbed":
            shutil.rmtree(tb.workdir, ignore_errors=True)
        text = str(err).splitlines()[0] if str(err) else ""
        kind = "" if isinstance(err, TestbedError) else f"{type(err).__name__}: "
        print(f"ERROR: testbed {name}: {kind}{text}", file=sys.stderr)
        return EXIT_TESTBED
    for h in tb.hosts.values():
        gpus = ",".join(sorted(set(h.spec.gpus))) if h.spec and h.spec.gpus else "no GPU"
        n = len(h.spec.gpus) if h.spec else 0
        print(f"{h.name:<16} ssh -p {h.port} root@127.0.0.1   {str(n) + 'x ' if n else ''}{gpus}"
              f"{'  docker' if h.spec and h.spec.docker else ''}{'  secure-boot' if h.spec and h.spec.secure_boot else ''}")
    print(f"testbed '{name}' up in {time.monotonic() - start:.1f}s: inventory {args.inventory}, "
          f"key {tb.key_path}, known_hosts {tb.known_hosts_path}")
    return 0


def cmd_down(args) -> int:
    from provision.testbed import Testbed, TestbedError
    _preflight(need_root=False)
    try:
        tb = Testbed(name=args.name)
    except TestbedError as err:
        raise OptionError(str(err), key="--name") from None
    removed = tb.down()
    if tb.workdir.is_dir() and tb.workdir.parent.name == ".testbed":
        shutil.rmtree(tb.workdir, ignore_errors=True)     # keys and known_hosts of this testbed
    inv = args.inventory
    if inv and os.path.exists(inv):
        try:
            with open(inv) as fh:
                head = fh.read(4096)
            if f"gpufleet_testbed_name: {args.name}\n" in head:
                os.unlink(inv)
                removed.append(inv)
        except OSError:
            pass
    print(f"testbed '{args.name}': removed {len(removed)} object(s)" + (f": {', '.join(removed)}" if removed
                                                                           else " (nothing was up)"))
    return 0


def cmd_status(args) -> int:
    from provision.testbed import Testbed, TestbedError, list_testbeds
    _preflight(need_root=False)
    if args.all:
        beds = list_testbeds()
        for name, info in sorted(beds.items()):
            print(f"{name:<24} {info['containers']} container(s)  {info['owner'] or 'provision testbed up'}")
        return 0 if beds else 1
    try:
        tb = Testbed(name=args.name)
    except TestbedError as err:
        raise OptionError(str(err), key="--name") from None
    rows = tb.status()
    if not rows:
        print(f"testbed '{args.name}': not up")
        return 1
    for r in rows:
        print(f"{r['host']:<16} {r['state']:<10} port {r['port'] or '-':<6} restarts {r['restarts']:<3} "
              f"{r['container']}")
    return 0
