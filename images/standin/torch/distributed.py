"""TEST EQUIPMENT: torch.distributed stand-in: NCCL is never available."""


def is_available() -> bool:
    return True


def is_nccl_available() -> bool:
    return False
