// Philox 4x32-10 and the project's normal transform (stream version 2, DESIGN.md §9), header-only and usable
// from host C++ and CUDA device code (no ATen). The PyTorch reference is yoda_kernels/philox.py; every backend
// produces the same uint32 words and the same float32 normals, bit for bit.
//
//   key      (k0, k1) = (seed, step)           i.e. Triton's seed64 = (step << 32) | seed
//   counter  (g, 0, 0, 0), g = ((b*C + c) * ceil(H/4) + y/4) * W + x     (32-bit)
//   lane     y % 4 -> the lane-th of the four normals of that call: words (w0, w1) -> lanes 0, 1 and
//            (w2, w3) -> lanes 2, 3 through normal_pair
//
// normal_pair is Box-Muller as explicit float32 operations: integer / bit operations, conversions rounded to
// nearest, +, *, a correctly rounded sqrt and fused multiply-adds at fixed places (fma_f32, one rounding),
// with the project's own polynomials for log and sin / cos -- no libm, so no last-bit differences between
// glibc, Sleef and CUDA. Host code is compiled with -ffp-contract=off and CUDA with --fmad=false so that no
// other multiply-add is fused.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define YODA_HD __host__ __device__ __forceinline__
#else
#define YODA_HD inline
#endif

// __builtin_bit_cast: GCC >= 11 and Clang; older compilers (or -DYODA_NO_BIT_CAST, which the tests use to build
// this path) copy the bytes with memcpy, which compiles to the same register move.
#if defined(__has_builtin) && !defined(YODA_NO_BIT_CAST)
#if __has_builtin(__builtin_bit_cast)
#define YODA_BIT_CAST(T, v) __builtin_bit_cast(T, v)
#endif
#endif

namespace yoda {

#ifndef YODA_BIT_CAST
template <typename To, typename From>
inline To bit_cast_copy(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast_copy: sizes differ");
  To to;
  __builtin_memcpy(&to, &v, sizeof to);
  return to;
}
#define YODA_BIT_CAST(T, v) bit_cast_copy<T>(v)
#endif

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;    // golden ratio
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;    // sqrt(3) - 1
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;  // multiplier of c0
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;  // multiplier of c2
constexpr int kPhiloxRounds = 10;
constexpr uint32_t kSqrtHalfBits = 0x3F3504F3u;  // float32 nearest sqrt(1/2)

YODA_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

struct Philox4 {
  uint32_t v[4];
};

// Philox 4x32-R (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3") in Triton's
// formulation (triton/language/random.py: philox_impl): the key is bumped after each round.
YODA_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                           int rounds = kPhiloxRounds) {
  for (int r = 0; r < rounds; ++r) {
    const uint32_t hi_b = mulhi32(kPhiloxRoundB, c2), lo_b = kPhiloxRoundB * c2;
    const uint32_t hi_a = mulhi32(kPhiloxRoundA, c0), lo_a = kPhiloxRoundA * c0;
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  Philox4 out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

// The stream's call: counter (g, 0, 0, 0), key (seed, step).
YODA_HD Philox4 philox_yoda(uint32_t seed, uint32_t step, uint32_t g) { return philox4x32(g, 0u, 0u, 0u, seed, step); }

YODA_HD float fma_f32(float a, float b, float c) {  // a * b + c with one rounding
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

// Correctly rounded sqrt of v in [2^-100, 2^127]. On the GPU: the fast path of sqrt.rn.f32 as ptxas emits it for
// sm_90 (MUFU.RSQ, r0 = v y, h = y / 2, r = fma(fma(-r0, r0, v), h, r0)) without its range check and branch to
// the slow path (zero, subnormals, inf, NaN: never reached by normal_pair), 5 instructions instead of 10; the
// same PTX as yoda_kernels/triton/noise.py. tests/test_gpu.py checks it against __fsqrt_rn over the range.
YODA_HD float sqrt_f32(float v) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("{ .reg .f32 y, r, h, e; rsqrt.approx.ftz.f32 y, %1; mul.ftz.f32 r, %1, y; mul.ftz.f32 h, y, 0f3F000000;"
      " neg.f32 e, r; fma.rn.f32 e, e, r, %1; fma.rn.f32 %0, e, h, r; }"
      : "=f"(r)
      : "f"(v));
  return r;
#else
  return __builtin_sqrtf(v);
#endif
}

YODA_HD uint32_t f32_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  return YODA_BIT_CAST(uint32_t, v);
#endif
}

YODA_HD float bits_f32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(v);
#else
  return YODA_BIT_CAST(float, v);
#endif
}

