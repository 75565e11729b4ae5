"""Counter-based noise shared by every backend (DESIGN.md §9).

Words. Philox 4x32-10 (Salmon et al. 2011) in Triton's formulation, key (k0, k1) = (seed, step) and counter
(g, 0, 0, 0): the words of ``tl.randint4x((step << 32) | seed, g)``. Element (b, c, y, x) of a (B, C, H, W)
tensor -- logical indices, whatever the memory layout -- uses

    g    = ((b * C + c) * ceil(H / 4) + y // 4) * W + x
    lane = y % 4                        -> the lane-th of the four normals of that Philox call

so one Philox call feeds four vertically adjacent pixels, and a kernel that tiles rows in multiples of 4
reads the four lanes as four sub-blocks of rows (y = 4i + lane) without any shuffling.

Normals (stream version 2, since 2026-12-02). Words (w0, w1) give lanes 0 and 1, (w2, w3) lanes 2 and 3,
through ``normal_pair``: Box-Muller written as explicit float32 operations -- integer and bit operations,
int -> float conversions rounded to nearest, +, *, correctly rounded sqrt, and fused multiply-adds (``fma32``,
one rounding) at fixed places -- so that every backend (this module, C++ in csrc/philox.h and
csrc/cpu/normals.cpp, CUDA, Triton) computes the same bits. No libm: log and sin / cos are the project's own
polynomials (coefficients below, minimax fits, float32). Version 1 was Triton's ``tl.randn4x`` (libm-style
log / sin / cos, which differ in the last bit between libm, Sleef and CUDA; about 80 GPU instructions per
pair against about 40 now).

    radius, from wa:   x = f32(wa | 1)                       uint32 -> float32, round to nearest; u1 = x 2^-32
                       x = 2^e z, z in [sqrt(1/2), sqrt(2))  on the bits: t = bits(x) - bits(f32(sqrt(1/2))),
                                                             e = t >> 23, bits(z) = bits(x) - (t & 0xff800000)
                       f = z - 1,  P = LOG_P(f) (Horner, fma)       P(f) ~ -2 log(1 + f) / f (rel. 1.7e-7)
                       L = fma(f32(e - 32), -2 ln 2, f * P)  ~ -2 log(u1) >= 0 (0 only for u1 = 1)
                       r = sqrt(max(L, 2^-100))              (max 6.66: u1 >= 2^-32; 2^-100 keeps the GPU's
                                                             sqrt on its 5-instruction path)
    angle, from wb:    t = f32(int32(wb << 1)) * 2^-32       in [-1/2, 1/2] (bits 30..0 of wb)
                       S = t * SIN_P(t^2) ~ sin(pi t),  C = fma(t^2, COS_P(t^2), 1) ~ cos(pi t)
                       C = -C if bit 31 of wb                (angle pi - pi t: the other half circle)
    normals:           na = r * C,  nb = r * S

The result differs from exact Box-Muller of the same two uniforms (u1, t) by at most ~1e-6 (tests/test_noise.py
measures it); its moments, KS distance and tail frequencies are checked against N(0, 1) there.

This module is the PyTorch reference of the stream: int64 arithmetic on 32-bit values and float32 operations
(torch's float32 + and * are single IEEE operations), with fma and sqrt made exact through float64.
"""

from __future__ import annotations

import numbers

import torch

MASK32 = 0xFFFFFFFF
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
MAX_SEED = 2**32 - 1
MAX_STEP = 2**31 - 1


def check_seed_step(seed: int, step: int) -> None:
    for name, v, top in (("seed", seed, "2**32 - 1"), ("step", step, "2**31 - 1")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):  # 3.7 is not silently 3
            raise TypeError(f"{name} must be an int in [0, {top}], got {v!r}")
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


# Polynomial coefficients of normal_pair (float32 values; highest power last). Minimax (relative for LOG_P,
# absolute for SIN_P and COS_P) fits in float64 rounded to float32: benchmarks/noise_fit.py regenerates them.
LOG_P = (-1.9999998807907104, 1.0000072717666626, -0.6667011976242065, 0.49939820170402527,
         -0.39800339937210083, 0.3450164496898651, -0.32445091009140015, 0.20213757455348969)
SIN_P = (3.141592502593994, -5.1677069664001465, 2.5500314235687256, -0.5980451703071594, 0.07722009718418121)
COS_P = (-4.934795379638672, 4.058451175689697, -1.3320938348770142, 0.22008062899112701)
NEG_2LN2 = -1.3862943611198906  # -2 ln 2, rounded to float32 where used
SQRT_HALF_BITS = 0x3F3504F3  # float32 nearest sqrt(1/2)
_F32 = torch.float32


