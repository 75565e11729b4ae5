// CUDA kernel of torch.ops.yoda.masked_combine: the fused masked update of the multistep / SDE solvers
// (yoda_kernels/contract.py, CombineCoefs), one pass over memory.
//
// Same contract as yoda_kernels/naive.py and the CPU kernel (csrc/cpu/masked_combine.cpp); per-element math in
// csrc/step.h (combine_sr / combine_lr) and noise in csrc/philox.h, shared with them; built with --fmad=false so
// that on the same noise the result equals the reference bit for bit.
//
// Work split, tile classes and noise as masked_step.cu: a block owns a strip of `tile` rows x kStripPixels /
// tile columns of one image and loops over the channels; a thread owns a 4 x 4 patch (4 columns, one vector per
// row, x the 4 rows of one Philox group) inside one tile, classifies its tile and reads only what it needs:
//   inactive (tile_max < tau):  out = la * c + lb * z                                      reads c only
//   full     (tile_min >= tau): out = (((cx x + cd0 d0) + cd1 d1) + cd2 d2) + sigma z       never c, A
//   mixed:                      A per pixel; x and the estimates for a patch row with an active pixel, c for
//                               one with an inactive pixel
// The number of estimates kNd (1..3) is a template parameter: absent ones are neither read nor added. Noise
// (Philox, the same stream and counters as masked_step, or the explicit tensor) is skipped when sigma == lb == 0.
#include "cuda_utils.cuh"

namespace yoda {
namespace cuda {
namespace {

constexpr int kStripPixels = 2048;  // tile x strip_w per channel: 128 threads x 16 pixels
constexpr int kMaxThreads = kStripPixels / 16;

template <typename T>
struct CombineParams {
  const T* x;
  const T* d[kMaxHistory];  // d[j] null for j >= nd
  const T* c;
  const T* noise;  // null: Philox (if noise is needed at all)
  T* out;
  const void* A;  // null: every pixel active; dtype a_type (AttnType)
  int a_type;
  const float* tmax;
  const float* tmin;  // (B, TY, TX) contiguous
  Strides4 sx, sd[kMaxHistory], sc, sn, sy;
  int64_t a_sb, a_sh, a_sw;
  int C, H, W, TY, TX, tile, strip_w;
  float tau;
  CombineCoefs k;
  bool need_noise;
  uint32_t seed, step;
};

template <typename T, bool kVec, int kNd>
__global__ void __launch_bounds__(kMaxThreads) masked_combine_kernel(const CombineParams<T> p) {
  const int quads = p.strip_w / 4;
  const int gx = threadIdx.x % quads, gr = threadIdx.x / quads;
  const int b = blockIdx.z, ty = blockIdx.y;
  const int x0 = blockIdx.x * p.strip_w + 4 * gx;
  const int y0 = ty * p.tile + 4 * gr;
  if (x0 >= p.W || y0 >= p.H) return;
  const int ncols = min(4, p.W - x0), nrows = min(4, p.H - y0);

  int kind = kTileFull;
  bool act[4][4] = {};  // per pixel, mixed tiles only
  if (p.A != nullptr) {
    const int64_t t = (static_cast<int64_t>(b) * p.TY + ty) * p.TX + x0 / p.tile;
    kind = classify_tile(p.tmax[t], p.tmin[t], p.tau);
    if (kind == kTileMixed) {
      const int64_t a0 = b * p.a_sb + y0 * p.a_sh + x0 * p.a_sw;
#pragma unroll
      for (int l = 0; l < 4; ++l)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          act[l][j] = l < nrows && j < ncols &&
                      is_active(load_attn(p.A, a0 + l * p.a_sh + j * p.a_sw, p.a_type), p.tau);
    }
  }

  // Which patch rows need x and the estimates (some pixel active) and c (some pixel inactive).
  bool need_sr[4], need_lr[4];
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    need_sr[l] = l < nrows && kind != kTileInactive;
    need_lr[l] = l < nrows && kind == kTileInactive;
    if (kind == kTileMixed) {
      need_sr[l] = act[l][0] || act[l][1] || act[l][2] || act[l][3];
      need_lr[l] = l < nrows && !(act[l][0] && act[l][1] && act[l][2] && act[l][3]);
    }
  }

