"""Triton masked_step: one fused YODA reverse step (DESIGN.md §5, §8, §9), same contract and float32
operation order as ``yoda_kernels.naive.masked_step``.

Work split. One program owns a strip of TILE rows x BLOCK_W columns of one image (BLOCK_W // TILE tiles
side by side) and loops over the channels, so the tile classification and the attention reads are done
once for all channels. Grid: (ceil(W / BLOCK_W), ceil(H / TILE), B).

Read avoidance (bytes moved ∝ what the active fraction needs). From tile_max / tile_min at tau the
program classifies its tiles, then takes one of three paths for the whole strip:
    all tiles empty  -> LR branch only:  reads c (and explicit noise), never x / model_out / A
    all tiles full   -> SR branch only:  reads x, model_out (and explicit noise), never c / A
    otherwise        -> per pixel:       A read only in mixed tiles; x, model_out loaded only where the
                                         pixel is active, c only where it is not
The two uniform paths keep their load masks constant over 16-byte groups, so loads stay vectorised
(a data-dependent per-pixel mask would split them into 4-byte loads); only strips on an attention
boundary pay for the per-pixel path.

Noise. z = lane y % 4 of noise.randn4((step << 32) | seed, g) with g = ((b*C + c) * ceil(H/4) + y//4) * W + x
(yoda_kernels.philox, DESIGN.md §9): the strip's rows split into four lane sub-blocks, rows y0 + 4i + lane, so
one Philox call feeds four pixels. No noise is drawn or read when sigma == lb == 0 (contract.needs_noise).

Coefficients reach the kernel by name (contract.StepCoefs fields are its parameters k1 .. lb).

Arithmetic is float32 whatever the input dtype; the kernel is compiled with enable_fp_fusion=False so
that a*x + b*y is two roundings as in the reference, never one fused multiply-add (the noise transform's
explicit fmas are the only ones).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.types import Number

from .. import checks
from ..contract import FAKES, NUM_COEFS, StepCoefs, check_tile, memory_format, needs_noise
from .interpret import INTERPRET
from .launch import cdiv, narrow_all, next_pow2, on_device, output_like, register
from .noise import randn4
from .tile_stats import attention_strides, optional_stats, to_f32

# Strip paths (PATH in the kernel, see the module docstring): 0 LR branch only, 1 SR branch only, 2 per pixel.
# Noise source: none (sigma == lb == 0), Philox in the kernel, or the explicit ``noise`` tensor.
NOISE_NONE, NOISE_PHILOX, NOISE_TENSOR = 0, 1, 2
MAX_GRID_YZ = 65535  # CUDA limit of grid dimensions y and z


def launch_config(W: int, tile: int, noise: bool = False, unit_w: bool = True,
                  philox_pixels: int = 2048) -> tuple[int, int]:
    """(BLOCK_W, num_warps) for images of width W, tile size ``tile``, a step that draws Philox noise or not, and
    tensors whose W-stride is 1 (``unit_w``: Triton folds the stride in and loads float4) or not.
    ``philox_pixels``: the strip of a Philox launch on unit-stride tensors (masked_combine keeps 1024: its
    2048-pixel build takes 208-210 registers against 147, and has not been measured on a GPU).

    The reasons (measurements: benchmarks/RESULTS.md, the H200 launch sweep and the offline sm_90 compile):
      - unit-stride tensors: 2048-pixel strips at 4 warps, 16 pixels of a channel per thread, float4 loads,
        with Philox too since noise stream 2 (no spill at 136-168 registers; the 2026-12-04 sweep: 69 / 73 /
        82 % of copy bandwidth at 0 / 50 / 100 % active against 62 / 66 / 76 % at 8 pixels per thread);
      - strided tensors (channels-last) load one float at a time and need more registers: 8 warps without
        Philox (at 4 the kernel with an explicit noise tensor spills), 1024-pixel strips at 4 warps with it
        (2048 spills); benchmarks/sass_report.py compiles every case offline.
    Narrow images shrink BLOCK_W to the next power of two >= W (never below one tile), and the warps to at
    least 8 pixels each."""
    pixels, warps = ((philox_pixels if noise else 2048), 4) if unit_w else ((1024, 4) if noise else (2048, 8))
    block_w = max(tile, min(pixels // tile, next_pow2(max(W, 1))))
    return block_w, max(1, min(warps, tile * block_w // (32 * 8)))


def soft_bf16(dtype: torch.dtype) -> bool:
    """The interpreter rounds float32 -> bfloat16 by truncation (and mis-carries when asked for RTNE), so under
    TRITON_INTERPRET=1 the kernels round bf16 outputs themselves; compiled kernels use the hardware's
    round-to-nearest-even conversion, which gives the same bits."""
    return INTERPRET and dtype == torch.bfloat16


@triton.jit
def to_output(v, out_ptr, SOFT_BF16: tl.constexpr):
    """float32 -> the output's dtype, rounding to nearest even."""
    if SOFT_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        quiet_nan = (bits >> 16) | 0x40  # keep NaN a NaN: the carry must not reach the exponent
        bits16 = tl.where(v != v, quiet_nan, rounded).to(tl.uint16)
        return bits16.to(tl.bfloat16, bitcast=True)
    else:
        return v.to(out_ptr.dtype.element_ty)


