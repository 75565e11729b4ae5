// The machinery the CPU kernels of the masked ops (masked_step.cpp, masked_combine.cpp) share: the sweep over
// runs of tile classes with the noise of each 4-row group drawn in blocks, the AVX2 / baseline dispatch, and the
// branch-free helpers that let GCC vectorise the row loops. Host only.
//
// Work split: one work item per (image b, row of tiles ty), at::parallel_for over the items. Inside an item
// the row of tiles is cut into runs of adjacent tiles of one class (once per item), and for each channel,
// each group of 4 rows and each row of the group, the runs are swept left to right (row-major: sequential
// streams); the op's segment functor writes out[run segment of one row]. One Philox call gives the normals of
// 4 vertically adjacent pixels (philox.h), so the normals of a 4-row group are drawn first, whole rows (up to
// kChunk wide) at a time, as one block (normals.h: vectorised Philox and Box-Muller), while the group's row
// segments are prefetched into L2 (the op's seg.prefetch), so that memory traffic overlaps the arithmetic; an
// explicit float32 noise tensor with unit W-stride is read in place (and, in a row of tiles of several classes,
// each row segment is prefetched kAheadPixels before it is swept); no noise is drawn or read when the op needs
// none.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/normals.h"
#include "cpu/parallel.h"

namespace yoda {
namespace cpu {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define YODA_X86_DISPATCH 1
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#else
#define YODA_X86_DISPATCH 0
#endif
#define YODA_ALWAYS_INLINE __attribute__((always_inline))

constexpr int64_t kChunk = 1024;  // widest row chunk per Philox block (32 KB of stack buffers)

// m ? a : b as a bit blend. GCC does not if-convert `m ? sr : lr` (nor clamp_unit's ternaries) into vector
// selects under the default -ftrapping-math, which left the loops scalar ("control flow in loop"); the blend
// gives the same bits and vectorises.
YODA_ALWAYS_INLINE inline float select_bits(bool m, float a, float b) {
  uint32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  const uint32_t mk = 0u - static_cast<uint32_t>(m);
  const uint32_t r = (ia & mk) | (ib & ~mk);
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

// The LR branch over n pixels of one row segment (inactive tiles: reads c only), out = la * c + lb * z.
// kUnitW: unit W-strides (contiguous layout), the loop vectorises; else element strides.
template <typename scalar_t, bool kUnitW>
YODA_ALWAYS_INLINE inline void lr_row(float la, float lb, const scalar_t* __restrict__ c, int64_t wc,
                                      const float* __restrict__ z, scalar_t* __restrict__ out, int64_t wout,
                                      int64_t n) {
  if (kUnitW) wc = wout = 1;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i * wout] = static_cast<scalar_t>(la * static_cast<float>(c[i * wc]) + lb * z[i]);
}

// What the sweep needs to know besides the op's own tensors: the sizes, the attention map (A, any float dtype,
// its (b, y, x) strides; null when absent), the tile classes (tmax / tmin: float32 (B, TY, TX) contiguous, null
// when A is absent: every tile full) and the noise (the explicit tensor `noise`, of the state's dtype, or null:
// Philox (seed, step); need_noise false: z = 0, nothing drawn or read).
struct SweepArgs {
  int64_t B, C, H, W, tile;
  const void* A;
  int64_t a_sb, a_sh, a_sw;
  const float *tmax, *tmin;
  float tau;
  bool need_noise;
  const void* noise;
  Strides4 sn;
  uint32_t seed, step;
};

// The sweep of an op whose first input is x: A, tmax, tmin undefined when A is absent, noise undefined for
// Philox (pass it only when need_noise: an explicit tensor is not read otherwise).
inline SweepArgs make_sweep(const at::Tensor& x, int64_t tile, const at::Tensor& A, const at::Tensor& tmax,
                            const at::Tensor& tmin, double tau, bool need_noise, const at::Tensor& noise, int64_t seed,
                            int64_t step) {
  SweepArgs g{};
  g.B = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3), g.tile = tile;
  if (A.defined()) {
    g.A = A.const_data_ptr();
    g.a_sb = A.stride(0), g.a_sh = A.stride(-2), g.a_sw = A.stride(-1);
    g.tmax = tmax.const_data_ptr<float>();
    g.tmin = tmin.const_data_ptr<float>();
  }
  g.tau = static_cast<float>(tau);  // the reference compares A.float() >= float32(tau)
  g.need_noise = need_noise;
  g.noise = noise.defined() ? noise.const_data_ptr() : nullptr;
  g.sn = noise.defined() ? strides_of(noise) : Strides4{0, 0, 0, 1};
  g.seed = static_cast<uint32_t>(seed);
  g.step = static_cast<uint32_t>(step);
  return g;
}

// Software prefetch of the cache lines of [p, p + bytes) into L2 (prefetcht2). Into L2, not L1: a burst of
// prefetches into L1 waits for its few fill buffers and stalls the arithmetic it should overlap (measured:
// prefetcht0 helped less, and not at all with three streams).
YODA_ALWAYS_INLINE inline void prefetch_span(const void* p, int64_t bytes) {
  const char* a = static_cast<const char*>(p);
  const char* e = a + bytes;
  a -= reinterpret_cast<uintptr_t>(a) & 63;
  // Inline asm on x86-64: GCC 12 at -O2 deletes a loop of nothing but __builtin_prefetch here (it is "finite and
  // side-effect free" under C++'s forward-progress rule, -ffinite-loops), and these prefetches are the point.
  // Elsewhere (aarch64) an empty volatile asm that takes the address keeps the loop, and with it the prefetches
  // (seen in GCC 12's assembly with the x86 branch disabled: 0 prefetches without it, all of them with it).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  for (; a < e; a += 64) asm volatile("prefetcht2 %0" : : "m"(*a));
#elif defined(__GNUC__) || defined(__clang__)
  for (; a < e; a += 64) {
    __builtin_prefetch(a, 0, 1);
    asm volatile("" : : "r"(a));
  }
#else
  for (; a < e; a += 64) __builtin_prefetch(a, 0, 1);
#endif
}

// Row y of channel ch of image b of a (B, C, H, W) tensor t with strides s, from column s0.
template <typename scalar_t>
YODA_ALWAYS_INLINE inline const scalar_t* row_at(const void* t, const Strides4& s, int64_t b, int64_t ch, int64_t y,
                                                 int64_t s0) {
  return static_cast<const scalar_t*>(t) + b * s.b + ch * s.c + y * s.h + s0 * s.w;
}

// One run: adjacent tiles of one tile row with the same class, pixel columns [x0, x1).
struct Run {
  int64_t x0, x1;
  int kind;
};

// A row segment prefetched and waiting for its sweep (sweep_tile_rows).
struct Pending {
  int kind;
  int64_t y, s0, m;
  const float* z;
};

// Rows of tiles of several classes: how far ahead of the segment being swept the prefetches run, in pixels (2 KiB
// of each float32 stream), and the most segments waiting. One segment ahead (what the sweep did before) left the
// short segments of mixed tiles (16 pixels: one cache line a stream) with no time for their loads. Measured on the
// 2-vCPU AMD EPYC (Zen 4), 4x3x512², one thread, explicit noise, ratios to one segment ahead in one process: blob
// map at 50% 0.91, left half active 0.94, edge maps of four photographs at 30 / 60% 0.86-0.89 (256 / 1024 / 2048
// pixels: within 3% of 512); rows of one class do not queue.
constexpr int64_t kAheadPixels = 512;
constexpr int kMaxPending = 16;

// The segments prefetched and not yet swept, oldest first. push() queues one (the caller has prefetched it), then
// sweeps the oldest through `sweep` while the ones after them hold kAheadPixels (or the queue is full); drain()
// sweeps the rest.
struct PendingQueue {
  Pending q[kMaxPending];
  int head = 0, count = 0;
  int64_t pixels = 0;  // of the waiting segments
  template <typename F>
  YODA_ALWAYS_INLINE void push(const Pending& p, const F& sweep) {
    q[(head + count) % kMaxPending] = p;
    ++count;
    pixels += p.m;
    while (count == kMaxPending || (count > 1 && pixels - q[head].m >= kAheadPixels)) pop(sweep);
  }
  template <typename F>
  YODA_ALWAYS_INLINE void drain(const F& sweep) {
    while (count) pop(sweep);
  }
  template <typename F>
  YODA_ALWAYS_INLINE void pop(const F& sweep) {
    sweep(q[head]);
    pixels -= q[head].m;
    head = (head + 1) % kMaxPending;
    --count;
  }
};

// The work items [begin, end) of the sweep: for every row segment of every run, in the order of the module
// comment, seg(kind, b, ch, y, s0, m, z) writes the m pixels [s0, s0 + m) of row y of channel ch of image b,
// with z[0..m) their normals. Always inlined (with seg's operator()) into the op's AVX2 and baseline item
// functions (parallel_items), so the row kernels are compiled once for each ISA.
template <typename scalar_t, bool kUnitW, typename Seg>
YODA_ALWAYS_INLINE inline void sweep_tile_rows(const SweepArgs& g, const Seg& seg, int64_t begin, int64_t end) {
  const scalar_t* N = static_cast<const scalar_t*>(g.noise);
  const int64_t C = g.C, H = g.H, W = g.W, tile = g.tile, wn = g.sn.w;
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;
  // Explicit float32 noise with unit W-stride is read in place; other dtypes / layouts are converted into zc/zs.
  constexpr bool kNoiseInPlace = kUnitW && std::is_same<scalar_t, float>::value;

  std::vector<Run> runs;
  runs.reserve(TX);
  // Normals of one 4-row group of a chunk of width n <= kChunk: lane l (row yg + l) is zl[l][0..n), with
  // zc = [lane 0 | lane 2] and zs = [lane 1 | lane 3] (the layout of randn4_block, csrc/cpu/normals.h).
  alignas(64) float zc[2 * kChunk], zs[2 * kChunk];
  alignas(64) uint32_t words[4 * kNoiseSub];  // Philox words: randn4_block's scratch
  if (!g.need_noise) {  // z = 0 exactly: both branches drop their noise term
    std::memset(zc, 0, sizeof(zc));
    std::memset(zs, 0, sizeof(zs));
  }
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / TY, ty = item % TY;
    const int64_t y0 = ty * tile, y1 = std::min(H, y0 + tile);
    runs.clear();
    for (int64_t tx = 0; tx < TX; ++tx) {
      const int64_t t = (b * TY + ty) * TX + tx;
      const int kind = g.tmax ? classify_tile(g.tmax[t], g.tmin[t], g.tau) : kTileFull;
      const int64_t xe = std::min(W, (tx + 1) * tile);
      if (!runs.empty() && runs.back().kind == kind)
        runs.back().x1 = xe;
      else
        runs.push_back({tx * tile, xe, kind});
    }
    for (int64_t ch = 0; ch < C; ++ch) {
      for (int64_t yg = y0; yg < y1; yg += 4) {  // yg % 4 == 0 since tile % 4 == 0: a Philox group
        const int nl = static_cast<int>(std::min<int64_t>(4, y1 - yg));
        // Row-major within the group (row l, then its runs left to right): sequential streams. The normals of
        // a chunk of the 4 rows are drawn first, in one block (whole rows up to W = kChunk).
        for (int64_t xs = 0; xs < W; xs += kChunk) {
          const int64_t n = std::min(kChunk, W - xs);
          const float* zl4[4] = {zc, zs, zc + n, zs + n};
          if (g.need_noise) {
            if (N) {
              for (int l = 0; l < nl; ++l) {
                const scalar_t* row = N + b * g.sn.b + ch * g.sn.c + (yg + l) * g.sn.h + xs * wn;
                if (kNoiseInPlace) {
                  zl4[l] = reinterpret_cast<const float*>(row);
                } else {
                  float* zrow = const_cast<float*>(zl4[l]);
                  for (int64_t i = 0; i < n; ++i) zrow[i] = static_cast<float>(row[i * wn]);
                }
              }
            } else {
              // SIMD Philox and Box-Muller over the chunk's n counters; a ragged last group of 1 or 2
              // rows needs only the first pair of each call. The group's row segments are prefetched while
              // their normals are computed, spread over the three parts of each sub-block (rows 0-1, 2, 3),
              // so that the sweep below finds them in L2: the memory traffic overlaps the arithmetic
              // (4x3x512^2 on one core: the Philox step went from ~1.7x to ~1.3x the explicit-noise step).
              randn4_block(g.seed, g.step, noise_counter(b, ch, yg, xs, C, H, W), n, nl > 2 ? 2 : 1, words, zc, zs,
                           [&](int64_t i, int64_t m, int part) {
                             if (!kUnitW) return;
                             const int lo = part == 0 ? 0 : part + 1;
                             const int hi = nl > 2 ? std::min(nl, part + 2) : (part == 0 ? nl : 0);
                             for (int l = lo; l < hi; ++l)
                               for (const Run& r : runs) {
                                 const int64_t s0 = std::max(r.x0, xs + i), s1 = std::min(r.x1, xs + i + m);
                                 if (s0 < s1) seg.prefetch(r.kind, b, ch, yg + l, s0, s1 - s0);
                               }
                           });
            }
          }
          // Without Philox (explicit noise or none), a row of tiles of several classes reads x, model_out and c in
          // pieces, and the hardware prefetchers restart at every piece: each segment's lines are prefetched
          // kAheadPixels ahead of the sweep (AMD EPYC Zen 4, 4x3x512^2 50% active, one thread: 3.8 -> 3.35 ms
          // one segment ahead, and 0.91x that now; left half inactive, right half full: 4.2 -> 3.2 ms). Rows of
          // one class are left to the hardware (prefetching them too made the dense step 30-45% slower there).
          const bool ahead = kUnitW && runs.size() > 1 && !(g.need_noise && !N);
          PendingQueue pending;
          const auto sweep = [&](const Pending& p) { seg(p.kind, b, ch, p.y, p.s0, p.m, p.z); };
          for (int l = 0; l < nl; ++l) {
            const int64_t y = yg + l;
            for (const Run& r : runs) {
              const int64_t s0 = std::max(r.x0, xs), s1 = std::min(r.x1, xs + n);
              if (s0 >= s1) continue;
              const float* z = zl4[l] + (s0 - xs);
              if (!ahead) {
                seg(r.kind, b, ch, y, s0, s1 - s0, z);
                continue;
              }
              seg.prefetch(r.kind, b, ch, y, s0, s1 - s0);
              if (N) prefetch_span(z, (s1 - s0) * static_cast<int64_t>(sizeof(float)));
              pending.push({r.kind, y, s0, s1 - s0, z}, sweep);
            }
          }
          pending.drain(sweep);
        }
      }
    }
  }
}

// Kernel: a type with `using Args = ...;` and `static YODA_ALWAYS_INLINE void items(const Args&, int64_t begin,
// int64_t end)`. Its items are compiled for AVX2 (8 floats per vector; no FMA: the target does not include it
// and the build uses -ffp-contract=off, so each output is the same IEEE operation sequence and the same bits)
// and for the baseline ISA; parallel_items runs n_items of them with the build this CPU supports.
#if YODA_X86_DISPATCH
template <typename Kernel>
__attribute__((target("avx2"))) void items_avx2(const typename Kernel::Args& p, int64_t begin, int64_t end) {
  Kernel::items(p, begin, end);
}
#endif

template <typename Kernel>
void items_base(const typename Kernel::Args& p, int64_t begin, int64_t end) {
  Kernel::items(p, begin, end);
}

template <typename Kernel>
void parallel_items(const typename Kernel::Args& p, int64_t n_items) {
  auto items = &items_base<Kernel>;
#if YODA_X86_DISPATCH
  if (cpu_has_avx2()) items = &items_avx2<Kernel>;
#endif
  parallel_for(0, n_items, 1, [&](int64_t begin, int64_t end) { items(p, begin, end); });
}

}  // namespace cpu
}  // namespace yoda
