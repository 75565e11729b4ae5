"""The noise stream in Triton (DESIGN.md §9, stream version 2): Philox words from ``tl.randint4x`` and the
project's normal transform, operation for operation as ``yoda_kernels.philox.normal_pair`` and csrc/philox.h,
so the Triton kernels draw the same bits as the reference, the C++ and the CUDA kernels.

Kernels that call this are compiled with enable_fp_fusion=False: the only fused multiply-adds are the explicit
``_fma`` calls below. Triton's interpreter evaluates ``tl.fma`` as a * b + c with two float32 roundings, so
under TRITON_INTERPRET=1 ``_fma`` computes the single-rounding result exactly instead (float64 product and
sum, rounded to odd, then to float32: philox.fma32); compiled for a GPU it is ``fma.rn.f32``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .interpret import INTERPRET

_INTERPRET: tl.constexpr = tl.constexpr(INTERPRET)


@triton.jit
def _fma(a, b, c):
    if _INTERPRET:
        a64 = a.to(tl.float64)  # a: a float32 tensor; b, c: float32 tensors or float32-exact literals
        p = a64 * (tl.zeros_like(a) + b).to(tl.float64)
        c64 = (tl.zeros_like(a) + c).to(tl.float64)
        s = p + c64
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)
        bits = s.to(tl.int64, bitcast=True)
        step = tl.where((err > 0) == (s > 0), 1, -1).to(tl.int64)
        bits = tl.where((err != 0) & ((bits & 1) == 0), bits + step, bits)
        return bits.to(tl.float64, bitcast=True).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def _sqrt(v):
    """Correctly rounded sqrt of v in [2^-100, 2^127]. On the GPU: the fast path of sqrt.rn.f32 as ptxas emits
    it for sm_90 (MUFU.RSQ, then r0 = v y, h = y / 2, r = fma(fma(-r0, r0, v), h, r0)), without its range check
    and branch to the slow path (zero, subnormals, inf, NaN: never reached here) -- 5 instructions instead of 10.
    tests/test_gpu.py checks it against sqrt_rn on every float32 of the range."""
    if _INTERPRET:
        return tl.sqrt_rn(v)
    else:
        return tl.inline_asm_elementwise(
            "{ .reg .f32 y, r, h, e; rsqrt.approx.ftz.f32 y, $1; mul.ftz.f32 r, $1, y; mul.ftz.f32 h, y, 0f3F000000;"
            " neg.f32 e, r; fma.rn.f32 e, e, r, $1; fma.rn.f32 $0, e, h, r; }",
            "=f,f", [v], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def normal_pair(wa, wb):
    """The two float32 normals of uint32 Philox words (wa, wb)."""
    # radius: f32(wa | 1) = 2^e z, z in [sqrt(1/2), sqrt(2)), r = sqrt(fma(e - 32, -2 ln 2, f P(f))), f = z - 1
    xb = (wa | 1).to(tl.float32).to(tl.uint32, bitcast=True)
    t = xb - 0x3F3504F3
    e = ((t >> 23).to(tl.int32) - 32).to(tl.float32)
    f = (xb - (t & 0xFF800000)).to(tl.float32, bitcast=True) - 1.0
    p = _fma(tl.full(f.shape, 0.20213757455348969, tl.float32), f, -0.32445091009140015)
    p = _fma(p, f, 0.3450164496898651)
    p = _fma(p, f, -0.39800339937210083)
    p = _fma(p, f, 0.49939820170402527)
    p = _fma(p, f, -0.6667011976242065)
    p = _fma(p, f, 1.0000072717666626)
    p = _fma(p, f, -1.9999998807907104)
    r = _sqrt(tl.maximum(_fma(e, -1.3862943649291992, f * p), 7.888609052210118e-31))  # L >= 2^-100
    # angle: t = f32(int32(wb << 1)) 2^-32 in [-1/2, 1/2]; (C, S) ~ (cos pi t, sin pi t); C negated by bit 31
    a = (wb << 1).to(tl.int32, bitcast=True).to(tl.float32) * 2.3283064365386963e-10
    a2 = a * a
    ps = _fma(tl.full(a.shape, 0.07722009718418121, tl.float32), a2, -0.5980451703071594)
    ps = _fma(ps, a2, 2.5500314235687256)
    ps = _fma(ps, a2, -5.1677069664001465)
    ps = _fma(ps, a2, 3.141592502593994)
    pc = _fma(tl.full(a.shape, 0.22008062899112701, tl.float32), a2, -1.3320938348770142)
    pc = _fma(pc, a2, 4.058451175689697)
    pc = _fma(pc, a2, -4.934795379638672)
    c = _fma(a2, pc, 1.0).to(tl.uint32, bitcast=True) ^ (wb & 0x80000000)
    return r * c.to(tl.float32, bitcast=True), r * (a * ps)


@triton.jit
def randn4(seed, offset):
    """Lanes 0..3 of the Philox call (seed64 = (step << 32) | seed, counter offset)."""
    w0, w1, w2, w3 = tl.randint4x(seed, offset)
    n0, n1 = normal_pair(w0, w1)
    n2, n3 = normal_pair(w2, w3)
    return n0, n1, n2, n3