@triton.jit
def _lane_active(a_ptr, r, cols, inb, full, mixed, sah, saw, tau, PATH: tl.constexpr):
    """Active-pixel mask of one lane sub-block (rows r of the strip: a (TILE/4,) vector). Only the per-pixel
    path reads A, and only in mixed tiles; full tiles are active without it."""
    if PATH == 2:
        rr = r[:, None]
        cc = cols[None, :]
        a = to_f32(tl.load(a_ptr + rr * sah + cc * saw, mask=inb & mixed[None, :], other=0.0))
        act = inb & (full[None, :] | (mixed[None, :] & (a >= tau)))
    else:
        act = inb  # path 1: every pixel; path 0: unused
    return act


@triton.jit
def tile_classes(tmax_ptr, tmin_ptr, b, ty, cols, col_in, TY, TX, tau, TILE: tl.constexpr):
    """The tile classes under a strip's columns (shared with masked_combine's kernel): full (tile_min >= tau),
    mixed, and how many columns are full and how many idle (no active pixel). Columns past W count as full and
    idle, so that they never force the per-pixel path. A tile with a NaN of A (NaN stats: direct calls only) is
    mixed, so that each pixel decides, as in the reference."""
    st = (b * TY + ty).to(tl.int64) * TX + cols // TILE
    tmax = tl.load(tmax_ptr + st, mask=col_in, other=float("-inf"))
    tmin = tl.load(tmin_ptr + st, mask=col_in, other=float("inf"))
    full = tmin >= tau
    active = (tmax >= tau) | (tmax != tmax)
    mixed = active & (full == 0)
    return full, mixed, tl.sum(full.to(tl.int32), axis=0), tl.sum((active == 0).to(tl.int32), axis=0)


