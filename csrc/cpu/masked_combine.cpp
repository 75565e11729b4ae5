// CPU kernel of torch.ops.yoda.masked_combine: the fused masked update of the multistep / SDE solvers
// (yoda_kernels/contract.py, CombineCoefs), one pass over memory.
//
// x, d0 (and d1, d2 when given), c (and noise if given): (B, C, H, W), one dtype (fp32/fp16/bf16), any strides;
// the output takes x's layout as yoda_kernels.naive does. A: (B, 1, H, W) or (B, H, W), any float dtype, or
// absent (every pixel active). tile_max / tile_min: float32 (B, ceil(H/tile), ceil(W/tile)) from tile_stats,
// computed here if absent. Per pixel, in float32 in the order of csrc/step.h's combine_sr / combine_lr
// (= naive.py), so that on the same noise the result equals the reference bit for bit:
//   inactive (tile_max < tau):  out = la * c + lb * z                                      -- reads c only
//   full     (tile_min >= tau): out = (((cx x + cd0 d0) + cd1 d1) + cd2 d2) + sigma z       -- not A, not c
//   mixed:                      A read per pixel, both branches, one select
// The sweep over runs of tile classes, the block noise (the same Philox stream and counters as masked_step) and
// the AVX2 / baseline dispatch are masked_step's, from csrc/cpu/tile_sweep.h. The number of estimates (1..3) is
// a template parameter: absent ones are neither read nor added.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "common.h"
#include "cpu/tile_sweep.h"

namespace yoda {

std::tuple<at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& A, int64_t tile);  // csrc/cpu/tile_stats.cpp

namespace {

using cpu::select_bits;
constexpr const char* kOp = "yoda::masked_combine";

struct CombineArgs {
  const void *x, *c;
  const void* d[kMaxHistory];  // d[j] null for j >= nd
  void* out;
  Strides4 sx, sd[kMaxHistory], sc, sout;
  cpu::SweepArgs sweep;  // sizes, attention map, tile stats, noise
  CombineCoefs k;
};

// Row kernels over n pixels of one row segment (unit stride when kUnitW, else element strides), one
// branch-free loop each; kNd estimates d0 .. d(kNd - 1) are read, the others never.
template <typename scalar_t, bool kUnitW, int kNd>
struct CombineRows {
  YODA_ALWAYS_INLINE static inline float f(scalar_t v) { return static_cast<float>(v); }
  // full: reads x and the estimates
  YODA_ALWAYS_INLINE static inline void sr(const CombineCoefs& k, const scalar_t* __restrict__ x, int64_t wx,
                                           const scalar_t* __restrict__ d0, int64_t w0,
                                           const scalar_t* __restrict__ d1, int64_t w1,
                                           const scalar_t* __restrict__ d2, int64_t w2, const float* __restrict__ z,
                                           scalar_t* __restrict__ out, int64_t wout, int64_t n) {
    if (kUnitW) wx = w0 = w1 = w2 = wout = 1;
    const CombineCoefs kk = k;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float v1 = kNd > 1 ? f(d1[i * w1]) : 0.0f, v2 = kNd > 2 ? f(d2[i * w2]) : 0.0f;
      out[i * wout] = static_cast<scalar_t>(combine_sr(kk, f(x[i * wx]), f(d0[i * w0]), v1, v2, z[i], kNd));
    }
  }
  // mixed: A per pixel, both branches computed, one select
  template <bool kUnitA, typename a_t>
  YODA_ALWAYS_INLINE static inline void mixed(const CombineCoefs& k, const scalar_t* __restrict__ x, int64_t wx,
                                              const scalar_t* __restrict__ d0, int64_t w0,
                                              const scalar_t* __restrict__ d1, int64_t w1,
                                              const scalar_t* __restrict__ d2, int64_t w2,
                                              const scalar_t* __restrict__ c, int64_t wc, const a_t* __restrict__ a,
                                              int64_t wa, float tau, const float* __restrict__ z,
                                              scalar_t* __restrict__ out, int64_t wout, int64_t n) {
    if (kUnitW) wx = w0 = w1 = w2 = wc = wout = 1;
    if (kUnitA) wa = 1;
    const CombineCoefs kk = k;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float zv = z[i];
      const float v1 = kNd > 1 ? f(d1[i * w1]) : 0.0f, v2 = kNd > 2 ? f(d2[i * w2]) : 0.0f;
      const float sr = combine_sr(kk, f(x[i * wx]), f(d0[i * w0]), v1, v2, zv, kNd);
      const float lr = combine_lr(kk, f(c[i * wc]), zv);
      out[i * wout] = static_cast<scalar_t>(select_bits(is_active(static_cast<float>(a[i * wa]), tau), sr, lr));
    }
  }
};

