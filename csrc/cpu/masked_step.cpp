// CPU kernel of torch.ops.yoda.masked_step: one fused YODA reverse step (DESIGN.md §5, §8), one pass.
//
// x, model_out, c (and noise if given): (B, C, H, W), one dtype (fp32/fp16/bf16), any strides (contiguous
// and channels-last both run; the output takes x's layout as yoda_kernels.naive does). A: (B, 1, H, W) or
// (B, H, W), any float dtype, or absent (every pixel active). tile_max / tile_min: float32
// (B, ceil(H/tile), ceil(W/tile)) from tile_stats, computed here if absent. Arithmetic is float32 in the
// order of csrc/step.h (= naive.py), so on the same noise the result equals the reference bit for bit.
//
// Work split: one OpenMP task (at::parallel_for) per (image b, row of tiles ty). Inside, for each channel
// and each group of 4 rows, the row of tiles is swept left to right (sequential memory for contiguous
// tensors) and each tile segment is handled by its class:
//   inactive (tile_max < tau):  out = la * c + lb * z              -- reads c only
//   full     (tile_min >= tau): out = sr(x, model_out, z)          -- does not read A
//   mixed:                      A read per pixel, sr or lr
// One Philox call gives the normals of 4 vertically adjacent pixels (philox.h), so a 4-row group of a tile
// segment of width n costs n Philox calls, drawn as one block (csrc/cpu/normals.h: vectorised Philox and
// Box-Muller, AVX2 chosen at run time); noise is skipped entirely when sigma == lb == 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu/normals.h"

namespace yoda {

std::tuple<at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& A, int64_t tile);  // csrc/cpu/tile_stats.cpp

namespace {

constexpr const char* kOp = "yoda::masked_step";
constexpr int64_t kMaxTile = 32;

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

// kUnitW: x, model_out, c, out (and noise) all have W-stride 1 (contiguous layout): the inner loops become
// unit-stride and vectorise; channels-last takes the strided instantiation.
template <typename scalar_t, typename a_t, bool kUnitW>
void masked_step_kernel(const StepArgs& p) {
  const scalar_t* X = static_cast<const scalar_t*>(p.x);
  const scalar_t* O = static_cast<const scalar_t*>(p.o);
  const scalar_t* Cc = static_cast<const scalar_t*>(p.c);
  const scalar_t* N = static_cast<const scalar_t*>(p.noise);
  const a_t* A = static_cast<const a_t*>(p.A);
  scalar_t* Out = static_cast<scalar_t*>(p.out);
  const int64_t B = p.B, C = p.C, H = p.H, W = p.W, tile = p.tile;
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;
  const int64_t wx = kUnitW ? 1 : p.sx.w, wo = kUnitW ? 1 : p.so.w, wc = kUnitW ? 1 : p.sc.w;
  const int64_t wn = kUnitW ? 1 : p.sn.w, wout = kUnitW ? 1 : p.sout.w, wa = p.a_sw;
  const StepCoefs k = p.k;
  const float tau = p.tau;
  const bool clip = p.clip;

  at::parallel_for(0, B * TY, 1, [&](int64_t begin, int64_t end) {
    std::vector<int> kind(TX);
    // Normals of one 4-row group of a tile segment of width n: lane l (row yg + l) is zl[l][0..n), with
    // zc = [lane 0 | lane 2] and zs = [lane 1 | lane 3] (the layout of randn4_block, csrc/cpu/normals.h).
    alignas(64) float zc[2 * kMaxTile], zs[2 * kMaxTile];
    alignas(64) uint32_t u1[2 * kMaxTile], u2[2 * kMaxTile];  // Philox words: randn4_block's scratch
    if (!p.need_noise) {  // z = 0 exactly: both branches drop their noise term
      std::memset(zc, 0, sizeof(zc));
      std::memset(zs, 0, sizeof(zs));
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / TY, ty = item % TY;
      const int64_t y0 = ty * tile, y1 = std::min(H, y0 + tile);
      for (int64_t tx = 0; tx < TX; ++tx) {
        const int64_t t = (b * TY + ty) * TX + tx;
        kind[tx] = A ? classify_tile(p.tmax[t], p.tmin[t], tau) : kTileFull;
      }
      for (int64_t ch = 0; ch < C; ++ch) {
        for (int64_t yg = y0; yg < y1; yg += 4) {  // yg % 4 == 0 since tile % 4 == 0: a Philox group
          const int nl = static_cast<int>(std::min<int64_t>(4, y1 - yg));
          for (int64_t tx = 0; tx < TX; ++tx) {
            const int64_t xs = tx * tile, n = std::min(tile, W - xs);
            float* const zl4[4] = {zc, zs, zc + n, zs + n};
            if (p.need_noise) {
              if (N) {
                for (int l = 0; l < nl; ++l) {
                  const scalar_t* row = N + b * p.sn.b + ch * p.sn.c + (yg + l) * p.sn.h + xs * p.sn.w;
                  float* zrow = zl4[l];
                  for (int64_t i = 0; i < n; ++i) zrow[i] = static_cast<float>(row[i * wn]);
                }
              } else {
                // SIMD Philox and Box-Muller over the segment's n counters; a ragged last group of 1 or 2
                // rows needs only the first pair of each call.
                randn4_block(p.seed, p.step, noise_counter(b, ch, yg, xs, C, H, W), n, nl > 2 ? 2 : 1, u1, u2,
                             zc, zs);
              }
            }
            for (int l = 0; l < nl; ++l) {
              const int64_t y = yg + l;
              scalar_t* orow = Out + b * p.sout.b + ch * p.sout.c + y * p.sout.h + xs * p.sout.w;
              const float* zl = zl4[l];
              if (kind[tx] == kTileInactive) {
                const scalar_t* crow = Cc + b * p.sc.b + ch * p.sc.c + y * p.sc.h + xs * p.sc.w;
                for (int64_t i = 0; i < n; ++i)
                  orow[i * wout] = static_cast<scalar_t>(step_lr(k, static_cast<float>(crow[i * wc]), zl[i]));
                continue;
              }
              const scalar_t* xrow = X + b * p.sx.b + ch * p.sx.c + y * p.sx.h + xs * p.sx.w;
              const scalar_t* mrow = O + b * p.so.b + ch * p.so.c + y * p.so.h + xs * p.so.w;
              if (kind[tx] == kTileFull) {
                for (int64_t i = 0; i < n; ++i)
                  orow[i * wout] = static_cast<scalar_t>(
                      step_sr(k, static_cast<float>(xrow[i * wx]), static_cast<float>(mrow[i * wo]), zl[i], clip));
              } else {
                const scalar_t* crow = Cc + b * p.sc.b + ch * p.sc.c + y * p.sc.h + xs * p.sc.w;
                const a_t* arow = A + b * p.a_sb + y * p.a_sh + xs * wa;
                for (int64_t i = 0; i < n; ++i) {
                  const float sr =
                      step_sr(k, static_cast<float>(xrow[i * wx]), static_cast<float>(mrow[i * wo]), zl[i], clip);
                  const float lr = step_lr(k, static_cast<float>(crow[i * wc]), zl[i]);
                  orow[i * wout] = static_cast<scalar_t>(is_active(static_cast<float>(arow[i * wa]), tau) ? sr : lr);
                }
              }
            }
          }
        }
      }
    }
  });
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
        masked_step_kernel<state_t, a_t, true>(p);
      else
        masked_step_kernel<state_t, a_t, false>(p);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(yoda, CPU, m) { m.impl("masked_step", &masked_step_cpu); }

}  // namespace yoda