@triton.jit
def strip_lanes(a_ptr, ty, cols, col_in, full, mixed, H, sah, saw, tau, PATH: tl.constexpr, TILE: tl.constexpr):
    """The four lane sub-blocks of a strip (shared with masked_combine's _strip): i in [0, TILE / 4), rows
    r_l = 4i + l of the strip, their in-bounds masks and activity (_lane_active). 64-bit bases, 32-bit offsets
    inside the strip."""
    i = tl.arange(0, TILE // 4)
    y0 = ty * TILE
    r0 = 4 * i
    r1 = 4 * i + 1
    r2 = 4 * i + 2
    r3 = 4 * i + 3
    in0 = ((y0 + r0) < H)[:, None] & col_in[None, :]
    in1 = ((y0 + r1) < H)[:, None] & col_in[None, :]
    in2 = ((y0 + r2) < H)[:, None] & col_in[None, :]
    in3 = ((y0 + r3) < H)[:, None] & col_in[None, :]
    a_s = a_ptr + y0.to(tl.int64) * sah
    act0 = _lane_active(a_s, r0, cols, in0, full, mixed, sah, saw, tau, PATH)
    act1 = _lane_active(a_s, r1, cols, in1, full, mixed, sah, saw, tau, PATH)
    act2 = _lane_active(a_s, r2, cols, in2, full, mixed, sah, saw, tau, PATH)
    act3 = _lane_active(a_s, r3, cols, in3, full, mixed, sah, saw, tau, PATH)
    return i, r0, r1, r2, r3, in0, in1, in2, in3, act0, act1, act2, act3


@triton.jit
def _lane_load(
    x_ptr, o_ptr, c_ptr, n_ptr, r, cols, inb, act,
    sxh, sxw, soh, sow, sch, scw, snh, snw,
    PATH: tl.constexpr, NOISE: tl.constexpr,
):
    """The loads of one lane sub-block of one channel: (x, model_out, c, explicit noise) as float32, 0.0 for
    what the path does not need. Pointers are already offset to (b, channel, first row of the strip)."""
    rr = r[:, None]
    cc = cols[None, :]
    xv = 0.0
    ov = 0.0
    cv = 0.0
    nv = 0.0
    if PATH != 0:
        xv = to_f32(tl.load(x_ptr + rr * sxh + cc * sxw, mask=act, other=0.0))
        ov = to_f32(tl.load(o_ptr + rr * soh + cc * sow, mask=act, other=0.0))
    if PATH == 2:
        cv = to_f32(tl.load(c_ptr + rr * sch + cc * scw, mask=inb & (act == 0), other=0.0))
    elif PATH == 0:
        cv = to_f32(tl.load(c_ptr + rr * sch + cc * scw, mask=inb, other=0.0))
    if NOISE == 2:
        nv = to_f32(tl.load(n_ptr + rr * snh + cc * snw, mask=inb, other=0.0))
    return xv, ov, cv, nv


@triton.jit
def _lane_store(
    y_ptr, r, cols, inb, act, xv, ov, cv, z, syh, syw,
    k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb,
    PATH: tl.constexpr, NOISE: tl.constexpr, CLIP: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    """x' of one lane sub-block in naive.py's float32 order, stored in the output's dtype."""
    if PATH != 0:
        x0 = k1 * xv + k2 * ov
        if CLIP:
            x0 = tl.clamp(x0, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)
        eps = e1 * xv + e2 * ov
        sr = cx0 * x0 + cx * xv + ceps * eps
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
    x_ptr, o_ptr, c_ptr, n_ptr, y_ptr, a_ptr,
    b, ty, cols, col_in, full, mixed,
    C, H, W, H4,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow, scb, scc, sch, scw,
    snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
    tau, k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, seed,
    PATH: tl.constexpr, NOISE: tl.constexpr, CLIP: tl.constexpr, TILE: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    """All channels of one strip along one path. Per channel, every load of the four lane sub-blocks is
    issued before the first store (a load after a store cannot be hoisted above it: the compiler does not
    know that out aliases no input), then the Philox normals are computed while the loads are in flight."""
    R: tl.constexpr = TILE // 4
    i, r0, r1, r2, r3, in0, in1, in2, in3, act0, act1, act2, act3 = strip_lanes(
        a_ptr, ty, cols, col_in, full, mixed, H, sah, saw, tau, PATH, TILE)
    b64 = b.to(tl.int64)
    y64 = (ty * TILE).to(tl.int64)
    for ch in range(C):
        c64 = tl.cast(ch, tl.int64)
        x_s = x_ptr + b64 * sxb + c64 * sxc + y64 * sxh
        o_s = o_ptr + b64 * sob + c64 * soc + y64 * soh
        c_s = c_ptr + b64 * scb + c64 * scc + y64 * sch
        n_s = n_ptr + b64 * snb + c64 * snc + y64 * snh
        y_s = y_ptr + b64 * syb + c64 * syc + y64 * syh
        x0, o0, cv0, n0 = _lane_load(x_s, o_s, c_s, n_s, r0, cols, in0, act0,
                                     sxh, sxw, soh, sow, sch, scw, snh, snw, PATH, NOISE)
        x1, o1, cv1, n1 = _lane_load(x_s, o_s, c_s, n_s, r1, cols, in1, act1,
                                     sxh, sxw, soh, sow, sch, scw, snh, snw, PATH, NOISE)
        x2, o2, cv2, n2 = _lane_load(x_s, o_s, c_s, n_s, r2, cols, in2, act2,
                                     sxh, sxw, soh, sow, sch, scw, snh, snw, PATH, NOISE)
        x3, o3, cv3, n3 = _lane_load(x_s, o_s, c_s, n_s, r3, cols, in3, act3,
                                     sxh, sxw, soh, sow, sch, scw, snh, snw, PATH, NOISE)
        if NOISE == 1:
            g = ((b * C + ch) * H4 + ty * R + i)[:, None] * W + cols[None, :]
            n0, n1, n2, n3 = randn4(seed, g)
        _lane_store(y_s, r0, cols, in0, act0, x0, o0, cv0, n0, syh, syw,
                    k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, PATH, NOISE, CLIP, SOFT_BF16)
        _lane_store(y_s, r1, cols, in1, act1, x1, o1, cv1, n1, syh, syw,
                    k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, PATH, NOISE, CLIP, SOFT_BF16)
        _lane_store(y_s, r2, cols, in2, act2, x2, o2, cv2, n2, syh, syw,
                    k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, PATH, NOISE, CLIP, SOFT_BF16)
        _lane_store(y_s, r3, cols, in3, act3, x3, o3, cv3, n3, syh, syw,
                    k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, PATH, NOISE, CLIP, SOFT_BF16)


@triton.jit
def _masked_step_kernel(
    x_ptr, o_ptr, c_ptr, a_ptr, tmax_ptr, tmin_ptr, n_ptr, y_ptr,
    C, H, W, H4, TY, TX,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow, scb, scc, sch, scw,
    snb, snc, snh, snw, syb, syc, syh, syw, sab, sah, saw,
    tau, k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, seed_i32, step,
    HAS_A: tl.constexpr, NOISE: tl.constexpr, CLIP: tl.constexpr,
    TILE: tl.constexpr, BLOCK_W: tl.constexpr, SOFT_BF16: tl.constexpr,
):
    # The 64-bit Philox key (step << 32) | seed is assembled here: torch.compile's Triton codegen (torch 2.11)
    # fails on integer arguments outside int32 ('int' object has no attribute 'xreplace'), seen on an H200.
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
            _strip(x_ptr, o_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, full, mixed, C, H, W, H4,
                   sxb, sxc, sxh, sxw, sob, soc, soh, sow, scb, scc, sch, scw,
                   snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
                   tau, k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, seed, 0, NOISE, CLIP, TILE, SOFT_BF16)
        elif n_full == BLOCK_W:
            _strip(x_ptr, o_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, full, mixed, C, H, W, H4,
                   sxb, sxc, sxh, sxw, sob, soc, soh, sow, scb, scc, sch, scw,
                   snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
                   tau, k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, seed, 1, NOISE, CLIP, TILE, SOFT_BF16)
        else:
            _strip(x_ptr, o_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, full, mixed, C, H, W, H4,
                   sxb, sxc, sxh, sxw, sob, soc, soh, sow, scb, scc, sch, scw,
                   snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
                   tau, k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, seed, 2, NOISE, CLIP, TILE, SOFT_BF16)
    else:
        _strip(x_ptr, o_ptr, c_ptr, n_ptr, y_ptr, a_b, b, ty, cols, col_in, col_in, col_in, C, H, W, H4,
               sxb, sxc, sxh, sxw, sob, soc, soh, sow, scb, scc, sch, scw,
               snb, snc, snh, snw, syb, syc, syh, syw, sah, saw,
               tau, k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb, seed, 1, NOISE, CLIP, TILE, SOFT_BF16)


def _as_int32(v: int) -> int:
    """A uint32 seed as the int32 with the same bits (the kernel bitcasts it back)."""
    return v - (1 << 32) if v >= (1 << 31) else v


def _strides(t: Optional[torch.Tensor]) -> tuple[int, int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0, 0)


def tile_grid(x: torch.Tensor, tile: int) -> tuple[int, int]:
    """(TY, TX): tile rows and columns of x (B, C, H, W); the kernels' grid takes TY and B along y and z."""
    B, _, H, W = x.shape
    TY, TX = cdiv(H, tile), cdiv(W, tile)
    if TY > MAX_GRID_YZ or B > MAX_GRID_YZ:
        raise ValueError(f"x of shape {tuple(x.shape)} needs a grid over {TY} tile rows and {B} images; "
                         f"at most {MAX_GRID_YZ} each")
    return TY, TX


def attention_args(x: torch.Tensor, A: Optional[torch.Tensor], tile_max: Optional[torch.Tensor],
                   tile_min: Optional[torch.Tensor], tile: int):
    """(A, tile_max, tile_min, (sab, sah, saw)) as the kernels take them: A checked against x, the tile stats
    computed if absent and checked; without A, x stands in for all three (never read: HAS_A is a compile-time
    False) and the strides are 0."""
    if A is None:
        return x, x, x, (0, 0, 0)
    B, _, H, W = x.shape
    TY, TX = cdiv(H, tile), cdiv(W, tile)
    if A.shape[0] != B or tuple(A.shape[-2:]) != (H, W) or A.dim() not in (3, 4):
        raise ValueError(f"A must be ({B}, 1, {H}, {W}) or ({B}, {H}, {W}), got {tuple(A.shape)}")
    tmax, tmin = optional_stats(A, tile_max, tile_min, tile)
    for name, t in (("tile_max", tmax), ("tile_min", tmin)):
        if tuple(t.shape) != (B, TY, TX):
            raise ValueError(f"{name} must have shape ({B}, {TY}, {TX}) = tile_stats(A, {tile}), "
                             f"got {tuple(t.shape)}")
    return A, tmax, tmin, attention_strides(A)


def launch_masked_step(
    x: torch.Tensor,
    model_out: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tile_max: Optional[torch.Tensor],
    tile_min: Optional[torch.Tensor],
    tau: float,
    coefs: list[float],
    clip: bool,
    seed: int,
    step: int,
    noise: Optional[torch.Tensor],
    tile: int,
    *,
    block_w: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """The launch behind ``torch.ops.yoda.masked_step_triton``; ``block_w`` / ``num_warps`` override
    :func:`launch_config` (benchmarks sweep them)."""
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    for name, t in (("model_out", model_out), ("c", c), ("noise", noise)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    check_tile(tile)
    if len(coefs) != NUM_COEFS:
        raise ValueError(f"coefs must be {NUM_COEFS} floats, got {len(coefs)}")
    fmt = memory_format(x)  # the output's layout: the input's, whatever narrow_offsets copies
    x, model_out, c, noise, A = narrow_all(tile, x=x, model_out=model_out, c=c, noise=noise, A=A)
    B, C, H, W = x.shape
    TY, TX = tile_grid(x, tile)
    out = output_like(x, fmt, tile)
    if out.numel() == 0:
        return out
    k = StepCoefs(*(float(v) for v in coefs))
    noise_mode = NOISE_NONE if not needs_noise(coefs) else NOISE_PHILOX if noise is None else NOISE_TENSOR
    has_a = A is not None
    A, tmax, tmin, (sab, sah, saw) = attention_args(x, A, tile_max, tile_min, tile)
    unit_w = all(t.stride(-1) == 1 for t in (x, model_out, c, out) + ((noise,) if noise is not None else ()))
    cfg_w, cfg_warps = launch_config(W, tile, noise_mode == NOISE_PHILOX, unit_w)
    block_w = block_w or cfg_w
    grid = (cdiv(W, block_w), TY, B)
    with on_device(x):
        _masked_step_kernel[grid](
            x, model_out, c, A, tmax, tmin, noise if noise is not None else x, out,
            C, H, W, (H + 3) // 4, TY, TX,
            *x.stride(), *model_out.stride(), *c.stride(), *_strides(noise), *out.stride(), sab, sah, saw,
            float(tau), **k._asdict(), seed_i32=_as_int32(int(seed)), step=int(step),
            HAS_A=has_a, NOISE=noise_mode, CLIP=bool(clip), TILE=tile, BLOCK_W=block_w, SOFT_BF16=soft_bf16(x.dtype),
            num_warps=num_warps or cfg_warps, enable_fp_fusion=False,
        )
    return out


@register("masked_step_triton", FAKES["masked_step"], checks.masked_step_args)
def masked_step_triton(
    x: torch.Tensor,
    model_out: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tile_max: Optional[torch.Tensor],
    tile_min: Optional[torch.Tensor],
    tau: Number,
    coefs: list[Number],
    clip: bool,
    seed: int,
    step: int,
    noise: Optional[torch.Tensor],
    tile: int,
) -> torch.Tensor:
    """x_prev (B, C, H, W), dtype and memory format of x; arguments as yoda_kernels.naive.masked_step.
    tile_max / tile_min are computed here when A is given without them."""
    return launch_masked_step(x, model_out, c, A, tile_max, tile_min, tau, coefs, clip, seed, step, noise, tile)
