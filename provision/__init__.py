"""gpufleet's provisioner: inventories and playbooks applied over SSH, Ansible-style."""

__version__ = "0.1.0"
