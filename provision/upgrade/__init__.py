"""Rolling NVIDIA driver upgrades: a per-host state machine (drain, upgrade, reboot, validate, restore), batches
under an availability and failure budget, a controller-side state file for --resume and a lock on every host.

Pure parts (states, budget, plan, parsers) have no I/O; :mod:`provision.upgrade.steps` talks to one host through a
:class:`provision.connectors.base.Connector`; :mod:`provision.upgrade.controller` runs the rollout.
"""
