"""gpu-agent: GPU, container and host metrics for Prometheus (see docs/agent.md)."""
__version__ = "0.1.0"
