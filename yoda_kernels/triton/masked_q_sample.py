"""Triton masked_q_sample: training-time forward noising with YODA masks (DESIGN.md §7), same contract and
float32 operation order as ``yoda_kernels.naive.masked_q_sample``:

    x_t[b] = sqrt_ab[b] * (x0[b] where A[b] >= tau[b] else c[b]) + sqrt_1m_ab[b] * noise[b]

One program owns a BLOCK_H x BLOCK_W block of one image and loops over the channels (A read once per
pixel, not once per channel); x0 is loaded only where the pixel is active and c only where it is not.
Grid: (ceil(W / BLOCK_W), ceil(H / BLOCK_H), B).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks
from ..contract import FAKES, memory_format
from .launch import cdiv, narrow_all, next_pow2, on_device, output_like, register
from .masked_step import MAX_GRID_YZ, soft_bf16, to_output
from .tile_stats import attention_strides, to_f32


@triton.jit
def _masked_q_sample_kernel(
    x0_ptr, c_ptr, n_ptr, a_ptr, sa_ptr, s1_ptr, tau_ptr, y_ptr,
    C, H, W,
    sxb, sxc, sxh, sxw, scb, scc, sch, scw, snb, snc, snh, snw, syb, syc, syh, syw, sab, sah, saw,
    HAS_A: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    pid_x = tl.program_id(0)
    pid_y = tl.program_id(1)
    b = tl.program_id(2)
    r = tl.arange(0, BLOCK_H)
    cols = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)
    inb = (pid_y * BLOCK_H + r < H)[:, None] & (cols < W)[None, :]
    rr = r[:, None]  # rows relative to the block: 32-bit offsets, the 64-bit part goes in the bases
    cc = cols[None, :]
    b64 = b.to(tl.int64)
    y64 = (pid_y * BLOCK_H).to(tl.int64)
    sa = tl.load(sa_ptr + b)
    s1 = tl.load(s1_ptr + b)
    if HAS_A:
        tau = tl.load(tau_ptr + b)
        a_s = a_ptr + b64 * sab + y64 * sah
        a = to_f32(tl.load(a_s + rr * sah + cc * saw, mask=inb, other=0.0))
        act = inb & (a >= tau)
        idle = inb & ~(a >= tau)  # a NaN pixel is not active: it takes c, as in the reference
    else:
        act = inb
    for ch in range(C):
        c64 = tl.cast(ch, tl.int64)
        x_s = x0_ptr + b64 * sxb + c64 * sxc + y64 * sxh
        c_s = c_ptr + b64 * scb + c64 * scc + y64 * sch
        n_s = n_ptr + b64 * snb + c64 * snc + y64 * snh
        y_s = y_ptr + b64 * syb + c64 * syc + y64 * syh
        base = to_f32(tl.load(x_s + rr * sxh + cc * sxw, mask=act, other=0.0))
        if HAS_A:
            cv = to_f32(tl.load(c_s + rr * sch + cc * scw, mask=idle, other=0.0))
            base = tl.where(act, base, cv)
        nv = to_f32(tl.load(n_s + rr * snh + cc * snw, mask=inb, other=0.0))
        res = sa * base + s1 * nv
        tl.store(y_s + rr * syh + cc * syw, to_output(res, y_ptr, SOFT_BF16), mask=inb)


@register("masked_q_sample_triton", FAKES["masked_q_sample"], checks.masked_q_sample_args)
def masked_q_sample_triton(
    x0: torch.Tensor,
    c: torch.Tensor,
    noise: torch.Tensor,
    A: Optional[torch.Tensor],
    sqrt_ab: torch.Tensor,
    sqrt_1m_ab: torch.Tensor,
    tau: torch.Tensor,
) -> torch.Tensor:
    """x_t (B, C, H, W), dtype and memory format of x0; arguments as yoda_kernels.naive.masked_q_sample."""
    if x0.dim() != 4:
        raise ValueError(f"x0 must be 4-D (B, C, H, W), got shape {tuple(x0.shape)}")
    for name, t in (("c", c), ("noise", noise)):
        if t.shape != x0.shape:
            raise ValueError(f"{name} must have the shape of x0 {tuple(x0.shape)}, got {tuple(t.shape)}")
    B, C, H, W = x0.shape
    for name, t in (("sqrt_ab", sqrt_ab), ("sqrt_1m_ab", sqrt_1m_ab), ("tau", tau)):
        if t.shape != (B,):
            raise ValueError(f"{name} must have shape ({B},), got {tuple(t.shape)}")
    block_h, block_w = 16, max(16, min(128, next_pow2(max(W, 1))))
    fmt = memory_format(x0)  # the output's layout: the input's, whatever narrow_offsets copies
    x0, c, noise, A = narrow_all(block_h, x0=x0, c=c, noise=noise, A=A)
    if cdiv(H, block_h) > MAX_GRID_YZ or B > MAX_GRID_YZ:
        raise ValueError(f"x0 of shape {tuple(x0.shape)} is too large for the grid")
    out = output_like(x0, fmt, block_h)
    if out.numel() == 0:
        return out
    has_a = A is not None
    sab, sah, saw = attention_strides(A) if has_a else (0, 0, 0)
    grid = (cdiv(W, block_w), cdiv(H, block_h), B)
    with on_device(x0):
        _masked_q_sample_kernel[grid](
            x0, c, noise, A if has_a else x0,
            sqrt_ab.float().contiguous(), sqrt_1m_ab.float().contiguous(), tau.float().contiguous(), out,
            C, H, W, *x0.stride(), *c.stride(), *noise.stride(), *out.stride(), sab, sah, saw,
            HAS_A=has_a, BLOCK_H=block_h, BLOCK_W=block_w, SOFT_BF16=soft_bf16(x0.dtype),
            num_warps=4, enable_fp_fusion=False,
        )
    return out
