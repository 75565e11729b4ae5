// Block (SIMD) evaluation of the noise stream of csrc/philox.h on the host: the same Philox words and the same
// normals, bit for bit (philox.h's normal_pair is explicit float32 operations, so a vectorised loop of it rounds
// exactly as the scalar function, the PyTorch reference, CUDA and Triton do).
//
// Host only (csrc/cpu/normals.cpp). Runtime ISA dispatch on x86-64 Linux with GCC 9+ or clang, without
// -march=native: box_muller_block is compiled three times (target("..."): x86-64-v4's AVX-512, 16 lanes; AVX2 +
// FMA, 8 lanes; the baseline) and the first call picks the best build the CPU has (__builtin_cpu_supports); the
// baseline (no FMA instruction) calls libm's fmaf, which is exact, so it gives the same bits, slowly. philox_block runs an
// AVX2-intrinsics loop when __builtin_cpu_supports("avx2"), else the scalar philox.h function.
#pragma once

#include <stdint.h>

namespace yoda {

// Philox 4x32-10 words of the counters g0, g0 + 1, ..., g0 + n - 1 (key (seed, step); philox_yoda):
//     w0[i], w1[i], w2[i], w3[i] = philox_yoda(seed, step, g0 + i).v[0..3]        (uint32 wrap-around)
// Bit-identical to philox.h (it is the same function, evaluated over a struct of arrays).
void philox_block(uint32_t seed, uint32_t step, uint32_t g0, int64_t n, uint32_t* w0, uint32_t* w1, uint32_t* w2,
                  uint32_t* w3);

// Box-Muller of m pairs of Philox words: zc[i], zs[i] = philox.h's normal_pair(a[i], b[i]).
void box_muller_block(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs);

// box_muller_block compiled for the baseline ISA only (what CPUs without AVX2 run), whatever this CPU has: the
// same loop, so the same bits as the dispatched clone (tests compare the two).
void box_muller_block_baseline(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs);

// The four normals of the Philox calls g0 .. g0 + n - 1 for one 4-row group of a tile segment
// (philox.h: randn4):
//     z0[i] = zc[i], z1[i] = zs[i], z2[i] = zc[n + i], z3[i] = zs[n + i]
// i.e. zc = [lane 0 | lane 2], zs = [lane 1 | lane 3] (2n elements each). pairs = 1 computes lanes 0 and 1 only
// (a ragged last group of 1 or 2 rows); pairs = 2 all four. Words are drawn kNoiseSub counters at a time into
// the caller's scratch w[4 * kNoiseSub] (4 KB: small next to L1, which the streamed tensors share).
constexpr int64_t kNoiseSub = 256;
// before(i, m, part) is called before each of the three parts (0: Philox words, 1: lanes 0-1, 2: lanes 2-3) of
// the normals of counters g0 + i .. g0 + i + m - 1: the sweep issues its software prefetches there, spread over
// the arithmetic so that the memory traffic overlaps it.
template <typename Before>
inline void randn4_block(uint32_t seed, uint32_t step, uint32_t g0, int64_t n, int pairs, uint32_t* w, float* zc,
                         float* zs, const Before& before) {
  for (int64_t i = 0; i < n; i += kNoiseSub) {
    const int64_t m = n - i < kNoiseSub ? n - i : kNoiseSub;
    uint32_t *w0 = w, *w1 = w + kNoiseSub, *w2 = w + 2 * kNoiseSub, *w3 = w + 3 * kNoiseSub;
    before(i, m, 0);
    philox_block(seed, step, g0 + static_cast<uint32_t>(i), m, w0, w1, w2, w3);
    before(i, m, 1);
    box_muller_block(w0, w1, m, zc + i, zs + i);  // lanes 0, 1
    if (pairs == 2) {
      before(i, m, 2);
      box_muller_block(w2, w3, m, zc + n + i, zs + n + i);  // lanes 2, 3
    }
  }
}
inline void randn4_block(uint32_t seed, uint32_t step, uint32_t g0, int64_t n, int pairs, uint32_t* w, float* zc,
                         float* zs) {
  randn4_block(seed, step, g0, n, pairs, w, zc, zs, [](int64_t, int64_t, int) {});
}

// "x86-64-v4", "x86-64-v3" or "default": the build box_muller_block runs on this CPU (tests, benchmark records);
// "default (built without dispatch)" for a build that has the baseline only (normals.cpp's YODA_HAVE_NOISE_DISPATCH).
const char* normals_isa();

}  // namespace yoda
