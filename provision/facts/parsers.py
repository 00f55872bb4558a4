"""Pure parsers: command output (str) -> fact values. No I/O here; tested with recorded outputs."""
from __future__ import annotations

import shlex

_FAMILIES = {
    "debian": "Debian", "ubuntu": "Debian", "linuxmint": "Debian", "pop": "Debian", "raspbian": "Debian",
    "rhel": "RedHat", "centos": "RedHat", "fedora": "RedHat", "rocky": "RedHat", "almalinux": "RedHat",
    "ol": "RedHat", "amzn": "RedHat", "sles": "Suse", "opensuse": "Suse", "suse": "Suse",
    "arch": "Archlinux", "alpine": "Alpine",
}
_DIST_NAMES = {"debian": "Debian", "ubuntu": "Ubuntu", "centos": "CentOS", "rhel": "RedHat", "fedora": "Fedora",
               "rocky": "Rocky", "almalinux": "AlmaLinux", "alpine": "Alpine", "arch": "Archlinux",
               "sles": "SLES", "amzn": "Amazon", "ol": "OracleLinux"}


def os_release(text: str) -> dict:
    kv = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        try:
            v = " ".join(shlex.split(v))
        except ValueError:
            v = v.strip("\"'")
        kv[k] = v
    ident = kv.get("ID", "").lower()
    like = kv.get("ID_LIKE", "").lower().split()
    family = _FAMILIES.get(ident) or next((_FAMILIES[x] for x in like if x in _FAMILIES), None)
    version = kv.get("VERSION_ID", "")
    return {
        "os_family": family or (kv.get("NAME") or "unknown"),
        "distribution": _DIST_NAMES.get(ident, kv.get("NAME", ident or "unknown")),
        "distribution_id": ident,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0] if version else "",
        "distribution_release": kv.get("VERSION_CODENAME") or kv.get("UBUNTU_CODENAME", ""),
    }


def first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def integer(text: str) -> int | None:
    try:
        return int(first_line(text))
    except ValueError:
        return None


def meminfo(text: str) -> dict:
    vals = {}
    for line in text.splitlines():
        k, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            vals[k.strip()] = int(parts[0])
    return {"memtotal_mb": vals.get("MemTotal", 0) // 1024, "memfree_mb": vals.get("MemAvailable",
                                                                                   vals.get("MemFree", 0)) // 1024}


def service_mgr(text: str) -> str:
    comm = first_line(text)
    if comm in ("systemd", "init", "runit", "openrc", "upstart"):
        return "sysvinit" if comm == "init" else comm
    return comm or "unknown"


def pkg_mgr(text: str) -> str:
    order = ("apt-get", "dnf", "yum", "zypper", "apk", "pacman")
    found = {line.rsplit("/", 1)[-1].strip() for line in text.splitlines() if line.strip()}
    for name in order:
        if name in found:
            return "apt" if name == "apt-get" else name
    return "unknown"


def secure_boot(text: str) -> bool | None:
    """mokutil --sb-state ('SecureBoot enabled'), else the EFI variable's bytes ('efivar: 06 00 00 00 01', or the
    bare bytes: 4 attribute bytes, then the value); None when unknown."""
    low = text.lower()
    if "secureboot enabled" in low:
        return True
    if "secureboot disabled" in low or "not supported" in low:
        return False
    for line in text.splitlines():
        parts = line.removeprefix("efivar:").split()
        if len(parts) >= 5 and all(len(b) <= 2 and all(c in "0123456789abcdefABCDEF" for c in b) for b in parts):
            return parts[4] in ("01", "1")
    return None


def pci_devices(text: str) -> list[dict]:
    """Lines 'ADDRESS VENDOR DEVICE CLASS' (from /sys/bus/pci/devices) -> [{address, vendor, device, class}]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        addr, vendor, device, klass = parts[:4]
        out.append({"address": addr, "vendor": vendor.lower().removeprefix("0x"),
                    "device": device.lower().removeprefix("0x"), "class": klass.lower().removeprefix("0x")})
    return sorted(out, key=lambda d: d["address"])


def dpkg_packages(text: str) -> dict:
    """``dpkg-query -W -f='${Package}\\t${Version}\\t${Status}\\n'`` -> {"packages": {name: version},
    "held_packages": [...]} counting only installed packages."""
    pkgs: dict[str, str] = {}
    held: list[str] = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        name, version, status = parts[0], parts[1], parts[2].split()
        if len(status) == 3 and status[2] in ("installed", "half-configured", "unpacked", "triggers-awaited",
                                              "triggers-pending"):
            if status[2] in ("installed", "triggers-awaited", "triggers-pending"):
                pkgs[name] = version
        if status and status[0] == "hold":
            held.append(name)
    return {"packages": pkgs, "held_packages": sorted(held)}


def apt_cache(text: str) -> dict:
    """'NOW MTIME' -> {"date_epoch", "apt_cache_mtime"} (mtime 0 when the cache was never updated)."""
    parts = first_line(text).split()
    now = int(parts[0]) if parts and parts[0].isdigit() else 0
    mtime = max([int(p) for p in parts[1:] if p.isdigit()] or [0])
    return {"date_epoch": now, "apt_cache_mtime": mtime}


DMI_FILES = ("product_name", "product_version", "product_serial", "product_uuid", "sys_vendor", "bios_vendor",
             "bios_version", "bios_date", "board_name", "board_vendor", "chassis_vendor")
# Ansible's fact names for the DMI files whose fact is not the file's own name
_DMI_FACT = {"sys_vendor": "system_vendor", "board_vendor": "board_vendor", "chassis_vendor": "chassis_vendor"}


def dmi(text: str) -> dict:
    """'FILE:VALUE' lines (grep of /sys/class/dmi/id) -> Ansible's DMI facts (product_name, system_vendor...); a
    file that is missing or unreadable (product_serial as a plain user) gives "NA", as Ansible's."""
    seen = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k in DMI_FILES:
            seen[k] = v.strip()
    return {_DMI_FACT.get(k, k): seen.get(k) or "NA" for k in DMI_FILES}