// c0 + x (c1 + x (c2 + ...)) by Horner's rule with one fma per coefficient, the highest first (as
// yoda_kernels/philox.py's _horner; coefficients lowest first, float32 values written as hex literals).
YODA_HD float horner(float, float c) { return c; }
template <typename... Cs>
YODA_HD float horner(float x, float c0, Cs... cs) {
  return fma_f32(horner(x, cs...), x, c0);
}

// The radius uniform u1 = f32(w | 1) * 2^-32 in (0, 1] and the angle uniform t = f32(int32(w << 1)) * 2^-32
// in [-1/2, 1/2] of normal_pair (yoda_kernels/philox.py: uniform, angle).
YODA_HD float radius_uniform(uint32_t w) { return static_cast<float>(w | 1u) * 0x1p-32f; }
YODA_HD float angle_uniform(uint32_t w) { return static_cast<float>(static_cast<int32_t>(w << 1)) * 0x1p-32f; }

// The two normals of the word pair (wa, wb): yoda_kernels/philox.py's normal_pair, operation for operation.
//   r = sqrt(-2 log u1):  f32(wa | 1) = 2^e z, z in [sqrt(1/2), sqrt(2)), f = z - 1,
//                         L = fma(e - 32, -2 ln 2, f * P(f)), P(f) ~ -2 log(1 + f) / f, r = sqrt(max(L, 2^-100))
//   (C, S) ~ (cos pi t, sin pi t), C negated when bit 31 of wb is set
YODA_HD void normal_pair(uint32_t wa, uint32_t wb, float& na, float& nb) {
  const uint32_t xb = f32_bits(static_cast<float>(wa | 1u));
  const uint32_t t = xb - kSqrtHalfBits;  // > 0: f32(wa | 1) >= 1
  const float e = static_cast<float>(static_cast<int32_t>(t >> 23) - 32);
  const float f = bits_f32(xb - (t & 0xFF800000u)) - 1.0f;
  const float p = horner(f, -0x1.fffffep+0f, 0x1.00007ap+0f, -0x1.5559dcp-1f, 0x1.ff623ep-2f, -0x1.978e34p-2f,
                         0x1.614bfep-2f, -0x1.4c3cdcp-2f, 0x1.9dfa4ep-3f);
  const float L = fma_f32(e, -0x1.62e430p+0f, f * p);  // -2 log u1, 0 only for u1 = 1
  const float r = sqrt_f32(L > 0x1p-100f ? L : 0x1p-100f);

  const float a = angle_uniform(wb), a2 = a * a;
  const float ps = horner(a2, 0x1.921fb4p+1f, -0x1.4abbb6p+2f, 0x1.46676ep+1f, -0x1.3232fap-1f, 0x1.3c4b24p-4f);
  const float pc = horner(a2, -0x1.3bd3b0p+2f, 0x1.03bdaap+2f, -0x1.55041ap+0f, 0x1.c2b9a2p-3f);
  const float c = bits_f32(f32_bits(fma_f32(a2, pc, 1.0f)) ^ (wb & 0x80000000u));
  na = r * c;
  nb = r * (a * ps);
}

struct Normal4 {
  float v[4];  // lanes 0..3: rows 4*(y/4) + lane
};

// The four normals of the Philox call (seed, step, g).
YODA_HD Normal4 randn4(uint32_t seed, uint32_t step, uint32_t g) {
  const Philox4 p = philox_yoda(seed, step, g);
  Normal4 n;
  normal_pair(p.v[0], p.v[1], n.v[0], n.v[1]);
  normal_pair(p.v[2], p.v[3], n.v[2], n.v[3]);
  return n;
}

// Counter of element (b, c, y, x) of a (B, C, H, W) tensor (logical indices, any memory layout): one
// Philox call per 4 vertically adjacent pixels. The caller guarantees B*C*ceil(H/4)*W < 2**31.
YODA_HD uint32_t noise_counter(int64_t b, int64_t c, int64_t y, int64_t x, int64_t C, int64_t H, int64_t W) {
  const int64_t h4 = (H + 3) / 4;
  return static_cast<uint32_t>(((b * C + c) * h4 + y / 4) * W + x);
}

}  // namespace yoda