  const int64_t h4 = (p.H + 3) / 4;
  for (int ch = 0; ch < p.C; ++ch) {
    const int64_t off_b = static_cast<int64_t>(b), off_c = ch;
    const T* xb = p.x + off_b * p.sx.b + off_c * p.sx.c + y0 * p.sx.h + x0 * p.sx.w;
    const T* cb = p.c + off_b * p.sc.b + off_c * p.sc.c + y0 * p.sc.h + x0 * p.sc.w;
    T* yb = p.out + off_b * p.sy.b + off_c * p.sy.c + y0 * p.sy.h + x0 * p.sy.w;
    // 1. Every load of the patch before any store (out may alias the inputs as far as the compiler knows).
    float xv[4][4] = {}, dv[kMaxHistory][4][4] = {}, cv[4][4] = {};  // dv[e] stays 0 for e >= kNd
    float z[4][4] = {};  // z[lane][column]; stays 0 when no noise is needed (both terms vanish exactly)
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      if (need_sr[l]) {
        load_row<kVec>(xb + l * p.sx.h, p.sx.w, ncols, xv[l]);
#pragma unroll
        for (int e = 0; e < kNd; ++e) {
          const Strides4& s = p.sd[e];
          load_row<kVec>(p.d[e] + off_b * s.b + off_c * s.c + (y0 + l) * s.h + x0 * s.w, s.w, ncols, dv[e][l]);
        }
      }
      if (need_lr[l]) load_row<kVec>(cb + l * p.sc.h, p.sc.w, ncols, cv[l]);
    }
    // 2. Noise, while the loads are in flight: one Philox call per column feeds the patch's 4 rows.
    if (p.need_noise) {
      if (p.noise == nullptr) {
        const uint32_t g0 = static_cast<uint32_t>(((off_b * p.C + ch) * h4 + y0 / 4) * p.W + x0);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (j < ncols) {
            const Normal4 n = randn4(p.seed, p.step, g0 + j);
#pragma unroll
            for (int l = 0; l < 4; ++l) z[l][j] = n.v[l];
          }
        }
      } else {
        const T* nb = p.noise + off_b * p.sn.b + off_c * p.sn.c + y0 * p.sn.h + x0 * p.sn.w;
#pragma unroll
        for (int l = 0; l < 4; ++l)
          if (l < nrows) load_row<kVec>(nb + l * p.sn.h, p.sn.w, ncols, z[l]);
      }
    }
    // 3. Compute and store.
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      if (l >= nrows) break;
      float r[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool on = kind == kTileFull || (kind == kTileMixed && act[l][j]);
        r[j] = on ? combine_sr(p.k, xv[l][j], dv[0][l][j], dv[1][l][j], dv[2][l][j], z[l][j], kNd)
                  : combine_lr(p.k, cv[l][j], z[l][j]);
      }
      store_row<kVec>(yb + l * p.sy.h, p.sy.w, ncols, r);
    }
  }
}

// Smallest power of two >= n (n >= 1): narrow images get narrower strips (masked_step.cu, Triton).
int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

