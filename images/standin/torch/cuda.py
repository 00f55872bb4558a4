"""TEST EQUIPMENT: torch.cuda stand-in: never available (the testbed's GPUs are simulated)."""
ARCH_LIST = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def is_available() -> bool:
    return False


def device_count() -> int:
    return 0


def get_arch_list() -> list:
    return list(ARCH_LIST)
