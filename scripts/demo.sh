#!/usr/bin/env bash
# Bring up a small mixed testbed and show each host answering over SSH with a verified host key.
# (Until the engine exists this is the "main job"; the testbed stays up: `provision testbed down` removes it.)
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/provision testbed down --name lab >/dev/null
.venv/bin/provision testbed up --name lab \
    --host h100=8xH100-SXM --host ws=2xRTX-5090,docker --host a100=1xA100-PCIE-80GB,secure-boot --host cpu=none
.venv/bin/python scripts/check_ssh.py inventories/testbed.yaml      # paramiko, RejectPolicy, testbed known_hosts
.venv/bin/provision ping inventories/testbed.yaml                     # gpufleet's own SSH connector, same checks
echo "demo: inventory inventories/testbed.yaml; remove the testbed with: .venv/bin/provision testbed down --name lab"
