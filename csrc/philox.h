// Philox 4x32-10 and the uniform / normal transforms of Triton's tl.rand / tl.randn4x, header-only and
// usable from host C++ and CUDA device code (no ATen). This is the noise stream of DESIGN.md §9; the
// PyTorch reference is yoda_kernels/philox.py and every backend must produce the same uint32 words.
//
//   key      (k0, k1) = (seed, step)           i.e. Triton's seed64 = (step << 32) | seed
//   counter  (g, 0, 0, 0), g = ((b*C + c) * ceil(H/4) + y/4) * W + x     (32-bit)
//   lane     y % 4 -> the lane-th of the four normals of that call
//
// Float constants are the ones Triton uses (python floats rounded to float32; decimal -> float32 directly
// gives the same bits for all three, checked with numpy). Compile with -ffp-contract=off (host) and
// --fmad=false (nvcc) so that no multiply-add is fused and the float32 rounding sequence is Triton's.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define YODA_HD __host__ __device__ __forceinline__
#else
#define YODA_HD inline
#endif

#include <cmath>

namespace yoda {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;    // golden ratio
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;    // sqrt(3) - 1
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;  // multiplier of c0
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;  // multiplier of c2
constexpr int kPhiloxRounds = 10;
constexpr float kUniformScale = 4.6566127342e-10f;  // largest s with INT32_MAX * s < 1 in float32
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;  // Box-Muller clamps u1 so that log(u1) is finite

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

// uint32 -> float32 in [0, 1): Triton's uint_to_uniform_float (bitcast to int32, fold negatives with
// -s - 1 == ~s, which cannot overflow, then an int -> float conversion rounded to nearest and one multiply).
YODA_HD float uint_to_uniform(uint32_t u) {
  int32_t s = static_cast<int32_t>(u);
  if (s < 0) s = ~s;
  return static_cast<float>(s) * kUniformScale;
}

// Box-Muller of Triton's pair_uniform_to_normal, in float32: r = sqrt(-2 log max(u1, 1e-7)), th = 2 pi u2.
YODA_HD void box_muller(float u1, float u2, float& n1, float& n2) {
  u1 = u1 < kMinUniform ? kMinUniform : u1;  // u1 is never NaN here
  const float th = kTwoPi * u2;
#if defined(__CUDA_ARCH__)
  const float r = sqrtf(-2.0f * logf(u1));
  n1 = r * cosf(th);
  n2 = r * sinf(th);
#else
  const float r = std::sqrt(-2.0f * std::log(u1));
  n1 = r * std::cos(th);
  n2 = r * std::sin(th);
#endif
}

struct Normal4 {
  float v[4];  // lanes 0..3: rows 4*(y/4) + lane
};

// The four normals of tl.randn4x((step << 32) | seed, g).
YODA_HD Normal4 randn4(uint32_t seed, uint32_t step, uint32_t g) {
  const Philox4 p = philox_yoda(seed, step, g);
  Normal4 n;
  box_muller(uint_to_uniform(p.v[0]), uint_to_uniform(p.v[1]), n.v[0], n.v[1]);
  box_muller(uint_to_uniform(p.v[2]), uint_to_uniform(p.v[3]), n.v[2], n.v[3]);
  return n;
}

// Counter of element (b, c, y, x) of a (B, C, H, W) tensor (logical indices, any memory layout): one
// Philox call per 4 vertically adjacent pixels. The caller guarantees B*C*ceil(H/4)*W < 2**31.
YODA_HD uint32_t noise_counter(int64_t b, int64_t c, int64_t y, int64_t x, int64_t C, int64_t H, int64_t W) {
  const int64_t h4 = (H + 3) / 4;
  return static_cast<uint32_t>(((b * C + c) * h4 + y / 4) * W + x);
}

}  // namespace yoda
