"""Rolling NVIDIA driver upgrades: a per-host state machine (drain, upgrade, reboot, validate, restore), batches
under an availability and failure budget, a controller-side state file for --resume and a lock on every host.

Pure parts (states, budget, plan, parsers in remote) have no I/O; :mod:`provision.upgrade.steps` drives one host
through the executor's runner (command objects, no connection of its own); :mod:`provision.upgrade.rollout` is the
strategy the executor runs (:mod:`provision.executor.rolling`); ``provision upgrade-driver`` is
provision/commands/upgrade_driver.py.
"""
