"""Triton masked_combine: the fused masked update of the multistep / SDE solvers (contract.CombineCoefs), same
contract and float32 operation order as ``yoda_kernels.naive.masked_combine``:

    sr = (((cx * x + cd0 * d0) + cd1 * d1) + cd2 * d2) + sigma * z      (terms of absent d1 / d2 not added)
    lr = la * c + lb * z
    x' = sr where A >= tau else lr

The work split, the three strip paths (LR only / SR only / per pixel) and their read avoidance, the Philox
noise (the same stream and counters as masked_step) and the launch configuration are masked_step's
(yoda_kernels/triton/masked_step.py), with masked_step's x and model_out replaced by x and the ND estimates:
    all tiles empty  -> reads c (and explicit noise), never x / d* / A
    all tiles full   -> reads x, d0 .. d(ND-1) (and explicit noise), never c / A
    otherwise        -> A only in mixed tiles; x, d* only where the pixel is active, c only where it is not
ND (1..3, the number of estimates) is a compile-time constant: absent estimates are neither read nor added.
Coefficients reach the kernel by name (the contract.CombineCoefs fields are its parameters cx .. lb); compiled
with enable_fp_fusion=False, so no multiply-add is fused.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.types import Number

from .. import checks
from ..contract import (FAKES, MAX_HISTORY, NUM_COMBINE_COEFS, CombineCoefs, check_tile, memory_format,
                        needs_noise)
from .launch import cdiv, narrow_all, on_device, output_like, register
from .masked_step import (
    NOISE_NONE,
    NOISE_PHILOX,
    NOISE_TENSOR,
    _as_int32,
    _strides,
    attention_args,
    launch_config,
    soft_bf16,
    strip_lanes,
    tile_classes,
    tile_grid,
    to_output,
)
from .noise import randn4
from .tile_stats import to_f32


@triton.jit
def _lane_load(
    x_ptr, d0_ptr, d1_ptr, d2_ptr, c_ptr, n_ptr, r, cols, inb, act,
    sxh, sxw, s0h, s0w, s1h, s1w, s2h, s2w, sch, scw, snh, snw,
    PATH: tl.constexpr, NOISE: tl.constexpr, ND: tl.constexpr,
):
    """The loads of one lane sub-block of one channel: (x, d0, d1, d2, c, explicit noise) as float32, 0.0 for
    what the path (or ND) does not need. Pointers are already offset to (b, channel, first row of the strip)."""
    rr = r[:, None]
    cc = cols[None, :]
    xv = 0.0
    v0 = 0.0
    v1 = 0.0
    v2 = 0.0
    cv = 0.0
    nv = 0.0
    if PATH != 0:
        xv = to_f32(tl.load(x_ptr + rr * sxh + cc * sxw, mask=act, other=0.0))
        v0 = to_f32(tl.load(d0_ptr + rr * s0h + cc * s0w, mask=act, other=0.0))
        if ND > 1:
            v1 = to_f32(tl.load(d1_ptr + rr * s1h + cc * s1w, mask=act, other=0.0))
        if ND > 2:
            v2 = to_f32(tl.load(d2_ptr + rr * s2h + cc * s2w, mask=act, other=0.0))
    if PATH == 2:
        cv = to_f32(tl.load(c_ptr + rr * sch + cc * scw, mask=inb & (act == 0), other=0.0))
    elif PATH == 0:
        cv = to_f32(tl.load(c_ptr + rr * sch + cc * scw, mask=inb, other=0.0))
    if NOISE == 2:
        nv = to_f32(tl.load(n_ptr + rr * snh + cc * snw, mask=inb, other=0.0))
    return xv, v0, v1, v2, cv, nv


@triton.jit
def _lane_store(
    y_ptr, r, cols, inb, act, xv, v0, v1, v2, cv, z, syh, syw,
    cx, cd0, cd1, cd2, sigma, la, lb,
    PATH: tl.constexpr, NOISE: tl.constexpr, ND: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    """x' of one lane sub-block in naive.py's float32 order, stored in the output's dtype."""
    if PATH != 0:
        sr = cx * xv + cd0 * v0
        if ND > 1:
            sr = sr + cd1 * v1
        if ND > 2:
            sr = sr + cd2 * v2
        if NOISE != 0:
            sr = sr + sigma * z
        else:
            sr = sr + 0.0  # the reference adds sigma * 0 = +0: -0 becomes +0 (x + 0.0 is not folded away)
    if PATH != 1:
        lr = la * cv
        if NOISE != 0:
            lr = lr + lb * z
        else:
            lr = lr + 0.0
    if PATH == 2:
        res = tl.where(act, sr, lr)
    elif PATH == 1:
        res = sr
    else:
        res = lr
    tl.store(y_ptr + r[:, None] * syh + cols[None, :] * syw, to_output(res, y_ptr, SOFT_BF16), mask=inb)


