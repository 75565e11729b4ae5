// CPU kernel of torch.ops.yoda.tile_stats: per-tile max and min of the attention map (DESIGN.md §8).
//
// A: (B, 1, H, W) or (B, H, W), fp32/fp16/bf16, any strides. Returns (tile_max, tile_min), each float32
// (B, ceil(H/tile), ceil(W/tile)) contiguous; the last row / column of tiles covers what is left (ragged).
// NaN propagates (as torch.amax / amin do), so the caller can reject an A holding NaN.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu/parallel.h"

namespace yoda {

namespace {

template <typename scalar_t>
void tile_stats_kernel(const scalar_t* a, int64_t sb, int64_t sh, int64_t sw, int64_t B, int64_t H, int64_t W,
                       int64_t tile, float* tmax, float* tmin) {
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;
  // One work item = one image row of tiles: every tile of it is finished by one thread.
  cpu::parallel_for(0, B * TY, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> hi(TX), lo(TX);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / TY, ty = item % TY;
      std::fill(hi.begin(), hi.end(), -std::numeric_limits<float>::infinity());
      std::fill(lo.begin(), lo.end(), std::numeric_limits<float>::infinity());
      const int64_t y1 = std::min(H, (ty + 1) * tile);
      for (int64_t y = ty * tile; y < y1; ++y) {
        const scalar_t* row = a + b * sb + y * sh;
        for (int64_t tx = 0; tx < TX; ++tx) {
          const int64_t x0 = tx * tile, n = std::min(W - x0, tile);
          float m = hi[tx], l = lo[tx];
          for (int64_t i = 0; i < n; ++i) {
            const float v = static_cast<float>(row[(x0 + i) * sw]);
            m = max_nan(m, v);
            l = min_nan(l, v);
          }
          hi[tx] = m;
          lo[tx] = l;
        }
      }
      std::copy(hi.begin(), hi.end(), tmax + (b * TY + ty) * TX);
      std::copy(lo.begin(), lo.end(), tmin + (b * TY + ty) * TX);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tile_stats_cpu(const at::Tensor& A, int64_t tile) {
  check_tile_stats_args(Backend::kCPU, A, tile);
  const int64_t B = A.size(0), H = A.size(-2), W = A.size(-1);
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;
  auto opts = A.options().dtype(at::kFloat);
  at::Tensor tmax = at::empty({B, TY, TX}, opts), tmin = at::empty({B, TY, TX}, opts);
  if (A.numel() == 0) return {tmax, tmin};  // some dimension is 0, so the outputs are empty too
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "yoda_tile_stats_cpu", [&] {
    tile_stats_kernel<scalar_t>(A.const_data_ptr<scalar_t>(), A.stride(0), A.stride(-2), A.stride(-1), B, H, W,
                                tile, tmax.data_ptr<float>(), tmin.data_ptr<float>());
  });
  return {tmax, tmin};
}

TORCH_LIBRARY_IMPL(yoda, CPU, m) { m.impl("tile_stats", &tile_stats_cpu); }

}  // namespace yoda
