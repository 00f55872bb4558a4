#!/usr/bin/env bash
# README command (1), after scripts/install.sh: bring up a small mixed testbed (simulated GPU hosts) and run the
# main job against it: `provision apply` with the site playbook (driver by GPU generation, Docker + container
# toolkit, the PyTorch 2.7 / CUDA 12.8 image, a dev container, the agent, validation).
# The testbed stays up afterwards: `.venv/bin/provision testbed down --name lab` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/provision testbed down --name lab >/dev/null
.venv/bin/provision testbed up --name lab \
    --host h100=8xH100-SXM,docker --host ws=2xRTX-5090,docker --host cpu=none
.venv/bin/python scripts/check_ssh.py inventories/testbed.yaml      # paramiko, RejectPolicy, testbed known_hosts
# TEST EQUIPMENT: the stand-ins for the official PyTorch image and for the dev image built on it (no registry is
# reachable here); the controller streams them to the hosts. Prints progress, then the two tags, dev last.
.venv/bin/python -m provision.testbed.standin_images
# The testbed's inventory carries the rest (dev containers on 127.0.0.1, SSH with the testbed's public key; use
# your own on a real lab): the same command runs again as it is, with 0 changed.
.venv/bin/provision apply inventories/testbed.yaml -p playbooks/site.yaml
echo "demo: inventory inventories/testbed.yaml; run it again to see 0 changed;" \
     "remove the testbed with: .venv/bin/provision testbed down --name lab"
