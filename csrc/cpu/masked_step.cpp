// CPU kernel of torch.ops.yoda.masked_step: one fused YODA reverse step (DESIGN.md §5, §8), one pass.
//
// x, model_out, c (and noise if given): (B, C, H, W), one dtype (fp32/fp16/bf16), any strides (contiguous
// and channels-last both run; the output takes x's layout as yoda_kernels.naive does). A: (B, 1, H, W) or
// (B, H, W), any float dtype, or absent (every pixel active). tile_max / tile_min: float32
// (B, ceil(H/tile), ceil(W/tile)) from tile_stats, computed here if absent. Arithmetic is float32 in the
// order of csrc/step.h (= naive.py), so on the same noise the result equals the reference bit for bit.
//
// Work split: one OpenMP task (at::parallel_for) per (image b, row of tiles ty). Inside, the row of tiles is
// cut into runs of adjacent tiles of one class (computed once per task), and for each channel, each group of
// 4 rows and each row of the group, the runs are swept left to right (row-major: sequential streams):
//   inactive (tile_max < tau):  out = la * c + lb * z              -- reads c only
//   full     (tile_min >= tau): out = sr(x, model_out, z)          -- does not read A (nor c)
//   mixed:                      A read per pixel, sr and lr, one select
// Each class is one branch-free row loop (Rows below; the select and the clamp are bit blends so that GCC
// vectorises them), compiled for AVX2 and for the baseline ISA and chosen at run time (no FMA: same bits).
// One Philox call gives the normals of 4 vertically adjacent pixels (philox.h), so the normals of a 4-row
// group are drawn first, whole rows (up to kChunk wide) at a time, as one block (csrc/cpu/normals.h:
// vectorised Philox and Box-Muller); an explicit float32 noise tensor with unit W-stride is read in place;
// noise is skipped entirely when sigma == lb == 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/normals.h"

namespace yoda {

std::tuple<at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& A, int64_t tile);  // csrc/cpu/tile_stats.cpp