template <typename T, bool kVec>
void launch(const CombineParams<T>& p, int nd, dim3 grid, dim3 block, cudaStream_t stream) {
  switch (nd) {
    case 1: masked_combine_kernel<T, kVec, 1><<<grid, block, 0, stream>>>(p); break;
    case 2: masked_combine_kernel<T, kVec, 2><<<grid, block, 0, stream>>>(p); break;
    default: masked_combine_kernel<T, kVec, 3><<<grid, block, 0, stream>>>(p); break;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tile_stats_cuda(const at::Tensor& A, int64_t tile);  // tile_stats.cu

at::Tensor masked_combine_cuda(const at::Tensor& x, const at::Tensor& d0, const std::optional<at::Tensor>& d1,
                               const std::optional<at::Tensor>& d2, const at::Tensor& c,
                               const std::optional<at::Tensor>& A_opt, const std::optional<at::Tensor>& tile_max_opt,
                               const std::optional<at::Tensor>& tile_min_opt, const at::Scalar& tau_s,
                               at::ArrayRef<at::Scalar> coefs_s,
                               int64_t seed, int64_t step, const std::optional<at::Tensor>& noise_opt, int64_t tile) {
  const char* op = "yoda::masked_combine";
  constexpr Backend be = Backend::kCUDA;
  const double tau = real_scalar(op, "tau", tau_s);
  const std::vector<double> coefs_v = real_scalars(op, "coefs", coefs_s);
  const at::ArrayRef<double> coefs(coefs_v);
  const int nd = check_combine_args(op, be, x, d0, d1, d2, c, noise_opt, tau, coefs, seed, step, tile);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t TY = (H + tile - 1) / tile, TX = (W + tile - 1) / tile;
  TORCH_CHECK(TY <= kMaxGridYZ && B <= kMaxGridYZ, op, ": x of shape ", shape(x), " needs ",
              num(TY), " tile rows and ", num(B), " images in the grid; at most ", num(kMaxGridYZ), " each");
  const CombineCoefs k = make_combine_coefs(coefs.data());
  const bool need_noise = combine_needs_noise(k);
  const at::Tensor noise = need_noise && noise_opt.has_value() ? *noise_opt : at::Tensor();

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor A, tmax, tmin;
  checked_attention_and_stats(op, be, A_opt, tile_max_opt, tile_min_opt, x, TY, TX, tile, tile_stats_cuda, A, tmax,
                              tmin);

  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (out.numel() == 0) return out;

  const at::Tensor* ds[kMaxHistory] = {&d0, d1.has_value() ? &*d1 : nullptr, d2.has_value() ? &*d2 : nullptr};
  // Vector path: W % 4 == 0 and every state tensor (and the output) 4-element aligned with unit W-stride.
  bool vec = W % 4 == 0 && vec4_ok(x) && vec4_ok(c) && vec4_ok(out);
  for (const at::Tensor* d : ds) vec = vec && (d == nullptr || vec4_ok(*d));
  if (noise.defined()) vec = vec && vec4_ok(noise);
  const int strip_w = static_cast<int>(std::max<int64_t>(tile, std::min<int64_t>(kStripPixels / tile, next_pow2(W))));
  const dim3 grid(static_cast<unsigned>((W + strip_w - 1) / strip_w), static_cast<unsigned>(TY),
                  static_cast<unsigned>(B));
  const dim3 block(static_cast<unsigned>((strip_w / 4) * (tile / 4)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float3(x.scalar_type(), op, [&](auto state_tag) {
    using T = decltype(state_tag);
    CombineParams<T> p{};
    p.x = x.const_data_ptr<T>();
    p.c = c.const_data_ptr<T>();
    p.noise = noise.defined() ? noise.const_data_ptr<T>() : nullptr;
    p.out = out.mutable_data_ptr<T>();
    p.sx = strides_of(x), p.sc = strides_of(c), p.sy = strides_of(out);
    p.sn = noise.defined() ? strides_of(noise) : Strides4{0, 0, 0, 1};
    for (int j = 0; j < kMaxHistory; ++j) {
      p.d[j] = ds[j] ? ds[j]->const_data_ptr<T>() : nullptr;
      p.sd[j] = ds[j] ? strides_of(*ds[j]) : Strides4{0, 0, 0, 1};
    }
    if (A.defined()) {
      p.A = A.const_data_ptr();
      p.a_type = attn_type(A);
      p.a_sb = A.stride(0), p.a_sh = A.stride(-2), p.a_sw = A.stride(-1);
      p.tmax = tmax.const_data_ptr<float>();
      p.tmin = tmin.const_data_ptr<float>();
    }
    p.C = static_cast<int>(C), p.H = static_cast<int>(H), p.W = static_cast<int>(W);
    p.TY = static_cast<int>(TY), p.TX = static_cast<int>(TX), p.tile = static_cast<int>(tile);
    p.strip_w = strip_w;
    p.tau = static_cast<float>(tau);  // the reference compares A.float() >= float32(tau)
    p.k = k;
    p.need_noise = need_noise;
    p.seed = static_cast<uint32_t>(seed);
    p.step = static_cast<uint32_t>(step);
    if (vec)
      launch<T, true>(p, nd, grid, block, stream);
    else
      launch<T, false>(p, nd, grid, block, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(yoda, CUDA, m) { m.impl("masked_combine", &masked_combine_cuda); }

}  // namespace cuda
}  // namespace yoda
