"""Argument checks of the yoda ops, errors naming the argument.

- The public entry points' (yoda_kernels.ops, MaskedOps): check_state, check_attention, check_nan, check_sides,
  check_clip and check_call (what a loop changes from step to step).
- The Triton ops' when they are called as ops (``torch.ops.yoda.<op>_triton``: a direct call, a dispatch mode, a
  compiled graph): masked_step_args, masked_combine_args, masked_q_sample_args and tile_stats_args check what
  the C++ ops check in csrc/common.h. Without them a direct call ran a seed of 2**32 as 0, read tensors of
  another dtype or device, or took a NaN tau. The public entry points check first and then call the launch
  function itself (triton/launch.py EAGER), so nothing is checked twice there. Only shapes, dtypes, devices and
  scalars: nothing that reads a tensor's values (a device sync, which a CUDA-graph capture must not make).
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Mapping, Set
from typing import Optional, Sequence

import torch

from . import philox
from .contract import FLOAT_DTYPES, MAX_HISTORY, NUM_COEFS, NUM_COMBINE_COEFS, CombineCoefs, StepCoefs, check_tile


def check_dense(t: torch.Tensor, name: str) -> None:
    """TypeError naming ``name`` for a sparse (or other non-strided) tensor: the kernels take dense ones only (a
    sparse state reached the dispatcher's "Could not run 'yoda::masked_step' ... 'SparseCPU'"). yoda.masks has its
    twin, with the same arguments, for the library's maps and images (yoda_kernels imports nothing of yoda)."""
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}: pass it .to_dense()")


def check_state(name: str, t: torch.Tensor, ref: Optional[torch.Tensor] = None, ref_name: str = "x") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_dense(t, name)
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if ref is not None:
        if t.shape != ref.shape:
            raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def check_attention(A: Optional[torch.Tensor], x: torch.Tensor, ref: str = "x") -> Optional[torch.Tensor]:
    if A is None:
        return None
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor or None, got {type(A).__name__}")
    check_dense(A, "A")
    B, _, H, W = x.shape
    ok = (A.dim() == 4 and A.shape[1] == 1 and tuple(A.shape[2:]) == (H, W) and A.shape[0] == B) or (
        A.dim() == 3 and tuple(A.shape) == (B, H, W)
    )
    if not ok:
        raise ValueError(f"A must be (B, 1, H, W) or (B, H, W) = ({B}, 1, {H}, {W}), got {tuple(A.shape)}")
    if A.dtype not in FLOAT_DTYPES:
        raise TypeError(f"A must be float32, float16 or bfloat16, got {A.dtype}")
    if A.device != x.device:
        raise ValueError(f"A is on {A.device} but {ref} is on {x.device}")
    return A


def values_checkable(t: torch.Tensor) -> bool:
    """Whether checks may read ``t``'s values: not on the meta device (none there), not under torch.compile (a
    branch on a value breaks the graph; fullgraph=True failed)."""
    return t.device.type != "meta" and not torch.compiler.is_compiling()


def check_nan(name: str, *tensors: torch.Tensor) -> None:
    """ValueError if any of ``tensors`` holds a NaN: one device sync for all of them (none where values_checkable
    says no)."""
    if not values_checkable(tensors[0]):
        return
    found = torch.isnan(tensors[0]).any()
    for t in tensors[1:]:
        found = found | torch.isnan(t).any()
    if found:
        raise ValueError(f"{name} contains NaN")


def check_sides(name: str, t: torch.Tensor) -> None:
    """Every dimension of ``t`` but the batch below 2**31: the GPU kernels index a channel, row or column in 32
    bits (masked_step / masked_combine are bounded tighter by the noise counter)."""
    if any(n >= 2**31 for n in t.shape[1:]):  # (max(..., default=) does not trace symbolic sizes)
        raise ValueError(f"{name} of shape {tuple(t.shape)} has a side of 2**31 or more; the kernels take less")


def check_counter(x: torch.Tensor, name: str = "x") -> None:
    """The noise counter of every element of ``x`` within 32 bits (philox.py; csrc/common.h)."""
    if philox.num_groups(x.shape) >= 2**31:
        raise ValueError(f"{name} of shape {tuple(x.shape)} is too large for the 32-bit noise counter")


