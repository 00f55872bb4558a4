"""TEST EQUIPMENT: a stand-in for PyTorch inside gpufleet's stand-in image (no GPU, no CUDA, no tensors).

It exists so that the validation role can run its real commands on simulated GPU hosts and see an honest
"CUDA not available" instead of a missing module. Nothing here computes anything.
"""
__version__ = "2.7.0+cu128.gpufleet-standin"
STANDIN = True


class version:  # noqa: N801 - mirrors torch.version
    cuda = "12.8"
    __version__ = __version__


from torch import cuda, distributed  # noqa: E402,F401
