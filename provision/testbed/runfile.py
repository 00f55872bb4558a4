"""TEST EQUIPMENT: the stand-in driver put on a testbed host the way NVIDIA's .run installer puts a driver there:
files outside dpkg (nvidia-smi, the stand-in's libraries and its module-loading unit), ``nvidia-uninstall`` in
/usr/bin, the installer's log /var/log/nvidia-installer.log, the "kernel module" loaded at boot, and NO dpkg entry.

    install_runfile_driver(testbed, "rf", "580.95.05")      # then the host runs that driver, from no package

``nvidia-uninstall --silent`` removes every file it put there (as the real one does) and "unloads" the module; its
own log goes to /var/log/nvidia-uninstall.log. Nothing here is NVIDIA software.
"""
from __future__ import annotations

import json
import shlex

from provision.testbed.repo import CUDA_FOR_BRANCH, _models_json, _standin

UNIT = "/etc/systemd/system/nvidia-standin-module.service"
LOG = "/var/log/nvidia-installer.log"
UNINSTALLER = "/usr/bin/nvidia-uninstall"
MANIFEST = "/usr/lib/nvidia-standin/.manifest"     # what the uninstaller removes (the real one keeps a list too)

UNINSTALL = """#!/bin/sh
# TEST EQUIPMENT: gpufleet testbed stand-in for the .run installer's nvidia-uninstall.
[ "$1" = "--silent" ] || [ "$1" = "-s" ] || echo "nvidia-uninstall (gpufleet testbed stand-in): removing the driver"
{ echo "nvidia-uninstall log file '/var/log/nvidia-uninstall.log'"
  echo "removing: $(cat @MANIFEST@ | tr '\\n' ' ')"; } > /var/log/nvidia-uninstall.log
systemctl disable nvidia-standin-module.service >/dev/null 2>&1
umount /proc/driver 2>/dev/null
rm -rf /run/nvidia-standin
while read -r f; do rm -f "$f"; done < @MANIFEST@
rm -f @MANIFEST@ @UNINSTALLER@
systemctl daemon-reload
exit 0
"""

WRITE = """
import json, os, sys
files = json.load(sys.stdin)
for path, (text, mode) in files.items():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
"""


def runfile_files(version: str, flavour: str = "open") -> dict[str, tuple[str, int]]:
    """Path -> (text, mode) of everything the stand-in .run installer writes."""
    branch = version.split(".", 1)[0]
    desc = json.dumps({"version": version, "branch": branch, "flavour": flavour, "package": None,
                       "cuda": CUDA_FOR_BRANCH.get(branch, "12.8"), "installer": "runfile"}, sort_keys=True)
    files = {
        "/usr/bin/nvidia-smi": (_standin("nvidia-smi"), 0o755),
        "/usr/lib/nvidia-standin/driver.json": (desc + "\n", 0o644),
        "/usr/lib/nvidia-standin/models.json": (_models_json() + "\n", 0o644),
        "/usr/lib/nvidia-standin/load-module": (_standin("load-module"), 0o755),
        UNIT: (_standin("nvidia-standin-module.service"), 0o644),
    }
    files[MANIFEST] = ("".join(p + "\n" for p in files), 0o644)
    files[UNINSTALLER] = (UNINSTALL.replace("@MANIFEST@", MANIFEST).replace("@UNINSTALLER@", UNINSTALLER), 0o755)
    files[LOG] = (f"nvidia-installer log file '{LOG}'\ncreation time: (gpufleet testbed stand-in)\n"
                  f"installer version: {version}\n\nPATH: /usr/sbin:/usr/bin:/sbin:/bin\n"
                  f"Installing NVIDIA driver version {version} ({flavour} kernel modules): TEST EQUIPMENT\n", 0o644)
    return files


def install_runfile_driver(testbed, host: str, version: str, flavour: str = "open") -> str:
    """Install the stand-in driver on ``host`` as the .run installer would and load its module now (enabled for
    every boot after). Returns the version nvidia-smi reports."""
    files = runfile_files(version, flavour)
    rc, out, err = testbed.exec(host, f"python3 -c {shlex.quote(WRITE)}", input=json.dumps(files))
    if rc != 0:
        raise RuntimeError(f"{host}: writing the runfile driver failed: {(out + err).strip()[-300:]}")
    rc, out, err = testbed.exec(host, "systemctl daemon-reload && systemctl enable nvidia-standin-module.service "
                                      "2>/dev/null && systemctl restart nvidia-standin-module.service && "
                                      "nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1")
    if rc != 0:
        raise RuntimeError(f"{host}: loading the runfile driver failed: {(out + err).strip()[-300:]}")
    return out.strip()