namespace {

constexpr const char* kOp = "yoda::masked_step";
constexpr int64_t kChunk = 1024;  // widest row chunk per Philox block (32 KB of stack buffers)

struct StepArgs {
  const void *x, *o, *c, *noise, *A;  // noise / A may be null
  void* out;
  Strides4 sx, so, sc, sn, sout;
  int64_t a_sb, a_sh, a_sw;
  const float *tmax, *tmin;  // (B, TY, TX) contiguous, null when A is null
  int64_t B, C, H, W, tile;
  float tau;
  StepCoefs k;
  bool clip, need_noise;
  uint32_t seed, step;
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define YODA_X86_DISPATCH 1
static bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#else
#define YODA_X86_DISPATCH 0
#endif
#define YODA_ALWAYS_INLINE __attribute__((always_inline))

// m ? a : b as a bit blend. GCC does not if-convert `m ? sr : lr` (nor clamp_unit's ternaries) into vector
// selects under the default -ftrapping-math, which left the loops scalar ("control flow in loop"); the blend
// gives the same bits and vectorises.
YODA_ALWAYS_INLINE static inline float select_bits(bool m, float a, float b) {
  uint32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  const uint32_t mk = 0u - static_cast<uint32_t>(m);
  const uint32_t r = (ia & mk) | (ib & ~mk);
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

// step.h's clamp_unit (NaN stays NaN), branch-free.
YODA_ALWAYS_INLINE static inline float clamp_unit_blend(float v) {
  return select_bits(v < -1.0f, -1.0f, select_bits(v > 1.0f, 1.0f, v));
}

// Row kernels over n pixels of one row segment: out[i] from the segment's pointers (unit stride when kUnitW,
// else element strides). Each is one branch-free loop (the tile class and clip are decided outside it), so
// GCC vectorises the float32 contiguous case; the float32 operation order is step.h's.
template <typename scalar_t, bool kUnitW>
struct Rows {
  YODA_ALWAYS_INLINE static inline float f(scalar_t v) { return static_cast<float>(v); }
  // inactive: reads c only
  YODA_ALWAYS_INLINE static inline void lr(const StepCoefs& k, const scalar_t* __restrict__ c, int64_t wc, const float* __restrict__ z,
                 scalar_t* __restrict__ out, int64_t wout, int64_t n) {
    if (kUnitW) wc = wout = 1;
    const float la = k.la, lb = k.lb;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i * wout] = static_cast<scalar_t>(la * f(c[i * wc]) + lb * z[i]);
  }
  // full: reads x and model_out
  template <bool kClip>
  YODA_ALWAYS_INLINE static inline void sr(const StepCoefs& k, const scalar_t* __restrict__ x, int64_t wx, const scalar_t* __restrict__ o,
                 int64_t wo, const float* __restrict__ z, scalar_t* __restrict__ out, int64_t wout, int64_t n) {
    if (kUnitW) wx = wo = wout = 1;
    const StepCoefs kk = k;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float xv = f(x[i * wx]), ov = f(o[i * wo]);
      float x0 = kk.k1 * xv + kk.k2 * ov;
      if (kClip) x0 = clamp_unit_blend(x0);
      const float eps = kk.e1 * xv + kk.e2 * ov;
      out[i * wout] = static_cast<scalar_t>(kk.cx0 * x0 + kk.cx * xv + kk.ceps * eps + kk.sigma * z[i]);
    }
  }
  // mixed: A per pixel, both branches computed, one select
  template <bool kClip, bool kUnitA, typename a_t>
  YODA_ALWAYS_INLINE static inline void mixed(const StepCoefs& k, const scalar_t* __restrict__ x, int64_t wx, const scalar_t* __restrict__ o,
                    int64_t wo, const scalar_t* __restrict__ c, int64_t wc, const a_t* __restrict__ a, int64_t wa,
                    float tau, const float* __restrict__ z, scalar_t* __restrict__ out, int64_t wout, int64_t n) {
    if (kUnitW) wx = wo = wc = wout = 1;
    if (kUnitA) wa = 1;
    const StepCoefs kk = k;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float xv = f(x[i * wx]), ov = f(o[i * wo]), zv = z[i];
      float x0 = kk.k1 * xv + kk.k2 * ov;
      if (kClip) x0 = clamp_unit_blend(x0);
      const float eps = kk.e1 * xv + kk.e2 * ov;
      const float sr = kk.cx0 * x0 + kk.cx * xv + kk.ceps * eps + kk.sigma * zv;
      const float lr = kk.la * f(c[i * wc]) + kk.lb * zv;
      out[i * wout] = static_cast<scalar_t>(select_bits(is_active(static_cast<float>(a[i * wa]), tau), sr, lr));
    }
  }
};

// One run: adjacent tiles of one tile row with the same class, pixel columns [x0, x1).
struct Run {
  int64_t x0, x1;
  int kind;
};