def check_clip(clip) -> bool:
    """``clip`` as a bool: True / False (numpy's too); "no" or 0.5 would have clipped (bool("no") is True)."""
    if type(clip) is bool:
        return clip
    import numpy as np

    if not isinstance(clip, np.bool_):
        raise TypeError(f"clip must be True or False, got {clip!r}")
    return bool(clip)


def refuse_tau_grad(tau) -> None:
    """A tau that wants a gradient is refused on every backend, the reference too: a threshold has none (the step
    ops and masked_q_sample alike)."""
    if isinstance(tau, torch.Tensor) and tau.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("tau is not differentiable (a threshold): pass a float, or tau.detach()")


def traced() -> bool:
    """Whether torch.compile is tracing: it makes a float argument dynamic when it recompiles for a new value (tau,
    coefs, ab of a sampling loop), and struct, math.isnan and Python's float checks do not trace one (a
    RecursionError in dynamo, "torch.* op returned non-Tensor"): their checks are the eager call's."""
    return torch.compiler.is_compiling()


def check_call(x, A, tau, coefs, n_coefs, seed, step, noise):
    """The checks of what changes from step to step -> (tau, coefs as floats, -0.0 as +0.0; with A None the LR
    branch's weights zeroed, so that it never draws noise). Plain ints and floats take the short way (a loop's
    host time). Traced (torch.compile), tau and coefs pass unchecked and unrounded (traced()): the kernels round
    them to float32 as they compute; an eager call checks them."""
    if noise is not None:
        check_state("noise", noise, x)
    if not (type(seed) is int and type(step) is int and 0 <= seed <= philox.MAX_SEED and 0 <= step <= philox.MAX_STEP):
        philox.check_seed_step(seed, step)
    if isinstance(coefs, (list, tuple)) and len(coefs) == n_coefs and traced():
        coefs = list(coefs)
        if A is None:
            la, lb = LR_WEIGHTS[n_coefs]
            coefs[la] = coefs[lb] = 0.0
        return tau, coefs
    if type(tau) is not float and (isinstance(tau, (bool, str, bytes)) or not isinstance(tau, (numbers.Real, torch.Tensor))):
        raise TypeError(f"tau must be a float, got {type(tau).__name__}")
    if isinstance(tau, torch.Tensor) and (tau.dtype == torch.bool or tau.is_complex()):  # (True was 1.0)
        raise TypeError(f"tau must be a float, got a tensor of {tau.dtype}")
    if isinstance(tau, torch.Tensor) and tau.numel() != 1:
        raise ValueError(f"tau must be one number (masked_q_sample takes one per image), got shape {tuple(tau.shape)}")
    refuse_tau_grad(tau)
    if isinstance(tau, torch.Tensor) and tau.is_meta:  # (.item()'s RuntimeError)
        raise ValueError("tau is a tensor on the meta device, which holds no value: pass a float")
    try:
        tau = float(tau)
    except OverflowError:  # an int past float64's range (10**400): past float32's largest too, as below
        tau = math.inf if tau > 0 else -math.inf
    if math.isnan(tau):
        raise ValueError("tau must not be NaN")
    try:  # float32's value: every backend compares A >= float32(tau), as the reference (Triton's interpreter took
        tau = struct.unpack("f", struct.pack("f", tau))[0]  # a subnormal tau in float64)
    except OverflowError:  # past float32's largest: its infinity
        tau = math.copysign(math.inf, tau)
    given = coefs
    # rounded to float32 here, as the kernels compute: every backend then decides on the same numbers whether a
    # step draws noise (a sigma of 1e-300 drew it in the reference and Triton, not in C++); 1e300 (inf in float32)
    # is refused; -0.0 as +0.0 (Triton takes a -0.0 argument as +0.0, the interpreter)
    try:  # (a dict's keys were packed as the coefficients: 0, 1, ... in place of its values)
        coefs = None if isinstance(coefs, (Mapping, Set, str, bytes)) else [
            v + 0.0 for v in struct.unpack(f"{len(coefs)}f", struct.pack(f"{len(coefs)}f", *coefs))]
    except (TypeError, ValueError, OverflowError, struct.error):
        coefs = None
    if coefs is None or len(coefs) != n_coefs or not all(map(math.isfinite, coefs)):
        raise ValueError(f"coefs must be {n_coefs} finite floats (in float32's range: the kernels compute in "
                         f"float32), got {list(given) if isinstance(given, (list, tuple)) else given!r}")
    if A is None:  # every pixel active: the LR branch is never taken, and its noise weight must not draw noise
        la, lb = LR_WEIGHTS[n_coefs]
        coefs[la] = coefs[lb] = 0.0
    return tau, coefs


