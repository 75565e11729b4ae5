"""yoda_kernels: the fused YODA ops (masked_step, masked_combine, tile_stats, masked_q_sample) and their backends.

    contract.py   what every backend agrees on: named step coefficients, tile sizes, predictions, memory format
    naive.py      the reference (the test oracle, and the fallback on any device and for any missing kernel)
    ops.py        schemas, registration, backend choice (active_backends says what runs) and checked entry points
    masked_ops.py MaskedOps: masked_step / masked_combine for a loop, its fixed arguments checked once
    checks.py     the argument checks the entry points and the Triton ops (called as ops) share
    coefs.py      the step coefficients from a schedule; philox.py the noise stream
    triton/       the Triton backend; csrc/ (compiled into yoda_kernels._C) the C++ and CUDA ones
"""

from . import contract, naive, philox
from .coefs import init_coefficients, needs_noise, step_coefficients
from .contract import CombineCoefs, StepCoefs
from .masked_ops import MaskedOps
from .ops import (
    BACKENDS,
    Backend,
    TileStats,
    active_backends,
    active_tiles,
    available_backends,
    bind_backend,
    extension_error,
    masked_combine,
    masked_q_sample,
    masked_step,
    resolve_backend,
    tile_stats,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "CombineCoefs",
    "MaskedOps",
    "StepCoefs",
    "TileStats",
    "active_backends",
    "active_tiles",
    "available_backends",
    "bind_backend",
    "contract",
    "extension_error",
    "init_coefficients",
    "masked_combine",
    "masked_q_sample",
    "masked_step",
    "naive",
    "needs_noise",
    "philox",
    "resolve_backend",
    "step_coefficients",
    "tile_stats",
]