def environment(text: str) -> dict:
    """``env -0 | tr '\\n\\0' '\\1\\n'`` (one variable a line, newlines inside values as \\x01) -> {"env": {...}}."""
    env = {}
    for line in text.split("\n"):
        k, sep, v = line.partition("=")
        if sep and k:
            env[k] = v.replace("\x01", "\n")
    return {"env": env}


def local_fact(text: str):
    """One /etc/ansible/facts.d file's content (or an executable one's output) as Ansible reads it: JSON, else
    INI ({section: {key: value}}), else Ansible's 'error loading fact' string."""
    import configparser
    import json
    try:
        return json.loads(text)
    except ValueError:
        pass
    cp = configparser.ConfigParser()
    try:
        cp.read_string(text)
    except configparser.Error:
        return "error loading fact - please check content"
    return {s: dict(cp.items(s)) for s in cp.sections()}


def local_facts(text: str) -> dict:
    """'NAME<TAB>BASE64' lines, one per /etc/ansible/facts.d/NAME.fact -> {"local": {NAME: fact}} (empty when the
    folder is missing, as Ansible's ``ansible_local``)."""
    import base64
    out: dict = {}
    for line in text.splitlines():
        name, sep, data = line.partition("\t")
        if not sep or not name:
            continue
        try:
            body = base64.b64decode(data.strip()).decode("utf-8", "replace")
        except ValueError:
            body = ""
        out[name] = local_fact(body)
    return {"local": out}


def selinux(text: str) -> dict:
    """``getenforce`` and /etc/selinux/config's SELINUXTYPE (nothing: no SELinux) -> Ansible's ``selinux`` fact:
    {"status": "disabled"} or {"status": "enabled", "mode": "enforcing"|"permissive", "type": ...}."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    mode = lines[0].lower() if lines else "disabled"
    if mode not in ("enforcing", "permissive"):
        return {"selinux": {"status": "disabled"}}
    kind = next((line.split("=", 1)[1] for line in lines[1:] if line.startswith("SELINUXTYPE=")), "targeted")
    return {"selinux": {"status": "enabled", "mode": mode, "type": kind}}


def network(text: str) -> dict:
    """``fqdn NAME``, ``interfaces A B``, then under a ``route`` line the default route and under an ``addr`` line
    `ip -4 -o addr show` -> Ansible's ``fqdn``, ``interfaces`` and ``default_ipv4`` (address, interface, gateway,
    prefix, netmask, network, broadcast; empty without a default route)."""
    import ipaddress
    out: dict = {"fqdn": "", "interfaces": [], "default_ipv4": {}}
    route: list[str] = []
    addrs: list[list[str]] = []
    part = ""
    for line in text.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "fqdn" and not part:
            out["fqdn"] = rest.strip()
        elif tag == "interfaces" and not part:
            out["interfaces"] = sorted(rest.split())
        elif line.strip() in ("route", "addr"):
            part = line.strip()
        elif part == "route" and line.startswith("default") and not route:
            route = line.split()
        elif part == "addr":
            addrs.append(line.split())
    iface = route[route.index("dev") + 1] if "dev" in route[:-1] else ""
    if not iface:
        return out
    gw = route[route.index("via") + 1] if "via" in route[:-1] else ""
    for f in addrs:      # "2: eth0    inet 172.18.0.2/16 brd 172.18.255.255 scope global eth0"
        if len(f) >= 4 and f[1] == iface and f[2] == "inet":
            net = ipaddress.ip_interface(f[3])
            out["default_ipv4"] = {
                "address": str(net.ip), "interface": iface, "alias": iface, "gateway": gw,
                "prefix": str(net.network.prefixlen), "netmask": str(net.netmask),
                "network": str(net.network.network_address),
                "broadcast": f[f.index("brd") + 1] if "brd" in f[:-1] else ""}
            break
    return out