# where the LR branch's weights (la, lb) sit in StepCoefs and in CombineCoefs
LR_WEIGHTS = {len(f): (f.index("la"), f.index("lb")) for f in (StepCoefs._fields, CombineCoefs._fields)}


def check_history(denoised: Sequence, coefs: Sequence[float], name: str = "denoised[{}]") -> list:
    """masked_combine's [d0, d1, d2] from the ``denoised`` given, None for each absent estimate, whose weight in
    ``coefs`` must be 0 (``name``: how the message names estimate j)."""
    for j in range(len(denoised), MAX_HISTORY):
        if coefs[1 + j] != 0.0:
            raise ValueError(f"coefs: cd{j} = {coefs[1 + j]:.7g} but {name.format(j)} is not given")
    return list(denoised) + [None] * (MAX_HISTORY - len(denoised))


def check_q_sample_states(x0, c, noise, A) -> Optional[torch.Tensor]:
    """masked_q_sample's tensors (x0, c, noise of one shape, dtype and device; A None or its map) -> A."""
    check_state("x0", x0)
    check_state("c", c, x0, "x0")
    check_state("noise", noise, x0, "x0")
    check_sides("x0", x0)
    return check_attention(A, x0, ref="x0")


# ---- the Triton ops called as ops -----------------------------------------------------------------------
def _masked(x, estimates: dict, c, A, tile_max, tile_min, tau, coefs, n_coefs, seed, step, noise, tile) -> None:
    """What masked_step and masked_combine share: check_step_args / check_combine_args and
    checked_attention_and_stats of csrc/common.h."""
    check_state("x", x)
    for name, t in estimates.items():
        check_state(name, t, x)
    check_state("c", c, x)
    check_attention(A, x)
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
    check_counter(x)
    check_call(x, A, tau, coefs, n_coefs, seed, step, noise)


def masked_step_args(x, model_out, c, A, tile_max, tile_min, tau, coefs, clip, seed, step, noise, tile) -> None:
    _masked(x, {"model_out": model_out}, c, A, tile_max, tile_min, tau, coefs, NUM_COEFS, seed, step, noise, tile)


def masked_combine_args(x, d0, d1, d2, c, A, tile_max, tile_min, tau, coefs, seed, step, noise, tile) -> None:
    if d2 is not None and d1 is None:
        raise ValueError("d2 is given without d1")
    given = {name: d for name, d in (("d0", d0), ("d1", d1), ("d2", d2)) if d is not None}
    _masked(x, given, c, A, tile_max, tile_min, tau, coefs, NUM_COMBINE_COEFS, seed, step, noise, tile)
    check_history(list(given.values()), [float(v) for v in coefs], "d{}")


def masked_q_sample_args(x0, c, noise, A, sqrt_ab, sqrt_1m_ab, tau) -> None:
    check_q_sample_states(x0, c, noise, A)
    B = x0.shape[0]
    for name, t in (("sqrt_ab", sqrt_ab), ("sqrt_1m_ab", sqrt_1m_ab), ("tau", tau)):
        if not t.is_floating_point() or tuple(t.shape) != (B,) or t.device != x0.device:
            raise ValueError(f"{name} must be a float tensor of shape ({B},) on {x0.device}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")


def tile_stats_args(A: torch.Tensor, tile: int) -> int:
    """tile_stats' arguments (the entry point's and the Triton op's) -> tile as an int."""
    if not isinstance(A, torch.Tensor):  # (a numpy array was told its shape was wrong)
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    check_dense(A, "A")
    if A.dim() not in (3, 4) or (A.dim() == 4 and A.shape[1] != 1):
        raise ValueError(f"A must be (B, 1, H, W) or (B, H, W), got {getattr(A, 'shape', type(A))}")
    if A.dtype not in FLOAT_DTYPES:
        raise TypeError(f"A must be float32, float16 or bfloat16, got {A.dtype}")
    check_sides("A", A)
    return check_tile(tile)

