"""GPU knowledge as data (gpus.yaml) and pure functions over it: detection, per-host plans, reports."""
from provision.gpu.plan import HostGpuPlan, plan_host  # noqa: F401
from provision.gpu.probe import GPU_FACTS_COMMAND, gpus_from_pci, parse_gpu_facts, parse_nvidia_smi  # noqa: F401
from provision.gpu.table import load_table  # noqa: F401
