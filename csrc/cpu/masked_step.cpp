// CPU kernel of torch.ops.yoda.masked_step: one fused YODA reverse step (DESIGN.md §5, §8), one pass.
//
// x, model_out, c (and noise if given): (B, C, H, W), one dtype (fp32/fp16/bf16), any strides (contiguous
// and channels-last both run; the output takes x's layout as yoda_kernels.naive does). A: (B, 1, H, W) or
// (B, H, W), any float dtype, or absent (every pixel active). tile_max / tile_min: float32
// (B, ceil(H/tile), ceil(W/tile)) from tile_stats, computed here if absent. Arithmetic is float32 in the
// order of csrc/step.h (= naive.py), so on the same noise the result equals the reference bit for bit.
//
// Work split (csrc/cpu/tile_sweep.h, shared with masked_combine.cpp): one OpenMP task (at::parallel_for) per
// (image b, row of tiles ty). Inside, the row of tiles is cut into runs of adjacent tiles of one class
// (computed once per task), and for each channel, each group of 4 rows and each row of the group, the runs
// are swept left to right (row-major: sequential streams):
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
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common.h"
#include "cpu/tile_sweep.h"

namespace yoda {

std::tuple<at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& A, int64_t tile);  // csrc/cpu/tile_stats.cpp

namespace {

using cpu::select_bits;
constexpr const char* kOp = "yoda::masked_step";

struct StepArgs {
  const void *x, *o, *c;
  void* out;
  Strides4 sx, so, sc, sout;
  cpu::SweepArgs sweep;  // sizes, attention map, tile stats, noise
  StepCoefs k;
};

// step.h's clamp_unit (NaN stays NaN), branch-free.
YODA_ALWAYS_INLINE static inline float clamp_unit_blend(float v) {
  return select_bits(v < -1.0f, -1.0f, select_bits(v > 1.0f, 1.0f, v));
}

// Row kernels over n pixels of one row segment: out[i] from the segment's pointers (unit stride when kUnitW,
// else element strides). Each is one branch-free loop (the tile class and clip are decided outside it), so
// GCC vectorises the float32 contiguous case; the float32 operation order is step.h's. The LR branch
// (inactive tiles, reads c only) is tile_sweep.h's lr_row.
template <typename scalar_t, bool kUnitW>
struct Rows {
  YODA_ALWAYS_INLINE static inline float f(scalar_t v) { return static_cast<float>(v); }
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

// The row segment of one run (tile_sweep.h's Seg): the tile class picks the row kernel and what it reads.
// kUnitW: x, model_out, c, out (and noise) all have W-stride 1 (contiguous layout): the row kernels are
// unit-stride and vectorise; channels-last takes the strided instantiation.
template <typename scalar_t, typename a_t, bool kUnitW, bool kClip>
struct StepSeg {
  using R = Rows<scalar_t, kUnitW>;
  const StepArgs& p;
  // Prefetch what operator() reads and writes for the same segment (the sweep calls it for unit W-strides only).
  YODA_ALWAYS_INLINE inline void prefetch(int kind, int64_t b, int64_t ch, int64_t y, int64_t s0, int64_t m) const {
    const int64_t bytes = m * static_cast<int64_t>(sizeof(scalar_t));
    cpu::prefetch_span(cpu::row_at<scalar_t>(p.out, p.sout, b, ch, y, s0), bytes);
    if (kind != kTileFull) cpu::prefetch_span(cpu::row_at<scalar_t>(p.c, p.sc, b, ch, y, s0), bytes);
    if (kind == kTileInactive) return;
    cpu::prefetch_span(cpu::row_at<scalar_t>(p.x, p.sx, b, ch, y, s0), bytes);
    cpu::prefetch_span(cpu::row_at<scalar_t>(p.o, p.so, b, ch, y, s0), bytes);
  }
  YODA_ALWAYS_INLINE inline void operator()(int kind, int64_t b, int64_t ch, int64_t y, int64_t s0, int64_t m,
                                            const float* zl) const {
    const int64_t wx = p.sx.w, wo = p.so.w, wc = p.sc.w, wout = p.sout.w, wa = p.sweep.a_sw;
    scalar_t* orow = const_cast<scalar_t*>(cpu::row_at<scalar_t>(p.out, p.sout, b, ch, y, s0));
    const scalar_t* crow = cpu::row_at<scalar_t>(p.c, p.sc, b, ch, y, s0);
    if (kind == kTileInactive) {  // reads c only
      cpu::lr_row<scalar_t, kUnitW>(p.k.la, p.k.lb, crow, wc, zl, orow, wout, m);
      return;
    }
    const scalar_t* xrow = cpu::row_at<scalar_t>(p.x, p.sx, b, ch, y, s0);
    const scalar_t* mrow = cpu::row_at<scalar_t>(p.o, p.so, b, ch, y, s0);
    if (kind == kTileFull) {  // does not read A (nor c)
      R::template sr<kClip>(p.k, xrow, wx, mrow, wo, zl, orow, wout, m);
      return;
    }
    const a_t* arow = static_cast<const a_t*>(p.sweep.A) + b * p.sweep.a_sb + y * p.sweep.a_sh + s0 * wa;
    if (wa == 1)
      R::template mixed<kClip, true, a_t>(p.k, xrow, wx, mrow, wo, crow, wc, arow, 1, p.sweep.tau, zl, orow, wout, m);
    else
      R::template mixed<kClip, false, a_t>(p.k, xrow, wx, mrow, wo, crow, wc, arow, wa, p.sweep.tau, zl, orow, wout,
                                           m);
  }
};

template <typename scalar_t, typename a_t, bool kUnitW, bool kClip>
struct StepKernel {
  using Args = StepArgs;
  YODA_ALWAYS_INLINE static inline void items(const StepArgs& p, int64_t begin, int64_t end) {
    cpu::sweep_tile_rows<scalar_t, kUnitW>(p.sweep, StepSeg<scalar_t, a_t, kUnitW, kClip>{p}, begin, end);
  }
};

template <typename scalar_t, typename a_t, bool kUnitW, bool kClip>
void masked_step_kernel(const StepArgs& p) {
  const int64_t TY = (p.sweep.H + p.sweep.tile - 1) / p.sweep.tile;
  cpu::parallel_items<StepKernel<scalar_t, a_t, kUnitW, kClip>>(p, p.sweep.B * TY);
}

}  // namespace

at::Tensor masked_step_cpu(const at::Tensor& x, const at::Tensor& model_out, const at::Tensor& c,
                           const std::optional<at::Tensor>& A_opt, const std::optional<at::Tensor>& tile_max_opt,
                           const std::optional<at::Tensor>& tile_min_opt, const at::Scalar& tau_s,
                           at::ArrayRef<at::Scalar> coefs_s,
                           bool clip, int64_t seed, int64_t step, const std::optional<at::Tensor>& noise_opt,
                           int64_t tile) {
  constexpr Backend be = Backend::kCPU;
  const double tau = real_scalar(kOp, "tau", tau_s);
  const std::vector<double> coefs_v = real_scalars(kOp, "coefs", coefs_s);
  const at::ArrayRef<double> coefs(coefs_v);
  check_step_args(kOp, be, x, model_out, c, noise_opt, tau, coefs, seed, step, tile);
  const int64_t H = x.size(2), W = x.size(3);
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;

  const StepCoefs k = make_step_coefs(coefs.data());
  const bool need_noise = step_needs_noise(k);
  const at::Tensor noise = need_noise && noise_opt.has_value() ? *noise_opt : at::Tensor();

  at::Tensor A, tmax, tmin;
  checked_attention_and_stats(kOp, be, A_opt, tile_max_opt, tile_min_opt, x, TY, TX, tile, tile_stats_cpu, A, tmax,
                              tmin);

  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (out.numel() == 0) return out;

  StepArgs p{};
  p.k = k;
  p.sweep = cpu::make_sweep(x, tile, A, tmax, tmin, tau, need_noise, noise, seed, step);
  p.x = x.const_data_ptr();
  p.o = model_out.const_data_ptr();
  p.c = c.const_data_ptr();
  p.out = out.data_ptr();
  p.sx = strides_of(x);
  p.so = strides_of(model_out);
  p.sc = strides_of(c);
  p.sout = strides_of(out);
  const bool unit_w = p.sx.w == 1 && p.so.w == 1 && p.sc.w == 1 && p.sout.w == 1 && p.sweep.sn.w == 1;
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
