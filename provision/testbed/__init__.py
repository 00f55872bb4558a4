"""The gpufleet testbed: simulated GPU hosts (Debian 12 + systemd + sshd containers) and a stand-in NVIDIA apt
repository (TEST EQUIPMENT). See docs/testbed.md."""
from provision.testbed.core import (HostInfo, HostSpec, Testbed, TestbedError, list_testbeds, prune_orphans,
                                   raise_inotify_limits)
from provision.testbed.gpus import MODELS, parse_gpus
from provision.testbed.image import ensure_image, image_tag, mini_tag

__all__ = ["Testbed", "HostSpec", "HostInfo", "TestbedError", "MODELS", "parse_gpus", "ensure_image",
           "image_tag", "mini_tag", "raise_inotify_limits", "list_testbeds", "prune_orphans"]
