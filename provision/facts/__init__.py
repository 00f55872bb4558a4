"""Facts: each is a shell command plus a pure parser (provision.facts.parsers, provision.facts.gpu). All the facts
a play needs are gathered in ONE round trip per host: one script whose sections are separated by markers.

:func:`script` builds the script, :func:`parse` splits and parses its output (pure, testable with recordings),
:func:`gather` does both over a connector. Facts keys follow Ansible's ``ansible_facts`` names where one exists.
:data:`GPU_SECTIONS` are what the GPU plan reads (``provision facts --gpu``, the ``gpu_plan`` op); the other
readers of GPU state (the rolling upgrade, gpu_validate) use the same sections. :func:`section_script` is the one
section protocol, also for an op's probe made of several parts (gpu_devcontainer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from provision.facts import gpu as g
from provision.facts import parsers as p

MARK = "@@provision-fact@@"


@dataclass(frozen=True)
class Fact:
    name: str
    command: str
    parse: Callable[[str], dict]


def _one(key, fn):
    return lambda text: {key: fn(text)}


FACTS: dict[str, Fact] = {f.name: f for f in [
    Fact("os", "cat /etc/os-release || cat /usr/lib/os-release", p.os_release),
    Fact("kernel", "uname -r", _one("kernel", p.first_line)),
    Fact("arch", "uname -m", _one("architecture", p.first_line)),
    Fact("hostname", "hostname 2>/dev/null || cat /proc/sys/kernel/hostname", _one("hostname", p.first_line)),
    Fact("cpus", "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN", _one("processor_vcpus", p.integer)),
    Fact("memory", "cat /proc/meminfo", p.meminfo),
    Fact("boot_id", "cat /proc/sys/kernel/random/boot_id", _one("boot_id", p.first_line)),
    Fact("init", "cat /proc/1/comm", _one("service_mgr", p.service_mgr)),
    Fact("pkg_mgr", "for c in apt-get dnf yum zypper apk pacman; do command -v $c; done", _one("pkg_mgr", p.pkg_mgr)),
    Fact("secure_boot",
         "if command -v mokutil >/dev/null 2>&1; then mokutil --sb-state 2>&1; fi; "
         "for f in /sys/firmware/efi/efivars/SecureBoot-*; do [ -r \"$f\" ] && "
         "printf 'efivar: %s\\n' \"$(od -An -tx1 \"$f\" | tr -s ' \\n' ' ')\"; done",
         _one("secure_boot", p.secure_boot)),
    Fact("pci",
         "for d in /sys/bus/pci/devices/*; do [ -e \"$d/vendor\" ] && "
         "echo \"${d##*/} $(cat $d/vendor) $(cat $d/device) $(cat $d/class)\"; done",
         _one("pci_devices", p.pci_devices)),
    Fact("packages", "command -v dpkg-query >/dev/null && "
                     "dpkg-query -W -f='${Package}\\t${Version}\\t${Status}\\n'", p.dpkg_packages),
    Fact("apt_cache", "echo $(date +%s) $(stat -c %Y /var/lib/apt/periodic/provision-update-stamp 2>/dev/null || "
                      "stat -c %Y /var/cache/apt/pkgcache.bin 2>/dev/null)", p.apt_cache),
    Fact("dmi", "cd /sys/class/dmi/id && grep -s '' " + " ".join(p.DMI_FILES), p.dmi),   # one process
    Fact("env", "env -0 | tr '\\n\\0' '\\001\\n'", p.environment),
    # Ansible's local facts: each /etc/ansible/facts.d/NAME.fact read (JSON or INI), or run when executable
    Fact("local", "for f in /etc/ansible/facts.d/*.fact; do [ -f \"$f\" ] || continue; n=${f##*/}; "
                  "if [ -x \"$f\" ]; then o=$(timeout 10 \"$f\" | base64 -w0); else o=$(base64 -w0 < \"$f\"); fi; "
                  "printf '%s\\t%s\\n' \"${n%.fact}\" \"$o\"; done", p.local_facts),
    Fact("selinux", "command -v getenforce >/dev/null && getenforce && grep -s '^SELINUXTYPE=' /etc/selinux/config",
         p.selinux),
    Fact("network", "echo \"fqdn $(timeout 2 hostname -f 2>/dev/null || hostname)\"; "
                    "echo interfaces $(ls /sys/class/net); echo route; ip -4 route show default; echo addr; "
                    "ip -4 -o addr show", p.network),
    # GPU sections (provision/facts/gpu.py); the PCI scan is "pci" above, dpkg's packages and holds "packages"
    Fact("nvidia_smi", g.NVIDIA_SMI_COMMAND, _one("nvidia_smi", g.nvidia_smi_result)),
    Fact("nvidia_module", g.NVIDIA_MODULE_COMMAND, _one("nvidia_module", g.nvidia_module)),
    Fact("nvidia_runfile", g.NVIDIA_RUNFILE_COMMAND, _one("nvidia_runfile", g.nvidia_runfile)),
    Fact("module_signing", g.MODULE_SIGNING_COMMAND, _one("module_signing_keys", g.nonblank_lines)),
    Fact("gpu_containers", g.GPU_CONTAINERS_COMMAND, g.gpu_containers),
    Fact("maintenance", g.MAINTENANCE_COMMAND, g.maintenance_marker),
    Fact("upgrade_state", g.UPGRADE_STATE_COMMAND, _one("upgrade_state", g.json_document)),
    Fact("nvidia_devnodes", g.NVIDIA_DEVNODES_COMMAND, _one("nvidia_devnodes", g.nonblank_lines)),
    Fact("docker_runtimes", g.DOCKER_RUNTIMES_COMMAND, _one("docker_runtimes", g.json_document)),
    Fact("container_toolkit", g.CONTAINER_TOOLKIT_COMMAND, _one("container_toolkit", g.nonblank_lines)),
]}

# what gather_facts collects (the GPU sections are gathered when an op asks for them)
PLAY_FACTS = ("os", "kernel", "arch", "hostname", "cpus", "memory", "boot_id", "init", "pkg_mgr", "secure_boot",
              "pci", "packages", "apt_cache", "dmi", "env", "local", "selinux", "network")
# what the GPU plan reads: `provision facts --gpu` and the gpu_plan op gather exactly these
GPU_SECTIONS = ("pci", "nvidia_smi", "nvidia_module", "nvidia_runfile", "packages", "secure_boot", "module_signing",
                "kernel", "os", "gpu_containers", "maintenance")


def section_script(parts: Iterable[tuple[str, str]]) -> str:
    """One shell script printing each (name, command) part under its marker, stderr dropped, then the end
    marker: the one section protocol (:func:`split_sections` reads it back)."""
    body = "".join(f"echo '{MARK} {name}'; ( {command} ) 2>/dev/null\n" for name, command in parts)
    return body + f"echo '{MARK} end'\n"


def script(names: Iterable[str]) -> str:
    return section_script((n, FACTS[n].command) for n in names)


def split_sections(output: str) -> dict[str, str]:
    """Each section's text, up to the end marker (output after it, a batched probe's say, is not a section)."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith(MARK):
            current = line[len(MARK):].strip()
            if current == "end":
                break
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v) + ("\n" if v else "") for k, v in sections.items()}


def parse_each(output: str, names: Iterable[str], *, missing: bool = False) -> dict[str, dict]:
    """One parsed dict per section of ``output``. A section the output lacks is left out, or with ``missing``
    parsed as empty; one that cannot be parsed is left out (a fact is absent, never fatal)."""
    sections = split_sections(output)
    out: dict[str, dict] = {}
    for n in names:
        if n in sections or missing:
            try:
                out[n] = FACTS[n].parse(sections.get(n, ""))
            except Exception:  # noqa: BLE001 - unparseable means absent
                continue
    return out


def parse(output: str, names: Iterable[str]) -> dict:
    """All sections of ``output`` merged into one facts dict (a missing section parsed as empty)."""
    facts: dict = {}
    for parsed in parse_each(output, names, missing=True).values():
        facts.update(parsed)
    return facts


def gather(conn, names: Iterable[str] = PLAY_FACTS, *, timeout: float = 120) -> dict:
    """One round trip: run the script for ``names`` and parse it."""
    names = [n for n in names if n in FACTS]
    if not names:
        return {}
    res = conn.run(script(names), timeout=timeout)
    return parse(res.stdout, names)
