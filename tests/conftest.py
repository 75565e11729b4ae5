import os

# The Triton interpreter must be chosen before triton is first imported (CPU-only machines).
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
