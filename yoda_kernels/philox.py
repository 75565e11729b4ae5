"""Counter-based noise shared by every backend (DESIGN.md §9).

The stream is Triton's: Philox 4x32-10 with key (k0, k1) and counter (c0, 0, 0, 0), uniforms from
``uint_to_uniform_float`` and normals from the Box-Muller pair of ``pair_uniform_to_normal``, i.e. exactly
``tl.randn4x(seed64, offset)`` with

    seed64 = (step << 32) | seed        (k0 = seed, k1 = step; both 32-bit)
    offset = g                          (32-bit counter)

Element (b, c, y, x) of a (B, C, H, W) tensor -- logical indices, whatever the memory layout -- uses

    g    = ((b * C + c) * ceil(H / 4) + y // 4) * W + x
    lane = y % 4                        -> the lane-th of the four normals of that Philox call

so one Philox call feeds four vertically adjacent pixels, and a kernel that tiles rows in multiples of 4
reads the four lanes as four sub-blocks of rows (y = 4i + lane) without any shuffling.

This module is the PyTorch reference of that stream (int64 arithmetic on 32-bit values, exact).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10  # Triton's: the largest scale with MAX_INT * scale < 1 in fp32
TWO_PI = 6.283185307179586
MAX_SEED = 2**32 - 1
MAX_STEP = 2**31 - 1


def check_seed_step(seed: int, step: int) -> None:
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")
    if not 0 <= int(step) <= MAX_STEP:
        raise ValueError(f"step must be in [0, 2**31 - 1], got {step}")


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product of the constant a and uint32 values b (int64 tensor),
    computed on 16-bit halves so nothing overflows int64."""
    ah, al = a >> 16, a & 0xFFFF
    bh, bl = b >> 16, b & 0xFFFF
    ll = al * bl
    mid = ah * bl + al * bh
    hi = ah * bh + ((mid + (ll >> 16)) >> 16)
    lo = (((mid & 0xFFFF) << 16) + ll) & MASK32
    return hi & MASK32, lo


def philox4x32(seed: int, step: int, counter: torch.Tensor, rounds: int = 10):
    """Four uint32 outputs (as int64 tensors) of Philox 4x32-``rounds`` for key (seed, step) and
    counter (counter, 0, 0, 0)."""
    check_seed_step(seed, step)
    c0 = counter.to(torch.int64) & MASK32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = int(seed) & MASK32, int(step) & MASK32
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def uint_to_uniform(u: torch.Tensor) -> torch.Tensor:
    """uint32 (int64 tensor) -> float32 in [0, 1), bit-identical to Triton's uint_to_uniform_float."""
    s = torch.where(u >= 2**31, u - 2**32, u)  # bitcast to int32
    s = torch.where(s < 0, -s - 1, s)
    return s.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=u.device)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton's pair_uniform_to_normal in float32."""
    f32 = dict(dtype=torch.float32, device=u1.device)
    u1 = torch.clamp_min(u1, torch.tensor(1.0e-7, **f32))
    th = torch.tensor(TWO_PI, **f32) * u2
    r = torch.sqrt(torch.tensor(-2.0, **f32) * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def randn4x(seed: int, step: int, counter: torch.Tensor):
    """The four normals of tl.randn4x((step << 32) | seed, counter)."""
    i1, i2, i3, i4 = philox4x32(seed, step, counter)
    n1, n2 = box_muller(uint_to_uniform(i1), uint_to_uniform(i2))
    n3, n4 = box_muller(uint_to_uniform(i3), uint_to_uniform(i4))
    return n1, n2, n3, n4


def num_groups(shape) -> int:
    B, C, H, W = shape
    return B * C * ((H + 3) // 4) * W


def noise(seed: int, step: int, shape, device=None) -> torch.Tensor:
    """The (B, C, H, W) float32 normal noise that every backend draws for (seed, step); see the module
    docstring for the element -> (counter, lane) map."""
    B, C, H, W = shape
    if num_groups(shape) >= 2**31:
        raise ValueError(f"tensor of shape {tuple(shape)} is too large for the 32-bit noise counter")
    H4 = (H + 3) // 4
    g = torch.arange(B * C * H4 * W, device=device, dtype=torch.int64)
    lanes = torch.stack(randn4x(seed, step, g), dim=0)  # (4, B*C*H4*W)
    z = lanes.view(4, B, C, H4, W).permute(1, 2, 3, 0, 4).reshape(B, C, H4 * 4, W)
    return z[:, :, :H].contiguous()


def uniform(seed: int, step: int, counter: torch.Tensor) -> torch.Tensor:
    """tl.rand((step << 32) | seed, counter): the first uniform of each Philox call (for tests)."""
    return uint_to_uniform(philox4x32(seed, step, counter)[0])
