// CUDA kernel of torch.ops.yoda.tile_stats: per-tile max and min of the attention map (DESIGN.md §8).
//
// A: (B, 1, H, W) or (B, H, W), fp32/fp16/bf16, any strides. Returns (tile_max, tile_min), each float32
// (B, ceil(H/tile), ceil(W/tile)) contiguous; the last row / column of tiles covers what is left (ragged).
// NaN propagates (as torch.amax / amin do) so that the caller can reject an A holding NaN.
//
// Work split: a block of 256 threads per (row of tiles, image). Thread i sweeps column i, i + 256, ... down the
// tile row's `tile` image rows (a warp reads 32 consecutive columns: coalesced for contiguous A), then the
// warp reduces each group of `tile` lanes (a tile's columns: warps start at multiples of 32 and tile divides
// 32) with shuffles, and one lane per tile writes the result (no atomics: every tile has one writer). This op
// runs once per image (A is fixed over the sampling loop), so it needs to be coalesced, not clever.
#include "cuda_utils.cuh"

namespace yoda {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename AT>
__global__ void __launch_bounds__(kThreads) tile_stats_kernel(const AT* __restrict__ A, int64_t sb, int64_t sh,
                                                               int64_t sw, int H, int W, int tile, int TY, int TX,
                                                               float* __restrict__ tmax, float* __restrict__ tmin) {
  const int ty = blockIdx.x, b = blockIdx.y;
  // 64-bit rows and columns: (ty + 1) * tile and base + blockDim.x pass 2^31 for sides just below it
  const int64_t y1 = min(static_cast<int64_t>(H), (static_cast<int64_t>(ty) + 1) * tile);
  const int lane = threadIdx.x % 32;
  const int64_t row = (static_cast<int64_t>(b) * TY + ty) * TX;
  // The loop bound is uniform over the warp (base is), so every lane takes part in the shuffles.
  for (int64_t base = threadIdx.x - lane; base < W; base += blockDim.x) {
    const int64_t xc = base + lane;
    float m = -INFINITY, l = INFINITY;  // columns past W: neutral, as the reference's padding
    if (xc < W) {
      const AT* col = A + b * sb + static_cast<int64_t>(xc) * sw;
      for (int64_t y = static_cast<int64_t>(ty) * tile; y < y1; ++y) {
        const float v = to_f32(col[y * sh]);
        m = max_nan(m, v);
        l = min_nan(l, v);
      }
    }
    for (int off = 1; off < tile; off *= 2) {  // butterfly inside aligned groups of `tile` lanes
      m = max_nan(m, __shfl_xor_sync(0xffffffffu, m, off));
      l = min_nan(l, __shfl_xor_sync(0xffffffffu, l, off));
    }
    if (lane % tile == 0 && xc < W) {
      tmax[row + xc / tile] = m;
      tmin[row + xc / tile] = l;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tile_stats_cuda(const at::Tensor& A, int64_t tile) {
  check_tile_stats_args(Backend::kCUDA, A, tile);
  const int64_t B = A.size(0), H = A.size(-2), W = A.size(-1);
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;
  TORCH_CHECK(B <= kMaxGridYZ, "yoda::tile_stats: at most ", num(kMaxGridYZ), " images, got ", num(B));
  TORCH_CHECK(H <= INT32_MAX && W <= INT32_MAX, "yoda::tile_stats: A of shape ", shape(A),  // passed as int
              " has a side of 2^31 or more");
  const c10::cuda::CUDAGuard guard(A.device());
  auto opts = A.options().dtype(at::kFloat);
  at::Tensor tmax = at::empty({B, TY, TX}, opts), tmin = at::empty({B, TY, TX}, opts);
  if (A.numel() == 0) return {tmax, tmin};
  const dim3 grid(static_cast<unsigned>(TY), static_cast<unsigned>(B));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float3(A.scalar_type(), "yoda::tile_stats", [&](auto tag) {
    using AT = decltype(tag);
    tile_stats_kernel<AT><<<grid, kThreads, 0, stream>>>(
        A.const_data_ptr<AT>(), A.stride(0), A.stride(-2), A.stride(-1), static_cast<int>(H), static_cast<int>(W),
        static_cast<int>(tile), static_cast<int>(TY), static_cast<int>(TX), tmax.mutable_data_ptr<float>(),
        tmin.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {tmax, tmin};
}

TORCH_LIBRARY_IMPL(yoda, CUDA, m) { m.impl("tile_stats", &tile_stats_cuda); }

}  // namespace cuda
}  // namespace yoda
