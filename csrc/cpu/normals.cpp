// Block evaluation of the noise stream (csrc/cpu/normals.h): SIMD Philox words and philox.h's normal_pair over
// arrays, compiled so that GCC and clang vectorise it (8 or 16 lanes) with the same bits as the scalar function: the
// transform is explicit float32 operations (no libm), the fused multiply-adds are written as fma builtins (vfmadd
// where the build has FMA, libm's exact fmaf in the baseline build) and nothing else is contracted
// (-ffp-contract=off).
#include "cpu/normals.h"

#include "philox.h"

// The SIMD paths are chosen at run time by __builtin_cpu_supports, each compiled with target("..."): GCC 9+ and
// clang. Not target_clones: it needs GCC 12 (GCC 11 fails the whole build), and clang <= 17 makes no clones of a
// definition alone, or, with the attribute on the header's declaration too, sends calls from other translation
// units to the resolver itself (it returns the clone's address and computes nothing: all noise zero). Other
// compilers and CPUs, and -DYODA_BASELINE_NOISE, take the baseline build.
#if defined(__x86_64__) && defined(__linux__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)) && \
    !defined(YODA_BASELINE_NOISE)
#define YODA_HAVE_NOISE_DISPATCH 1
#include <immintrin.h>
#else
#define YODA_HAVE_NOISE_DISPATCH 0
#endif

namespace yoda {

#if YODA_HAVE_NOISE_DISPATCH
// Philox over 8 counters per __m256i, state as 8 uint32 lanes. _mm256_mul_epu32 multiplies the even 32-bit
// lanes into 64-bit products, so each 32x32 -> 64 product of all 8 lanes is two multiplies (even lanes, and
// odd lanes shifted down) whose high / low halves are merged back by 32-bit blends. GCC does not find this on
// its own (it widens, multiplies and re-packs every round, no faster than scalar code), hence intrinsics.
__attribute__((target("avx2"))) static int64_t philox_block_avx2(uint32_t seed, uint32_t step, uint32_t g0, int64_t n,
                                                                 uint32_t* w0, uint32_t* w1, uint32_t* w2,
                                                                 uint32_t* w3) {
  const __m256i ma = _mm256_set1_epi64x(kPhiloxRoundA), mb = _mm256_set1_epi64x(kPhiloxRoundB);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(g0 + static_cast<uint32_t>(i))), lane);
    __m256i c1 = _mm256_setzero_si256(), c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = seed, k1 = step;
    for (int r = 0; r < kPhiloxRounds; ++r) {
      // (hi, lo) of kPhiloxRoundB * c2 and kPhiloxRoundA * c0, lane by lane
      const __m256i pb_even = _mm256_mul_epu32(c2, mb), pb_odd = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), mb);
      const __m256i pa_even = _mm256_mul_epu32(c0, ma), pa_odd = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), ma);
      const __m256i hi_b = _mm256_blend_epi32(_mm256_srli_epi64(pb_even, 32), pb_odd, 0xAA);
      const __m256i lo_b = _mm256_blend_epi32(pb_even, _mm256_slli_epi64(pb_odd, 32), 0xAA);
      const __m256i hi_a = _mm256_blend_epi32(_mm256_srli_epi64(pa_even, 32), pa_odd, 0xAA);
      const __m256i lo_a = _mm256_blend_epi32(pa_even, _mm256_slli_epi64(pa_odd, 32), 0xAA);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c1 = lo_b;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c3 = lo_a;
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + i), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + i), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2 + i), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3 + i), c3);
  }
  return i;  // the first counter left to the scalar loop
}

