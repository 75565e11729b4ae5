"""yoda_kernels: the fused YODA ops (masked_step, tile_stats, masked_q_sample) and their backends.

See yoda_kernels.ops for the layers and yoda_kernels.naive for the reference semantics.
"""

from . import naive, philox
from .coefs import init_coefficients, needs_noise, step_coefficients
from .ops import (
    BACKENDS,
    active_tiles,
    available_backends,
    extension_error,
    masked_q_sample,
    masked_step,
    resolve_backend,
    tile_stats,
)

__all__ = [
    "BACKENDS",
    "active_tiles",
    "available_backends",
    "extension_error",
    "init_coefficients",
    "masked_q_sample",
    "masked_step",
    "naive",
    "needs_noise",
    "philox",
    "resolve_backend",
    "step_coefficients",
    "tile_stats",
]