def _f32(v: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, dtype=_F32, device=like.device)


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fma(a, b, c) of float32 tensors with one rounding, as fmaf / __fmaf_rn / tl.fma compute it.

    a * b is exact in float64; the sum is rounded to odd in float64 (TwoSum gives its exact error, and an inexact
    sum that rounded to an even last bit moves one ulp towards the exact value), and a round-to-odd result with
    53 >= 24 + 2 bits rounds to float32 exactly as the exact sum would (Boldo & Melquiond 2008). Valid while no
    intermediate overflows or falls below float32's normal range (never in normal_pair)."""
    a64, b64, c64 = a.double(), b.double(), c.double()
    p = a64 * b64
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    bits = s.view(torch.int64)
    step = torch.where((err > 0) == (s > 0), 1, -1)
    s = torch.where((err != 0) & ((bits & 1) == 0), bits + step, bits).view(torch.float64)
    return s.to(_F32)


def sqrt32(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded sqrt of non-negative float32 values (torch.sqrt of a float32 CPU tensor is not: it was
    seen 1 ulp off with torch 2.13). The float64 root rounded to float32 is corrected by exact comparisons: a
    float32 q and a midpoint between two float32 values square exactly in float64 (48 and 50 bits)."""
    q = torch.sqrt(v.double()).to(_F32)
    v64 = v.double()
    up = torch.nextafter(q, torch.full_like(q, float("inf")))
    q = torch.where(((q.double() + up.double()) * 0.5) ** 2 < v64, up, q)
    down = torch.nextafter(q, torch.zeros_like(q))
    return torch.where(((q.double() + down.double()) * 0.5) ** 2 > v64, down, q)


def _horner(coefs, v: torch.Tensor) -> torch.Tensor:
    p = torch.full_like(v, coefs[-1])
    for c in coefs[-2::-1]:
        p = fma32(p, v, _f32(c, v).expand_as(v))
    return p


def _int32(v: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of v (int64) as a signed int32 value (still int64)."""
    v = v & MASK32
    return torch.where(v >= 2**31, v - 2**32, v)


def uniform(w: torch.Tensor) -> torch.Tensor:
    """The radius uniform of normal_pair: u1 = f32(w | 1) * 2^-32 in (0, 1] (float32; uint32 words as int64)."""
    return (w | 1).to(_F32) * _f32(2.0**-32, w)


def angle(w: torch.Tensor) -> torch.Tensor:
    """The angle uniform of normal_pair: t = f32(int32(w << 1)) * 2^-32 in [-1/2, 1/2] (float32)."""
    return _int32(w << 1).to(_F32) * _f32(2.0**-32, w)


def normal_pair(wa: torch.Tensor, wb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two float32 normals of the word pair (wa, wb) (uint32 values in int64 tensors); see the module
    docstring."""
    xb = (wa | 1).to(_F32).view(torch.int32).to(torch.int64) & MASK32  # bits(f32(wa | 1))
    t = xb - SQRT_HALF_BITS  # > 0 since x >= 1
    e = t >> 23
    z = _int32(xb - (t & 0xFF800000)).to(torch.int32).view(_F32)
    f = z - 1.0
    L = fma32((e - 32).to(_F32), _f32(NEG_2LN2, f).expand_as(f), f * _horner(LOG_P, f))
    r = sqrt32(torch.clamp_min(L, 2.0**-100))
    a = angle(wb)
    a2 = a * a
    s = a * _horner(SIN_P, a2)
    c = fma32(a2, _horner(COS_P, a2), torch.ones_like(a2))
    c = torch.where((wb & 0x80000000) != 0, -c, c)
    return r * c, r * s


def randn4(seed: int, step: int, counter: torch.Tensor):
    """The four float32 normals (lanes 0..3) of the Philox call (seed, step, counter)."""
    w0, w1, w2, w3 = philox4x32(seed, step, counter)
    n0, n1 = normal_pair(w0, w1)
    n2, n3 = normal_pair(w2, w3)
    return n0, n1, n2, n3


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
    lanes = torch.stack(randn4(seed, step, g), dim=0)  # (4, B*C*H4*W)
    z = lanes.view(4, B, C, H4, W).permute(1, 2, 3, 0, 4).reshape(B, C, H4 * 4, W)
    return z[:, :, :H].contiguous()
