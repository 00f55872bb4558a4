"""Files on a GPU host that the provisioner writes and the agent reads, and the agent's port: one place for them.

The agent may not import the provisioner (it ships alone), so the provisioner imports these from here. The
agent's packaged config (agent/packaging/gpu-agent.yaml) names the same paths; a test keeps them equal.
"""
from __future__ import annotations

MAINTENANCE_MARKER = "/etc/gpufleet/maintenance"              # present = host in maintenance; JSON {reason, by, since}
UPGRADE_STATE_FILE = "/var/lib/gpufleet/upgrade-state.json"   # the rolling upgrade's {"state", "target", "since"}
AGENT_PORT = 10240          # gpu-agent's port (docs/agent.md): the agent's default, the upgrade's XID check, discovery
