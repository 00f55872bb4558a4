"""Ansible modules gpufleet lacks: which names are Ansible's (so an unknown key that is one is a module to skip,
not a typo) and the one-line reason a task using one gives. Such a task loads, is listed by the static check as a
warning (an error with ``--strict``) and fails only the hosts that reach it: a RedHat branch behind ``when:`` never
fails a Debian host."""
from __future__ import annotations

# package managers and repositories of other OS families: the branch a role takes on those systems
FAMILIES = {
    "RedHat": ("yum", "dnf", "dnf5", "rpm_key", "yum_repository", "dnf_config_manager", "redhat_subscription",
               "rhsm_repository", "rhsm_release", "rpm_ostree_pkg"),
    "Suse": ("zypper", "zypper_repository"),
    "Alpine": ("apk",),
    "Archlinux": ("pacman",),
    "FreeBSD": ("pkgng",),
    "Darwin": ("homebrew", "homebrew_cask", "homebrew_tap"),
}
_FAMILY_OF = {m: fam for fam, mods in FAMILIES.items() for m in mods}

# other module names of ansible-core and the collections GPU roles use (names only)
ANSIBLE_MODULES = frozenset(_FAMILY_OF) | frozenset((
    "add_host", "apt_key", "apt_repository", "assemble", "async_status", "authorized_key", "blockinfile", "command",
    "copy", "cron", "debconf", "deb822_repository", "dpkg_selections", "expect", "fetch", "file", "find", "gather_facts",
    "get_url", "getent", "git", "group", "group_by", "hostname", "include_vars", "iptables", "known_hosts",
    "lineinfile", "mount", "modprobe", "package", "package_facts", "pause", "pip", "raw", "reboot", "replace",
    "script", "seboolean", "selinux", "service", "service_facts", "setup", "slurp", "stat", "synchronize", "sysctl",
    "systemd", "systemd_service", "tempfile", "timezone", "ufw", "unarchive", "uri", "user", "validate_argument_spec",
    "wait_for", "wait_for_connection", "docker_container", "docker_image", "docker_compose", "docker_login",
    "alternatives", "locale_gen", "make", "parted", "filesystem", "lvg", "lvol", "npm", "snap", "ini_file",
    "pam_limits", "capabilities", "firewalld", "nmcli", "openssh_keypair", "htpasswd", "k8s", "helm", "kernel_blacklist",
))


def is_ansible_module(key: str) -> bool:
    """A fully qualified name (collection.namespace.module), or a known Ansible module name."""
    return key.count(".") >= 2 or key in ANSIBLE_MODULES


def unsupported_reason(key: str) -> str:
    """Why a task using module ``key`` cannot run here, in one line."""
    short = key.rsplit(".", 1)[-1]
    family = _FAMILY_OF.get(short)
    return f"module {key} is not supported by gpufleet" + (f" ({family} family)" if family else "")
