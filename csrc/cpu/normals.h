// Block (SIMD) evaluation of the noise stream of csrc/philox.h on the host: the same Philox words and the
// same uniforms bit for bit, and float32 Box-Muller normals rounded at the same points as the reference with
// each log / cos / sin correctly rounded (0 mismatches against a float64 evaluation on 8.4M normals). glibc's
// logf / cosf / sinf, which the scalar philox.h path calls, are < 1 ulp but not always correctly rounded, so
// the two paths differ in the last bit(s) on ~1.5 % of the normals (max 2.4e-7, inside NOISE_ATOL = 1e-6).
// About 2.5x faster than the scalar philox.h calls (which spend most of their time in scalar libm calls).
//
// Host only (csrc/cpu/normals.cpp). CUDA keeps using philox.h's randn4 / box_muller unchanged.
//
// Runtime ISA dispatch on x86-64 Linux with GCC or clang, without -march=native: box_muller_block is
// compiled twice (__attribute__((target_clones("avx2", "default")))) and the loader picks the AVX2 clone where
// the CPU has it; philox_block runs an AVX2-intrinsics loop when __builtin_cpu_supports("avx2"), else the
// scalar philox.h function. Both Box-Muller clones run the same sequence of IEEE operations (no FMA: AVX2
// does not imply it and the build uses -ffp-contract=off) and give the same bits (checked on 12.6M normals).
// Elsewhere the plain build is used (Box-Muller still auto-vectorised with the baseline ISA).
#pragma once

#include <stdint.h>

namespace yoda {

// Philox 4x32-10 words of the counters g0, g0 + 1, ..., g0 + n - 1 (key (seed, step); philox_yoda):
//     w0[i], w1[i], w2[i], w3[i] = philox_yoda(seed, step, g0 + i).v[0..3]        (uint32 wrap-around)
// Bit-identical to philox.h (it is the same function, evaluated over a struct of arrays).
void philox_block(uint32_t seed, uint32_t step, uint32_t g0, int64_t n, uint32_t* w0, uint32_t* w1, uint32_t* w2,
                  uint32_t* w3);

// Box-Muller of m pairs of Philox words (philox.h: box_muller(uint_to_uniform(a[i]), uint_to_uniform(b[i]))):
//     u1 = max(uniform(a[i]), 1e-7f),  u2 = uniform(b[i])              (bit-exact, uint_to_uniform)
//     th = fl(2 pi_f * u2),  L = fl(log u1),  r = fl(sqrt(fl(-2 L)))
//     zc[i] = fl(r * fl(cos th)),  zs[i] = fl(r * fl(sin th))
// fl() rounds to float32 at the same points as the float32 reference; log, cos and sin are evaluated in
// double with branch-free polynomials (relative error < 2^-50) and rounded once to float32, so each of them
// is the correctly rounded float32 value except when the exact value lies within ~2^-50 (relative) of a
// float32 rounding midpoint.
void box_muller_block(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs);

// box_muller_block compiled for the baseline ISA only (what CPUs without AVX2 run), whatever this CPU has: the
// same loop, so the same bits as the dispatched clone (tests compare the two).
void box_muller_block_baseline(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs);

// The four normals of the Philox calls g0 .. g0 + n - 1 for one 4-row group of a tile segment
// (philox.h: randn4), with caller scratch of 2n words u1[], u2[]:
//     z0[i] = zc[i], z1[i] = zs[i], z2[i] = zc[n + i], z3[i] = zs[n + i]
// i.e. zc = [lane 0 | lane 2], zs = [lane 1 | lane 3]. pairs = 1 computes lanes 0 and 1 only (a ragged last
// group of 1 or 2 rows); pairs = 2 all four. zc, zs, u1, u2 hold 2n elements.
inline void randn4_block(uint32_t seed, uint32_t step, uint32_t g0, int64_t n, int pairs, uint32_t* u1,
                         uint32_t* u2, float* zc, float* zs) {
  philox_block(seed, step, g0, n, u1, u2, u1 + n, u2 + n);  // words 0, 2 are the u1's; 1, 3 the u2's
  box_muller_block(u1, u2, pairs * n, zc, zs);
}

// "avx2" or "default": the clone the dispatcher runs on this CPU (for tests and benchmark records).
const char* normals_isa();

}  // namespace yoda
