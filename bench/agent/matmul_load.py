"""A bf16 matmul loop on GPU 0 for SECONDS (needs torch): the load under which gpu-agent is measured.

  python3 bench/agent/matmul_load.py SECONDS
"""
import sys
import time

import torch

a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        b = a @ a
    torch.cuda.synchronize()
