"""The argument checks of the Triton ops called as ops (``torch.ops.yoda.<op>_triton``: a direct call, a dispatch
mode, a compiled graph): what the C++ ops check in csrc/common.h. Without them a direct call ran a seed of 2**32
as 0, read tensors of another dtype or device, or took a NaN tau. The public entry points (yoda_kernels.ops) check
first and then call the launch function itself (launch.EAGER), so nothing is checked twice there.

Only shapes, dtypes, devices and scalars: nothing that reads a tensor's values (a device sync, which a CUDA-graph
capture must not make)."""

from __future__ import annotations

import torch

from .. import ops, philox
from ..contract import NUM_COEFS, NUM_COMBINE_COEFS, check_tile


def _masked(x, estimates: dict, c, A, tile_max, tile_min, tau, coefs, n_coefs, seed, step, noise, tile) -> None:
    """What masked_step and masked_combine share: check_step_args / check_combine_args and
    checked_attention_and_stats of csrc/common.h."""
    ops._check_state("x", x)
    for name, t in estimates.items():
        ops._check_state(name, t, x)
    ops._check_state("c", c, x)
    ops._check_attention(A, x)
    check_tile(tile)
    if (tile_max is None) != (tile_min is None):
        raise ValueError("give both tile_max and tile_min or neither")
    if A is not None and tile_max is not None:
        B, _, H, W = x.shape
        expect = (B, -(-H // tile), -(-W // tile))
        for name, t in (("tile_max", tile_max), ("tile_min", tile_min)):
            if t.dtype != torch.float32 or t.device != x.device or tuple(t.shape) != expect:
                raise ValueError(f"{name} must have shape {expect} = tile_stats(A, {tile}), float32, on {x.device}; "
                                 f"got {tuple(t.shape)}, {t.dtype}, on {t.device}")
    if philox.num_groups(x.shape) >= 2**31:
        raise ValueError(f"x of shape {tuple(x.shape)} is too large for the 32-bit noise counter")
    ops._check_call(x, A, tau, coefs, n_coefs, seed, step, noise)


def masked_step(x, model_out, c, A, tile_max, tile_min, tau, coefs, clip, seed, step, noise, tile) -> None:
    _masked(x, {"model_out": model_out}, c, A, tile_max, tile_min, tau, coefs, NUM_COEFS, seed, step, noise, tile)


def masked_combine(x, d0, d1, d2, c, A, tile_max, tile_min, tau, coefs, seed, step, noise, tile) -> None:
    if d2 is not None and d1 is None:
        raise ValueError("d2 is given without d1")
    given = {name: d for name, d in (("d0", d0), ("d1", d1), ("d2", d2)) if d is not None}
    _masked(x, given, c, A, tile_max, tile_min, tau, coefs, NUM_COMBINE_COEFS, seed, step, noise, tile)
    for j, d in ((1, d1), (2, d2)):  # an absent estimate's weight must be 0
        if d is None and float(coefs[1 + j]) != 0.0:
            raise ValueError(f"coefs: cd{j} = {float(coefs[1 + j])} but d{j} is not given")


def masked_q_sample(x0, c, noise, A, sqrt_ab, sqrt_1m_ab, tau) -> None:
    ops._check_state("x0", x0)
    ops._check_state("c", c, x0)
    ops._check_state("noise", noise, x0)
    ops._check_sides("x0", x0)
    ops._check_attention(A, x0, ref="x0")
    B = x0.shape[0]
    for name, t in (("sqrt_ab", sqrt_ab), ("sqrt_1m_ab", sqrt_1m_ab), ("tau", tau)):
        if not t.is_floating_point() or tuple(t.shape) != (B,) or t.device != x0.device:
            raise ValueError(f"{name} must be a float tensor of shape ({B},) on {x0.device}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")


def tile_stats(A: torch.Tensor, tile: int) -> None:
    if A.dim() not in (3, 4) or (A.dim() == 4 and A.shape[1] != 1):
        raise ValueError(f"A must be (B, 1, H, W) or (B, H, W), got {tuple(A.shape)}")
    if A.dtype not in ops.FLOAT_DTYPES:
        raise TypeError(f"A must be float32, float16 or bfloat16, got {A.dtype}")
    check_tile(tile)
    ops._check_sides("A", A)