// kUnitW: x, model_out, c, out (and noise) all have W-stride 1 (contiguous layout): the row kernels are
// unit-stride and vectorise; channels-last takes the strided instantiation.
// The work items [begin, end) (item = (image b, row of tiles ty)). Always inlined into step_items_avx2 and
// step_items_base, so the row kernels are compiled once for AVX2 and once for the baseline ISA.
template <typename scalar_t, typename a_t, bool kUnitW, bool kClip>
YODA_ALWAYS_INLINE inline void step_items(const StepArgs& p, int64_t begin, int64_t end) {
  using R = Rows<scalar_t, kUnitW>;
  const scalar_t* X = static_cast<const scalar_t*>(p.x);
  const scalar_t* O = static_cast<const scalar_t*>(p.o);
  const scalar_t* Cc = static_cast<const scalar_t*>(p.c);
  const scalar_t* N = static_cast<const scalar_t*>(p.noise);
  const a_t* A = static_cast<const a_t*>(p.A);
  scalar_t* Out = static_cast<scalar_t*>(p.out);
  const int64_t C = p.C, H = p.H, W = p.W, tile = p.tile;
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;
  const int64_t wx = p.sx.w, wo = p.so.w, wc = p.sc.w, wn = p.sn.w, wout = p.sout.w, wa = p.a_sw;
  const StepCoefs k = p.k;
  const float tau = p.tau;
  // Explicit float32 noise with unit W-stride is read in place; other dtypes / layouts are converted into zc/zs.
  constexpr bool kNoiseInPlace = kUnitW && std::is_same<scalar_t, float>::value;

  {
    std::vector<Run> runs;
    runs.reserve(TX);
    // Normals of one 4-row group of a chunk of width n <= kChunk: lane l (row yg + l) is zl[l][0..n), with
    // zc = [lane 0 | lane 2] and zs = [lane 1 | lane 3] (the layout of randn4_block, csrc/cpu/normals.h).
    alignas(64) float zc[2 * kChunk], zs[2 * kChunk];
    alignas(64) uint32_t u1[2 * kChunk], u2[2 * kChunk];  // Philox words: randn4_block's scratch
    if (!p.need_noise) {  // z = 0 exactly: both branches drop their noise term
      std::memset(zc, 0, sizeof(zc));
      std::memset(zs, 0, sizeof(zs));
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / TY, ty = item % TY;
      const int64_t y0 = ty * tile, y1 = std::min(H, y0 + tile);
      runs.clear();
      for (int64_t tx = 0; tx < TX; ++tx) {
        const int64_t t = (b * TY + ty) * TX + tx;
        const int kind = A ? classify_tile(p.tmax[t], p.tmin[t], tau) : kTileFull;
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
            if (p.need_noise) {
              if (N) {
                for (int l = 0; l < nl; ++l) {
                  const scalar_t* row = N + b * p.sn.b + ch * p.sn.c + (yg + l) * p.sn.h + xs * wn;
                  if (kNoiseInPlace) {
                    zl4[l] = reinterpret_cast<const float*>(row);
                  } else {
                    float* zrow = const_cast<float*>(zl4[l]);
                    for (int64_t i = 0; i < n; ++i) zrow[i] = static_cast<float>(row[i * wn]);
                  }
                }
              } else {
                // SIMD Philox and Box-Muller over the chunk's n counters; a ragged last group of 1 or 2
                // rows needs only the first pair of each call.
                randn4_block(p.seed, p.step, noise_counter(b, ch, yg, xs, C, H, W), n, nl > 2 ? 2 : 1, u1, u2, zc,
                             zs);
              }
            }
            for (int l = 0; l < nl; ++l) {
              const int64_t y = yg + l;
              for (const Run& r : runs) {
                const int64_t s0 = std::max(r.x0, xs), s1 = std::min(r.x1, xs + n);
                if (s0 >= s1) continue;
                const int64_t m = s1 - s0;
                const float* zl = zl4[l] + (s0 - xs);
                scalar_t* orow = Out + b * p.sout.b + ch * p.sout.c + y * p.sout.h + s0 * wout;
                if (r.kind == kTileInactive) {  // reads c only
                  R::lr(k, Cc + b * p.sc.b + ch * p.sc.c + y * p.sc.h + s0 * wc, wc, zl, orow, wout, m);
                  continue;
                }
                const scalar_t* xrow = X + b * p.sx.b + ch * p.sx.c + y * p.sx.h + s0 * wx;
                const scalar_t* mrow = O + b * p.so.b + ch * p.so.c + y * p.so.h + s0 * wo;
                if (r.kind == kTileFull) {  // does not read A (nor c)
                  R::template sr<kClip>(k, xrow, wx, mrow, wo, zl, orow, wout, m);
                } else {
                  const scalar_t* crow = Cc + b * p.sc.b + ch * p.sc.c + y * p.sc.h + s0 * wc;
                  const a_t* arow = A + b * p.a_sb + y * p.a_sh + s0 * wa;
                  if (wa == 1)
                    R::template mixed<kClip, true, a_t>(k, xrow, wx, mrow, wo, crow, wc, arow, 1, tau, zl, orow, wout, m);
                  else
                    R::template mixed<kClip, false, a_t>(k, xrow, wx, mrow, wo, crow, wc, arow, wa, tau, zl, orow, wout,
                                                         m);
                }
              }
            }
          }
        }
      }
    }
  }
}

// AVX2 build of the row kernels (8 floats per vector). No FMA: the target does not include it (and the build
// uses -ffp-contract=off), so each output is the same IEEE operation sequence and the same bits as the baseline.
#if YODA_X86_DISPATCH
template <typename scalar_t, typename a_t, bool kUnitW, bool kClip>
__attribute__((target("avx2"))) void step_items_avx2(const StepArgs& p, int64_t begin, int64_t end) {
  step_items<scalar_t, a_t, kUnitW, kClip>(p, begin, end);
}
#endif

