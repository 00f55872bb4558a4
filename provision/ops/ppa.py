"""apt_repository's ``repo: ppa:USER/NAME`` (Ubuntu's Launchpad archives): removing one is supported (roles remove
the graphics-drivers PPA before installing NVIDIA's packages); adding one needs Launchpad, which gpufleet does not
reach: give the repository line and its key instead. Used by provision/ops/apt_repo.py."""
from __future__ import annotations

import re

from provision.ops.core import Cmd, OpError, Plan, q

_PPA = re.compile(r"^ppa:([A-Za-z0-9._+-]+)/([A-Za-z0-9._+-]+)$")


def is_ppa(repo) -> bool:
    return str(repo or "").startswith("ppa:")


def _pattern(repo: str) -> str:
    m = _PPA.match(str(repo).strip())
    if not m:
        raise OpError(f"repo {repo!r}: a PPA is written ppa:USER/NAME")
    esc = [re.sub(r"([.+])", r"\\\1", g) for g in m.groups()]     # POSIX ERE: only . and + are special here
    return rf"ppa\.launchpad(content)?\.net/{esc[0]}/{esc[1]}/"


def ppa_probe(repo: str) -> str:
    """The sources files holding a line of the PPA, one a line."""
    return (f"grep -rlE -- {q(_pattern(repo))} /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; "
            "true")


def ppa_plan(args, probe, update: str) -> Plan:
    repo = str(args["repo"])
    if args.get("state") != "absent":
        return Plan(failed=True, msg=f"{repo}: adding a PPA needs Launchpad; give the repository line "
                                     "(deb URL SUITE COMPONENT) and its key (apt_key) instead")
    files = [f for f in (probe.stdout if probe else "").splitlines() if f.strip()]
    if not files:
        return Plan(noop=f"{repo} is absent")
    sed = q(f"\\#{_pattern(repo)}#d")
    cmds = [Cmd(f"sed -i -E {sed} -- {q(f)}", desc=f"remove {repo} from {f}") for f in files]
    if args.get("update_cache", True):
        cmds.append(Cmd(update, timeout=1800, counts=False, desc="apt-get update"))
    return Plan(cmds, diff=[{"before_header": f, "after_header": f, "before": f"{repo}\n", "after": ""}
                            for f in files])
