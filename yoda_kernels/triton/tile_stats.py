"""Triton tile_stats: per-tile max and min of the attention map (DESIGN.md §8), same contract as
``yoda_kernels.naive.tile_stats``.

One program reduces a strip of TILE rows x BLOCK_W columns, i.e. BLOCK_W // TILE tiles side by side:
the (TILE, BLOCK_W) block is viewed as (TILE, NT, TILE) and reduced over the two pixel axes. Padding is
-inf for the max and +inf for the min, as the reference pads the ragged last row/column of tiles. NaN
propagates (the public layer turns a NaN statistic into "A contains NaN").
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks
from ..contract import FAKES, check_tile
from .interpret import INTERPRET
from .launch import cdiv, narrow_offsets, next_pow2, on_device, register

_WIDEN_BF16 = tl.constexpr(INTERPRET)  # (a jit function reads a global only as a constexpr)


@triton.jit
def to_f32(v):
    """A loaded value as float32, exactly. Triton's interpreter (3.7.1, TRITON_INTERPRET=1) widens bfloat16
    subnormals wrongly (1e-39 came out 4.4e-39, an A of -9e-41 as -0.0: a pixel active where the other backends
    left it inactive), so there a bfloat16 is widened by its bits, the high half of its float32; compiled kernels
    convert in hardware."""
    if _WIDEN_BF16 and v.dtype == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)


@triton.jit
def _tile_stats_kernel(
    a_ptr, tmax_ptr, tmin_ptr,
    H, W, TY, TX,
    sab, sah, saw,
    TILE: tl.constexpr, BLOCK_W: tl.constexpr,
):
    NT: tl.constexpr = BLOCK_W // TILE
    pid_x = tl.program_id(0)
    ty = tl.program_id(1)
    b = tl.program_id(2)
    rows = ty * TILE + tl.arange(0, TILE)
    cols = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)
    inb = (rows < H)[:, None] & (cols < W)[None, :]
    ptrs = a_ptr + b.to(tl.int64) * sab + rows.to(tl.int64)[:, None] * sah + cols[None, :] * saw  # rows * W > 2^31
    a = to_f32(tl.load(ptrs, mask=inb, other=0.0))
    hi = tl.reshape(tl.where(inb, a, float("-inf")), (TILE, NT, TILE))
    lo = tl.reshape(tl.where(inb, a, float("inf")), (TILE, NT, TILE))
    # tl.max / tl.min drop NaN; count them separately so that a NaN pixel makes its tile's stats NaN
    nans = tl.sum(tl.sum(tl.reshape((a != a).to(tl.int32), (TILE, NT, TILE)), 2), 0)
    tmax = tl.where(nans > 0, float("nan"), tl.max(tl.max(hi, 2), 0))
    tmin = tl.where(nans > 0, float("nan"), tl.min(tl.min(lo, 2), 0))
    tx = pid_x * NT + tl.arange(0, NT)
    out = (b.to(tl.int64) * TY + ty) * TX + tx  # b * TY alone passes 2^31 at B, TY <= 65535
    tl.store(tmax_ptr + out, tmax, mask=tx < TX)
    tl.store(tmin_ptr + out, tmin, mask=tx < TX)


def _strip_width(W: int, tile: int) -> int:
    """Columns per program: 128 (4 tiles of 32 .. 16 tiles of 8), fewer for narrow maps."""
    return max(tile, min(128, next_pow2(W)))


def attention_strides(A: torch.Tensor) -> tuple[int, int, int]:
    """(batch, row, column) strides of a (B, 1, H, W) or (B, H, W) attention map."""
    if A.dim() == 4:
        return A.stride(0), A.stride(2), A.stride(3)
    return A.stride(0), A.stride(1), A.stride(2)


def launch_tile_stats(A: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    if A.dim() not in (3, 4) or (A.dim() == 4 and A.shape[1] != 1):
        raise ValueError(f"A must be (B, 1, H, W) or (B, H, W), got {tuple(A.shape)}")
    check_tile(tile)
    A = narrow_offsets(A, 1, "A")  # its rows are 64-bit: only the columns' offsets are 32-bit
    B, H, W = A.shape[0], A.shape[-2], A.shape[-1]
    TY, TX = cdiv(H, tile), cdiv(W, tile)
    if TY > 65535 or B > 65535:  # CUDA's limit on grid dimensions y and z
        raise ValueError(f"A of shape {tuple(A.shape)} needs a grid over {TY} tile rows and {B} images; "
                         "at most 65535 each")
    tmax = torch.empty((B, TY, TX), dtype=torch.float32, device=A.device)
    tmin = torch.empty((B, TY, TX), dtype=torch.float32, device=A.device)
    if tmax.numel() == 0:
        return tmax, tmin
    block_w = _strip_width(W, tile)
    grid = (cdiv(W, block_w), TY, B)
    with on_device(A):
        _tile_stats_kernel[grid](
            A, tmax, tmin, H, W, TY, TX, *attention_strides(A), TILE=tile, BLOCK_W=block_w, num_warps=4
        )
    return tmax, tmin


@register("tile_stats_triton", FAKES["tile_stats"], checks.tile_stats_args)
def tile_stats_triton(A: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tile_max, tile_min), each (B, ceil(H/tile), ceil(W/tile)) float32; A: (B, 1, H, W) or (B, H, W)."""
    return launch_tile_stats(A, tile)


def optional_stats(
    A: Optional[torch.Tensor], tile_max: Optional[torch.Tensor], tile_min: Optional[torch.Tensor], tile: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile statistics as float32 contiguous tensors, computed here when the caller gave none."""
    if tile_max is None or tile_min is None:
        return launch_tile_stats(A, tile)
    return tile_max.float().contiguous(), tile_min.float().contiguous()