template <typename scalar_t, typename a_t, bool kUnitW, bool kClip>
void step_items_base(const StepArgs& p, int64_t begin, int64_t end) {
  step_items<scalar_t, a_t, kUnitW, kClip>(p, begin, end);
}

template <typename scalar_t, typename a_t, bool kUnitW, bool kClip>
void masked_step_kernel(const StepArgs& p) {
  const int64_t TY = (p.H + p.tile - 1) / p.tile;
  auto items = &step_items_base<scalar_t, a_t, kUnitW, kClip>;
#if YODA_X86_DISPATCH
  if (cpu_has_avx2()) items = &step_items_avx2<scalar_t, a_t, kUnitW, kClip>;
#endif
  at::parallel_for(0, p.B * TY, 1, [&](int64_t begin, int64_t end) { items(p, begin, end); });
}

}  // namespace

at::Tensor masked_step_cpu(const at::Tensor& x, const at::Tensor& model_out, const at::Tensor& c,
                           const std::optional<at::Tensor>& A_opt, const std::optional<at::Tensor>& tile_max_opt,
                           const std::optional<at::Tensor>& tile_min_opt, double tau, at::ArrayRef<double> coefs,
                           bool clip, int64_t seed, int64_t step, const std::optional<at::Tensor>& noise_opt,
                           int64_t tile) {
  constexpr Backend be = Backend::kCPU;
  check_step_args(kOp, be, x, model_out, c, noise_opt, tau, coefs, seed, step, tile);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;

  StepArgs p{};
  p.k = make_step_coefs(coefs.data());
  p.need_noise = step_needs_noise(p.k);
  at::Tensor noise = p.need_noise && noise_opt.has_value() ? *noise_opt : at::Tensor();

  at::Tensor A, tmax, tmin;
  checked_attention_and_stats(kOp, be, A_opt, tile_max_opt, tile_min_opt, x, TY, TX, tile, tile_stats_cpu, A, tmax,
                              tmin);

  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (out.numel() == 0) return out;

  p.x = x.const_data_ptr();
  p.o = model_out.const_data_ptr();
  p.c = c.const_data_ptr();
  p.noise = noise.defined() ? noise.const_data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.sx = strides_of(x);
  p.so = strides_of(model_out);
  p.sc = strides_of(c);
  p.sn = noise.defined() ? strides_of(noise) : Strides4{0, 0, 0, 1};
  p.sout = strides_of(out);
  if (A.defined()) {
    p.A = A.const_data_ptr();
    p.a_sb = A.stride(0);
    p.a_sh = A.stride(-2);
    p.a_sw = A.stride(-1);
    p.tmax = tmax.const_data_ptr<float>();
    p.tmin = tmin.const_data_ptr<float>();
  }
  p.B = B, p.C = C, p.H = H, p.W = W, p.tile = tile;
  p.tau = static_cast<float>(tau);  // the reference compares A.float() >= float32(tau)
  p.clip = clip;
  p.seed = static_cast<uint32_t>(seed);
  p.step = static_cast<uint32_t>(step);
  const bool unit_w = p.sx.w == 1 && p.so.w == 1 && p.sc.w == 1 && p.sout.w == 1 && p.sn.w == 1;
  const at::ScalarType a_type = A.defined() ? A.scalar_type() : at::kFloat;

  // 3 state dtypes x 3 attention dtypes x 2 layouts (float64 is rejected above, so not instantiated).
  dispatch_float3(x.scalar_type(), "yoda", [&](auto state_tag) {
    using state_t = decltype(state_tag);
    dispatch_float3(a_type, "yoda", [&](auto a_tag) {
      using a_t = decltype(a_tag);
      if (unit_w)
        clip ? masked_step_kernel<state_t, a_t, true, true>(p) : masked_step_kernel<state_t, a_t, true, false>(p);
      else
        clip ? masked_step_kernel<state_t, a_t, false, true>(p) : masked_step_kernel<state_t, a_t, false, false>(p);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(yoda, CPU, m) { m.impl("masked_step", &masked_step_cpu); }

}  // namespace yoda