// Philox over 4 x 8 counters per iteration with AVX-512F, one counter per 64-bit lane: _mm512_mul_epu32 reads the
// low 32 bits of each lane and returns the whole 64-bit product, so hi is one shift and lo is the product itself
// (its high half is ignored by everything downstream: the next multiply, the xors' low halves and the final
// narrowing store); each three-way xor is one vpternlogd; four independent chains hide the multiply latency.
// Rounds 1 and 2 use that the counter's words 1..3 start at 0: round 1 multiplies c0 only (c2 = 0), and
// round 2's c0 is the key k0, so its product with kPhiloxRoundA is a constant. Same words as philox_yoda.
__attribute__((target("avx512f"))) static int64_t philox_block_avx512(uint32_t seed, uint32_t step, uint32_t g0,
                                                                     int64_t n, uint32_t* w0, uint32_t* w1,
                                                                     uint32_t* w2, uint32_t* w3) {
  constexpr int kChains = 4;
  const __m512i ma = _mm512_set1_epi64(kPhiloxRoundA), mb = _mm512_set1_epi64(kPhiloxRoundB);
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  uint32_t ks0[kPhiloxRounds], ks1[kPhiloxRounds];  // the key of each round
  for (int r = 0; r < kPhiloxRounds; ++r) {
    ks0[r] = seed + static_cast<uint32_t>(r) * kPhiloxKeyA;
    ks1[r] = step + static_cast<uint32_t>(r) * kPhiloxKeyB;
  }
  // round 2's product kPhiloxRoundA * c0, c0 = ks0[0] after round 1
  const __m512i r2_hi = _mm512_set1_epi64(mulhi32(kPhiloxRoundA, ks0[0]));
  const __m512i r2_lo = _mm512_set1_epi64(kPhiloxRoundA * ks0[0]);
  int64_t i = 0;
  for (; i + 8 * kChains <= n; i += 8 * kChains) {
    __m512i c0[kChains], c1[kChains], c2[kChains], c3[kChains];
    for (int h = 0; h < kChains; ++h) {
      const uint32_t gh = g0 + static_cast<uint32_t>(i + 8 * h);
      const __m512i g = _mm512_add_epi64(_mm512_set1_epi64(gh), lane);
      const __m512i pa = _mm512_mul_epu32(g, ma);  // round 1: (g, 0, 0, 0) -> (k0, 0, hiA(g) ^ k1, loA(g))
      const __m512i c2r1 = _mm512_xor_si512(_mm512_srli_epi64(pa, 32), _mm512_set1_epi64(ks1[0]));
      const __m512i pb = _mm512_mul_epu32(c2r1, mb);  // round 2 (c0 = k0: its product is r2_hi, r2_lo)
      c0[h] = _mm512_xor_si512(_mm512_srli_epi64(pb, 32), _mm512_set1_epi64(ks0[1]));
      c1[h] = pb;
      c2[h] = _mm512_ternarylogic_epi64(r2_hi, pa, _mm512_set1_epi64(ks1[1]), 0x96);
      c3[h] = r2_lo;
    }
    for (int r = 2; r < kPhiloxRounds; ++r) {
      const __m512i k0v = _mm512_set1_epi64(ks0[r]), k1v = _mm512_set1_epi64(ks1[r]);
      for (int h = 0; h < kChains; ++h) {
        const __m512i pb = _mm512_mul_epu32(c2[h], mb), pa = _mm512_mul_epu32(c0[h], ma);
        c0[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb, 32), c1[h], k0v, 0x96);
        c1[h] = pb;
        c2[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa, 32), c3[h], k1v, 0x96);
        c3[h] = pa;
      }
    }
    for (int h = 0; h < kChains; ++h) {
      const int64_t o = i + 8 * h;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + o), _mm512_cvtepi64_epi32(c0[h]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + o), _mm512_cvtepi64_epi32(c1[h]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2 + o), _mm512_cvtepi64_epi32(c2[h]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3 + o), _mm512_cvtepi64_epi32(c3[h]));
    }
  }
  return i;  // the first counter left to the next path
}
#endif

void philox_block(uint32_t seed, uint32_t step, uint32_t g0, int64_t n, uint32_t* w0, uint32_t* w1, uint32_t* w2,
                  uint32_t* w3) {
  int64_t i = 0;
#if YODA_HAVE_NOISE_DISPATCH
  static const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
  if (avx512) i = philox_block_avx512(seed, step, g0, n, w0, w1, w2, w3);
  if (avx2) i += philox_block_avx2(seed, step, g0 + static_cast<uint32_t>(i), n - i, w0 + i, w1 + i, w2 + i, w3 + i);
#endif
  for (; i < n; ++i) {  // the reference function itself (also the whole block without AVX2)
    const Philox4 r = philox_yoda(seed, step, g0 + static_cast<uint32_t>(i));
    w0[i] = r.v[0];
    w1[i] = r.v[1];
    w2[i] = r.v[2];
    w3[i] = r.v[3];
  }
}

// The loop of box_muller_block, inlined into each of its builds (one per instruction set).
__attribute__((always_inline)) static inline void box_muller_loop(const uint32_t* __restrict__ a,
                                                                  const uint32_t* __restrict__ b, int64_t m,
                                                                  float* __restrict__ zc, float* __restrict__ zs) {
  for (int64_t i = 0; i < m; ++i) normal_pair(a[i], b[i], zc[i], zs[i]);
}

#if YODA_HAVE_NOISE_DISPATCH
// x86-64-v4's and v3's vector extensions (16 and 8 lanes; the fma builtins become vfmadd)
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))) static void box_muller_v4(
    const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs) {
  box_muller_loop(a, b, m, zc, zs);
}

__attribute__((target("avx2,fma"))) static void box_muller_v3(const uint32_t* a, const uint32_t* b, int64_t m,
                                                               float* zc, float* zs) {
  box_muller_loop(a, b, m, zc, zs);
}

static int noise_level() {  // 4: x86-64-v4's AVX-512 (F, VL, BW, DQ), 3: AVX2 and FMA, 0: the baseline
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return 4;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 3 : 0;
}
#endif

void box_muller_block(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs) {
#if YODA_HAVE_NOISE_DISPATCH
  static const int level = noise_level();
  if (level == 4) return box_muller_v4(a, b, m, zc, zs);
  if (level == 3) return box_muller_v3(a, b, m, zc, zs);
#endif
  box_muller_loop(a, b, m, zc, zs);
}

void box_muller_block_baseline(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs) {
  box_muller_loop(a, b, m, zc, zs);
}

const char* normals_isa() {
#if YODA_HAVE_NOISE_DISPATCH
  static const char* const names[] = {"default", "", "", "x86-64-v3", "x86-64-v4"};
  return names[noise_level()];
#else
  return "default (built without dispatch)";  // not x86-64 Linux, GCC < 9, -DYODA_BASELINE_NOISE
#endif
}

}  // namespace yoda