@triton.jit
def _strip(
    x_ptr, d0_ptr, d1_ptr, d2_ptr, c_ptr, n_ptr, y_ptr, a_ptr,
    b, ty, cols, col_in, full, mixed,
    C, H, W, H4,
    sxb, sxc, sxh, sxw, s0b, s0c, s0h, s0w, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, scb, scc, sch, scw,
    snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
    tau, cx, cd0, cd1, cd2, sigma, la, lb, seed,
    PATH: tl.constexpr, NOISE: tl.constexpr, ND: tl.constexpr, TILE: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    """All channels of one strip along one path: per channel every load of the four lane sub-blocks first,
    then the Philox normals while they are in flight, then the stores (masked_step's _strip)."""
    R: tl.constexpr = TILE // 4
    i, r0, r1, r2, r3, in0, in1, in2, in3, act0, act1, act2, act3 = strip_lanes(
        a_ptr, ty, cols, col_in, full, mixed, H, sah, saw, tau, PATH, TILE)
    b64 = b.to(tl.int64)
    y64 = (ty * TILE).to(tl.int64)
    for ch in range(C):
        c64 = tl.cast(ch, tl.int64)
        x_s = x_ptr + b64 * sxb + c64 * sxc + y64 * sxh
        d0_s = d0_ptr + b64 * s0b + c64 * s0c + y64 * s0h
        d1_s = d1_ptr + b64 * s1b + c64 * s1c + y64 * s1h
        d2_s = d2_ptr + b64 * s2b + c64 * s2c + y64 * s2h
        c_s = c_ptr + b64 * scb + c64 * scc + y64 * sch
        n_s = n_ptr + b64 * snb + c64 * snc + y64 * snh
        y_s = y_ptr + b64 * syb + c64 * syc + y64 * syh
        x0, a0, b0, e0, cv0, n0 = _lane_load(x_s, d0_s, d1_s, d2_s, c_s, n_s, r0, cols, in0, act0, sxh, sxw,
                                             s0h, s0w, s1h, s1w, s2h, s2w, sch, scw, snh, snw, PATH, NOISE, ND)
        x1, a1, b1, e1, cv1, n1 = _lane_load(x_s, d0_s, d1_s, d2_s, c_s, n_s, r1, cols, in1, act1, sxh, sxw,
                                             s0h, s0w, s1h, s1w, s2h, s2w, sch, scw, snh, snw, PATH, NOISE, ND)
        x2, a2, b2, e2, cv2, n2 = _lane_load(x_s, d0_s, d1_s, d2_s, c_s, n_s, r2, cols, in2, act2, sxh, sxw,
                                             s0h, s0w, s1h, s1w, s2h, s2w, sch, scw, snh, snw, PATH, NOISE, ND)
        x3, a3, b3, e3, cv3, n3 = _lane_load(x_s, d0_s, d1_s, d2_s, c_s, n_s, r3, cols, in3, act3, sxh, sxw,
                                             s0h, s0w, s1h, s1w, s2h, s2w, sch, scw, snh, snw, PATH, NOISE, ND)
        if NOISE == 1:
            g = ((b * C + ch) * H4 + ty * R + i)[:, None] * W + cols[None, :]
            n0, n1, n2, n3 = randn4(seed, g)
        _lane_store(y_s, r0, cols, in0, act0, x0, a0, b0, e0, cv0, n0, syh, syw,
                    cx, cd0, cd1, cd2, sigma, la, lb, PATH, NOISE, ND, SOFT_BF16)
        _lane_store(y_s, r1, cols, in1, act1, x1, a1, b1, e1, cv1, n1, syh, syw,
                    cx, cd0, cd1, cd2, sigma, la, lb, PATH, NOISE, ND, SOFT_BF16)
        _lane_store(y_s, r2, cols, in2, act2, x2, a2, b2, e2, cv2, n2, syh, syw,
                    cx, cd0, cd1, cd2, sigma, la, lb, PATH, NOISE, ND, SOFT_BF16)
        _lane_store(y_s, r3, cols, in3, act3, x3, a3, b3, e3, cv3, n3, syh, syw,
                    cx, cd0, cd1, cd2, sigma, la, lb, PATH, NOISE, ND, SOFT_BF16)


@triton.jit
def _masked_combine_kernel(
    x_ptr, d0_ptr, d1_ptr, d2_ptr, c_ptr, a_ptr, tmax_ptr, tmin_ptr, n_ptr, y_ptr,
    C, H, W, H4, TY, TX,
    sxb, sxc, sxh, sxw, s0b, s0c, s0h, s0w, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, scb, scc, sch, scw,
    snb, snc, snh, snw, syb, syc, syh, syw, sab, sah, saw,
    tau, cx, cd0, cd1, cd2, sigma, la, lb, seed_i32, step,
    HAS_A: tl.constexpr, NOISE: tl.constexpr, ND: tl.constexpr,
    TILE: tl.constexpr, BLOCK_W: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    # The 64-bit Philox key (step << 32) | seed, assembled here from 32-bit arguments (masked_step's kernel).
    seed = (tl.cast(step, tl.uint64) << 32) | tl.cast(tl.cast(seed_i32, tl.uint32, bitcast=True), tl.uint64)
    pid_x = tl.program_id(0)
    ty = tl.program_id(1)
    b = tl.program_id(2)
    cols = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)
    col_in = cols < W
    a_b = a_ptr + b.to(tl.int64) * sab
    if HAS_A:
        full, mixed, n_full, n_idle = tile_classes(tmax_ptr, tmin_ptr, b, ty, cols, col_in, TY, TX, tau, TILE)
        if n_idle == BLOCK_W:
            _strip(x_ptr, d0_ptr, d1_ptr, d2_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, full, mixed,
                   C, H, W, H4, sxb, sxc, sxh, sxw, s0b, s0c, s0h, s0w, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                   scb, scc, sch, scw, snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
                   tau, cx, cd0, cd1, cd2, sigma, la, lb, seed, 0, NOISE, ND, TILE, SOFT_BF16)
        elif n_full == BLOCK_W:
            _strip(x_ptr, d0_ptr, d1_ptr, d2_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, full, mixed,
                   C, H, W, H4, sxb, sxc, sxh, sxw, s0b, s0c, s0h, s0w, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                   scb, scc, sch, scw, snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
                   tau, cx, cd0, cd1, cd2, sigma, la, lb, seed, 1, NOISE, ND, TILE, SOFT_BF16)
        else:
            _strip(x_ptr, d0_ptr, d1_ptr, d2_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, full, mixed,
                   C, H, W, H4, sxb, sxc, sxh, sxw, s0b, s0c, s0h, s0w, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                   scb, scc, sch, scw, snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
                   tau, cx, cd0, cd1, cd2, sigma, la, lb, seed, 2, NOISE, ND, TILE, SOFT_BF16)
    else:
        _strip(x_ptr, d0_ptr, d1_ptr, d2_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, col_in, col_in,
               C, H, W, H4, sxb, sxc, sxh, sxw, s0b, s0c, s0h, s0w, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
               scb, scc, sch, scw, snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
               tau, cx, cd0, cd1, cd2, sigma, la, lb, seed, 1, NOISE, ND, TILE, SOFT_BF16)


def launch_masked_combine(
    x: torch.Tensor,
    d0: torch.Tensor,
    d1: Optional[torch.Tensor],
    d2: Optional[torch.Tensor],
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tile_max: Optional[torch.Tensor],
    tile_min: Optional[torch.Tensor],
    tau: float,
    coefs: list[float],
    seed: int,
    step: int,
    noise: Optional[torch.Tensor],
    tile: int,
    *,
    block_w: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """The launch behind ``torch.ops.yoda.masked_combine_triton``; ``block_w`` / ``num_warps`` override
    masked_step's :func:`launch_config`."""
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if d2 is not None and d1 is None:
        raise ValueError("d2 is given without d1")
    for name, t in (("d0", d0), ("d1", d1), ("d2", d2), ("c", c), ("noise", noise)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    check_tile(tile)
    if len(coefs) != NUM_COMBINE_COEFS:
        raise ValueError(f"coefs must be {NUM_COMBINE_COEFS} floats, got {len(coefs)}")
    fmt = memory_format(x)  # the output's layout: the input's, whatever narrow_offsets copies
    x, d0, d1, d2, c, noise, A = narrow_all(tile, x=x, d0=d0, d1=d1, d2=d2, c=c, noise=noise, A=A)
    k = CombineCoefs(*(float(v) for v in coefs))
    ds = [d for d in (d0, d1, d2) if d is not None]
    nd = len(ds)
    for j in range(nd, MAX_HISTORY):
        if k[1 + j] != 0.0:
            raise ValueError(f"coefs: cd{j} = {k[1 + j]} but d{j} is not given")
    B, C, H, W = x.shape
    TY, TX = tile_grid(x, tile)
    out = output_like(x, fmt, tile)
    if out.numel() == 0:
        return out
    noise_mode = NOISE_NONE if not needs_noise(coefs) else NOISE_PHILOX if noise is None else NOISE_TENSOR
    has_a = A is not None
    A, tmax, tmin, (sab, sah, saw) = attention_args(x, A, tile_max, tile_min, tile)
    used_noise = noise if noise_mode == NOISE_TENSOR else None
    unit_w = all(t.stride(-1) == 1 for t in [x, c, out] + ds + ([used_noise] if used_noise is not None else []))
    cfg_w, cfg_warps = launch_config(W, tile, noise_mode == NOISE_PHILOX, unit_w, philox_pixels=1024)
    block_w = block_w or cfg_w
    dd = ds + [x] * (MAX_HISTORY - nd)  # absent estimates: never read (ND is a compile-time constant)
    grid = (cdiv(W, block_w), TY, B)
    with on_device(x):
        _masked_combine_kernel[grid](
            x, dd[0], dd[1], dd[2], c, A, tmax, tmin, used_noise if used_noise is not None else x, out,
            C, H, W, (H + 3) // 4, TY, TX,
            *x.stride(), *_strides(d0), *_strides(d1), *_strides(d2), *c.stride(), *_strides(used_noise),
            *out.stride(), sab, sah, saw,
            float(tau), **k._asdict(), seed_i32=_as_int32(int(seed)), step=int(step),
            HAS_A=has_a, NOISE=noise_mode, ND=nd, TILE=tile, BLOCK_W=block_w, SOFT_BF16=soft_bf16(x.dtype),
            num_warps=num_warps or cfg_warps, enable_fp_fusion=False,
        )
    return out


@register("masked_combine_triton", FAKES["masked_combine"], checks.masked_combine_args)
def masked_combine_triton(
    x: torch.Tensor,
    d0: torch.Tensor,
    d1: Optional[torch.Tensor],
    d2: Optional[torch.Tensor],
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tile_max: Optional[torch.Tensor],
    tile_min: Optional[torch.Tensor],
    tau: Number,
    coefs: list[Number],
    seed: int,
    step: int,
    noise: Optional[torch.Tensor],
    tile: int,
) -> torch.Tensor:
    """x' (B, C, H, W), dtype and memory format of x; arguments as yoda_kernels.naive.masked_combine.
    tile_max / tile_min are computed here when A is given without them."""
    return launch_masked_combine(x, d0, d1, d2, c, A, tile_max, tile_min, tau, coefs, seed, step, noise, tile)