// The row segment of one run (tile_sweep.h's Seg): the tile class picks the row kernel and what it reads.
template <typename scalar_t, typename a_t, bool kUnitW, int kNd>
struct CombineSeg {
  using R = CombineRows<scalar_t, kUnitW, kNd>;
  const CombineArgs& p;

  // Prefetch what operator() reads and writes for the same segment (the sweep calls it for unit W-strides only).
  YODA_ALWAYS_INLINE inline void prefetch(int kind, int64_t b, int64_t ch, int64_t y, int64_t s0, int64_t m) const {
    const int64_t bytes = m * static_cast<int64_t>(sizeof(scalar_t));
    cpu::prefetch_span(cpu::row_at<scalar_t>(p.out, p.sout, b, ch, y, s0), bytes);
    if (kind != kTileFull) cpu::prefetch_span(cpu::row_at<scalar_t>(p.c, p.sc, b, ch, y, s0), bytes);
    if (kind == kTileInactive) return;
    cpu::prefetch_span(cpu::row_at<scalar_t>(p.x, p.sx, b, ch, y, s0), bytes);
    for (int j = 0; j < kNd; ++j) cpu::prefetch_span(cpu::row_at<scalar_t>(p.d[j], p.sd[j], b, ch, y, s0), bytes);
  }
  YODA_ALWAYS_INLINE inline void operator()(int kind, int64_t b, int64_t ch, int64_t y, int64_t s0, int64_t m,
                                            const float* zl) const {
    const int64_t wout = p.sout.w;
    scalar_t* orow = const_cast<scalar_t*>(cpu::row_at<scalar_t>(p.out, p.sout, b, ch, y, s0));
    const scalar_t* crow = cpu::row_at<scalar_t>(p.c, p.sc, b, ch, y, s0);
    if (kind == kTileInactive) {  // reads c only
      cpu::lr_row<scalar_t, kUnitW>(p.k.la, p.k.lb, crow, p.sc.w, zl, orow, wout, m);
      return;
    }
    const scalar_t* xrow = cpu::row_at<scalar_t>(p.x, p.sx, b, ch, y, s0);
    const scalar_t* d0 = cpu::row_at<scalar_t>(p.d[0], p.sd[0], b, ch, y, s0);
    const scalar_t* d1 = kNd > 1 ? cpu::row_at<scalar_t>(p.d[1], p.sd[1], b, ch, y, s0) : nullptr;
    const scalar_t* d2 = kNd > 2 ? cpu::row_at<scalar_t>(p.d[2], p.sd[2], b, ch, y, s0) : nullptr;
    const int64_t wx = p.sx.w, w0 = p.sd[0].w, w1 = p.sd[1].w, w2 = p.sd[2].w;
    if (kind == kTileFull) {  // does not read A (nor c)
      R::sr(p.k, xrow, wx, d0, w0, d1, w1, d2, w2, zl, orow, wout, m);
      return;
    }
    const int64_t wa = p.sweep.a_sw;
    const a_t* arow = static_cast<const a_t*>(p.sweep.A) + b * p.sweep.a_sb + y * p.sweep.a_sh + s0 * wa;
    if (wa == 1)
      R::template mixed<true, a_t>(p.k, xrow, wx, d0, w0, d1, w1, d2, w2, crow, p.sc.w, arow, 1, p.sweep.tau, zl,
                                   orow, wout, m);
    else
      R::template mixed<false, a_t>(p.k, xrow, wx, d0, w0, d1, w1, d2, w2, crow, p.sc.w, arow, wa, p.sweep.tau, zl,
                                    orow, wout, m);
  }
};

