"""GPU knowledge as data (gpus.yaml) and pure functions over it: detection, per-host plans, reports."""
from provision.gpu.plan import HostGpuPlan, plan_host  # noqa: F401
from provision.gpu.table import load_table  # noqa: F401
