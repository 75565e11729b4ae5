"""The kernel contract: what every backend of the yoda ops (naive reference, C++, CUDA, Triton) agrees on.

Read this file first when writing or checking a backend; the names here are the only definitions in Python,
and csrc/step.h mirrors them for C++ and CUDA (its ``StepCoefs`` fields are COEF_NAMES, in this order).

    PREDICTIONS       what a model outputs: "eps", "x0" or "v"
    SAMPLERS          "ddpm" (ancestral, fixed-small variance) or "ddim" (eta)
    COEF_NAMES        the ten float64 step coefficients, in the order kernels receive them (StepCoefs)
    TILE_SIZES        tile sides of tile_stats / masked_step (8, 16, 32)
    FLOAT_DTYPES      input dtypes; arithmetic is float32 whatever the input dtype
    memory_format(x)  outputs keep x's layout: channels-last in, channels-last out

One step of DESIGN.md §5 in the coefficients (the float32 operation order below is the contract):

    x0   = k1 * x + k2 * out          (clamped to [-1, 1] if clip)
    eps  = e1 * x + e2 * out
    sr   = ((cx0 * x0 + cx * x) + ceps * eps) + sigma * z
    lr   = la * c + lb * z
    x'   = sr where A >= tau else lr            (A is None: every pixel active)

Noise z is drawn only when ``needs_noise``: sigma or lb nonzero in float32; otherwise every backend uses z = 0,
an explicit noise tensor included.

Same bits means same values: a NaN is a NaN on every backend, but its sign and payload are not part of the
contract (the C++ kernels store a bfloat16 NaN as 0x7FC0, torch's conversion as 0xFFFF); nor is the sign of a
zero tile statistic (tile_stats of a tile holding 0 and -0: torch's amax gives 0, the kernels' max may give -0),
which decides nothing (-0 >= tau exactly when 0 >= tau).

The solver op (masked_combine, for the multistep / SDE solvers of yoda.sampling.solvers) takes the denoised
estimates d0 (this step's), d1, d2 (the history; absent terms are not added) and seven coefficients:

    sr   = (((cx * x + cd0 * d0) + cd1 * d1) + cd2 * d2) + sigma * z
    lr   = la * c + lb * z
    x'   = sr where A >= tau else lr            (A is None: every pixel active)
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Sequence

import torch

PREDICTIONS = ("eps", "x0", "v")
SAMPLERS = ("ddpm", "ddim")
TILE_SIZES = (8, 16, 32)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class StepCoefs(NamedTuple):
    """The ten coefficients of one step (module docstring), float64; a tuple in kernel order."""

    k1: float  # x0 from x
    k2: float  # x0 from the model output
    e1: float  # eps from x
    e2: float  # eps from the model output
    cx0: float  # sampler update: weight of x0
    cx: float  # sampler update: weight of x
    ceps: float  # sampler update: weight of eps (DDIM's direction term)
    sigma: float  # sampler update: weight of the noise
    la: float  # LR branch: weight of c (sqrt(ab_prev))
    lb: float  # LR branch: weight of the noise (sqrt(1 - ab_prev))


COEF_NAMES = StepCoefs._fields
NUM_COEFS = len(COEF_NAMES)


class CombineCoefs(NamedTuple):
    """The seven coefficients of one masked_combine (module docstring), float64; a tuple in kernel order."""

    cx: float  # weight of the state x
    cd0: float  # weight of this step's denoised estimate d0
    cd1: float  # weight of the previous denoised estimate d1 (0 when absent)
    cd2: float  # weight of the one before, d2 (0 when absent)
    sigma: float  # weight of the noise
    la: float  # LR branch: weight of c
    lb: float  # LR branch: weight of the noise


COMBINE_COEF_NAMES = CombineCoefs._fields
NUM_COMBINE_COEFS = len(COMBINE_COEF_NAMES)
MAX_HISTORY = 3  # d0, d1, d2


def needs_noise(coefs: Sequence[float]) -> bool:
    """Whether a step with these coefficients (StepCoefs or CombineCoefs) draws noise: sigma or lb nonzero in
    float32, as the kernels hold them (a sigma of 1e-300 is 0 there: the C++ op drew none where the reference did)."""
    c = (StepCoefs if len(coefs) == NUM_COEFS else CombineCoefs)(*coefs)
    return _nonzero_f32(c.sigma) or _nonzero_f32(c.lb)


def _nonzero_f32(v: float) -> bool:
    """Whether ``v`` is nonzero in float32: |v| above half the smallest subnormal, 2**-150 (which rounds to the even
    0); a NaN is nonzero. Plain arithmetic, which torch.compile traces (struct.pack sent dynamo into a recursion)."""
    return not abs(v) <= 2.0**-150


def check_tile(tile: int, name: str = "tile") -> int:
    """``tile`` as an int if it is one of TILE_SIZES, else ValueError naming the argument ``name``."""
    if isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile not in TILE_SIZES:
        raise ValueError(f"{name} must be one of {TILE_SIZES}, got {tile!r}")
    return int(tile)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of an op's output for input ``x``: channels-last stays channels-last."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _fake_masked_step(x, model_out, c, A, tile_max, tile_min, tau, coefs, clip, seed, step, noise, tile):
    return torch.empty_like(x, memory_format=memory_format(x))


def _fake_masked_combine(x, d0, d1, d2, c, A, tile_max, tile_min, tau, coefs, seed, step, noise, tile):
    return torch.empty_like(x, memory_format=memory_format(x))


def _fake_tile_stats(A, tile):
    B, H, W = A.shape[0], A.shape[-2], A.shape[-1]
    shape = (B, -(-H // tile), -(-W // tile))
    return A.new_empty(shape, dtype=torch.float32), A.new_empty(shape, dtype=torch.float32)


def _fake_masked_q_sample(x0, c, noise, A, sqrt_ab, sqrt_1m_ab, tau):
    return torch.empty_like(x0, memory_format=memory_format(x0))


# op -> its fake: the output of every backend's kernel as an empty tensor (meta tensors, torch.compile); ops.py
# registers it for torch.ops.yoda.<op>, the Triton package for <op>_triton
FAKES = {"masked_step": _fake_masked_step, "masked_combine": _fake_masked_combine,
         "tile_stats": _fake_tile_stats, "masked_q_sample": _fake_masked_q_sample}