template <typename scalar_t, typename a_t, bool kUnitW, int kNd>
struct CombineKernel {
  using Args = CombineArgs;
  YODA_ALWAYS_INLINE static inline void items(const CombineArgs& p, int64_t begin, int64_t end) {
    cpu::sweep_tile_rows<scalar_t, kUnitW>(p.sweep, CombineSeg<scalar_t, a_t, kUnitW, kNd>{p}, begin, end);
  }
};

template <typename scalar_t, typename a_t, bool kUnitW>
void masked_combine_kernel(const CombineArgs& p, int nd) {
  const int64_t items = p.sweep.B * ((p.sweep.H + p.sweep.tile - 1) / p.sweep.tile);
  switch (nd) {
    case 1: cpu::parallel_items<CombineKernel<scalar_t, a_t, kUnitW, 1>>(p, items); break;
    case 2: cpu::parallel_items<CombineKernel<scalar_t, a_t, kUnitW, 2>>(p, items); break;
    default: cpu::parallel_items<CombineKernel<scalar_t, a_t, kUnitW, 3>>(p, items); break;
  }
}

}  // namespace

at::Tensor masked_combine_cpu(const at::Tensor& x, const at::Tensor& d0, const std::optional<at::Tensor>& d1,
                              const std::optional<at::Tensor>& d2, const at::Tensor& c,
                              const std::optional<at::Tensor>& A_opt, const std::optional<at::Tensor>& tile_max_opt,
                              const std::optional<at::Tensor>& tile_min_opt, const at::Scalar& tau_s,
                              at::ArrayRef<at::Scalar> coefs_s,
                              int64_t seed, int64_t step, const std::optional<at::Tensor>& noise_opt, int64_t tile) {
  constexpr Backend be = Backend::kCPU;
  const double tau = real_scalar(kOp, "tau", tau_s);
  const std::vector<double> coefs_v = real_scalars(kOp, "coefs", coefs_s);
  const at::ArrayRef<double> coefs(coefs_v);
  const int nd = check_combine_args(kOp, be, x, d0, d1, d2, c, noise_opt, tau, coefs, seed, step, tile);
  const int64_t H = x.size(2), W = x.size(3);
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;

  const CombineCoefs k = make_combine_coefs(coefs.data());
  const bool need_noise = combine_needs_noise(k);
  const at::Tensor noise = need_noise && noise_opt.has_value() ? *noise_opt : at::Tensor();

  at::Tensor A, tmax, tmin;
  checked_attention_and_stats(kOp, be, A_opt, tile_max_opt, tile_min_opt, x, TY, TX, tile, tile_stats_cpu, A, tmax,
                              tmin);

  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (out.numel() == 0) return out;

  CombineArgs p{};
  p.k = k;
  p.sweep = cpu::make_sweep(x, tile, A, tmax, tmin, tau, need_noise, noise, seed, step);
  p.x = x.const_data_ptr();
  p.c = c.const_data_ptr();
  p.out = out.data_ptr();
  p.sx = strides_of(x);
  p.sc = strides_of(c);
  p.sout = strides_of(out);
  bool unit_w = p.sx.w == 1 && p.sc.w == 1 && p.sout.w == 1 && p.sweep.sn.w == 1;
  const at::Tensor* ds[kMaxHistory] = {&d0, d1.has_value() ? &*d1 : nullptr, d2.has_value() ? &*d2 : nullptr};
  for (int j = 0; j < kMaxHistory; ++j) {
    p.sd[j] = ds[j] ? strides_of(*ds[j]) : Strides4{0, 0, 0, 1};
    p.d[j] = ds[j] ? ds[j]->const_data_ptr() : nullptr;
    unit_w = unit_w && p.sd[j].w == 1;
  }
  const at::ScalarType a_type = A.defined() ? A.scalar_type() : at::kFloat;

  // 3 state dtypes x 3 attention dtypes x 2 layouts x 3 estimate counts.
  dispatch_float3(x.scalar_type(), "yoda", [&](auto state_tag) {
    using state_t = decltype(state_tag);
    dispatch_float3(a_type, "yoda", [&](auto a_tag) {
      using a_t = decltype(a_tag);
      if (unit_w)
        masked_combine_kernel<state_t, a_t, true>(p, nd);
      else
        masked_combine_kernel<state_t, a_t, false>(p, nd);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(yoda, CPU, m) { m.impl("masked_combine", &masked_combine_cpu); }

}  // namespace yoda
